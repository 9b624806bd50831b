//! The build side: a CSV feed in, a published generation out.
//!
//! [`feed`] opens the feed (a file, standard input, an object by URL) and
//! decompresses it. [`chunker`] cuts it into chunks of whole rows, so that
//! they can be parsed apart, in parallel. [`ingest`] reads and validates
//! rows. [`sort`] orders them by key in bounded memory. [`pipeline`] runs
//! the two into a generation file and publishes it in the data directory;
//! [`store::publish`](crate::store::publish) then hands it to an object
//! store, where a fleet of servers fetches it. `progress` draws the
//! progress bar of a build that reads its feed. [`textfile`] tells the
//! monitoring how the build went.

pub mod chunker;
pub mod feed;
pub mod ingest;
pub mod pipeline;
mod progress;
pub mod sort;
pub mod textfile;
