//! A fault-injecting TCP proxy, on Toxiproxy's model: it listens on
//! 127.0.0.1, forwards every connection to one upstream address, and
//! applies the faults it is set to, changed at any time while connections
//! run:
//! - latency: each chunk is delivered that long after it arrived, each way;
//! - a rate: bytes a second each way, shared by every connection (the cap
//!   of one link);
//! - resets: each connection is reset (RST, as a dropped middlebox does)
//!   after a random number of bytes towards the client, on average
//!   `reset_after`;
//! - a blackhole: connections are accepted and what they send is read, but
//!   nothing is delivered either way until it is lifted.
//!
//! The kernel here has no netem qdisc, so the bad network is made in user
//! space: a thread per direction and connection, which is plenty for
//! tests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does to the traffic through it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to each chunk's delivery, each way.
    pub latency: Duration,
    /// Bytes a second each way, for all connections together.
    pub rate: Option<u64>,
    /// Reset each connection after a random number of bytes towards the
    /// client, uniform in `0..2 * n` (so `n` on average).
    pub reset_after: Option<u64>,
    /// Deliver nothing, either way, while set.
    pub blackhole: bool,
}

/// The proxy's shared state.
struct State {
    faults: Mutex<Faults>,
    /// When each direction's link is next free, for the rate: client to
    /// upstream, and upstream to client.
    links: [Mutex<Instant>; 2],
    resets: AtomicU64,
    connections: AtomicU64,
    /// Bytes delivered towards the client.
    delivered: AtomicU64,
    stop: AtomicBool,
}

/// A running proxy; it stops (and closes its connections' listener) when
/// dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (a free port) to `upstream`, with no faults.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            faults: Mutex::new(Faults::default()),
            links: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            resets: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let n = shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                std::thread::spawn(move || connection(client, upstream, state, n));
            }
        });
        Proxy { addr, state }
    }

    /// Applies `faults` from now on, to open connections too.
    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Bytes delivered towards clients so far.
    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One connection: two pumps, one a direction.
fn connection(client: TcpStream, upstream: SocketAddr, state: Arc<State>, n: u64) {
    let Ok(server) = TcpStream::connect(upstream) else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // A budget of bytes towards the client before a reset, drawn now.
    let mut seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    let mut draw = move |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max.max(1)
    };
    let budget = state
        .faults
        .lock()
        .unwrap()
        .reset_after
        .map(|mean| draw(2 * mean));
    let up = {
        let (from, to, state) = (
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            state.clone(),
        );
        std::thread::spawn(move || pump(from, to, state, 0, None))
    };
    pump(server, client, state, 1, budget);
    let _ = up.join();
}

/// Moves bytes from `from` to `to` through the faults: a reader that
/// timestamps each chunk, and this thread delivering them when due.
fn pump(from: TcpStream, to: TcpStream, state: Arc<State>, link: usize, budget: Option<u64>) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = {
        let (mut from, state) = (from.try_clone().unwrap(), state.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let latency = state.faults.lock().unwrap().latency;
                        if chunks
                            .send((Instant::now() + latency, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut to_write = to.try_clone().unwrap();
    let mut sent = 0u64;
    for (at, chunk) in due {
        // A blackhole holds everything, however long it lasts.
        while state.faults.lock().unwrap().blackhole && !state.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let rate = state.faults.lock().unwrap().rate;
        if let Some(rate) = rate {
            let wait = {
                let mut free = state.links[link].lock().unwrap();
                let now = Instant::now();
                let start = (*free).max(now);
                *free = start + Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                *free - now
            };
            std::thread::sleep(wait);
        }
        let cut = budget.map(|b| b.saturating_sub(sent) as usize);
        let part = &chunk[..cut.map_or(chunk.len(), |c| c.min(chunk.len()))];
        if to_write.write_all(part).is_err() {
            break;
        }
        sent += part.len() as u64;
        if link == 1 {
            state
                .delivered
                .fetch_add(part.len() as u64, Ordering::SeqCst);
        }
        if cut.is_some_and(|c| c < chunk.len()) {
            state.resets.fetch_add(1, Ordering::SeqCst);
            reset(&to);
            reset(&from);
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
    let _ = reader.join();
}

/// Closes `s` with a reset (RST), not a clean end of stream.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each connection with `len` bytes.
    fn upstream(len: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let _ = s.write_all(&vec![7u8; len]);
                });
            }
        });
        addr
    }

    fn read_all(addr: SocketAddr) -> std::io::Result<usize> {
        let mut s = TcpStream::connect(addr)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf.len())
    }

    #[test]
    fn the_proxy_forwards_and_resets_midway() {
        let proxy = Proxy::start(upstream(1 << 20));
        assert_eq!(read_all(proxy.addr).unwrap(), 1 << 20);
        proxy.set(Faults {
            reset_after: Some(64 << 10),
            ..Faults::default()
        });
        let got = read_all(proxy.addr);
        assert!(got.is_err() || got.unwrap() < 1 << 20);
        assert_eq!(proxy.resets(), 1);
    }
}
