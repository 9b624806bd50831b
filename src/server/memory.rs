//! How promo gives memory back: its allocator and the allocator's settings.
//!
//! A server's memory must come back down after a burst, or a replica that
//! took one carries it for good and a limit sized for its steady load kills
//! it at the next. With glibc's malloc it did not, in two ways. Freed
//! connection buffers stayed: 8,000 kept-alive connections, each after one
//! lookup, added 122 MiB of anonymous memory, and all of it stayed after
//! they closed (a `malloc_trim` once enough connections had closed brought
//! that back). And what a connection keeps while idle (its task and
//! socket, about 1.8 KB) sits between the holes its freed buffers left, so
//! each idle connection still held about a page: 3.1 to 5.1 KB each at
//! 10,000 connections, however often the heap was trimmed.
//!
//! `promo` therefore allocates with jemalloc (the binary's global
//! allocator, `tikv-jemallocator`, as TiKV and rustc use it). It keeps
//! objects of one size class together, so buffers freed together free
//! whole pages, and these settings hand such pages back within about a
//! second (`dirty_decay_ms`) with `MADV_DONTNEED` (`muzzy_decay_ms:0`: no
//! lazy `MADV_FREE` pages, which would still count as resident), from its
//! own background thread, so the return does not wait for the next
//! allocation. Measured (`make bench`, idle connections): an idle
//! connection costs about what a silent one does, and memory is back
//! within 8 MiB at once after a burst. With jemalloc's defaults (10 s
//! decay, no background thread) 42 MiB stayed 15 s after 10,000
//! connections closed. Builds and serving were not slower with it, in
//! alternating rounds against the glibc build.

/// jemalloc's settings (its `malloc_conf`), NUL-terminated.
pub const MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
