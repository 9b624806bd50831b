pub mod error;
pub mod format;
pub mod record;
pub mod table;

pub use error::{Error, Result};
