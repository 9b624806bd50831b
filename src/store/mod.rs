//! Every exchange with an object store, in one place.
//!
//! - [`layout`]: what a store holds, object by object, and the manifest
//!   that commits each generation.
//! - [`remote`]: a store opened from its URL (S3, GCS, Azure, a shared
//!   directory, or plain HTTP) with its retry settings; every read, write,
//!   list and delete.
//! - [`publish`]: a generation put in a store, retention, and a store's
//!   rollback.
//! - [`fetch`]: a store's generation brought into a data directory,
//!   verified.
//! - [`ranged`]: one object read front to back in ranges, for a feed read
//!   from a bucket.
//! - [`reference`]: what an argument names as a generation: a file, a
//!   sequence in the data directory, or one in a store.

pub mod fetch;
pub mod layout;
pub mod publish;
pub mod ranged;
pub mod reference;
pub mod remote;
