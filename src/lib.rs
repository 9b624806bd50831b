//! promo: partner promotion feeds served from immutable, memory-mapped files.
//!
//! The data flow, and the module for each step:
//!
//! ```text
//! build side   CSV --builder::ingest--> rows --builder::sort--> sorted records
//!                  --generation::format::Writer--> temporary file
//!                  --generation::local::publish--> gen-N.promo
//!                  (--store::publish--> object store: generation object, then manifest)
//! serve side   (object store --store::fetch--> temporary file, verified --> gen-N.promo)
//!              gen-N.promo --generation::table (mmap, verify)--> server::live (ArcSwap,
//!              watcher) --server::http--> JSON
//! ```
//!
//! The folders follow that split, and each layer uses only those below it:
//!
//! - [`builder`]: the build side, from a feed to a generation in the data
//!   directory.
//! - [`server`]: the serve side, from the data directory (or a store) to
//!   HTTP answers.
//! - [`store`]: every exchange with an object store, for both sides:
//!   publish, fetch, the layout and its manifest, ranged reads.
//! - [`generation`]: the file both sides share, and the data directory
//!   that holds it.
//! - [`metrics`]: every metric's name and help text, and the exporter.
//! - [`error`]: the one error type, with paths, lines and URLs.
//! - [`sys`]: safe wrappers over the system calls promo makes.
//!
//! The `promo` command itself (`src/main.rs` and `src/cli/`) parses
//! arguments and calls this library.

pub mod builder;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod server;
pub mod store;
pub mod sys;

pub use error::{Error, Result};
