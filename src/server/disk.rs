//! Reading a lookup's records from disk without blocking a serving
//! thread, for a generation larger than memory.
//!
//! A lookup reads the generation through its mapping. When the page it
//! needs is not in the page cache, the read is a page fault, and the
//! thread sleeps until the disk answers: every other connection of that
//! thread waits with it. Sixteen threads on two cores kept the disk busy
//! that way, at the price of a context switch or two per fault and of
//! threads competing for the cores.
//!
//! Instead, each serving thread has an `io_uring` ring. A lookup whose
//! records are not in memory ([`Table::in_memory`]) reads the bytes it
//! would read (its bucket of records, one or two pages) through the ring,
//! with [`read`], as an ordinary buffered read: the request's task waits
//! for the completion while the thread serves other connections, and the
//! lookup then searches the bytes read ([`Table::get_from`]), not the
//! mapping, so no page is faulted into it (a mapped page costs the kernel
//! an unmapping and a TLB flush on every core when it is reclaimed). The
//! pages land in the page cache, so hot records stay in memory as before.
//!
//! Reads queued by the requests of one turn of the runtime go to the
//! kernel together, in one system call (see `Ring::submit_queued`).
//!
//! If the ring cannot be made (a kernel without `io_uring`, or a sandbox
//! that forbids it), is full, or a read fails, the lookup reads the mapping
//! and faults as it did before, with the same answer. So do the lookups
//! whose reads the kernel refuses to take for good (a submission failing
//! other than for want of room or time), and every later one on the thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;

use crate::generation::table::Table;

/// Reads in flight on one thread at most; more fault as before.
const RING_ENTRIES: u32 = 256;

thread_local! {
    /// The thread's ring, made on first use (see [`Ring::here`]).
    static RING: RefCell<Option<Arc<Ring>>> = const { RefCell::new(None) };
    /// Set once a ring cannot be made, or its submissions fail for good:
    /// the thread's lookups then fault.
    static UNAVAILABLE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this process may use `io_uring`: a ring of the size each
/// serving thread makes, made and dropped.
pub fn available() -> bool {
    new_ring().is_ok()
}

/// A ring whose completions do not interrupt the thread while it runs in
/// user space (`IORING_SETUP_COOP_TASKRUN`): a serving thread enters the
/// kernel for every send and receive, and completes the reads then. A
/// sleeping thread is still woken. It served a little more than the
/// default (BENCHMARKS.md, "Measurements behind the design"). Kernels
/// before 5.19 refuse the flag and get the default.
fn new_ring() -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::new(RING_ENTRIES))
}

/// Reads `range` of `table`'s file (a lookup's bucket: see
/// [`Table::lookup_range`]) without blocking the thread, through the page
/// cache. `None` at once when it cannot be read this way (see the module's
/// doc), or when the read failed or came back short. Call from within a
/// serving thread's runtime.
pub async fn read(table: &Arc<Table>, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
    let ring = Ring::here()?;
    let slot = ring.queue(table, range)?;
    metrics::counter!(crate::metrics::DISK_READS).increment(1);
    Read { ring, slot }.await
}

/// One thread's ring, the reads in flight on it, and the eventfd the kernel
/// signals when a read completes after its submission.
struct Ring {
    inner: Mutex<Inner>,
    completed: AsyncFd<OwnedFd>,
    /// False once the runtime that runs its reaper and submitter is gone,
    /// or once the kernel refused a submission for good.
    alive: AtomicBool,
}

/// Held by the reaper task: marks the ring dead when the task is dropped
/// with its runtime, so that a later runtime on the thread makes its own.
struct Alive(Arc<Ring>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

struct Inner {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// The slots of reads queued that the kernel has not taken yet, oldest
    /// first: what the submitter has to submit.
    unsubmitted: VecDeque<usize>,
    /// The task that submits the queued reads, waiting for some.
    submitter: Option<Waker>,
}

/// A read's buffer and table outlive the request's task: the kernel writes
/// into the buffer until the read completes, even if the client has gone.
struct Slot {
    buf: Vec<u8>,
    /// Keeps the file open until the read completes.
    table: Option<Arc<Table>>,
    state: State,
}

enum State {
    Free,
    /// In flight; the waker of the task waiting for it, once it has waited.
    Reading(Option<Waker>),
    /// Completed, with the kernel's result (bytes read, or -errno).
    Done(i32),
    /// In flight, and nobody waits for it any more; or queued, and the
    /// ring failed before the kernel took it (its waiter, if it still
    /// waits, gets no bytes).
    Abandoned,
}

impl Ring {
    /// This thread's ring, made on first use in the runtime running on
    /// it (`None` if it cannot be).
    fn here() -> Option<Arc<Ring>> {
        RING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(ring) = r.as_ref().filter(|ring| ring.alive.load(Ordering::Relaxed)) {
                return Some(ring.clone());
            }
            if UNAVAILABLE.get() {
                return None;
            }
            match Ring::new() {
                Ok(ring) => {
                    *r = Some(ring.clone());
                    Some(ring)
                }
                Err(e) => {
                    tracing::warn!(
                        "io_uring unavailable, lookups from disk block their thread: {e}"
                    );
                    UNAVAILABLE.set(true);
                    None
                }
            }
        })
    }

    fn new() -> std::io::Result<Arc<Ring>> {
        let ring = new_ring()?;
        // SAFETY: eventfd takes no pointers; a descriptor it returns is ours
        // to own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing
        // else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Signalled for every completion. Not only for those that complete
        // after their submission (`register_eventfd_async`): that counts
        // only completions by the kernel's worker threads, and a buffered
        // read that waits for the disk completes in this thread's own
        // context, at its next system call, so it would wait for the next
        // submission. A read of cached pages completes inside its
        // submission and is reaped there; its signal only wakes the reaper
        // once more per turn of the runtime.
        ring.submitter().register_eventfd(fd.as_raw_fd())?;
        // SAFETY: the AsyncFd owns `fd`, which stays open, the same
        // descriptor, until the AsyncFd is dropped.
        let completed = unsafe { AsyncFd::register(fd) }?;
        let ring = Arc::new(Ring {
            inner: Mutex::new(Inner {
                ring,
                slots: Vec::new(),
                free: Vec::new(),
                unsubmitted: VecDeque::new(),
                submitter: None,
            }),
            completed,
            alive: AtomicBool::new(true),
        });
        let (reaper, submitter) = (Alive(ring.clone()), ring.clone());
        tokio::spawn(async move { reaper.0.reap_forever().await });
        tokio::spawn(std::future::poll_fn(move |cx| submitter.submit_queued(cx)));
        Ok(ring)
    }

    /// Queues a read of `range` of `table`'s file, to be submitted with
    /// the others queued in this turn of the runtime; `None` if the ring
    /// is full.
    fn queue(&self, table: &Arc<Table>, range: std::ops::Range<u64>) -> Option<usize> {
        let mut inner = self.inner.lock().unwrap();
        let slot = match inner.free.pop() {
            Some(slot) => slot,
            None if inner.slots.len() < RING_ENTRIES as usize => {
                inner.slots.push(Slot {
                    buf: Vec::new(),
                    table: None,
                    state: State::Free,
                });
                inner.slots.len() - 1
            }
            None => return None,
        };
        let len = (range.end - range.start) as usize;
        let s = &mut inner.slots[slot];
        s.buf.resize(len, 0);
        s.table = Some(table.clone());
        s.state = State::Reading(None);
        let read = opcode::Read::new(
            types::Fd(table.file().as_raw_fd()),
            s.buf.as_mut_ptr(),
            len as u32,
        )
        .offset(range.start)
        .build()
        .user_data(slot as u64);
        // SAFETY: the buffer and the file stay alive until the read
        // completes: the slot owns the buffer and holds the table (whose
        // file it is), a slot is reused only once its completion is reaped,
        // even if its reader has gone, and a ring is dropped only after its
        // reads complete (`Inner`'s Drop). The queue has as many entries as
        // there are slots, so the push finds room.
        if unsafe { inner.ring.submission().push(&read) }.is_err() {
            inner.release(slot);
            return None;
        }
        inner.unsubmitted.push_back(slot);
        if inner.unsubmitted.len() == 1 {
            if let Some(submitter) = inner.submitter.take() {
                submitter.wake();
            }
        }
        Some(slot)
    }

    /// The submitting task: once woken, it runs after the tasks already
    /// woken in this turn of the runtime, so the reads they queued go to
    /// the kernel in one system call (and reach the disk together: on a
    /// virtual disk, each separate submission costs an exit to the
    /// hypervisor). Reads of cached pages complete within the call.
    fn submit_queued(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock().unwrap();
        let mut woken = Vec::new();
        if !inner.unsubmitted.is_empty() {
            match inner.ring.submit() {
                Ok(_) => {
                    // The kernel may take fewer than were queued (short of
                    // memory): the rest go in the next turn.
                    let left = inner.ring.submission().len();
                    let taken = inner.unsubmitted.len().saturating_sub(left);
                    inner.unsubmitted.drain(..taken);
                    if left > 0 {
                        cx.waker().wake_by_ref();
                    }
                    woken = inner.reap();
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ENOMEM)
                    ) =>
                {
                    // Short of room or memory, or interrupted: try again in
                    // the next turn.
                    tracing::debug!("io_uring submit: {e}");
                    cx.waker().wake_by_ref();
                }
                Err(e) => {
                    tracing::warn!(
                        "io_uring submit failed: {e}; lookups from disk block their thread from now on"
                    );
                    UNAVAILABLE.set(true);
                    self.alive.store(false, Ordering::Relaxed);
                    woken = inner.give_up_unsubmitted();
                }
            }
        }
        inner.submitter = Some(cx.waker().clone());
        drop(inner);
        woken.into_iter().for_each(Waker::wake);
        Poll::Pending
    }

    /// Waits for the eventfd and reaps, for as long as the thread serves.
    async fn reap_forever(&self) {
        loop {
            let Ok(mut ready) = self.completed.readable().await else {
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `count`, which has 8.
            unsafe {
                libc::read(
                    self.completed.get_ref().as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    8,
                )
            };
            ready.clear_ready();
            let woken = self.inner.lock().unwrap().reap();
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

impl Inner {
    /// Takes every completion: marks its read done, frees the slot of an
    /// abandoned one, and returns the wakers of the tasks to wake.
    fn reap(&mut self) -> Vec<Waker> {
        let mut woken = Vec::new();
        let done: Vec<(usize, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (slot, result) in done {
            let s = &mut self.slots[slot];
            s.table = None;
            match std::mem::replace(&mut s.state, State::Done(result)) {
                State::Reading(waker) => woken.extend(waker),
                State::Abandoned => self.release(slot),
                State::Free | State::Done(_) => {
                    unreachable!("a completion for a read not in flight")
                }
            }
        }
        woken
    }

    /// Gives up the reads the kernel has not taken: their waiters get no
    /// bytes (and read the mapping). Their entries are still in the
    /// submission queue and point into their buffers, so the slots keep
    /// them as if in flight: freed only if the kernel ever completes them
    /// (`Inner`'s Drop submits what is queued and waits), never reused.
    fn give_up_unsubmitted(&mut self) -> Vec<Waker> {
        let mut woken = Vec::new();
        while let Some(slot) = self.unsubmitted.pop_front() {
            let state = std::mem::replace(&mut self.slots[slot].state, State::Abandoned);
            if let State::Reading(waker) = state {
                woken.extend(waker);
            }
        }
        woken
    }

    /// Frees `slot` for the next read: its read is done and taken, or was
    /// never submitted.
    fn release(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.table = None;
        s.state = State::Free;
        self.free.push(slot);
    }
}

impl State {
    /// Whether the kernel may still write into the slot's buffer.
    fn in_flight(&self) -> bool {
        matches!(self, State::Reading(_) | State::Abandoned)
    }
}

impl Drop for Inner {
    /// The kernel writes into the buffers of reads in flight until they
    /// complete, even once nobody waits for them: wait for those reads
    /// before the buffers are freed (the thread is ending, or its runtime
    /// has gone).
    fn drop(&mut self) {
        while self.slots.iter().any(|s| s.state.in_flight()) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => drop(self.reap()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Cannot wait: leak the buffers rather than free them
                    // under the kernel.
                    for s in &mut self.slots {
                        if s.state.in_flight() {
                            std::mem::forget(std::mem::take(&mut s.buf));
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// A request's wait for its read.
struct Read {
    ring: Arc<Ring>,
    slot: usize,
}

impl Future for Read {
    type Output = Option<Vec<u8>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let mut inner = self.ring.inner.lock().unwrap();
        let s = &mut inner.slots[self.slot];
        match &mut s.state {
            &mut State::Done(result) => {
                let read = (usize::try_from(result) == Ok(s.buf.len()))
                    .then(|| std::mem::take(&mut s.buf));
                inner.release(self.slot);
                // Freed: dropping `self` must not touch the slot again.
                drop(inner);
                let this = self.get_mut();
                this.slot = usize::MAX;
                Poll::Ready(read)
            }
            State::Reading(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Abandoned => {
                // Given up (see `Inner::give_up_unsubmitted`): the slot stays
                // as it is; dropping `self` must not touch it.
                drop(inner);
                self.get_mut().slot = usize::MAX;
                Poll::Ready(None)
            }
            State::Free => unreachable!("a read polled after it was freed"),
        }
    }
}

impl Drop for Read {
    fn drop(&mut self) {
        if self.slot == usize::MAX {
            return;
        }
        let mut inner = self.ring.inner.lock().unwrap();
        match inner.slots[self.slot].state {
            State::Done(_) => inner.release(self.slot),
            _ => inner.slots[self.slot].state = State::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::format::Writer;
    use crate::generation::record::Price;
    use crate::generation::table::Bucket;
    use futures_util::FutureExt;

    const DATE: &[u8] = b"2018-08-04 05:32:31 +0200 CEST";

    /// A generation of `n` spread-out keys, written and then dropped from
    /// the page cache, in a directory on the disk the tests build on (a
    /// tmpfs would keep its pages in memory for good).
    fn cold_table(n: u128) -> (tempfile::TempDir, Arc<Table>, Vec<u128>) {
        let here = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(here.parent().unwrap()).unwrap();
        let path = dir.path().join("cold.promo");
        let keys: Vec<u128> = (1..=n).map(|i| i * (u128::MAX / (n + 1))).collect();
        let file = std::fs::File::create(&path).unwrap();
        let mut w = Writer::new(file, &path, n as u64).unwrap();
        for &k in &keys {
            w.push_row(k, Price::new((k % 1000) as u64, 2).unwrap(), DATE)
                .unwrap();
        }
        w.finish().unwrap();
        // Opening reads the header and the fanout table, and the read-ahead
        // around them: the pages are dropped after.
        let table = Arc::new(Table::open(&path, 1).unwrap());
        table.file().sync_all().unwrap();
        crate::sys::fadvise(table.file(), 0, 0, crate::sys::Advice::DontNeed);
        (dir, table, keys)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn in_flight() -> usize {
        let ring = Ring::here().expect("io_uring is available");
        let inner = ring.inner.lock().unwrap();
        inner.slots.len() - inner.free.len()
    }

    /// The reads in flight once they have all completed and been reaped,
    /// or after 10 s.
    async fn reaped() -> usize {
        for _ in 0..1000 {
            if in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        in_flight()
    }

    #[test]
    fn reads_give_a_lookups_bucket_through_the_page_cache() {
        assert!(available(), "io_uring is available here");
        let (_dir, table, keys) = cold_table(200_000);
        // Every 97th key: records on pages apart.
        let picked: Vec<u128> = keys.iter().copied().step_by(97).collect();
        let ranges: Vec<_> = picked
            .iter()
            .map(|&k| table.lookup_range(k).unwrap())
            .collect();
        let cold = ranges
            .iter()
            .filter(|r| !table.in_memory((*r).clone()))
            .count();
        assert!(
            cold > ranges.len() * 9 / 10,
            "{cold} of {} ranges are out of memory before the reads",
            ranges.len()
        );
        let buckets = runtime().block_on(async {
            // More at once than the ring takes: the rest return at once.
            let reads = ranges.iter().map(|r| read(&table, r.clone()));
            let buckets = futures_util::future::join_all(reads).await;
            assert_eq!(in_flight(), 0);
            buckets
        });
        let read = buckets.iter().filter(|b| b.is_some()).count();
        assert_eq!(
            read, RING_ENTRIES as usize,
            "as many read as the ring takes"
        );
        let file = std::fs::read(table.path()).unwrap();
        for ((&k, range), bytes) in picked.iter().zip(&ranges).zip(buckets) {
            let bucket = bytes.map(|bytes| {
                assert_eq!(bytes, file[range.start as usize..range.end as usize]);
                assert!(
                    table.in_memory(range.clone()),
                    "read through the page cache"
                );
                Bucket {
                    range: range.clone(),
                    bytes,
                }
            });
            let found = table
                .get_from(k, bucket.as_ref())
                .expect("written keys are found");
            assert_eq!(found.key(), k);
            assert_eq!(found.price(), Price::new((k % 1000) as u64, 2));
            if let Some(bucket) = &bucket {
                // Found in the bytes read, not in the mapping; a key
                // between two written ones is not found in them either.
                assert!(bucket
                    .bytes
                    .as_ptr_range()
                    .contains(&found.bytes().as_ptr()));
                assert!(table.get_from(k + 1, Some(bucket)).is_none());
            }
        }
    }

    #[test]
    fn a_bucket_of_another_lookup_is_not_searched() {
        let (_dir, table, keys) = cold_table(10_000);
        let (a, b) = (keys[10], keys[5000]);
        let range = table.lookup_range(a).unwrap();
        let bytes = runtime().block_on(read(&table, range.clone())).unwrap();
        let bucket = Bucket { range, bytes };
        // b is looked up in the mapping, and found there.
        let found = table.get_from(b, Some(&bucket)).unwrap();
        assert_eq!(found.key(), b);
        assert!(!bucket
            .bytes
            .as_ptr_range()
            .contains(&found.bytes().as_ptr()));
    }

    #[test]
    fn a_read_nobody_waits_for_any_more_frees_its_slot_when_it_completes() {
        let (_dir, table, keys) = cold_table(100_000);
        runtime().block_on(async {
            for &k in keys.iter().step_by(500) {
                let range = table.lookup_range(k).unwrap();
                // Polled once (queued, not submitted yet), then dropped, as
                // when a client goes away mid-request.
                assert!(read(&table, range).now_or_never().is_none());
            }
            assert_eq!(in_flight(), 200);
            // The reads still complete, into buffers the slots still own.
            assert_eq!(reaped().await, 0, "abandoned reads are reaped");
            let last = table.lookup_range(keys[7]).unwrap();
            assert!(read(&table, last.clone()).await.is_some());
            assert!(table.in_memory(last));
        });
    }

    #[test]
    fn reads_given_up_before_the_kernel_took_them_answer_none_and_keep_their_buffers() {
        let (_dir, table, keys) = cold_table(100_000);
        runtime().block_on(async {
            let first = table.lookup_range(keys[5]).unwrap();
            assert!(read(&table, first).await.is_some());
            let mut reads: Vec<_> = keys
                .iter()
                .step_by(1000)
                .map(|&k| Box::pin(read(&table, table.lookup_range(k).unwrap())))
                .collect();
            // Polled once: queued, waiting, not submitted yet.
            for r in &mut reads {
                assert!(r.as_mut().now_or_never().is_none());
            }
            let ring = Ring::here().unwrap();
            let woken = {
                let mut inner = ring.inner.lock().unwrap();
                // The read before was submitted, and is no longer listed.
                assert_eq!(inner.unsubmitted.len(), reads.len());
                inner.give_up_unsubmitted()
            };
            assert_eq!(woken.len(), reads.len(), "every waiter is woken");
            for r in reads {
                assert_eq!(r.now_or_never(), Some(None), "a given-up read has no bytes");
            }
            let kept = {
                let inner = ring.inner.lock().unwrap();
                inner.slots.iter().filter(|s| !s.buf.is_empty()).count()
            };
            assert_eq!(kept, 100, "the given-up slots keep their buffers");
            // Their entries are still queued and point into the slots'
            // buffers: the slots are not free.
            assert_eq!(in_flight(), 100);
            // Here the ring still works: the next submission sends them
            // with the next read, and their slots are freed once they
            // complete.
            let range = table.lookup_range(keys[11]).unwrap();
            assert!(read(&table, range).await.is_some());
            assert_eq!(reaped().await, 0, "given-up reads are reaped once done");
        });
    }

    #[test]
    fn a_runtime_gone_with_reads_in_flight_leaves_the_next_one_a_working_ring() {
        let (_dir, table, keys) = cold_table(100_000);
        let ranges: Vec<_> = keys
            .iter()
            .step_by(500)
            .map(|&k| table.lookup_range(k).unwrap())
            .collect();
        let first = runtime();
        first.block_on(async {
            for r in &ranges {
                assert!(read(&table, r.clone()).now_or_never().is_none());
            }
            // The submitter runs: the reads go to the kernel.
            tokio::task::yield_now().await;
        });
        // Dropped with reads in flight, and its ring's tasks with it.
        drop(first);
        let next = runtime();
        let range = table.lookup_range(keys[3]).unwrap();
        let read = next.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(30), read(&table, range)).await
        });
        assert!(
            matches!(read, Ok(Some(_))),
            "a read in the next runtime completes"
        );
    }
}
