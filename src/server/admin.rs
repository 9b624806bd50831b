//! The admin port: feeds uploaded over HTTP, the generations, rollback.
//!
//! The systems promo replaces take their feed as an HTTP upload, so a
//! partner (or a script) can push a CSV instead of dropping it where cron
//! finds it. An upload is the same build as `promo build -`: the body is
//! streamed into it (never held whole in memory or on disk), with the same
//! validation and guards and the same data-directory lock, and the new
//! generation is live on this server before the answer is sent.
//!
//! The port is separate from the serving port so that it can be bound to
//! loopback or a private network, and every request needs the bearer token
//! when one is set; `serve` refuses to listen beyond loopback without one.
//! It runs on the background thread (nice 10), and the build on its blocking
//! pool, so lookups keep the cores first.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::builder::pipeline::{self, BuildOptions, BuildSummary};
use crate::error::{Error, InvalidRow, Result};
use crate::generation::local;
use crate::generation::table::Table;
use crate::metrics as m;
use crate::server::http::{self, json, json_error, method_not_allowed};
use crate::server::live::Live;
use crate::server::tls::{self, Tls};
use crate::store::publish;

/// An upload that sends nothing for this long is abandoned: the build
/// stops and its files are removed.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most one read of an upload takes from the socket. With the serving
/// port's 16 KiB, a 774 MB upload was 50,000 reads and as many chunks
/// through the channel, and its build took 1.4x `promo build`'s time.
const UPLOAD_READ_BUFFER: usize = 1 << 20;
/// The name an upload goes by in messages ("upload:12: invalid row ...").
const UPLOAD: &str = "upload";

/// What the admin port is told.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token every request must carry; `None` only on loopback.
    pub token: Option<String>,
    /// How uploads are built (the data directory is the served one).
    pub build: BuildOptions,
    /// Most bytes an upload's body may hold.
    pub max_upload: u64,
    /// Publish each uploaded or rolled-back generation to this store.
    pub publish: Option<String>,
}

impl AdminConfig {
    /// Refuses a port reachable beyond this machine without a token.
    pub fn check(&self) -> Result<()> {
        if self.token.is_none() && !self.listen.ip().is_loopback() {
            return Err(Error::Usage(format!(
                "--admin-listen {}: an admin port beyond loopback needs --admin-token-file",
                self.listen
            )));
        }
        Ok(())
    }
}

/// Reads a token file: its content, trimmed, which must not be empty.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Usage(format!(
            "{}: the admin token file is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// The admin port's state, shared by its connections.
#[derive(Clone)]
pub struct Admin {
    config: Arc<AdminConfig>,
    live: Arc<Live>,
    header_timeout: Duration,
    /// HTTPS with the serving port's certificate: the token must not
    /// cross a network in clear where lookups do not.
    tls: Option<Arc<Tls>>,
}

impl Admin {
    pub fn new(
        config: AdminConfig,
        live: Arc<Live>,
        header_timeout: Duration,
        tls: Option<Arc<Tls>>,
    ) -> Admin {
        Admin {
            config: Arc::new(config),
            live,
            header_timeout,
            tls,
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.config.token else {
            return true;
        };
        let Some(given) = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        given.as_bytes().ct_eq(token.as_bytes()).into()
    }

    /// Answers one admin request, and logs it: admin actions are rare and
    /// each one changes what is served.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let (route, response) = if !self.authorized(req.headers()) {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            ("admin", r)
        } else {
            match (&method, path.as_str()) {
                (&Method::POST, "/upload") => ("upload", self.upload(req).await),
                (&Method::GET | &Method::HEAD, "/generations") => {
                    ("generations", self.generations())
                }
                (&Method::POST, "/rollback") => {
                    let to = query_value(req.uri().query(), "to");
                    ("rollback", self.rollback(to).await)
                }
                (_, "/upload" | "/rollback") => ("admin", method_not_allowed("POST")),
                (_, "/generations") => ("admin", method_not_allowed("GET, HEAD")),
                _ => (
                    "admin",
                    json_error(StatusCode::NOT_FOUND, "no such admin route"),
                ),
            }
        };
        let status = response.status();
        metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => status.as_str().to_owned())
            .increment(1);
        tracing::info!(
            "admin: {method} {path}: {} in {:.2} s",
            status.as_u16(),
            started.elapsed().as_secs_f64()
        );
        response
    }

    /// `GET /generations`: the data directory's generations, newest last,
    /// from their headers; the live one was verified when it went live.
    fn generations(&self) -> Response<Full<Bytes>> {
        let entries = match local::list(&self.config.build.data_dir) {
            Ok(entries) => entries,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let live = self.live.current().as_ref().map(|t| t.sequence());
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                let is_live = Some(e.sequence) == live;
                local::describe(e, if is_live { "ok" } else { "not checked" }, is_live)
            })
            .collect();
        json(StatusCode::OK, &rows)
    }

    /// `POST /rollback[?to=N]`: `promo rollback [--to N]` on the data
    /// directory, then the generation that went live (published too, with
    /// `--publish`: the store rolls back to the same generation).
    async fn rollback(&self, to: Option<&str>) -> Response<Full<Bytes>> {
        let to = match to.map(str::parse::<u64>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "?to= takes a generation's sequence (see GET /generations)",
                )
            }
        };
        let admin = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let (restored, entry) = pipeline::rollback(&admin.config.build.data_dir, to)?;
            admin.go_live(&entry)?;
            Ok::<_, Error>((restored, entry))
        })
        .await
        .expect("the rollback does not panic");
        match result {
            Ok((restored, entry)) => {
                let mut body = serde_json::json!({
                    "generation": entry.sequence,
                    "restored": restored,
                });
                self.publish(&entry.path, &mut body).await
            }
            Err(e) => build_error(e),
        }
    }

    /// Makes `entry`, which the build or the rollback has just written or
    /// verified, live on this server now rather than at the watcher's next
    /// look. The build checksummed the file as it wrote it and the rollback
    /// verified the generation it republishes, as the fetcher verifies a
    /// download before renaming it: reading the whole file again (0.2 s
    /// for 10^7 records) would find nothing. Fails unless it (or a newer
    /// generation) is live.
    fn go_live(&self, entry: &local::Entry) -> Result<()> {
        self.live.install(Table::open(&entry.path, entry.sequence)?);
        match self.live.current().as_ref().map(|t| t.sequence()) {
            Some(live) if live >= entry.sequence => Ok(()),
            _ => Err(Error::Usage(format!(
                "generation {} was published but did not go live (see the log)",
                entry.sequence
            ))),
        }
    }

    /// With `--publish`, publishes `path` to the store and adds what was
    /// published to `body`; answers 200 with `body`, or 502 if the store
    /// failed (the generation stays live here).
    async fn publish(&self, path: &Path, body: &mut serde_json::Value) -> Response<Full<Bytes>> {
        let Some(url) = self.config.publish.clone() else {
            return json(StatusCode::OK, body);
        };
        let (path, keep) = (path.to_path_buf(), self.config.build.keep);
        let published = tokio::task::spawn_blocking(move || publish::publish(&url, &path, keep))
            .await
            .expect("publishing does not panic");
        match published {
            Ok(p) => {
                body["published"] = serde_json::json!({
                    "sequence": p.sequence,
                    "object": p.object,
                    "bytes": p.bytes,
                    "seconds": p.seconds,
                });
                json(StatusCode::OK, body)
            }
            Err(e) => {
                body["error"] =
                    format!("{e}; the generation is live on this server but was not published")
                        .into();
                json(StatusCode::BAD_GATEWAY, body)
            }
        }
    }

    /// `POST /upload[?force=true]`: the body (raw, or the file part of a
    /// multipart form) streamed into a build.
    async fn upload(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
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
/// batch while the build parses this one, instead of one after the other.
/// (With 16 chunks of buffer, an upload's build took 1.3x `promo build`'s
/// time and kept 1.2 of the 2 cores busy.)
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

fn summary_json(s: &BuildSummary) -> serde_json::Value {
    serde_json::json!({
        "rows": s.rows,
        "valid": s.valid,
        "invalid": s.invalid,
        "duplicates": s.duplicates,
        "records": s.records,
        "generation": s.generation.sequence,
        "seconds": s.seconds,
        "first_invalid": invalid_json(&s.first_invalid),
        "churn": s.churn.as_ref().map(|c| c.to_json()),
    })
}

fn invalid_json(rows: &[InvalidRow]) -> serde_json::Value {
    rows.iter()
        .map(|r| serde_json::json!({ "line": r.line, "reason": r.reason }))
        .collect()
}

/// The answer to a build or rollback that failed: 409 while the data
/// directory is busy or there is nothing to roll back to, 422 for a feed
/// the guards refused (with its first invalid rows) or a corrupt compressed
/// one, 500 otherwise.
fn build_error(e: Error) -> Response<Full<Bytes>> {
    let (status, first_invalid) = match &e {
        Error::Locked { .. } | Error::NothingToRollBack { .. } => (StatusCode::CONFLICT, None),
        Error::TooManyInvalid { first_invalid, .. } | Error::NoValidRows { first_invalid, .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, Some(first_invalid))
        }
        Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::InvalidData => {
            (StatusCode::UNPROCESSABLE_ENTITY, None)
        }
        Error::Shrink { .. } | Error::Refused { .. } | Error::RolledBack { .. } => {
            let guard = match &e {
                Error::Refused { guard, .. } => {
                    guard.trim_start_matches("--max-").replace('-', "_")
                }
                Error::RolledBack { .. } => "rolled_back".to_string(),
                _ => "shrink".to_string(),
            };
            metrics::counter!(crate::metrics::UPLOADS_REFUSED, "guard" => guard).increment(1);
            (StatusCode::UNPROCESSABLE_ENTITY, None)
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("admin: {e}");
    }
    let mut message = e.to_string();
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        message = for_upload(message, first_invalid.is_some_and(|r| !r.is_empty()));
    }
    let mut body = serde_json::json!({ "error": message });
    if let Some(rows) = first_invalid {
        body["first_invalid"] = invalid_json(rows);
    }
    json(status, &body)
}

/// A refused feed's message, worded for an upload's client. The library
/// words it for a terminal: `promo build` prints the invalid lines above
/// it, and forces with `--force`. An upload's answer lists them in its
/// `first_invalid` field (`listed`: it lists some), and forces with
/// `?force=true`.
fn for_upload(message: String, listed: bool) -> String {
    let message = message
        .replace(
            "see the lines reported above",
            "see first_invalid in this answer",
        )
        .replace(
            "pass --force to publish it anyway",
            "upload it again with ?force=true to publish it anyway",
        );
    if listed && !message.contains("first_invalid") {
        format!("{message} (the first invalid lines are in first_invalid)")
    } else {
        message
    }
}

fn too_large(max: u64) -> Response<Full<Bytes>> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the upload is larger than --max-upload ({max} bytes); nothing was published"),
    )
}

/// True if the query sets `name` to `true` or `1`.
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query_value(query, name).is_some_and(|v| matches!(v, "true" | "1"))
}

/// The value of `name` in a query string, if it is there.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Serves the admin port until `shutdown` completes. Uploads in flight
/// when it does are abandoned: their builds fail and remove their files.
pub async fn run(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let http = http::connection_builder(admin.header_timeout, UPLOAD_READ_BUFFER);
    tokio::pin!(shutdown);
    while let Some(stream) = http::accept(&listener, &mut shutdown).await {
        let (admin, http) = (admin.clone(), http.clone());
        tokio::spawn(async move {
            match admin.tls.clone() {
                None => serve_connection(TokioIo::new(stream), admin, &http).await,
                Some(tls) => {
                    if let Some(stream) = tls::accept(&tls, stream, admin.header_timeout).await {
                        serve_connection(TokioIo::new(stream), admin, &http).await
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, admin: Admin, http: &hyper::server::conn::http1::Builder)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
    });
    if let Err(e) = http.serve_connection(io, service).await {
        tracing::debug!("admin: connection ended with an error: {e}");
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

    #[test]
    fn tokens_and_flags() {
        let config = AdminConfig {
            listen: "0.0.0.0:1322".parse().unwrap(),
            token: None,
            build: BuildOptions::new("unused"),
            max_upload: 100 << 30,
            publish: None,
        };
        assert!(config.check().is_err(), "an open port without a token");
        let admin = Admin::new(
            AdminConfig {
                token: Some("s3cret".into()),
                ..config
            },
            Arc::new(Live::new("unused")),
            Duration::from_secs(1),
            None,
        );
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(hyper::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(admin.authorized(&headers("Bearer s3cret")));
        assert!(admin.authorized(&headers("bearer  s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer",
        ] {
            assert!(!admin.authorized(&headers(wrong)), "{wrong}");
        }
        assert!(!admin.authorized(&HeaderMap::new()));
        assert!(query_flag(Some("force=true"), "force"));
        assert!(query_flag(Some("a=b&force=1"), "force"));
        assert!(!query_flag(Some("force=false"), "force"));
        assert!(!query_flag(Some("forced=true"), "force"));
        assert!(!query_flag(None, "force"));
    }
}
