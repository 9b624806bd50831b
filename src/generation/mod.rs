//! What the build side and the serve side share: the generation.
//!
//! - [`record`]: one promotion as fixed-width bytes.
//! - [`date`]: its expiration date in eight bytes, and the zone tables.
//! - [`shard`]: the range of ids a file holds.
//! - [`format`](mod@format): the generation file, byte by byte: the one
//!   place its layout is defined.
//! - [`direct`]: how the build writes its large files past the page cache.
//! - [`table`]: one generation mapped and read (by the builder, `diff` and
//!   the server).
//! - [`local`]: the data directory that holds generations: naming, atomic
//!   publishing, sidecars, retention, the build lock.
//! - [`churn`]: what one generation changes against another, in one merge.
//! - [`delta`]: the same merge as bytes: a generation rebuilt from an
//!   older one and what changed.
//! - [`rollback`]: what a rollback restored and undid.
//! - [`json`]: how the generation's values are written in JSON.

pub mod churn;
pub mod date;
pub mod delta;
pub mod direct;
pub mod format;
pub mod json;
pub mod local;
pub mod record;
pub mod rollback;
pub mod shard;
pub mod table;
