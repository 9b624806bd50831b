//! The library's one error type; every variant says where (a path, a line).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::format::FormatError;

/// A `Result` whose error is promo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in promo, with the context to act on it.
///
/// Each message is complete on its own, the underlying cause included, so
/// the type reports no [`source`](std::error::Error::source): a report that
/// walks the chain of sources (anyhow's `{:#}`) would otherwise print every
/// cause twice ("x.csv: No such file or directory (os error 2): No such
/// file or directory (os error 2)").
#[derive(Debug)]
pub enum Error {
    /// An I/O error on a named file or directory.
    Io { path: PathBuf, source: io::Error },

    /// An I/O error while doing `op` ("writing a sorted run") with a named
    /// file or directory: the messages a full disk produces.
    IoOp {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// A generation file that must not go live.
    Format { path: PathBuf, source: FormatError },

    /// More rows were invalid than `--max-invalid` allows.
    TooManyInvalid {
        input: String,
        invalid: u64,
        rows: u64,
        limit: String,
    },

    /// The input held no valid row; publishing it would empty the service.
    NoValidRows { input: String, rows: u64 },

    /// The new generation would shrink more than `--max-shrink` allows.
    Shrink {
        input: String,
        records: u64,
        current: u64,
        sequence: u64,
        max_shrink: f64,
    },

    /// A directory named by `option` (`--tmp-dir`, `--data-dir`) that a
    /// build cannot use, found before the feed is read.
    Dir {
        option: &'static str,
        path: PathBuf,
        /// "does not exist", "is not a directory", ...
        reason: String,
    },

    /// Another build holds the data directory's lock.
    Locked { path: PathBuf },

    /// The data directory holds no generation that validates.
    NoGeneration { path: PathBuf },

    /// There is no valid generation before the live one.
    NothingToRollBack { path: PathBuf },

    /// A bad command-line value.
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::IoOp { op, path, source } => {
                write!(f, "{}: {op}: {source}", path.display())
            }
            Error::Format { path, source } => write!(f, "{}: {source}", path.display()),
            Error::TooManyInvalid {
                input,
                invalid,
                rows,
                limit,
            } => write!(
                f,
                "{input}: {invalid} of {rows} rows are invalid, more than the limit of {limit}; \
                 nothing was published (see the lines reported above, or raise --max-invalid)"
            ),
            Error::NoValidRows { input, rows } => write!(
                f,
                "{input}: no valid rows ({rows} rows read); nothing was published"
            ),
            Error::Shrink {
                input,
                records,
                current,
                sequence,
                max_shrink,
            } => write!(
                f,
                "{input}: the new generation would hold {records} records against {current} in \
                 generation {sequence}, a drop of more than --max-shrink {max_shrink}%; nothing \
                 was published (check the feed, or pass --force to publish it anyway)"
            ),
            Error::Dir {
                option,
                path,
                reason,
            } => write!(
                f,
                "{option} {}: {reason}; nothing was read or published",
                path.display()
            ),
            Error::Locked { path } => write!(
                f,
                "{}: another `promo build` is running in this data directory; \
                 wait for it to finish (nothing was changed)",
                path.display()
            ),
            Error::NoGeneration { path } => write!(
                f,
                "{}: no valid generation (run `promo build <CSV>` first)",
                path.display()
            ),
            Error::NothingToRollBack { path } => write!(
                f,
                "{}: no valid generation before the live one: nothing to roll back to",
                path.display()
            ),
            Error::Usage(message) => f.write_str(message),
        }
    }
}

/// No `source()`: see the type's documentation.
impl std::error::Error for Error {}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { path, source }
    }

    /// Wraps an I/O error with what was being done (`op`, "writing a sorted
    /// run") and the path it was done to.
    pub fn io_op(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::IoOp { op, path, source }
    }

    /// Wraps a format error with the file it was found in.
    pub fn format(path: impl AsRef<Path>, source: FormatError) -> Error {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_of_the_whole_chain_says_each_cause_once() {
        let e = Error::io_op("writing a sorted run", "/spill")(io::Error::from_raw_os_error(
            libc::ENOSPC,
        ));
        let once = "/spill: writing a sorted run: No space left on device (os error 28)";
        assert_eq!(e.to_string(), once);
        // What `promo` prints: anyhow's report with every source.
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), once);
        let e = Error::io("x.csv")(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            format!("{:#}", anyhow::Error::new(e)),
            "x.csv: entity not found"
        );
    }
}
