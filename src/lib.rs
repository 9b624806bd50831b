pub mod error;
pub mod format;
pub mod generation;
pub mod record;
pub mod sort;
pub mod table;

pub use error::{Error, Result};
