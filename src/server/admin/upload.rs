//! An upload's body, raw or the file part of a multipart form, read within
//! its limits and piped into a build.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::answers::{build_error, summary_json, too_large};
use super::{query_flag, Admin};
use crate::builder::pipeline;
use crate::error::Error;
use crate::server::http::json_error;

/// An upload that sends nothing for this long is abandoned: the build
/// stops and its files are removed.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The name an upload goes by in messages ("upload:12: invalid row ...").
const UPLOAD: &str = "upload";

impl Admin {
    /// `POST /upload[?force=true]`: the body (raw, or the file part of a
    /// multipart form) streamed into a build.
    pub(super) async fn upload(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let max = self.config.max_upload;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return too_large(max);
        }
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = if content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/")
        {
            match multer::parse_boundary(content_type) {
                Ok(b) => Some(b),
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("multipart: {e}")),
            }
        } else {
            None
        };
        let mut opts = self.config.build.clone();
        opts.force = query_flag(req.uri().query(), "force");

        let (tx, rx) = pipe();
        let admin = self.clone();
        let build = tokio::task::spawn_blocking(move || {
            let summary = pipeline::build_from(rx, UPLOAD, None, &opts)?;
            admin.go_live(&summary.generation)?;
            Ok::<_, Error>(summary)
        });
        let over = Arc::new(AtomicBool::new(false));
        let body = counted(req.into_body().into_data_stream(), max, over.clone());
        let fed = match boundary {
            None => feed(body, &tx).await,
            Some(boundary) => feed_multipart(body, boundary, &tx).await,
        };
        let refused = match fed {
            Ok(()) => {
                tx.send(Piece::End);
                None
            }
            Err(e) => {
                let why = if over.load(Ordering::Relaxed) {
                    format!("the upload is larger than --max-upload ({max} bytes)")
                } else {
                    e.to_string()
                };
                tx.send(Piece::Failed(why));
                Some(e)
            }
        };
        drop(tx);
        let built = build.await.expect("the build does not panic");
        if over.load(Ordering::Relaxed) {
            return too_large(max);
        }
        match (refused, built) {
            (Some(Fed::Interrupted(e)), _) => {
                tracing::warn!("upload: the client stopped sending ({e}); nothing was published");
                json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the upload was interrupted: {e}"),
                )
            }
            (Some(e), _) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
            (None, Ok(summary)) => {
                let mut body = summary_json(&summary);
                self.publish(&summary.generation.path, &mut body).await
            }
            (None, Err(e)) => build_error(e),
        }
    }
}

/// Why a body could not be fed to the build whole.
#[derive(Debug)]
enum Fed {
    /// The client disconnected, stalled, or passed `--max-upload`.
    Interrupted(String),
    /// A multipart body that is not well formed, or holds no file.
    Multipart(String),
}

impl std::fmt::Display for Fed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fed::Interrupted(e) => write!(f, "{e}"),
            Fed::Multipart(e) => write!(f, "malformed multipart body: {e}"),
        }
    }
}

/// What the body reader gets.
enum Piece {
    Data(Bytes),
    /// The body ended where it should.
    End,
    /// The body cannot be used: the build fails with this.
    Failed(String),
}

/// The body's bytes, failing once more than `max` have come (`over` says
/// so, as the error then reaches the caller through multer too).
fn counted(
    body: impl Stream<Item = std::result::Result<Bytes, hyper::Error>> + Send + Unpin + 'static,
    max: u64,
    over: Arc<AtomicBool>,
) -> impl Stream<Item = std::result::Result<Bytes, io::Error>> + Send + Unpin + 'static {
    let mut seen = 0u64;
    body.map(move |chunk| {
        let chunk = chunk.map_err(io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > max {
            over.store(true, Ordering::Relaxed);
            return Err(io::Error::other("larger than --max-upload"));
        }
        Ok(chunk)
    })
}

/// Sends every chunk of a raw body; stops early if the build has stopped
/// reading (it failed, and says why).
async fn feed(
    mut body: impl Stream<Item = std::result::Result<Bytes, io::Error>> + Unpin,
    tx: &PipeTx,
) -> std::result::Result<(), Fed> {
    loop {
        match tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, body.next()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(Fed::Interrupted(e.to_string())),
            Ok(Some(Ok(chunk))) => {
                if !tx.data(chunk).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Sends the file part of a multipart body: the first part with a file
/// name, or named `file` or `data` (the names the seeds' curl lines use).
/// Parts before it are skipped; a second file part refuses the upload.
async fn feed_multipart(
    body: impl Stream<Item = std::result::Result<Bytes, io::Error>> + Send + Unpin + 'static,
    boundary: String,
    tx: &PipeTx,
) -> std::result::Result<(), Fed> {
    let mut form = multer::Multipart::new(body, boundary);
    let multipart = |e: multer::Error| match e {
        multer::Error::StreamReadFailed(e) => Fed::Interrupted(e.to_string()),
        e => Fed::Multipart(e.to_string()),
    };
    let is_file = |f: &multer::Field<'_>| {
        f.file_name().is_some() || matches!(f.name(), Some("file" | "data"))
    };
    let mut found = false;
    loop {
        let next = tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, form.next_field()).await;
        let Some(mut field) = next.map_err(|_| stalled())?.map_err(multipart)? else {
            break;
        };
        if !is_file(&field) {
            continue;
        }
        if found {
            return Err(Fed::Multipart("more than one file part".into()));
        }
        found = true;
        loop {
            let chunk = tokio::time::timeout(UPLOAD_IDLE_TIMEOUT, field.chunk()).await;
            match chunk.map_err(|_| stalled())?.map_err(multipart)? {
                None => break,
                Some(chunk) => {
                    if !tx.data(chunk).await {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !found {
        return Err(Fed::Multipart(
            "no file part (send one, as curl -F file=@promotions.csv does)".into(),
        ));
    }
    Ok(())
}

fn stalled() -> Fed {
    Fed::Interrupted(format!(
        "nothing was sent for {} s",
        UPLOAD_IDLE_TIMEOUT.as_secs()
    ))
}

/// Bytes of an upload received but not yet read by the build: two of the
/// build's read batches, so that the connection's task receives the next
/// batch while the build parses this one, instead of one after the other
/// (a smaller buffer kept the build waiting: BENCHMARKS.md, "Measurements
/// behind the design").
const PIPE_BYTES: usize = 32 << 20;

/// A pipe from the connection's task into the build: chunks through a
/// channel, with at most [`PIPE_BYTES`] in it.
fn pipe() -> (PipeTx, BodyReader) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(tokio::sync::Semaphore::new(PIPE_BYTES));
    let reader = BodyReader {
        rx,
        room: room.clone(),
        chunk: Bytes::new(),
        ended: false,
    };
    (PipeTx { tx, room }, reader)
}

/// The connection's end of the pipe.
struct PipeTx {
    tx: mpsc::UnboundedSender<Piece>,
    room: Arc<tokio::sync::Semaphore>,
}

impl PipeTx {
    /// Sends a chunk once there is room for it; false if the build has
    /// stopped reading (it failed, and will say why).
    async fn data(&self, chunk: Bytes) -> bool {
        let n = chunk.len().min(PIPE_BYTES) as u32;
        match self.room.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.tx.send(Piece::Data(chunk)).is_ok()
    }

    fn send(&self, piece: Piece) {
        let _ = self.tx.send(piece);
    }
}

/// The build's end of the pipe: a blocking reader over the chunks the
/// connection's task sends. A channel that closes without [`Piece::End`]
/// (the connection's task was dropped) is an error, never an end of file:
/// a cut-off upload must not be built as if it were whole.
struct BodyReader {
    rx: mpsc::UnboundedReceiver<Piece>,
    room: Arc<tokio::sync::Semaphore>,
    chunk: Bytes,
    ended: bool,
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        // A sender waiting for room learns that none will come.
        self.room.close();
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(chunk)) => {
                    self.room.add_permits(chunk.len().min(PIPE_BYTES));
                    self.chunk = chunk;
                }
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(why)) => return Err(io::Error::other(why)),
                None => return Err(io::Error::other("the upload was interrupted")),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_pipe_ends_only_at_its_end_marker() {
        let rt = runtime();
        let (tx, mut rx) = pipe();
        rt.block_on(async {
            assert!(tx.data(Bytes::from_static(b"id,price\n")).await);
            assert!(tx.data(Bytes::from_static(b"x,1\n")).await);
        });
        tx.send(Piece::End);
        let mut all = String::new();
        rx.read_to_string(&mut all).unwrap();
        assert_eq!(all, "id,price\nx,1\n");

        // Cut off: the sender went away without the end marker.
        let (tx, mut rx) = pipe();
        rt.block_on(tx.data(Bytes::from_static(b"id,price\n")));
        drop(tx);
        let e = rx.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("interrupted"), "{e}");

        let (tx, mut rx) = pipe();
        tx.send(Piece::Failed("too large".into()));
        let e = rx.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "too large");
    }

    #[test]
    fn a_sender_waiting_for_room_stops_when_the_build_stops_reading() {
        let rt = runtime();
        let (tx, rx) = pipe();
        let full = Bytes::from(vec![b'x'; PIPE_BYTES]);
        assert!(rt.block_on(tx.data(full.clone())));
        // No room left: this send waits until the reader is dropped.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(rx);
        });
        assert!(!rt.block_on(tx.data(Bytes::from_static(b"more"))));
        reader.join().unwrap();
    }
}
