//! The `promo` command line: parses arguments and calls the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use promo::pipeline::{self, BuildOptions, Input, InvalidLimit};
use promo::store::Store;
use promo::{format, generation, http, table::Table};

/// Serve partner promotion feeds from immutable, memory-mapped generations.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Directory that holds the generations.
    #[arg(long, env = "PROMO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Validate, sort and publish a CSV as a new generation.
    Build {
        /// The CSV file, or `-` for standard input.
        csv: String,
        #[command(flatten)]
        dir: DataDir,
        /// Memory for sorting before runs spill to disk (bytes, or 64MiB, 1GiB...).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        memory_limit: u64,
        /// Most invalid rows tolerated: a count (100) or a percentage (1%).
        #[arg(long, default_value = "1%")]
        max_invalid: InvalidLimit,
        /// Generations kept after publishing, the new one included.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
        /// Where sorted runs spill (default: the data directory).
        #[arg(long)]
        tmp_dir: Option<PathBuf>,
        /// Refuse a generation with more than this percentage fewer records
        /// than the newest one (50% or 50).
        #[arg(long, default_value = "50%", value_parser = parse_percent)]
        max_shrink: f64,
        /// Publish even if the generation shrinks more than --max-shrink.
        #[arg(long)]
        force: bool,
    },
    /// Serve the newest generation over HTTP, swapping to newer ones as they appear.
    Serve {
        #[command(flatten)]
        dir: DataDir,
        /// Address to listen on.
        #[arg(long, env = "PROMO_LISTEN", default_value = "0.0.0.0:1321")]
        listen: SocketAddr,
        /// Most client connections open at once; more wait in the kernel's
        /// accept backlog until one closes.
        #[arg(long, default_value_t = http::Limits::default().max_connections)]
        max_connections: usize,
        /// Seconds a client has to send a request's headers, on a new
        /// connection or for the next request on a kept-alive one; then it
        /// is disconnected.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
              default_value_t = http::Limits::default().header_timeout.as_secs_f64())]
        header_timeout: f64,
    },
    /// Print the JSON the server would return for an id (exit 1 when not found).
    Get {
        /// The promotion's id (a UUID).
        id: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Make the generation before the live one live again (as a new generation).
    Rollback {
        #[command(flatten)]
        dir: DataDir,
    },
    /// List the generations and check each one.
    Inspect {
        #[command(flatten)]
        dir: DataDir,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    pipeline::parse_size(s)
}

/// A positive number of seconds that a `Duration` can hold.
fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|&secs| Duration::try_from_secs_f64(secs).is_ok_and(|d| !d.is_zero()))
        .ok_or_else(|| format!("invalid duration {s:?}: expected seconds, such as 10 or 0.5"))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("invalid percentage {s:?}"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("invalid percentage {s:?}: expected 0% to 100%"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Builds and servers log what they do; queries print only their answer.
    let default_level = match cli.command {
        Command::Get { .. } | Command::Inspect { .. } => "warn",
        Command::Build { .. } | Command::Serve { .. } | Command::Rollback { .. } => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("promo: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            csv,
            dir,
            memory_limit,
            max_invalid,
            keep,
            tmp_dir,
            max_shrink,
            force,
        } => {
            let opts = BuildOptions {
                data_dir: dir.data_dir,
                memory_limit,
                max_invalid,
                keep: keep as usize,
                tmp_dir,
                progress: std::io::stderr().is_terminal(),
                max_shrink,
                force,
            };
            let summary = pipeline::build(&Input::from_arg(&csv), &opts)?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            dir,
            listen,
            max_connections,
            header_timeout,
        } => serve(
            dir.data_dir,
            listen,
            http::Limits {
                max_connections,
                header_timeout: Duration::from_secs_f64(header_timeout),
            },
        ),
        Command::Get { id, dir } => {
            let store = Store::new(&dir.data_dir);
            store.refresh()?;
            let current = store.current();
            let table = current
                .as_deref()
                .ok_or_else(|| promo::Error::NoGeneration {
                    path: dir.data_dir.clone(),
                })?;
            let key = promo::ingest::parse_id(id.trim().as_bytes())
                .ok_or_else(|| anyhow::anyhow!("{id:?} is not a promotion id (a UUID)"))?;
            match table.get(key) {
                Some(record) => {
                    let mut out = Vec::new();
                    record.write_json(&mut out);
                    println!("{}", String::from_utf8_lossy(&out));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "promo: no promotion {key} in generation {}",
                        table.sequence()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Inspect { dir, json } => inspect(&dir.data_dir, json),
        Command::Rollback { dir } => {
            let (from, to) = pipeline::rollback(&dir.data_dir)?;
            println!(
                "generation {from} is live again as generation {} ({})",
                to.sequence,
                to.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves with one single-threaded runtime per core, each accepting on its
/// own SO_REUSEPORT listener: a connection lives on one thread, and no
/// request is handed between threads. The watcher has a thread of its own.
fn serve(data_dir: PathBuf, listen: SocketAddr, limits: http::Limits) -> anyhow::Result<ExitCode> {
    raise_open_files_limit(limits.max_connections);
    let metrics = promo::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let store = Arc::new(Store::new(&data_dir));
    match store.refresh() {
        Ok(Some(_)) => {}
        Ok(None) => tracing::warn!(
            "no valid generation in {} yet: answering 503 until one is published",
            data_dir.display()
        ),
        Err(e) => tracing::warn!("scanning for generations: {e}"),
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listeners =
        http::bind(listen, workers).with_context(|| format!("listening on {listen}"))?;
    tracing::info!(
        "listening on {} ({workers} threads)",
        listeners[0].local_addr()?
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = http::App::new(store.clone(), Some(metrics.clone()), limits);
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, stop) = (app.clone(), stopped(stop_rx.clone()));
        threads.push(spawn_runtime(format!("promo-http-{i}"), async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            http::run(listener, app, stop).await;
            Ok(())
        })?);
    }
    let watch = promo::store::watch(
        store,
        promo::store::WATCH_INTERVAL,
        stopped(stop_rx.clone()),
    );
    let upkeep = promo::metrics::upkeep(metrics, stopped(stop_rx));
    threads.push(spawn_runtime("promo-watch".into(), async move {
        tokio::join!(watch, upkeep);
        Ok(())
    })?);

    single_thread_runtime()?.block_on(shutdown_signal());
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_tx.send(true);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(_) => tracing::error!("a server thread panicked"),
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Each connection is a file descriptor: lift the soft limit on open files
/// to the hard one, as servers do, and say so if even that is too low for
/// `connections` (accept then fails and backs off until some close).
fn raise_open_files_limit(connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed,
    // which lives on this stack frame for the duration of each call.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            0
        } else {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                lim.rlim_max
            } else {
                soft
            }
        }
    };
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

fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// Runs `task` to completion on a new thread with its own runtime.
fn spawn_runtime(
    name: String,
    task: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let runtime = single_thread_runtime()?;
    std::thread::Builder::new()
        .name(name)
        .spawn(move || runtime.block_on(task))
        .context("starting a thread")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn inspect(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    let mut live_found = false;
    for entry in generation::list(dir)?.into_iter().rev() {
        let bytes = std::fs::metadata(&entry.path).map(|m| m.len()).unwrap_or(0);
        let header = format::read_header(&entry.path).ok();
        let state = match Table::open_verified(&entry.path, entry.sequence) {
            Ok(_) => "ok".to_string(),
            Err(e) => match e {
                promo::Error::Format { cause, .. } => cause.to_string(),
                other => other.to_string(),
            },
        };
        let live = state == "ok" && !live_found;
        live_found |= live;
        rows.push(serde_json::json!({
            "sequence": entry.sequence,
            "path": entry.path.display().to_string(),
            "rows": header.map(|h| h.count),
            "bytes": bytes,
            "created": header.map(|h| promo::format::rfc3339_utc(h.created_ms)),
            "checksum": state,
            "live": live,
        }));
    }
    rows.reverse();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:<8}  path",
            "sequence", "live", "rows", "bytes", "created", "checksum"
        );
        for r in &rows {
            println!(
                "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:<8}  {}",
                r["sequence"].as_u64().unwrap_or_default(),
                if r["live"] == true { "*" } else { "" },
                r["rows"].as_u64().map_or("-".into(), |n| n.to_string()),
                r["bytes"].as_u64().unwrap_or_default(),
                r["created"].as_str().unwrap_or("-"),
                r["checksum"].as_str().unwrap_or("-"),
                r["path"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
