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
//!
//! This file holds the port itself: its configuration, the token, the
//! routing of its requests and its listener. `upload.rs` reads an upload's
//! body, raw or multipart, within its limits, and pipes it into a build;
//! `answers.rs` holds the JSON answers: a build's summary and its errors,
//! the generations listing, rollback, and publishing what went live.

mod answers;
mod upload;

pub use upload::UPLOAD_IDLE_TIMEOUT;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::builder::pipeline::BuildOptions;
use crate::error::{Error, Result};
use crate::generation::local;
use crate::generation::table::Table;
use crate::metrics as m;
use crate::server::http::{self, json_error, method_not_allowed, openapi};
use crate::server::live::Live;
use crate::server::openapi::Port;
use crate::server::tls::{self, Tls};

/// The most one read of an upload takes from the socket: with the serving
/// port's 16 KiB, an upload's build was much slower than `promo build`'s
/// (BENCHMARKS.md, "Measurements behind the design").
const UPLOAD_READ_BUFFER: usize = 1 << 20;

/// Most of a refused request's body read (and dropped) before the refusal
/// is sent, and the longest time spent on it. A client that sends its body
/// without waiting (curl with a file of some kilobytes) would otherwise
/// find its connection reset, and the refusal lost, when the server
/// closes it with the body unread. A larger body is cut off at this.
const DRAINED_WHEN_REFUSED: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads and drops `body`, up to [`DRAINED_WHEN_REFUSED`] bytes or
/// [`DRAIN_TIME`].
async fn drain(mut body: hyper::body::Incoming) {
    use http_body_util::BodyExt;
    let read = async {
        let mut left = DRAINED_WHEN_REFUSED;
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, Bytes::len);
            if len >= left {
                break;
            }
            left -= len;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

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
            drain(req.into_body()).await;
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
                (&Method::GET | &Method::HEAD, "/openapi.json") => {
                    ("openapi", openapi(Port::Admin))
                }
                (_, "/upload" | "/rollback") => ("admin", method_not_allowed("POST")),
                (_, "/generations" | "/openapi.json") => ("admin", method_not_allowed("GET, HEAD")),
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
    // HTTP/1.1 or HTTP/2 (h2c with prior knowledge, or h2 by ALPN), told
    // apart by the preface.
    let mut http = http::h2_builder(admin.header_timeout);
    http.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(admin.header_timeout)
        .max_buf_size(UPLOAD_READ_BUFFER.max(http::MAX_HEAD_LEN))
        .keep_alive(true);
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

async fn serve_connection<I>(
    io: I,
    admin: Admin,
    http: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) where
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
