//! The HTTP API: routes as pure functions, and the server around them.
//!
//! `route` maps a method, a path and the live table to a response without
//! any I/O, so every answer is unit-tested without sockets; `run` serves a
//! bound listener until a shutdown future completes, so tests bind
//! 127.0.0.1:0 and call it.
//!
//! `routes.rs` holds the routes and their answers: the API's paths and
//! limits, lookups with their ETags, batches, and the JSON and text
//! helpers. `service.rs` holds [`App`], the state every connection shares
//! (its [`Limits`], metric handles, the connection permits), and the hyper
//! service that answers each request of a connection. `listener.rs` holds
//! the connections: binding the listeners, accepting, and serving them
//! until shutdown.

mod listener;
mod routes;
mod service;

pub(crate) use listener::accept;
pub use listener::{
    bind, connection_builder, h2_builder, run, H2_MAX_STREAMS, MAX_HEAD_LEN, SHUTDOWN_GRACE,
};
pub use routes::{
    batch, promotion, route, BadBody, Lookup, Routed, BATCH, GENERATION_HEADER, MAX_BATCH_BYTES,
    MAX_BATCH_IDS, MAX_TARGET_LEN, RETRY_AFTER_SECONDS,
};
pub(crate) use routes::{json, json_error, method_not_allowed, openapi};
pub use service::{App, Limits, ANSWERS_PER_YIELD};
