//! Safe wrappers over the system calls promo makes through `libc`, each
//! with its safety argument, so that the rest of the code has no `unsafe`
//! for them. What a mapping or the `io_uring` ring does with memory
//! (`madvise`, `mincore`, `eventfd`) stays beside the mapping and the ring,
//! where its safety argument can see what it relies on.
//!
//! Hints (read-ahead, write-back, freeing a run's pages) return nothing:
//! when the kernel refuses one, only speed changes, and it is logged at
//! debug.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How a file is about to be read, for the kernel's read-ahead and cache.
#[derive(Clone, Copy, Debug)]
pub enum Advice {
    /// Front to back: read ahead more.
    Sequential,
    /// Anywhere: read ahead nothing.
    Random,
    /// These bytes soon: start reading them now.
    WillNeed,
    /// Not again: drop them from the page cache.
    DontNeed,
}

/// Advises the kernel how `len` bytes of `file` from `offset` (0: to the
/// end) will be read.
pub fn fadvise(file: &impl AsRawFd, offset: u64, len: u64, advice: Advice) {
    let advice = match advice {
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
        Advice::Random => libc::POSIX_FADV_RANDOM,
        Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
    };
    // SAFETY: posix_fadvise takes no pointers and only reads its arguments;
    // the descriptor is open for as long as `file` is borrowed. It is
    // advice: failure changes nothing but the page cache.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        )
    };
    if rc != 0 {
        tracing::debug!("posix_fadvise: {}", io::Error::from_raw_os_error(rc));
    }
}

/// Frees the disk blocks of `len` bytes of `file` from `offset`, keeping its
/// length: the start of a sorted run the merge has read.
pub fn punch_hole(file: &File, offset: u64, len: u64) {
    // SAFETY: fallocate takes no pointers and only reads its arguments; the
    // descriptor is open for as long as `file` is borrowed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        tracing::debug!("punching a hole: {}", io::Error::last_os_error());
    }
}

/// Reserves `len` bytes of disk for `file`, so that a full disk fails now
/// and not halfway through writing it. Where the filesystem cannot
/// reserve, the file is made `len` bytes long (sparse) instead.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate takes no pointers; the descriptor is open for
    // writing for as long as `file` is borrowed.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) } {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Bytes an unprivileged process may still write on the filesystem of
/// `dir`.
pub fn free_disk(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs writes only the struct passed, which lives on this
    // stack frame, and reads the NUL-terminated path, which outlives it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset`,
/// without waiting. Only a hint: an fsync is what makes a file durable.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range takes no pointers and only reads its
    // arguments; the descriptor is open for as long as `file` is borrowed.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// The open file's status flags (`O_DIRECT` and the like), or `None`.
pub fn file_flags(file: &File) -> Option<i32> {
    // SAFETY: F_GETFL only reads the open file's flags; the descriptor is
    // open while `file` is borrowed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    (flags >= 0).then_some(flags)
}

/// Turns `O_DIRECT` on or off for `file`; false if the kernel refused.
pub fn set_direct(file: &File, on: bool) -> bool {
    let Some(flags) = file_flags(file) else {
        return false;
    };
    let flags = match on {
        true => flags | libc::O_DIRECT,
        false => flags & !libc::O_DIRECT,
    };
    // SAFETY: F_SETFL sets the open file's status flags only; the
    // descriptor is open while `file` is borrowed.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) == 0 }
}

/// Grows the pipe `input` reads from to `bytes`, so that a feed piped in
/// moves in fewer, larger reads. Anything but a pipe is left alone.
pub fn widen_pipe(input: &impl AsRawFd, bytes: i32) {
    // SAFETY: F_SETPIPE_SZ takes no pointers and only reads its arguments;
    // on anything but a pipe it fails with EBADF and changes nothing.
    let rc = unsafe { libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    if rc < 0 {
        tracing::debug!("F_SETPIPE_SZ: {}", io::Error::last_os_error());
    }
}

/// Lifts the soft limit of open files to the hard one, where it is lower,
/// and returns the limit in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed,
    // which lives on this stack frame for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let soft = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // Not asked where there is nothing to lift (systemd's LimitNOFILE
        // sets both): a unit's system call filter may refuse setrlimit.
        if soft >= lim.rlim_max {
            soft
        } else if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            lim.rlim_max
        } else {
            soft
        }
    }
}

/// Sets the calling thread's nice value (Linux schedules threads on their
/// own): background work at a higher one yields the cores to serving.
pub fn set_thread_nice(nice: i32) {
    // SAFETY: setpriority takes plain integers; `who` 0 is the caller.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!("setpriority: {}", io::Error::last_os_error());
    }
}

/// The process's major page faults so far (reads from disk on a page
/// fault), or `None`.
pub fn major_faults() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer, which points to
    // room for one; on failure nothing is read.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let faults = unsafe { usage.assume_init() }.ru_majflt;
    Some(faults.max(0) as u64)
}

/// Ignores SIGXFSZ, so that a write past the file size limit fails with
/// EFBIG (an error with a path) instead of killing the process.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler
    // and touches no memory of ours; it is sound at any time, from any
    // thread.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// The size of a memory page.
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf takes no pointers and only reads its argument.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}
