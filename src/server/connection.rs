//! One client connection, and what it costs while it is idle.
//!
//! hyper gives each HTTP/1 connection two buffers for its whole life: 8 KiB
//! it reads requests into, allocated at the first read, and 8 KiB it writes
//! responses from, allocated when the connection is made. A kept-alive
//! connection that is waiting for its next request holds both, so a
//! balancer's pool or a burst of clients that linger costs a replica 16 KiB
//! a connection for nothing (BENCHMARKS.md, "Measurements behind the
//! design"). hyper has no setting for it.
//!
//! So a connection is handed to hyper only while it is busy. Once a
//! response has gone out, the request before it was read whole (the bytes
//! read so far end a request head), and nothing more has arrived for
//! [`QUIET_AFTER`] (up to twice that: see [`Quiet`]'s timer), [`Quiet`]
//! tells hyper the stream has ended: hyper
//! finishes the connection without shutting the socket
//! (`poll_without_shutdown`), its buffers are freed, and [`serve`] keeps
//! only the socket and waits for it to be readable, with no buffer at all.
//! When the client sends its next request, a new hyper connection reads
//! it. A client that keeps a connection busy never waits the extra turn;
//! a client that pipelines or sends a request in pieces is never cut off,
//! since the bytes read then do not end a head, or a response has not gone
//! out since. An idle connection is closed after the header timeout, as
//! hyper did, and at once when the server shuts down.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::{Body, Incoming};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// How long a connection waits for its next request inside hyper, with its
/// buffers, before it gives them up. A busy client (a balancer's pooled
/// connection under load) sends again well within it.
pub const QUIET_AFTER: Duration = Duration::from_secs(1);

/// A stream that can say when its peer has sent something, without reading.
pub trait Readable {
    /// Completes once the peer has sent data or closed (or on an error).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Readable for tokio::net::TcpStream {
    /// A peek of one byte: `TcpStream::readable` alone may complete with
    /// nothing to read (tokio documents such false positives; a new
    /// connection always gave one), which would make a hyper connection,
    /// and its buffers, for a client that has sent nothing.
    async fn readable(&self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        self.peek(&mut byte).await.map(|_| ())
    }
}

impl Readable for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    /// rustls holds no plaintext at this point: [`Quiet`] goes quiet only
    /// after a read found nothing to return, so the socket says when.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        Readable::readable(self.get_ref().0)
    }
}

/// Serves the requests of one connection until the client closes it, it
/// stays idle for `idle_timeout`, it fails, or `stop` turns true (then a
/// request in flight is finished first). `busy`: the stream may already
/// hold a request (TLS: the client's first request can arrive with the end
/// of the handshake, and rustls has read it), so hyper reads at once.
pub async fn serve<S, Svc>(
    stream: S,
    mut busy: bool,
    http: &hyper::server::conn::http1::Builder,
    service: Svc,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
    Svc: HttpService<Incoming> + Clone + Unpin,
    Svc::Future: Unpin,
    Svc::ResBody: Unpin + 'static,
    <Svc::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut quiet = Quiet::new(stream);
    loop {
        // Idle: the socket and nothing else until the client speaks.
        if !std::mem::take(&mut busy) && quiet.unread.is_empty() {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                r = tokio::time::timeout(idle_timeout, quiet.inner.readable()) => match r {
                    Ok(Ok(())) => {}
                    _ => break,
                },
            }
        }
        quiet.wake();
        // Boxed: while the connection is idle, its task holds no room for it.
        let mut conn = Box::new(http.serve_connection(TokioIo::new(quiet), service.clone()));
        let mut stopping = false;
        let ended = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
                _ = stop.wait_for(|s| *s), if !stopping => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    stopping = true;
                }
            }
        };
        let parts = conn.into_parts();
        quiet = parts.io.into_inner();
        match ended {
            Err(e) => {
                tracing::debug!("connection ended with an error: {e}");
                break;
            }
            // hyper stopped because the stream "ended" while idle: read on.
            // Whatever it had read and not parsed is read again first.
            Ok(()) if quiet.went_quiet && !stopping => {
                // A copy: `read_buf` shares hyper's whole 8 KiB buffer.
                quiet.unread = Bytes::copy_from_slice(&parts.read_buf);
            }
            // The client closed, asked to close, or the server is stopping.
            Ok(()) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), quiet.inner.shutdown()).await;
}

/// The stream as hyper sees it: the socket, which reports its end once the
/// connection has gone quiet between requests.
pub struct Quiet<S> {
    inner: S,
    /// Bytes hyper read but did not parse when it last let go: read first.
    unread: Bytes,
    /// The last four bytes read: "\r\n\r\n" when they end a request head.
    tail: [u8; 4],
    /// Bytes were written since the last read that returned any.
    wrote: bool,
    /// Those bytes were flushed: a response has gone out.
    answered: bool,
    /// When the quiet period ends: made at the first empty read after a
    /// response, kept while the connection is busy and dropped once it has
    /// gone quiet. A request does not move it: when it fires after requests
    /// came, it is set again from then, so a busy connection costs one
    /// timer update a second rather than one per request, and a quiet one
    /// is let go between one and two [`QUIET_AFTER`]s after its last byte.
    timer: Option<Pin<Box<Sleep>>>,
    /// Data came since the timer was last set.
    restart: bool,
    /// It reported the end of the stream because the connection went quiet.
    went_quiet: bool,
}

impl<S> Quiet<S> {
    fn new(inner: S) -> Quiet<S> {
        Quiet {
            inner,
            unread: Bytes::new(),
            tail: [0; 4],
            wrote: false,
            answered: false,
            timer: None,
            restart: true,
            went_quiet: false,
        }
    }

    /// Ready for a new hyper connection.
    fn wake(&mut self) {
        self.went_quiet = false;
        self.answered = false;
        self.wrote = false;
        self.restart = true;
    }

    fn between_requests(&self) -> bool {
        self.answered && self.unread.is_empty() && &self.tail == b"\r\n\r\n"
    }

    fn took(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len() >= 4 {
            self.tail.copy_from_slice(&data[data.len() - 4..]);
        } else {
            self.tail.rotate_left(data.len());
            self.tail[4 - data.len()..].copy_from_slice(data);
        }
        self.wrote = false;
        self.answered = false;
        self.restart = true;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Quiet<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.took(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.between_requests() => {
                let timer = match &mut this.timer {
                    Some(timer) => timer,
                    None => {
                        this.restart = false;
                        this.timer.insert(Box::pin(tokio::time::sleep(QUIET_AFTER)))
                    }
                };
                loop {
                    match timer.as_mut().poll(cx) {
                        // Requests came since it was set: not quiet yet.
                        Poll::Ready(()) if std::mem::take(&mut this.restart) => {
                            timer.as_mut().reset(Instant::now() + QUIET_AFTER);
                        }
                        Poll::Ready(()) => {
                            // Nothing for QUIET_AFTER: an end of stream to hyper.
                            this.went_quiet = true;
                            this.timer = None;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Quiet<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) && self.wrote {
            self.answered = true;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every HTTP/2 connection begins with (RFC 9113, section 3.4): a
/// client that speaks HTTP/2 without asking first (h2c with prior
/// knowledge) sends it before anything else.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client on `stream` begins with the HTTP/2 preface, read
/// without taking it (the connection's server reads it again); `None` if it
/// closes or sends nothing within `wait`. An HTTP/1 request differs from
/// the preface at its first or second byte, so it is told at once.
pub async fn sends_h2_preface(stream: &tokio::net::TcpStream, wait: Duration) -> Option<bool> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // Part of the preface so far: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Serves an HTTP/2 connection with `http` until the client closes it, it
/// fails, or `stop` turns true (then streams in flight are finished first:
/// GOAWAY, as HTTP/1's graceful shutdown).
pub async fn serve_h2<S, Svc>(
    stream: S,
    http: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    service: Svc,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<http_body_util::Full<Bytes>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    Svc::Future: Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("HTTP/2 connection ended with an error: {e}");
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}
