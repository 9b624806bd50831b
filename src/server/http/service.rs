//! [`App`], the state every connection shares, and the hyper service that
//! answers each request of a connection with it.

use std::convert::Infallible;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use super::routes::{
    batch, id_in_url, route_from, BadBody, Lookup, Routed, BATCH, MAX_BATCH_BYTES, MAX_TARGET_LEN,
    PROMOTIONS,
};
use crate::generation::table::{Bucket, Table};
use crate::metrics as m;
use crate::server::live::Live;
use crate::server::tls::Tls;

/// What the server holds back from any one client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once, over all threads; further clients
    /// wait until one closes (each thread holds at most one of them
    /// accepted, the rest stay in the kernel's accept backlog).
    pub max_connections: usize,
    /// A client that has not sent a whole request head this long after the
    /// server started reading one (a new connection, or the next request on
    /// a kept-alive one) is disconnected: slow and idle clients cannot hold
    /// connections for ever.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 16_384,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What every connection needs: the store, the metrics handle, and the
/// limits, whose connection permits all serving threads share.
#[derive(Clone)]
pub struct App {
    pub live: Arc<Live>,
    pub metrics: Option<PrometheusHandle>,
    pub(super) counters: Arc<Counters>,
    pub(super) limits: Limits,
    pub(super) connections: Arc<Semaphore>,
    /// HTTPS: every connection shakes hands first.
    pub(super) tls: Option<Arc<Tls>>,
    /// Answers a serving thread gives between two offers of its core
    /// (see [`share_the_core`]); 0: never.
    pub(super) answers_per_yield: u32,
}

/// Metric handles registered once, so that a request does not look its
/// metrics up by name and labels.
pub(super) struct Counters {
    /// (route, status, counter) for the answers promo gives.
    requests: Vec<(&'static str, StatusCode, metrics::Counter)>,
    durations: Vec<(&'static str, metrics::Histogram)>,
    lookups: [metrics::Counter; 4],
    pub(super) open_connections: metrics::Gauge,
}

const ROUTES: [&str; 7] = [
    "promotions",
    "batch",
    "healthz",
    "readyz",
    "metrics",
    "openapi",
    "other",
];

impl Counters {
    fn new() -> Counters {
        let statuses = [
            StatusCode::OK,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::URI_TOO_LONG,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::MISDIRECTED_REQUEST,
        ];
        let mut requests = Vec::new();
        for route in ROUTES {
            for status in statuses {
                let counter = metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => status.as_str().to_owned());
                requests.push((route, status, counter));
            }
        }
        Counters {
            requests,
            durations: ROUTES
                .iter()
                .map(|&route| {
                    (
                        route,
                        metrics::histogram!(m::HTTP_DURATION, "route" => route),
                    )
                })
                .collect(),
            lookups: [
                Lookup::Hit,
                Lookup::Miss,
                Lookup::Invalid,
                Lookup::Misdirected,
            ]
            .map(|l| metrics::counter!(m::LOOKUPS, "result" => l.label())),
            open_connections: metrics::gauge!(m::HTTP_OPEN_CONNECTIONS),
        }
    }

    fn count(&self, routed: &Routed, seconds: f64) {
        let status = routed.response.status();
        match self
            .requests
            .iter()
            .find(|(r, s, _)| *r == routed.route && *s == status)
        {
            Some((_, _, c)) => c.increment(1),
            None => metrics::counter!(m::HTTP_REQUESTS, "route" => routed.route, "status" => status.as_str().to_owned())
                .increment(1),
        }
        if let Some((_, h)) = self.durations.iter().find(|(r, _)| *r == routed.route) {
            h.record(seconds);
        }
        if let Some(lookup) = routed.lookup {
            self.lookups[lookup as usize].increment(1);
        }
    }
}

impl App {
    /// The state shared by every connection. Registers the metric handles,
    /// so install the metrics recorder first.
    pub fn new(live: Arc<Live>, metrics: Option<PrometheusHandle>, limits: Limits) -> App {
        App {
            live,
            metrics,
            counters: Arc::new(Counters::new()),
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            tls: None,
            answers_per_yield: ANSWERS_PER_YIELD,
        }
    }

    /// Offers the core every `answers` answers instead (0: never).
    pub fn with_answers_per_yield(self, answers: u32) -> App {
        App {
            answers_per_yield: answers,
            ..self
        }
    }

    /// Serves HTTPS with `tls` instead of plain HTTP.
    pub fn with_tls(self, tls: Arc<Tls>) -> App {
        App {
            tls: Some(tls),
            ..self
        }
    }

    /// Answers a request against the generation live when it arrived.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let table = self.live.current();
        self.answer(req, table.as_deref(), None, started)
    }

    /// Answers a lookup whose bucket of records is not in memory: reads it
    /// from disk without blocking the thread, then looks the id up in it,
    /// in the generation that was live when the request arrived.
    async fn handle_from_disk<B>(
        &self,
        req: &Request<B>,
        table: Arc<Table>,
        range: Range<u64>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let bytes = crate::server::disk::read(&table, range.clone()).await;
        let bucket = bytes.map(|bytes| Bucket { range, bytes });
        self.answer(req, Some(&table), bucket.as_ref(), started)
    }

    fn answer<B>(
        &self,
        req: &Request<B>,
        table: Option<&Table>,
        bucket: Option<&Bucket>,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        let metrics = self.metrics.as_ref();
        let routed = route_from(
            req.method(),
            target(req),
            req.headers(),
            table,
            bucket,
            metrics,
        );
        self.counters
            .count(&routed, started.elapsed().as_secs_f64());
        routed.response
    }

    /// For a lookup in a generation larger than memory whose records are
    /// not in memory now: the generation and the bytes to read first.
    fn lookup_from_disk<B>(&self, req: &Request<B>) -> Option<(Arc<Table>, Range<u64>)> {
        if !matches!(*req.method(), Method::GET | Method::HEAD)
            || target(req).len() > MAX_TARGET_LEN
        {
            return None;
        }
        let id = req.uri().path().strip_prefix(PROMOTIONS)?;
        let current = self.live.current();
        let table = current.as_ref()?;
        if !table.larger_than_memory() {
            return None;
        }
        // Another shard's id is answered 421 without a lookup.
        let key = id_in_url(id).filter(|&key| table.header().shard.contains(key))?;
        let range = table.lookup_range(key)?;
        (!table.in_memory(range.clone())).then(|| (table.clone(), range))
    }

    /// Answers `POST /promotions/batch`: reads the body (at most
    /// [`MAX_BATCH_BYTES`], within the header timeout, so a client cannot
    /// hold a connection by sending it slowly), then looks every id up in
    /// the generation live at that moment.
    pub async fn handle_batch(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        use http_body_util::{BodyExt, Limited};
        let started = Instant::now();
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = if declared.is_some_and(|n| n > MAX_BATCH_BYTES as u64) {
            Err(BadBody::TooLarge)
        } else {
            let read = Limited::new(req.into_body(), MAX_BATCH_BYTES).collect();
            match tokio::time::timeout(self.limits.header_timeout, read).await {
                Ok(Ok(collected)) => Ok(collected.to_bytes()),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BadBody::TooLarge),
                Ok(Err(_)) | Err(_) => Err(BadBody::Incomplete),
            }
        };
        let table = self.live.current();
        let (routed, counts) = batch(body.as_deref().map_err(|&e| e), table.as_deref());
        self.counters
            .count(&routed, started.elapsed().as_secs_f64());
        for (counter, n) in self.counters.lookups.iter().zip(counts) {
            counter.increment(n);
        }
        routed.response
    }
}

/// The request's path and query.
fn target<B>(req: &Request<B>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// An answer that waits for something first (a batch's body, or a
/// lookup's records from disk).
type Answer = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// promo's routes as a hyper service, for each request of a connection.
pub(super) fn service(
    app: App,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Unpin + Send + 'static,
> + Clone
       + Unpin
       + Send
       + 'static {
    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        use futures_util::future::Either;
        share_the_core(app.answers_per_yield);
        if req.method() == Method::POST && req.uri().path() == BATCH {
            // Only a batch has a body to wait for.
            let app = app.clone();
            Either::Left(
                Box::pin(async move { Ok::<_, Infallible>(app.handle_batch(req).await) }) as Answer,
            )
        } else if let Some((table, range)) = app.lookup_from_disk(&req) {
            // The lookup's records are not in memory: they are read without
            // blocking this thread, then looked up.
            let app = app.clone();
            Either::Left(Box::pin(async move {
                Ok::<_, Infallible>(app.handle_from_disk(&req, table, range).await)
            }) as Answer)
        } else {
            Either::Right(std::future::ready(Ok(app.handle(&req))))
        }
    })
}

/// Requests a serving thread answers between two offers of its core, by
/// default (`promo serve --yield-every`).
pub const ANSWERS_PER_YIELD: u32 = 32;

/// Offers the core to whatever else waits for it (`sched_yield`), once
/// every `every` requests this thread answers (by default
/// [`ANSWERS_PER_YIELD`]; 0: never).
///
/// Why: under load a serving thread always has a connection ready, so it
/// never sleeps, and the kernel takes the core from it only at a timer
/// tick (every 4 ms with `HZ=250`, as Debian builds it). Whatever shares
/// the cores (a load balancer, the client, the kernel's own threads) then
/// waits a tick or two, and so do the answers it was about to read: the
/// p99 under load was several times the hyper floor's and nginx's. Every
/// 32 answers gave the most requests a second with the lowest p99 of the
/// cadences and fixed intervals tried (BENCHMARKS.md, "Measurements
/// behind the design"). With nothing else to run, a yield returns at
/// once: one system call every 32 answers.
fn share_the_core(every: u32) {
    thread_local! {
        static ANSWERED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    if every == 0 {
        return;
    }
    ANSWERED.with(|answered| {
        let n = answered.get() + 1;
        if n < every {
            answered.set(n);
        } else {
            answered.set(0);
            std::thread::yield_now();
        }
    });
}
