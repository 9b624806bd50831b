//! Giving memory back to the system after bursts of connections.
//!
//! Each connection's buffers come from glibc's malloc, in the arena of the
//! serving thread that owns it. When the connections close, glibc keeps the
//! freed memory for later rather than returning it: measured here, 8,000
//! kept-alive connections, each after one lookup, added 122 MiB of
//! anonymous memory, and all 122 MiB stayed after every one of them closed.
//! A replica that took one burst would carry it for good, and a memory
//! limit sized for its steady load would kill it at the next. So once
//! enough connections have closed, or gone quiet and let their buffers go
//! (see `connection`), since the last time, the server asks
//! glibc to give back what it holds free (`malloc_trim`): after the same
//! burst, the process was within 1.3 MiB of where it started within a
//! second. Checked once a second, on the background thread, never on a
//! serving one.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connections closed or gone quiet since the server started, over all
/// serving threads.
static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Connections that must have closed since the last trim for another: a
/// trim walks the allocator's free lists, so a server whose clients come
/// and go steadily does it at most once a second, and one with long-lived
/// connections does not do it at all.
pub const TRIM_AFTER: u64 = 64;

/// How often [`give_back`] looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Counts a connection that closed, or went quiet and freed its buffers.
pub fn buffers_freed() {
    CLOSED.fetch_add(1, Ordering::Relaxed);
}

/// Every [`INTERVAL`], returns freed memory to the system if at least
/// [`TRIM_AFTER`] connections have closed since it last did, until
/// `shutdown` completes.
pub async fn give_back(shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(INTERVAL);
    let mut trimmed_at = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let closed = CLOSED.load(Ordering::Relaxed);
                if closed - trimmed_at >= TRIM_AFTER {
                    trim();
                    trimmed_at = closed;
                }
            }
            () = &mut shutdown => return,
        }
    }
}

/// Asks the allocator to return the free memory of every arena.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only takes the allocator's own locks and
        // releases pages it holds free; no memory in use is touched.
        unsafe { libc::malloc_trim(0) };
    }
}
