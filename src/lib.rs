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
