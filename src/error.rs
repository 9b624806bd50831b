//! The library's one error type; every variant says where (a path, a line).

use std::io;
use std::path::{Path, PathBuf};

/// An invalid row: its line in the input (the header is line 1) and why.
/// In JSON, `{"line": ..., "reason": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvalidRow {
    pub line: u64,
    pub reason: String,
    /// The delimiter the row seems to use instead of commas, if any.
    #[serde(skip)]
    pub delimiter: Option<u8>,
}

/// A `Result` whose error is promo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in promo, with the context to act on it.
///
/// Each message is complete on its own, the underlying cause included, so
/// no variant reports a [`source`](std::error::Error::source) (the causes
/// are in fields named `cause`, which thiserror leaves alone): a report that
/// walks the chain of sources (anyhow's `{:#}`) would otherwise print every
/// cause twice ("x.csv: No such file or directory (os error 2): No such
/// file or directory (os error 2)").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file or directory.
    #[error("{}: {}", path.display(), explain(cause))]
    Io { path: PathBuf, cause: io::Error },

    /// An I/O error while doing `op` ("writing a sorted run") with a named
    /// file or directory: the messages a full disk produces.
    #[error("{}: {op}: {}", path.display(), explain(cause))]
    IoOp {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    /// A generation file that must not go live.
    #[error("{}: {cause}", path.display())]
    Format { path: PathBuf, cause: FormatError },

    /// More rows were invalid than `--max-invalid` allows.
    #[error(
        "{input}: {invalid} of {rows} rows are invalid, more than the limit of {limit}; \
         nothing was published (see the lines reported above, or raise --max-invalid){hint}"
    )]
    TooManyInvalid {
        input: String,
        invalid: u64,
        rows: u64,
        limit: String,
        /// ". The file seems to use ';' ..." when it does, else empty.
        hint: String,
        /// The first invalid rows, as reported.
        first_invalid: Vec<InvalidRow>,
    },

    /// The input held no valid row; publishing it would empty the service.
    #[error("{input}: no valid rows ({rows} rows read); nothing was published{hint}")]
    NoValidRows {
        input: String,
        rows: u64,
        /// As [`Error::TooManyInvalid`]'s.
        hint: String,
        first_invalid: Vec<InvalidRow>,
    },

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

    /// The new generation changes more than `--max-churn` or
    /// `--max-price-jumps` allows against the live one.
    #[error(
        "{input}: refused by {guard} {limit}%: {detail} against generation {sequence}; nothing \
         was published (check the feed, or pass --force to publish it anyway). The first ids, \
         old -> new:\n  {}",
        examples.join("\n  ")
    )]
    Refused {
        input: String,
        /// The guard that refused it.
        guard: Guard,
        limit: f64,
        /// The figures, in words.
        detail: String,
        sequence: u64,
        /// The first ids concerned: `id old -> new`.
        examples: Vec<String>,
    },

    /// The feed built exactly a generation that a rollback undid (the same
    /// body checksum): a cron job rebuilding the bad feed.
    #[error(
        "{input}: this feed builds the same records as generation {sequence}, which the \
         rollback to generation {of} (generation {rollback}) undid (body checksum \
         {checksum:016x}); nothing was published (fix the feed, or pass --force to publish it \
         anyway)"
    )]
    RolledBack {
        input: String,
        /// The generation undone, the rollback that undid it and the one
        /// it restored.
        sequence: u64,
        rollback: u64,
        of: u64,
        checksum: u64,
    },

    /// Another `promo serve` listens on the port (see `server::claim`).
    #[error(
        "port {port}: another promo server is listening on it; stop that one or choose another \
         --listen (to overlap the two on purpose, for a restart, start this one with --handover)"
    )]
    PortTaken { port: u16 },

    /// A directory named by `option` (`--tmp-dir`, `--data-dir`) that a
    /// build cannot use, found before the feed is read.
    #[error("{option} {}: {reason}; nothing was read or published", path.display())]
    Dir {
        option: &'static str,
        path: PathBuf,
        /// "does not exist", "is not a directory", ...
        reason: String,
    },

    /// Another build holds the data directory's lock.
    #[error(
        "{}: another `promo build`, `promo fetch` or `promo rollback` is using this data \
         directory; wait for it to finish (nothing was changed)",
        path.display()
    )]
    Locked { path: PathBuf },

    /// The data directory holds no generation that validates.
    #[error("{}: no valid generation (run `promo build <CSV>` first)", path.display())]
    NoGeneration { path: PathBuf },

    /// There is nothing to roll back to: no valid generation before the
    /// live one, or not the one asked for.
    #[error("{}: {reason}: nothing to roll back to", path.display())]
    NothingToRollBack { path: PathBuf, reason: String },

    /// A store URL that cannot be used, found before anything is contacted.
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },

    /// The object store at `url` failed while doing `op` ("listing
    /// manifests"): unreachable, refusing the credentials, or erroring.
    #[error("{url}: {op}: {cause}")]
    Remote {
        url: String,
        op: &'static str,
        cause: String,
    },

    /// A generation in the store that cannot be used: its manifest, or
    /// its object as the manifest describes it.
    #[error("{url}: generation {sequence}: {reason}")]
    Manifest {
        url: String,
        sequence: u64,
        reason: String,
    },

    /// Another builder committed the same sequence first.
    #[error(
        "{url}: another builder published generation {sequence} first; this build's upload \
         was not made visible there (the local generation stays): run the build again"
    )]
    SequenceTaken { url: String, sequence: u64 },

    /// The store holds no generation that can be used.
    #[error("{url}: {reason}")]
    NothingInStore { url: String, reason: String },

    /// Too little free disk for a download.
    #[error(
        "{}: {needed} bytes are needed for generation {sequence} but only {free} are free; \
         nothing was downloaded (free some space)",
        path.display()
    )]
    DiskSpace {
        path: PathBuf,
        sequence: u64,
        needed: u64,
        free: u64,
    },

    /// A `--tls-cert` or `--tls-key` file that cannot be used.
    #[error("{}: {reason}", path.display())]
    Tls { path: PathBuf, reason: String },

    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
}

/// An I/O error as a sentence about the path it happened on. The system's
/// own text is kept where it already says what happened ("No such file or
/// directory", "No space left on device"); the ones that only make sense
/// to a programmer ("No such device", what `mmap` says of a directory) are
/// said again in words.
pub fn explain(cause: &io::Error) -> String {
    let said = match cause.raw_os_error() {
        Some(libc::ENODEV) => "is not a regular file, so it cannot be mapped",
        Some(libc::EISDIR) => "is a directory, not a file",
        Some(libc::ENOTDIR) => {
            "is a file where a directory is expected (this path or a part of it)"
        }
        Some(libc::EACCES | libc::EPERM) => {
            "permission denied: the user promo runs as may not use it (check its owner and mode)"
        }
        Some(libc::EMFILE | libc::ENFILE) => {
            "too many open files: raise the open-files limit (ulimit -n, or LimitNOFILE=)"
        }
        Some(libc::ENXIO) => "is a socket or a device with nothing behind it, not a file",
        Some(libc::ELOOP) => "is a loop of symbolic links",
        Some(libc::ENOMEM) => "not enough memory or address space to map it (see ulimit -v)",
        _ => return cause.to_string(),
    };
    said.to_string()
}

/// What a file that is not a regular file is, for messages.
pub fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "an unusual file"
    }
}

/// A feed guard: what refuses a generation no sane feed makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Shrink,
    Churn,
    PriceJumps,
}

impl Guard {
    pub const ALL: [Guard; 3] = [Guard::Shrink, Guard::Churn, Guard::PriceJumps];

    /// Its option, which sets its limit: `--max-shrink`...
    pub fn flag(self) -> &'static str {
        match self {
            Guard::Shrink => "--max-shrink",
            Guard::Churn => "--max-churn",
            Guard::PriceJumps => "--max-price-jumps",
        }
    }

    /// Its name in metrics' labels: `shrink`, `churn`, `price_jumps`.
    pub fn label(self) -> &'static str {
        match self {
            Guard::Shrink => "shrink",
            Guard::Churn => "churn",
            Guard::PriceJumps => "price_jumps",
        }
    }
}

impl std::fmt::Display for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.flag())
    }
}

impl Error {
    /// Whether a guard refused the feed (`--max-shrink`, `--max-churn`,
    /// `--max-price-jumps`): the feed is suspect rather than the build
    /// broken, so `promo build` exits 3 and an upload is answered 422.
    pub fn is_refusal(&self) -> bool {
        self.refused_by().is_some()
    }

    /// What refused the feed, as metrics label it: a [`Guard`]'s label, or
    /// `rolled_back` for the feed of a generation a rollback undid.
    pub fn refused_by(&self) -> Option<&'static str> {
        match self {
            Error::Shrink { .. } => Some(Guard::Shrink.label()),
            Error::Refused { guard, .. } => Some(guard.label()),
            Error::RolledBack { .. } => Some("rolled_back"),
            _ => None,
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |cause| Error::Io { path, cause }
    }

    /// Wraps an I/O error with what was being done (`op`, "writing a sorted
    /// run") and the path it was done to.
    pub fn io_op(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |cause| Error::IoOp { op, path, cause }
    }

    /// Wraps a format error with the file it was found in.
    pub fn format(path: impl AsRef<Path>, cause: FormatError) -> Error {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            cause,
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

    #[test]
    fn errors_only_a_programmer_reads_are_said_in_words() {
        let said = |errno| Error::io("gen-0000000005.promo")(io::Error::from_raw_os_error(errno));
        for (errno, text) in [
            (
                libc::ENODEV,
                "is not a regular file, so it cannot be mapped",
            ),
            (libc::EISDIR, "is a directory, not a file"),
            (
                libc::EACCES,
                "permission denied: the user promo runs as may not use it",
            ),
            (
                libc::EMFILE,
                "too many open files: raise the open-files limit",
            ),
        ] {
            let e = said(errno).to_string();
            assert!(
                e.starts_with(&format!("gen-0000000005.promo: {text}")),
                "{e}"
            );
            assert!(!e.contains("os error"), "{e}");
        }
        // The system's text where it already says what happened.
        assert_eq!(
            said(libc::ENOENT).to_string(),
            "gen-0000000005.promo: No such file or directory (os error 2)"
        );
    }
}

/// Why a generation file must not be served (see generation::format for
/// the layout each variant checks). Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "is {kind}, not a regular file: a generation is a file (move it out of the data directory)"
    )]
    NotAFile { kind: &'static str },
    #[error("file is {len} bytes, too short for a generation header (truncated?)")]
    TooShort { len: u64 },
    #[error("bad magic {got:02x?}: not a promo generation file")]
    Magic { got: [u8; 8] },
    #[error(
        "format version {got}, but this promo reads versions {oldest} to {newest}; \
         rebuild it with this promo, or serve it with a newer one"
    )]
    Version { got: u32, oldest: u32, newest: u32 },
    #[error("record size {got}, expected {expected}")]
    RecordSize { expected: u32, got: u32 },
    #[error("fanout bits {got}, at most {max} allowed")]
    FanoutBits { got: u32, max: u32 },
    #[error("shard {index}/{count} does not exist: the index must be below the count")]
    Shard { index: u32, count: u32 },
    #[error(
        "header checksum mismatch (stored {stored:016x}, computed {computed:016x}): corrupt header"
    )]
    HeaderChecksum { stored: u64, computed: u64 },
    #[error("file is {got} bytes but its header describes {expected} bytes (truncated or extended copy?)")]
    Length { expected: u64, got: u64 },
    #[error(
        "body checksum mismatch (stored {stored:016x}, computed {computed:016x}): corrupt file"
    )]
    BodyChecksum { stored: u64, computed: u64 },
    #[error("record {index} is not after the record before it: keys must be strictly increasing")]
    OutOfOrder { index: u64 },
    #[error("fanout entry {bucket} is {got}, but the records say {expected}")]
    Fanout {
        bucket: u64,
        expected: u64,
        got: u64,
    },
    #[error("record {index} holds an invalid price or date encoding")]
    BadRecord { index: u64 },
    #[error("record {index} has an id outside the file's shard")]
    OutsideShard { index: u64 },
    #[error("the zone table does not parse")]
    Zones,
    #[error("bad magic {got:02x?}: not a promo delta")]
    DeltaMagic { got: [u8; 8] },
    #[error("delta format version {got}, but this promo reads version {reads}")]
    DeltaVersion { got: u32, reads: u32 },
    #[error("bad delta: {0}")]
    Delta(String),
}
