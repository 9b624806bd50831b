//! promo: partner promotion feeds served from immutable, memory-mapped files.
//!
//! The data flow, and the module for each step:
//!
//! ```text
//! build side   CSV --ingest--> rows --sort--> sorted records
//!                  --format::Writer--> temporary file --local::publish--> gen-N.promo
//!                  (--publish--> object store: generation object, then manifest)
//! serve side   (object store --fetch--> temporary file, verified --> gen-N.promo)
//!              gen-N.promo --table (mmap, verify)--> live (ArcSwap, watcher) --http--> JSON
//! ```
//!
//! The folders follow that split:
//!
//! - [`builder`]: the build side. [`builder::ingest`] (the CSV dialect and
//!   row validation, with line numbers), [`builder::sort`] (external sort
//!   by key; among equal keys the later row wins), [`builder::pipeline`]
//!   (`promo build` from CSV to a published generation) and
//!   [`builder::publish`] (to an object store, and a store's rollback).
//! - [`generation`]: what both sides share. [`generation::record`] (one
//!   promotion as a 32-byte record), [`generation::date`] (its date in
//!   eight bytes), [`generation::shard`] (range shards),
//!   [`generation::format`] (the file, byte by byte), [`generation::table`]
//!   (a mapped generation and its lookup, read by the builder, `diff` and
//!   the server alike), [`generation::local`] (the data directory: naming,
//!   atomic publishing, retention, the lock) and [`generation::remote`] (the
//!   object store's layout, object by object).
//! - [`server`]: the serve side. [`server::live`] (the live generation, its atomic swap and
//!   the directory watcher), [`server::http`] (routes as pure functions and
//!   the hyper server), [`server::fetch`] (from an object store) and
//!   [`server::Server`] (the whole serving process, startable from a test).
//! - [`metrics`]: metric names, help text and the Prometheus exporter.
//! - [`error`]: the one error type, with paths, lines and URLs.

pub mod builder;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod server;
pub mod store;
pub mod sys;

pub use error::{Error, Result};
