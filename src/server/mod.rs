//! The serve side: generations mapped, swapped and answered over HTTP.
//!
//! - [`live`]: the generation that is live (a mapped
//!   [`Table`](crate::generation::table::Table)), its atomic swap, and the
//!   directory watcher.
//! - [`http`]: the API: routes and answers, the service, the listener.
//! - [`connection`]: one client connection, its limits and timeouts.
//! - [`tls`]: HTTPS, and the certificate reloaded when it changes.
//! - [`admin`]: the admin port: uploads built into generations, rollbacks.
//! - [`poll`]: `--source`: polling a store for newer generations.
//! - [`disk`]: a lookup's records read from disk without blocking its
//!   thread, when the generation is larger than memory.
//! - [`memory`]: how memory comes back after bursts of connections (the
//!   allocator's settings).
//! - [`claim`]: one server a port.
//!
//! [`run`] and [`Server`] assemble them into the serving process.

pub mod admin;
pub mod claim;
pub mod connection;
pub mod disk;
pub mod http;
pub mod live;
pub mod memory;
pub mod openapi;
pub mod poll;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use live::Live;

/// Serving threads a core when the generation does not fit in memory and
/// `io_uring` cannot be used (see [`disk`], which reads a lookup's records
/// without blocking its thread where it can). A lookup whose page is not in
/// memory then blocks its thread until the disk answers, and the other
/// connections of that thread wait with it: with one thread a core, a
/// generation larger than memory is served a couple of disk reads at a
/// time. More threads serve such a generation faster than handing disk
/// lookups to a blocking pool (each handoff costs wake-ups), but serve a
/// generation in memory slower (BENCHMARKS.md, "Measurements behind the
/// design"), so `serve` starts one thread a core unless
/// the newest generation at start is larger than the memory it may use and
/// `io_uring` is unavailable (`--threads` sets the count).
pub const THREADS_PER_CORE: usize = 8;

/// What `promo serve` is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory whose newest valid generation is served.
    pub data_dir: PathBuf,
    /// Where to listen; port 0 takes a free one (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    pub limits: http::Limits,
    /// Serving threads, each with its own listener; 0 means one per core,
    /// or [`THREADS_PER_CORE`] per core when the generation at start does
    /// not fit in memory and `io_uring` is unavailable.
    pub threads: usize,
    /// An object store to poll for new generations, if any.
    pub source: Option<poll::Polling>,
    /// HTTPS on `listen` with this certificate pair, if any.
    pub tls: Option<tls::TlsFiles>,
    /// The admin port (uploads, rollback), if any.
    pub admin: Option<admin::AdminConfig>,
    /// Serve only generations of this shard (`--shard`); any shard the
    /// file says when `None`.
    pub shard: Option<crate::generation::shard::Shard>,
    /// Start even though another promo server listens on the port, and
    /// share it until that one stops (see [`claim`]).
    pub handover: bool,
    /// Answers a serving thread gives between two offers of its core to
    /// other threads (0: never); see [`http::ANSWERS_PER_YIELD`].
    pub answers_per_yield: u32,
}

impl Config {
    /// `promo serve`'s defaults for `data_dir`, listening on `listen`.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            limits: http::Limits::default(),
            threads: 0,
            source: None,
            tls: None,
            admin: None,
            shard: None,
            handover: false,
            answers_per_yield: http::ANSWERS_PER_YIELD,
        }
    }
}

/// A running server: its serving threads, the watcher, the fetcher and the
/// metrics upkeep. [`Server::stop`] (or dropping it) stops them all.
///
/// One single-threaded runtime per core (more when the generation does not
/// fit in memory and `io_uring` is unavailable: see [`THREADS_PER_CORE`]),
/// each accepting on its own SO_REUSEPORT listener: a connection lives on
/// one thread, and no request is handed between threads. Everything else shares one more thread, so a
/// slow store or a long verification never takes a serving thread.
pub struct Server {
    addr: SocketAddr,
    live: Arc<Live>,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    /// The port, this server's alone while it runs.
    _claim: claim::Claim,
}

impl Server {
    /// Loads the newest valid generation (a server with none answers 503 on
    /// `/readyz` until one arrives), binds the listeners and starts serving.
    pub fn start(config: Config) -> Result<Server> {
        let metrics = crate::metrics::install().map_err(Error::Usage)?;
        // A pair that cannot be used stops the server before it listens.
        let tls = config.tls.map(tls::Tls::load).transpose()?.map(Arc::new);
        if let Some(admin) = &config.admin {
            admin.check()?;
        }
        let live = Arc::new(Live::for_shard(&config.data_dir, config.shard));
        load(&live, &config.data_dir, config.source.is_some());
        let workers = workers(config.threads, &live);
        let (listeners, addr, claim) = listen(config.listen, workers, config.handover)?;
        let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
        tracing::info!("listening on {addr} ({workers} threads, {scheme})");
        let admin = match config.admin {
            Some(admin) => Some(listen_admin(admin, &live, &config.limits, tls.clone())?),
            None => None,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut app = http::App::new(live.clone(), Some(metrics.clone()), config.limits)
            .with_answers_per_yield(config.answers_per_yield);
        if let Some(tls) = &tls {
            app = app.with_tls(tls.clone());
        }
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (app, stop) = (app.clone(), stopped(stop_rx.clone()));
            threads.push(spawn_runtime(format!("promo-http-{i}"), 0, async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                http::run(listener, app, stop).await;
                Ok(())
            })?);
        }
        let background = Background {
            live: live.clone(),
            metrics,
            source: config.source,
            tls,
            admin,
        };
        threads.push(background.spawn(&stop_rx)?);
        Ok(Server {
            addr,
            live,
            stop,
            threads,
            _claim: claim,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live generation.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Stops accepting, finishes the requests in flight (at most
    /// [`http::SHUTDOWN_GRACE`]) and waits for every thread.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("{e}"),
                Err(_) => tracing::error!("a server thread panicked"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts a server with `config` and runs it until `shutdown` completes
/// (in `promo serve`, SIGTERM or SIGINT), then stops it gracefully.
pub fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    raise_open_files_limit(config.limits.max_connections);
    let server = Server::start(config)?;
    single_thread_runtime()?.block_on(shutdown);
    tracing::info!("shutting down: finishing requests in flight");
    server.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Each connection is a file descriptor: lift the soft limit on open files
/// to the hard one, as servers do, and say so if even that is too low for
/// `connections` (accept then fails and backs off until some close).
fn raise_open_files_limit(connections: usize) {
    let limit = crate::sys::raise_open_files_limit();
    // Generation files, listeners, the metrics and the standard streams.
    let wanted = connections as u64 + 64;
    if limit < wanted {
        tracing::warn!(
            "the open files limit ({}) is below --max-connections plus 64 ({wanted}): \
             raise it (ulimit -n, or LimitNOFILE= in a systemd unit)",
            limit
        );
    }
}

/// What woke a task that [`every_tick_and_hangup`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Tick,
    Hangup,
}

/// Runs `task` every `interval` (the first time at once) and on every
/// SIGHUP, until `shutdown` completes: the watcher rescans the data
/// directory, and the TLS pair is read again, both ways. `what` names the
/// task in the warning if SIGHUP cannot be listened for.
pub(crate) async fn every_tick_and_hangup<F: Future<Output = ()>>(
    what: &str,
    interval: std::time::Duration,
    shutdown: impl Future<Output = ()>,
    mut task: impl FnMut(Wake) -> F,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("{what}: cannot listen for SIGHUP ({e}); every {interval:?} only");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            _ = tick.tick() => Wake::Tick,
            _ = hup => Wake::Hangup,
            () = &mut shutdown => return,
        };
        task(wake).await;
    }
}

/// The nice value of the watcher's and fetcher's threads: serving threads
/// (nice 0) run first whenever both want a core.
const BACKGROUND_NICE: i32 = 10;

fn single_thread_runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with_nice(0)
}

/// A single-threaded runtime whose blocking-pool threads (verification)
/// run at `nice`.
fn runtime_with_nice(nice: i32) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || set_thread_nice(nice))
        .build()
        .map_err(Error::io_op("starting a runtime", "tokio"))
}

/// Sets the calling thread's nice value (on Linux, nice is per thread).
/// Raising it needs no privilege; failing is harmless, so it is ignored.
fn set_thread_nice(nice: i32) {
    if nice != 0 {
        crate::sys::set_thread_nice(nice);
    }
}

/// Loads the newest valid generation, or says why there is none yet.
fn load(live: &Live, data_dir: &std::path::Path, fetching: bool) {
    match live.refresh() {
        Ok(Some(_)) => {}
        Ok(None) => tracing::warn!(
            "no valid generation in {} yet: answering 503 until one {}",
            data_dir.display(),
            if fetching {
                "is fetched"
            } else {
                "is published"
            }
        ),
        Err(e) => tracing::warn!("scanning for generations: {e}"),
    }
}

/// Serving threads: `threads`, or for 0 one a core, and
/// [`THREADS_PER_CORE`] a core when the live generation is larger than
/// memory and `io_uring` is unavailable.
fn workers(threads: usize, live: &Live) -> usize {
    if threads != 0 {
        return threads;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let larger = live
        .current()
        .as_ref()
        .is_some_and(|t| t.larger_than_memory());
    match larger && !disk::available() {
        true => THREADS_PER_CORE * cores,
        false => cores,
    }
}

/// The port claimed and `workers` listeners bound on it. The claim comes
/// before binding, so that a second server never takes a connection; a
/// port the kernel picks is claimed once known.
fn listen(
    at: SocketAddr,
    workers: usize,
    handover: bool,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr, claim::Claim)> {
    let early = match at.port() {
        0 => None,
        port => Some(claim::Claim::take(port, handover)?),
    };
    let listeners = http::bind(at, workers).map_err(Error::io_op("listening", at.to_string()))?;
    let addr = listeners[0]
        .local_addr()
        .map_err(Error::io(at.to_string()))?;
    let claim = match early {
        Some(claim) => claim,
        None => claim::Claim::take(addr.port(), handover)?,
    };
    Ok((listeners, addr, claim))
}

/// The admin port's listener, bound, and its service.
fn listen_admin(
    admin: admin::AdminConfig,
    live: &Arc<Live>,
    limits: &http::Limits,
    tls: Option<Arc<tls::Tls>>,
) -> Result<(std::net::TcpListener, admin::Admin)> {
    let listener = std::net::TcpListener::bind(admin.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(Error::io_op("listening (admin)", admin.listen.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io(admin.listen.to_string()))?;
    tracing::info!(
        "admin port listening on {addr} ({}, {})",
        if tls.is_some() { "HTTPS" } else { "HTTP" },
        if admin.token.is_some() {
            "bearer token required"
        } else {
            "loopback, no token"
        }
    );
    let admin = admin::Admin::new(admin, live.clone(), limits.header_timeout, tls);
    Ok((listener, admin))
}

/// Completes when the server is told to stop.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// What runs beside the serving threads, on one thread of its own: the
/// directory watcher, the metrics' upkeep, the store's polling, the
/// certificate's watcher and the admin port.
struct Background {
    live: Arc<Live>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    source: Option<poll::Polling>,
    tls: Option<Arc<tls::Tls>>,
    admin: Option<(std::net::TcpListener, admin::Admin)>,
}

impl Background {
    /// Background work yields the cores to the serving threads: a
    /// download's and a verification's CPU must not raise the latency of
    /// lookups (BENCHMARKS.md, "Measurements behind the design").
    fn spawn(
        self,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<JoinHandle<std::io::Result<()>>> {
        let live = self.live;
        let watch = live::watch(live.clone(), live::WATCH_INTERVAL, stopped(stop.clone()));
        let upkeep = crate::metrics::upkeep(self.metrics, stopped(stop.clone()));
        let fetch = self
            .source
            .map(|source| poll::poll(source, live.clone(), stopped(stop.clone())));
        let tls_watch = self
            .tls
            .map(|t| tls::watch(t, tls::CHECK_INTERVAL, stopped(stop.clone())));
        let (admin, admin_stop) = (self.admin, stopped(stop.clone()));
        spawn_runtime("promo-watch".into(), BACKGROUND_NICE, async move {
            let fetch = async {
                if let Some(f) = fetch {
                    f.await
                }
            };
            let tls_watch = async {
                if let Some(w) = tls_watch {
                    w.await
                }
            };
            let admin = async {
                if let Some((listener, admin)) = admin {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => admin::run(l, admin, admin_stop).await,
                        Err(e) => tracing::error!("admin port: {e}"),
                    }
                }
            };
            tokio::join!(watch, upkeep, fetch, tls_watch, admin);
            Ok(())
        })
    }
}

/// Runs `task` to completion on a new thread, at `nice`, with its own
/// runtime.
fn spawn_runtime(
    name: String,
    nice: i32,
    task: impl Future<Output = std::io::Result<()>> + Send + 'static,
) -> Result<JoinHandle<std::io::Result<()>>> {
    let runtime = runtime_with_nice(nice)?;
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            set_thread_nice(nice);
            runtime.block_on(task)
        })
        .map_err(Error::io_op("starting a thread", name))
}
