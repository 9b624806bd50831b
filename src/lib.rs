//! promo: partner promotion feeds served from immutable, memory-mapped files.
//!
//! The data flow, and the module for each step:
//!
//! ```text
//! CSV --ingest--> Record rows --sort--> sorted, deduplicated records
//!     --format::Writer--> temporary file --generation::publish--> gen-N.promo
//!     --table (mmap, verify)--> store (ArcSwap, watcher) --http--> JSON
//! ```
//!
//! - [`ingest`]: the CSV dialect and row validation, with line numbers.
//! - [`record`]: one promotion as a 64-byte record; exact decimal prices.
//! - [`sort`]: external sort by key; among equal keys the later row wins.
//! - [`format`](mod@format): the generation file, byte by byte; writer and verifier.
//! - [`generation`]: naming, atomic publishing, retention, the build lock.
//! - [`pipeline`]: `promo build` from CSV to a published generation.
//! - [`table`]: a mapped generation and its fanout-plus-interpolation lookup.
//! - [`store`]: the live generation, its atomic swap and the directory watcher.
//! - [`http`]: routes as pure functions, and the hyper server.
//! - [`metrics`]: metric names, help text and the Prometheus exporter.
//! - [`error`]: the one error type, with paths and lines.

pub mod error;
pub mod format;
pub mod generation;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod sort;
pub mod store;
pub mod table;

pub use error::{Error, Result};
