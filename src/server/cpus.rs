//! Which core each serving thread runs on, and which connections it gets.
//!
//! Each serving thread accepts on its own `SO_REUSEPORT` listener. Left to
//! themselves, the kernel hashes a new connection to any listener and
//! schedules the threads on any core, so a request's packets are handled
//! on one core (the sender's, on loopback; the network queue's, from a
//! NIC) and answered on another: a wake-up across cores for every
//! request, which on a virtual machine is an interrupt between virtual
//! CPUs. When the process owns its cores, serving thread `i` is pinned to
//! the `i`-th of them and its listener asks for the connections whose
//! packets that core handles (`SO_INCOMING_CPU`), so a connection's
//! packets and its requests stay on one core.
//!
//! Measured with `wrk -t2 -c64` on two cores, the serving path alone,
//! medians of 3 alternating rounds of 8 s, twice: 172k and 178k requests/s
//! against 127k and 130k unpinned; pinning without steering, 131k (the
//! connections still land on the other core's thread half the time).
//!
//! The process owns its cores when it may run on exactly as many CPUs as
//! it may use: a CPU set (a container's `cpuset`, `taskset`, systemd's
//! `CPUAffinity=`) or the whole machine. Under a CPU quota narrower than
//! the set (Kubernetes CPU limits without the static CPU manager), the
//! threads are not pinned: they would crowd the first cores of a machine
//! that other processes share, while the quota lets them run anywhere.

/// The CPUs the `threads` serving threads take, thread `i` the `i % n`-th
/// of the `n` the process may run on; `None` (nothing pinned) unless the
/// process may run on exactly as many CPUs as it may use.
pub fn serving_cpus(threads: usize) -> Option<Vec<usize>> {
    let usable = std::thread::available_parallelism().ok()?.get();
    let allowed = allowed_cpus()?;
    (allowed.len() == usable).then(|| {
        (0..threads.max(1))
            .map(|i| allowed[i % allowed.len()])
            .collect()
    })
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array, valid zeroed;
    // sched_getaffinity writes at most its size into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of the set, in bounds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// Pins the calling thread to `cpu`. Best effort: a thread that cannot be
/// pinned runs where the kernel puts it, as it would unpinned.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: the set is a plain bit array on this stack frame; CPU_SET
    // writes one bit in bounds (cpu came from sched_getaffinity), and
    // sched_setaffinity only reads the set.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !pinned {
        tracing::debug!("could not pin a serving thread to CPU {cpu}");
    }
}

/// Asks the kernel to hand `listener` the connections whose packets `cpu`
/// handles. Best effort, as pinning is: without it connections are hashed
/// over the listeners.
pub fn steer(listener: &std::net::TcpListener, cpu: usize) {
    use std::os::fd::AsRawFd;
    let cpu = cpu as libc::c_int;
    // SAFETY: setsockopt reads an int from a pointer to one that lives
    // across the call; the descriptor is open (the listener is borrowed).
    let steered = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            std::ptr::from_ref(&cpu).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !steered {
        tracing::debug!("could not steer a listener to CPU {cpu}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_take_the_allowed_cpus_in_turn() {
        let allowed = allowed_cpus().expect("sched_getaffinity answers");
        // Tests may run under a quota narrower than the CPU set; then
        // nothing is pinned, and that is the answer.
        let Some(cpus) = serving_cpus(2 * allowed.len() + 1) else {
            assert_ne!(
                std::thread::available_parallelism().unwrap().get(),
                allowed.len()
            );
            return;
        };
        assert_eq!(cpus.len(), 2 * allowed.len() + 1);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(*cpu, allowed[i % allowed.len()]);
        }
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_and_a_listener_takes_the_option() {
        let cpu = *allowed_cpus().unwrap().last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(cpu);
            // SAFETY: sched_getcpu takes no arguments.
            (allowed_cpus().unwrap(), unsafe { libc::sched_getcpu() })
        })
        .join()
        .unwrap();
        assert_eq!(seen, (vec![cpu], cpu as i32));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        steer(&listener, cpu);
        let mut got: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `got`.
        let r = unsafe {
            use std::os::fd::AsRawFd;
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_INCOMING_CPU,
                std::ptr::from_mut(&mut got).cast(),
                &mut len,
            )
        };
        assert_eq!((r, got), (0, cpu as libc::c_int));
    }
}
