//! How promo gives memory back: its allocator and the allocator's settings.
//!
//! A server's memory must come back down after a burst, or a replica that
//! took one carries it for good and a limit sized for its steady load kills
//! it at the next. With glibc's malloc it did not, in two ways. Freed
//! connection buffers stayed after the connections closed (a `malloc_trim`
//! once enough had closed brought them back). And what a connection keeps
//! while idle (its task and socket) sits between the holes its freed
//! buffers left, so each idle connection still held about a page, however
//! often the heap was trimmed.
//!
//! `promo` therefore allocates with jemalloc (the binary's global
//! allocator, `tikv-jemallocator`, as TiKV and rustc use it). It keeps
//! objects of one size class together, so buffers freed together free
//! whole pages, and these settings hand such pages back within about a
//! second (`dirty_decay_ms`) with `MADV_DONTNEED` (`muzzy_decay_ms:0`: no
//! lazy `MADV_FREE` pages, which would still count as resident), from its
//! own background thread, so the return does not wait for the next
//! allocation. What it measured against glibc and against jemalloc's
//! defaults is in BENCHMARKS.md ("Idle connections", and "Measurements
//! behind the design").

/// jemalloc's settings (its `malloc_conf`), NUL-terminated.
pub const MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
