//! One server a port: the claim that keeps a second `promo serve` off it.
//!
//! A server's threads share its port through SO_REUSEPORT, and the kernel
//! lets any other socket of the same user join that group: a second
//! `promo serve` on the same port starts without an error, and the kernel
//! splits the connections between the two (a stale server left running
//! answers old data, and nobody notices). So a server first claims its
//! port: it binds a Unix socket in the abstract namespace named for the
//! port. The kernel allows one socket a name, drops it when the process
//! ends however it ends (no file to clean up after a crash), and keeps one
//! namespace a network namespace, the same scope as the port itself.
//!
//! The claim is on the port, whatever the address: `0.0.0.0:1321` and
//! `127.0.0.1:1321` overlap, and the kernel lets both join one group.
//!
//! A restart without refused connections needs the two servers to overlap
//! for a moment: [`Claim::take`] with `handover` lets a server start while
//! another holds the claim, serving beside it, and takes the claim as soon
//! as the other stops.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// How often a hand-over server tries to take the claim of the server it
/// shares the port with.
const HANDOVER_POLL: Duration = Duration::from_millis(200);

/// A port claimed by this process, released when dropped.
#[derive(Debug)]
pub struct Claim {
    /// The claiming socket, once this process holds it (a hand-over server
    /// gets it when the other server stops).
    socket: Arc<Mutex<Option<UnixDatagram>>>,
}

/// The abstract name that claims `port`.
fn name(port: u16) -> String {
    format!("promo-serve-port-{port}")
}

/// Binds the claiming socket of `port`; `Ok(None)` when another process
/// holds it.
fn bind(port: u16) -> Result<Option<UnixDatagram>> {
    let addr =
        SocketAddr::from_abstract_name(name(port)).map_err(Error::io("claiming the port"))?;
    match UnixDatagram::bind_addr(&addr) {
        Ok(socket) => Ok(Some(socket)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(Error::io_op("claiming the port", format!("port {port}"))(e)),
    }
}

impl Claim {
    /// Claims `port` for this server. Fails with [`Error::PortTaken`] when
    /// another `promo serve` listens on it, unless `handover`: then the
    /// server shares the port until the other stops, and a thread takes
    /// the claim as soon as it can.
    pub fn take(port: u16, handover: bool) -> Result<Claim> {
        let socket = bind(port)?;
        let held = socket.is_some();
        let claim = Claim {
            socket: Arc::new(Mutex::new(socket)),
        };
        match (held, handover) {
            (true, _) => Ok(claim),
            (false, false) => Err(Error::PortTaken { port }),
            (false, true) => {
                tracing::info!(
                    "another promo server listens on port {port}: sharing it until that one \
                     stops (--handover)"
                );
                let weak = Arc::downgrade(&claim.socket);
                std::thread::Builder::new()
                    .name("promo-handover".into())
                    .spawn(move || loop {
                        std::thread::sleep(HANDOVER_POLL);
                        let Some(slot) = weak.upgrade() else { return };
                        match bind(port) {
                            Ok(Some(socket)) => {
                                *slot.lock().expect("the claim is never poisoned") = Some(socket);
                                tracing::info!("the other server on port {port} stopped: the port is this server's alone");
                                return;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!("{e}: not claiming the port");
                                return;
                            }
                        }
                    })
                    .map_err(Error::io("starting the hand-over thread"))?;
                Ok(claim)
            }
        }
    }

    /// Whether this process holds the claim (a hand-over server does not
    /// until the other server stops).
    pub fn held(&self) -> bool {
        self.socket
            .lock()
            .expect("the claim is never poisoned")
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port number nothing else in the tests claims.
    const PORT: u16 = 1;

    #[test]
    fn a_port_is_claimed_once_and_released_on_drop() {
        let first = Claim::take(PORT, false).unwrap();
        assert!(first.held());
        let err = Claim::take(PORT, false).unwrap_err();
        assert!(err.to_string().contains("another promo server"), "{err}");
        let second = Claim::take(PORT, true).unwrap();
        assert!(!second.held(), "the first still holds it");
        drop(first);
        let mut waited = 0;
        while !second.held() {
            assert!(waited < 500, "the hand-over never took the claim");
            std::thread::sleep(Duration::from_millis(20));
            waited += 1;
        }
        assert!(Claim::take(PORT, false).is_err());
    }
}
