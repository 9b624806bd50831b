//! What the build side and the serve side share: the generation.
//!
//! [`record`] is one promotion as fixed-width bytes, [`date`] its date in
//! eight bytes, [`shard`] the range of ids a file holds, [`format`](mod@format)
//! the generation file byte by byte, [`table`] one generation mapped and
//! read (by the builder, `diff` and the server), [`local`] the data directory that holds
//! generations (naming, atomic publishing, retention, the build lock), and
//! [`remote`] the object store layout through which a fleet exchanges them;
//! [`churn`] what one generation changes against another; [`direct`] how
//! the build writes its large files past the page cache.

pub mod churn;
pub mod date;
pub mod direct;
pub mod format;
pub mod json;
pub mod local;
pub mod record;
pub mod rollback;
pub mod shard;
pub mod table;
