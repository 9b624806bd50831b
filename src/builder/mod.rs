//! The build side: a CSV feed in, a published generation out.
//!
//! [`feed`] opens the feed (a file, standard input, an object by URL) and
//! decompresses it, [`ingest`] reads and validates rows, [`sort`] orders them by key in
//! bounded memory, and [`pipeline`] runs the two into a generation file and
//! publishes it in the data directory; [`publish`] then hands it to an
//! object store, where a fleet of servers fetches it; [`textfile`] tells
//! the monitoring how the build went.

pub mod feed;
pub mod ingest;
pub mod pipeline;
pub mod sort;
pub mod textfile;
