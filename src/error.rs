//! The library's one error type; every variant says where (a path, a line).

use std::io;
use std::path::{Path, PathBuf};

use crate::format::FormatError;

/// A `Result` whose error is promo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in promo, with the context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// A generation file that must not go live.
    #[error("{}: {source}", path.display())]
    Format { path: PathBuf, source: FormatError },

    /// More rows were invalid than `--max-invalid` allows.
    #[error(
        "{input}: {invalid} of {rows} rows are invalid, more than the limit of {limit}; \
         nothing was published (see the lines reported above, or raise --max-invalid)"
    )]
    TooManyInvalid {
        input: String,
        invalid: u64,
        rows: u64,
        limit: String,
    },

    /// The input held no valid row; publishing it would empty the service.
    #[error("{input}: no valid rows ({rows} rows read); nothing was published")]
    NoValidRows { input: String, rows: u64 },

    /// The new generation would shrink more than `--max-shrink` allows.
    #[error(
        "{input}: the new generation would hold {records} records against {current} in generation \
         {sequence}, a drop of more than --max-shrink {max_shrink}%; nothing was published \
         (check the feed, or pass --force to publish it anyway)"
    )]
    Shrink {
        input: String,
        records: u64,
        current: u64,
        sequence: u64,
        max_shrink: f64,
    },

    /// Another build holds the data directory's lock.
    #[error(
        "{}: another `promo build` is running in this data directory; \
         wait for it to finish (nothing was changed)",
        path.display()
    )]
    Locked { path: PathBuf },

    /// The data directory holds no generation that validates.
    #[error("{}: no valid generation (run `promo build <CSV>` first)", path.display())]
    NoGeneration { path: PathBuf },

    /// There is no valid generation before the live one.
    #[error("{}: no valid generation before the live one: nothing to roll back to", path.display())]
    NothingToRollBack { path: PathBuf },

    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { path, source }
    }

    /// Wraps a format error with the file it was found in.
    pub fn format(path: impl AsRef<Path>, source: FormatError) -> Error {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
