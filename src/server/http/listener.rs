//! The listeners and their connections: binding, accepting, serving each
//! connection with [`App`]'s service, and stopping gracefully.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;

use super::service::{service, App};
use crate::server::connection;
use crate::server::tls;

/// How long shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The most bytes of request line and headers read; more gets 431 from
/// hyper. This also bounds what a slow client can make a connection buffer.
pub const MAX_HEAD_LEN: usize = 16 * 1024;

/// Binds `n` listeners to `addr` with SO_REUSEPORT, so that `n` threads can
/// each accept and serve their own connections without handing work to
/// each other. With port 0, all take the port the first one got.
pub fn bind(addr: std::net::SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Serves `listener` until `shutdown` completes, then stops accepting,
/// lets requests in flight finish (up to `SHUTDOWN_GRACE`) and returns.
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    // Each connection holds a receiver: true asks it to finish, and the
    // sender's `closed` says when every connection has.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut http = connection_builder(app.limits.header_timeout, MAX_HEAD_LEN);
    // Responses are a few hundred bytes: one copy beats a writev.
    http.writev(false);
    let h2 = h2_builder(app.limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let Some(stream) = accept(&listener, &mut shutdown).await else {
            break;
        };
        // Accepted first, then a permit: a thread that waited for a permit
        // before accepting would hold it while its own listener is idle,
        // and connections queued at another thread's listener would wait
        // for ever under a cap as small as the threads. So each thread
        // holds at most one accepted connection beyond the cap, and stops
        // accepting until a permit frees; the rest wait in the backlog.
        let permit = tokio::select! {
            p = app.connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, http, h2, stopping) = (app.clone(), http.clone(), h2.clone(), stopping.clone());
        tokio::spawn(async move {
            let open = app.counters.open_connections.clone();
            open.increment(1);
            let timeout = app.limits.header_timeout;
            match app.tls.clone() {
                // HTTP/2 with prior knowledge (h2c), or HTTP/1.
                None => match connection::sends_h2_preface(&stream, timeout).await {
                    Some(true) => connection::serve_h2(stream, &h2, service(app), stopping).await,
                    Some(false) => {
                        connection::serve(stream, true, &http, service(app), timeout, stopping)
                            .await
                    }
                    None => {}
                },
                // The handshake counts against the connection cap and the
                // header timeout, as a request head does: a client that
                // stalls or sends plain HTTP holds one permit, briefly.
                // Boxed, so that a plain connection's task holds no room
                // for a handshake it never makes (4.8 KB of 5.4).
                Some(tls) => {
                    Box::pin(async move {
                        let Some(stream) = tls::accept(&tls, stream, timeout).await else {
                            return;
                        };
                        // HTTP/2 when the client chose it (ALPN).
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            connection::serve_h2(stream, &h2, service(app), stopping).await
                        } else {
                            connection::serve(stream, true, &http, service(app), timeout, stopping)
                                .await
                        }
                    })
                    .await
                }
            }
            open.decrement(1);
            drop(permit);
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("gave up waiting for open connections"),
    }
}

/// HTTP/1.1 with promo's limits: the header timeout, and at most
/// [`MAX_HEAD_LEN`] of request head. `read_buffer` is the most one read
/// takes from the socket: a lookup needs no more than a head, an upload
/// wants large reads (each read becomes a body chunk handed to the build).
pub fn connection_builder(
    header_timeout: Duration,
    read_buffer: usize,
) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(read_buffer.max(MAX_HEAD_LEN))
        .max_header_size(MAX_HEAD_LEN)
        .keep_alive(true);
    http
}

/// Most streams one HTTP/2 connection has open at once: a client wanting
/// more opens another connection (and takes another permit).
pub const H2_MAX_STREAMS: u32 = 128;
/// Each stream's and the connection's receive windows: a batch's body is
/// at most 64 KiB, an upload streams through the connection's window.
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Resets a client may cause before the connection is closed: rapid reset
/// (CVE-2023-44487) opens and cancels streams faster than they end.
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 256;

/// HTTP/2 with promo's limits: [`H2_MAX_STREAMS`] streams, a header list of
/// at most [`MAX_HEAD_LEN`], bounded windows and send buffers, the resets
/// above, and a ping after `header_timeout` of silence that must be
/// answered within it. (hyper-util's auto builder: on the admin port it
/// also serves HTTP/1.1, told apart by the preface.)
pub fn h2_builder(
    header_timeout: Duration,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_LEN as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(64 * 1024)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .keep_alive_interval(header_timeout)
        .keep_alive_timeout(header_timeout);
    b
}

/// The next connection, or `None` once `shutdown` completes. A failed
/// accept (out of file descriptors, say) backs off and tries again: a
/// listener never dies.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!("accept failed on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}
