//! The `promo` command line: parses arguments and calls the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use promo::builder::feed::Input;
use promo::builder::pipeline::{self, BuildOptions, GuardLimit, InvalidLimit};
use promo::builder::{publish, textfile};
use promo::generation::rollback::Rollback;
use promo::generation::table::Table;
use promo::generation::{
    format, local,
    remote::{self, Remote},
    shard::Shard,
};
use promo::server::{self, fetch, http, live::Live};

/// jemalloc, set to give memory back: see `promo::server::memory`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The settings jemalloc reads at start (it looks this symbol up).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; promo::server::memory::MALLOC_CONF.len()] =
    promo::server::memory::MALLOC_CONF;

/// Serve partner promotion feeds from immutable, memory-mapped generations.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to standard error: text, or one JSON object a
    /// line (timestamp, level, message, fields, target) for a log collector.
    /// With json, what fetch and rollback did is logged instead of printed,
    /// and a build's summary is logged too (and still printed: scripts
    /// parse it).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text,
          env = "PROMO_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// The CSV: a file, `-` for standard input, or an object's URL
        /// (s3://bucket/feeds/today.csv, gs://, az://, file:///, http(s)://).
        /// Plain, gzip or zstd, told apart by content.
        csv: String,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        guards: Guards,
        /// Where sorted runs spill (default: the data directory).
        #[arg(long)]
        tmp_dir: Option<PathBuf>,
        /// Publish even if a guard would refuse the generation
        /// (--max-shrink, --max-churn, --max-price-jumps).
        #[arg(long)]
        force: bool,
        /// Then upload the generation to this object store and make it the
        /// store's newest (s3://bucket/prefix, gs://, az://, file:///dir);
        /// the store keeps the newest --keep generations.
        #[arg(long, value_name = "URL")]
        publish: Option<String>,
        /// Write the build's outcome here in the Prometheus text format, for
        /// node_exporter's textfile collector (a PATH ending in .prom in its
        /// directory): when it ended, whether it published, and the last
        /// successful build's rows, invalid rows, duplicates, seconds and
        /// generation. Replaced atomically after every attempt.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// Serve the newest generation over HTTP, swapping to newer ones as they appear.
    Serve {
        #[command(flatten)]
        dir: DataDir,
        /// Address to listen on: ADDR:PORT, HOST:PORT, or :PORT and PORT
        /// for every address.
        #[arg(long, env = "PROMO_LISTEN", default_value = "0.0.0.0:1321",
              value_parser = parse_listen)]
        listen: SocketAddr,
        /// Most client connections open at once; more wait in the kernel's
        /// accept backlog until one closes.
        #[arg(long, default_value_t = http::Limits::default().max_connections)]
        max_connections: usize,
        /// Serving threads (0: one per core, or eight per core when the
        /// generation at start is larger than memory and io_uring is
        /// unavailable: a lookup whose page is on disk then blocks its
        /// thread's connections until the disk answers).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Seconds a client has to send a request's headers, on a new
        /// connection or for the next request on a kept-alive one; then it
        /// is disconnected.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
              default_value_t = http::Limits::default().header_timeout.as_secs_f64())]
        header_timeout: f64,
        /// Fetch new generations from this object store into --data-dir
        /// (s3://bucket/prefix, gs://, az://, file:///dir); keeps the
        /// newest 2 there.
        #[arg(long, value_name = "URL", env = "PROMO_SOURCE")]
        source: Option<String>,
        /// Start even though another promo server listens on --listen's
        /// port, share the port until that one stops, then hold it alone:
        /// for a restart without refused connections (start the new server
        /// with it, wait for its /readyz, stop the old one). Without it, a
        /// second server on a port fails at start.
        #[arg(long)]
        handover: bool,
        /// Seconds between polls of --source.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
              default_value_t = fetch::DEFAULT_INTERVAL.as_secs_f64())]
        source_interval: f64,
        #[command(flatten)]
        rate: FetchRate,
        /// Serve HTTPS on --listen with this PEM certificate chain (with
        /// --tls-key); read again on SIGHUP and when it changes.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also listen here for admin requests: POST /upload (a CSV, built
        /// into a new generation), GET /generations, POST /rollback.
        #[arg(long, value_name = "ADDR", env = "PROMO_ADMIN_LISTEN", value_parser = parse_listen)]
        admin_listen: Option<SocketAddr>,
        /// A file holding the token every admin request must send as
        /// `Authorization: Bearer <token>`; required unless --admin-listen
        /// is a loopback address.
        #[arg(long, value_name = "FILE", requires = "admin_listen")]
        admin_token_file: Option<PathBuf>,
        /// Largest upload accepted (bytes, or 10GiB...).
        #[arg(long, value_name = "SIZE", default_value = "100GiB", value_parser = parse_size)]
        max_upload: u64,
        /// Uploads and rollbacks build as `promo build` does, with its guards.
        #[command(flatten)]
        guards: Guards,
        /// Publish each uploaded or rolled-back generation to this object
        /// store too (s3://bucket/prefix, gs://, az://, file:///dir).
        #[arg(long, value_name = "URL", requires = "admin_listen")]
        publish: Option<String>,
    },
    /// Download the store's newest valid generation into the data directory
    /// if it is newer than the newest there, once.
    Fetch {
        /// The store (s3://bucket/prefix, gs://, az://, file:///dir).
        url: String,
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        rate: FetchRate,
    },
    /// Print the JSON the server would return for an id (exit 1 when not found).
    Get {
        /// The promotion's id (a UUID).
        id: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Make the generation before the live one, or generation N, live
    /// again (as a new generation); builds then refuse the feeds it undid.
    Rollback {
        #[command(flatten)]
        dir: DataDir,
        /// Roll back this object store instead of the data directory: its
        /// generation before the newest (or --to N) is published again, and
        /// every replica swaps to it.
        #[arg(long, value_name = "URL")]
        publish: Option<String>,
        /// Make generation N live again, any that is kept (see `promo
        /// inspect`, or `promo inspect --source URL` with --publish),
        /// instead of the one before the live one.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
    },
    /// Print the ids whose promotion differs between two generations, with
    /// their old and new values, then a summary; exit 0 when they hold the
    /// same promotions, 1 when they differ.
    Diff {
        /// The old generation: a generation file, a sequence in --data-dir,
        /// or a store URL with a sequence (s3://bucket/prefix#7).
        old: String,
        /// The new generation, in any of the same forms.
        new: String,
        #[command(flatten)]
        dir: DataDir,
        /// One JSON object a line: each difference, then the summary.
        #[arg(long)]
        json: bool,
        /// Print at most this many differences (the summary counts all).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// List the generations and check each one.
    Inspect {
        #[command(flatten)]
        dir: DataDir,
        /// List this object store's generations instead of the data directory's.
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The build's limits and guards, for `promo build` and for uploads.
#[derive(Args, Clone)]
struct Guards {
    /// Memory for sorting before runs spill to disk (bytes, or 64MiB, 1GiB...).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    memory_limit: u64,
    /// Most invalid rows tolerated: a count (100) or a percentage (1%).
    #[arg(long, default_value = "1%")]
    max_invalid: InvalidLimit,
    /// Generations kept after publishing, the new one included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    keep: u64,
    /// Refuse a generation with more than this percentage fewer records
    /// than the newest one (50% or 50), or off.
    #[arg(long, value_name = "PCT|off", default_value = "50%", value_parser = parse_percent,
          env = "PROMO_MAX_SHRINK")]
    max_shrink: GuardLimit,
    /// Refuse a generation whose added, removed and changed ids (a new
    /// price or date) exceed this percentage of the live generation's ids
    /// (50% or 50; over 100% allows a feed to grow more than twofold), or
    /// off (a feed that replaces every id churns 200%).
    #[arg(long, value_name = "PCT|off", default_value = "50%", value_parser = parse_churn,
          env = "PROMO_MAX_CHURN")]
    max_churn: GuardLimit,
    /// Refuse a generation in which more than this percentage of the ids
    /// it shares with the live generation have their price go to 0 or move
    /// by more than 10x (5% or 5), or off.
    #[arg(long, value_name = "PCT|off", default_value = "5%", value_parser = parse_percent,
          env = "PROMO_MAX_PRICE_JUMPS")]
    max_price_jumps: GuardLimit,
    /// Keep only the ids of range shard K of N (K/N, like 0/4): the ids
    /// whose first 32 bits x satisfy floor(x * N / 2^32) = K. A shard's
    /// object store is the given URL's shard-K-of-N prefix. `serve --shard`
    /// refuses generations built for another shard, or for every id.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
}

impl Guards {
    /// The store a build of these options publishes to (or a server of
    /// them fetches from): each shard has its own under `url`.
    fn store(&self, url: String) -> String {
        remote::shard_url(&url, self.shard.unwrap_or_default())
    }

    fn options(&self, data_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            memory_limit: self.memory_limit,
            max_invalid: self.max_invalid,
            keep: self.keep as usize,
            max_shrink: self.max_shrink.0,
            max_churn: self.max_churn.0,
            max_price_jumps: self.max_price_jumps.0,
            shard: self.shard.unwrap_or_default(),
            ..BuildOptions::new(data_dir)
        }
    }
}

#[derive(Args, Clone, Copy)]
struct FetchRate {
    /// Most bytes a second a download from the store takes (bytes, or
    /// 50MiB...); unlimited by default.
    #[arg(long, value_name = "BYTES", value_parser = parse_rate)]
    fetch_rate: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    pipeline::parse_size(s)
}

/// A size of at least one byte: a rate of nothing would never finish.
fn parse_rate(s: &str) -> Result<u64, String> {
    match pipeline::parse_size(s)? {
        0 => Err(format!("invalid rate {s:?}: at least 1 byte a second")),
        n => Ok(n),
    }
}

/// An address to listen on, in the forms nginx and Redis take: `ADDR:PORT`,
/// `HOST:PORT` (its first address), `:PORT` or `PORT` (every address).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let every = |port: &str| {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)))
    };
    if let Some(addr) = every(s).or_else(|| every(s.strip_prefix(':')?)) {
        return Ok(addr);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| {
        format!("invalid address {s:?}: {why} (expected ADDR:PORT, HOST:PORT, :PORT or PORT)")
    };
    let mut addrs = s.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the name has no address".into()))
}

/// A positive number of seconds that a `Duration` can hold.
fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|&secs| Duration::try_from_secs_f64(secs).is_ok_and(|d| !d.is_zero()))
        .ok_or_else(|| format!("invalid duration {s:?}: expected seconds, such as 10 or 0.5"))
}

/// A percentage of at least 0 with no upper bound, or off: churn counts
/// added ids against the old generation's, so a feed that doubles is 100%
/// and more.
fn parse_churn(s: &str) -> Result<GuardLimit, String> {
    GuardLimit::parse(s, f64::MAX)
}

fn parse_percent(s: &str) -> Result<GuardLimit, String> {
    GuardLimit::parse(s, 100.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Builds and servers log what they do; queries print only their answer.
    let default_level = match cli.command {
        Command::Get { .. } | Command::Inspect { .. } | Command::Diff { .. } => "warn",
        Command::Build { .. }
        | Command::Serve { .. }
        | Command::Rollback { .. }
        | Command::Fetch { .. } => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let json = cli.log_format == LogFormat::Json;
    if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let out = Output { json };
    match try_main(cli, out) {
        Ok(code) => code,
        Err(e) => {
            if json {
                tracing::error!("{e:#}");
            } else {
                eprintln!("promo: error: {e:#}");
            }
            // A guard's refusal is the feed's fault, not the build's.
            let refused = e
                .downcast_ref::<promo::Error>()
                .is_some_and(promo::Error::is_refusal);
            ExitCode::from(if refused { 3 } else { 2 })
        }
    }
}

/// Where a command says what it did: a line on standard output, or with
/// `--log-format json` an info event, so that every line a container
/// writes is one JSON object.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn say(self, line: &str) {
        if self.json {
            tracing::info!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn try_main(cli: Cli, out: Output) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            csv,
            dir,
            guards,
            tmp_dir,
            force,
            publish,
            metrics_file,
        } => {
            if let Some(path) = &metrics_file {
                textfile::check(path)?;
            }
            let shard = guards.shard.unwrap_or_default();
            let built = build(csv, dir, guards, tmp_dir, force, publish, out);
            let written = metrics_file.map(|path| {
                let outcome = match &built {
                    Ok(summary) => textfile::Outcome::Published(summary),
                    Err(e) => match e.downcast_ref::<promo::Error>() {
                        Some(e) if e.is_refusal() => textfile::Outcome::Refused,
                        _ => textfile::Outcome::Failed,
                    },
                };
                textfile::write(&path, shard, std::time::SystemTime::now(), outcome)
            });
            match (built, written) {
                (Err(e), Some(Err(w))) => {
                    tracing::error!("writing --metrics-file: {w}");
                    Err(e)
                }
                (Err(e), _) => Err(e),
                (Ok(s), Some(Err(w))) => Err(anyhow::anyhow!(
                    "{w}\ngeneration {} was published, but --metrics-file was not written",
                    s.generation.sequence
                )),
                (Ok(_), _) => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Serve {
            dir,
            listen,
            max_connections,
            threads,
            header_timeout,
            source,
            source_interval,
            handover,
            rate,
            tls_cert,
            tls_key,
            admin_listen,
            admin_token_file,
            max_upload,
            guards,
            publish,
        } => {
            // A mistyped directory would answer 503 for ever: only a fetch
            // (--source) or an upload (--admin-listen) fills a new one.
            if source.is_none() && admin_listen.is_none() && !dir.data_dir.is_dir() {
                anyhow::bail!(
                    "--data-dir {}: no such directory (build a generation into it first, or \
                     give --source to fetch into it)",
                    dir.data_dir.display()
                );
            }
            let source = source.map(|url| guards.store(url));
            let publish = publish.map(|url| guards.store(url));
            // A bad URL stops serve at start, not at its first poll.
            for url in source.iter().chain(&publish) {
                Remote::open(url)?;
            }
            let admin = match admin_listen {
                Some(listen) => Some(server::admin::AdminConfig {
                    listen,
                    token: admin_token_file
                        .as_deref()
                        .map(server::admin::read_token)
                        .transpose()?,
                    build: BuildOptions {
                        against_store: publish.clone(),
                        ..guards.options(dir.data_dir.clone())
                    },
                    max_upload,
                    publish,
                }),
                None => None,
            };
            let config = server::Config {
                limits: http::Limits {
                    max_connections,
                    header_timeout: Duration::from_secs_f64(header_timeout),
                },
                source: source.map(|url| fetch::Source {
                    url,
                    interval: Duration::from_secs_f64(source_interval),
                    rate: rate.fetch_rate,
                }),
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| server::tls::TlsFiles { cert, key }),
                admin,
                threads,
                shard: guards.shard,
                handover,
                ..server::Config::new(dir.data_dir, listen)
            };
            server::run(config, server::shutdown_signal())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { url, dir, rate } => {
            let progress = std::io::stderr().is_terminal();
            match fetch::fetch_once(&url, &dir.data_dir, rate.fetch_rate, progress)? {
                fetch::Outcome::Fetched {
                    entry,
                    bytes,
                    seconds,
                    ..
                } => out.say(&format!(
                    "fetched generation {} ({bytes} bytes in {seconds:.2} s) to {}",
                    entry.sequence,
                    entry.path.display()
                )),
                fetch::Outcome::UpToDate { store } => out.say(&match store {
                    Some(s) => format!(
                        "up to date: the store holds no valid generation newer than the \
                         data directory's (the store's newest is {s})"
                    ),
                    None => "up to date: the store holds no generation yet".to_string(),
                }),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { id, dir } => {
            let store = Live::new(&dir.data_dir);
            store.refresh()?;
            let current = store.current();
            let table = current
                .as_deref()
                .ok_or_else(|| promo::Error::NoGeneration {
                    path: dir.data_dir.clone(),
                })?;
            let key = promo::builder::ingest::parse_id(id.trim().as_bytes())
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
                        "promo: no promotion {} in generation {}",
                        uuid::Uuid::from_u128(key).hyphenated(),
                        table.sequence()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Inspect {
            source: Some(url),
            json,
            ..
        } => inspect_store(&url, json),
        Command::Inspect { dir, json, .. } => inspect(&dir.data_dir, json),
        Command::Diff {
            old,
            new,
            dir,
            json,
            limit,
        } => diff(&old, &new, &dir.data_dir, json, limit),
        Command::Rollback {
            publish: Some(url),
            to,
            ..
        } => {
            let (from, to) = publish::rollback(&url, to)?;
            out.say(&format!(
                "{url}: generation {from} is the newest again, as generation {}",
                to.sequence
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { dir, to, .. } => {
            let (from, to) = pipeline::rollback(&dir.data_dir, to)?;
            out.say(&format!(
                "generation {from} is live again as generation {} ({})",
                to.sequence,
                to.path.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `promo build`: builds the feed into the data directory, then publishes
/// it to the store if one is given.
fn build(
    csv: String,
    dir: DataDir,
    guards: Guards,
    tmp_dir: Option<PathBuf>,
    force: bool,
    publish: Option<String>,
    out: Output,
) -> anyhow::Result<pipeline::BuildSummary> {
    let publish = publish.map(|url| guards.store(url));
    // A bad URL fails before the feed is read.
    if let Some(url) = &publish {
        Remote::open(url)?;
    }
    let keep = guards.keep;
    let opts = BuildOptions {
        tmp_dir,
        progress: std::io::stderr().is_terminal(),
        force,
        // What the fleet serves, even after a rollback of the store.
        against_store: publish.clone(),
        ..guards.options(dir.data_dir)
    };
    let summary = pipeline::build(&Input::from_arg(&csv), &opts)?;
    // Scripts parse the summary line: on standard output in either format.
    println!("{summary}");
    if out.json {
        let s = &summary;
        let churn = s.churn.as_ref().map(|c| c.to_json().to_string());
        tracing::info!(
            churn,
            rows = s.rows,
            valid = s.valid,
            invalid = s.invalid,
            duplicates = s.duplicates,
            other_shards = s.other_shards,
            records = s.records,
            generation = s.generation.sequence,
            seconds = s.seconds,
            path = %s.generation.path.display(),
            "built generation {}",
            s.generation.sequence
        );
    }
    if let Some(url) = publish {
        let p = publish::publish(&url, &summary.generation.path, keep as usize).map_err(|e| {
            anyhow::anyhow!(
                "{e}\npublishing to the store failed; generation {} stays published in {}",
                summary.generation.sequence,
                opts.data_dir.display()
            )
        })?;
        out.say(&format!(
            "published generation {} to {url} as its generation {} ({} bytes in {:.2} s)",
            summary.generation.sequence, p.sequence, p.bytes, p.seconds
        ));
    }
    Ok(summary)
}

fn inspect(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such data directory (give --data-dir, or set PROMO_DATA_DIR)",
            dir.display()
        );
    }
    let mut rows = Vec::new();
    let mut live_found = false;
    for entry in local::list(dir)?.into_iter().rev() {
        let state = match Table::open_verified(&entry.path, entry.sequence) {
            Ok(_) => "ok".to_string(),
            Err(e) => match e {
                promo::Error::Format { cause, .. } => cause.to_string(),
                other => other.to_string(),
            },
        };
        let live = state == "ok" && !live_found;
        live_found |= live;
        rows.push(local::describe(&entry, &state, live));
    }
    rows.reverse();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  path",
            "sequence", "live", "rows", "bytes", "created", "version", "shard", "checksum", "churn"
        );
        for r in &rows {
            println!(
                "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  {}",
                r["sequence"].as_u64().unwrap_or_default(),
                if r["live"] == true { "*" } else { "" },
                r["rows"].as_u64().map_or("-".into(), |n| n.to_string()),
                r["bytes"].as_u64().unwrap_or_default(),
                r["created"].as_str().unwrap_or("-"),
                r["version"].as_u64().map_or("-".into(), |n| n.to_string()),
                r["shard"].as_str().unwrap_or("-"),
                r["checksum"].as_str().unwrap_or("-"),
                changes_column(r),
                r["path"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_store(url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let remote = Remote::open(url)?;
    let inventory = promo::generation::remote::block_on(remote.inventory())??;
    let rows: Vec<_> = inventory
        .iter()
        .map(|(m, len)| {
            let object = match len {
                Some(len) if *len == m.bytes => "ok".to_string(),
                Some(len) => format!("object is {len} bytes"),
                None => "object missing".to_string(),
            };
            serde_json::json!({
                "sequence": m.sequence,
                "rows": m.rows,
                "bytes": m.bytes,
                "created": format::rfc3339_utc(m.created_ms),
                "published": format::rfc3339_utc(m.published_ms),
                "object": m.object,
                "state": object,
                "churn": m.churn,
                "rollback": m.rollback,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  object",
            "sequence", "rows", "bytes", "created", "state", "churn"
        );
        for r in &rows {
            println!(
                "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  {}",
                r["sequence"].as_u64().unwrap_or_default(),
                r["rows"].as_u64().unwrap_or_default(),
                r["bytes"].as_u64().unwrap_or_default(),
                r["created"].as_str().unwrap_or("-"),
                r["state"].as_str().unwrap_or("-"),
                changes_column(r),
                r["object"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a generation changed, in `inspect`'s table: for a rollback
/// `rollback to N, undid M, L`, else its churn `+added -removed ~changed
/// (percent)`, or `-` when it is not known.
fn changes_column(row: &serde_json::Value) -> String {
    if let Ok(r) = serde_json::from_value::<Rollback>(row["rollback"].clone()) {
        let undone: Vec<String> = r.undone.iter().map(|u| u.sequence.to_string()).collect();
        return match undone.is_empty() {
            true => format!("rollback to {}", r.of),
            false => format!("rollback to {}, undid {}", r.of, undone.join(", ")),
        };
    }
    match promo::generation::churn::Churn::from_json(&row["churn"]) {
        Some(c) => format!(
            "+{} -{} ~{} ({:.2}%)",
            c.added,
            c.removed,
            c.changed,
            c.churn_percent()
        ),
        None => "-".to_string(),
    }
}

/// `promo diff`: streams the differences, then the summary.
fn diff(
    old: &str,
    new: &str,
    data_dir: &Path,
    json: bool,
    limit: Option<u64>,
) -> anyhow::Result<ExitCode> {
    // Generations from a store are downloaded here, and gone when diff ends.
    let scratch = match data_dir.is_dir() {
        true => tempfile::Builder::new()
            .prefix(local::DIFF_PREFIX)
            .tempdir_in(data_dir)?,
        false => tempfile::tempdir()?,
    };
    let old = open_generation(old, data_dir, scratch.path())?;
    let new = open_generation(new, data_dir, scratch.path())?;
    use std::io::Write;
    use std::ops::ControlFlow;
    let mut printed = 0;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = Ok(());
    let churn = promo::generation::churn::walk(&old, &new, |change| {
        if limit.is_some_and(|n| printed >= n) {
            return ControlFlow::Continue(());
        }
        printed += 1;
        let kind = match (&change.old, &change.new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        failed = if json {
            let mut line = change.to_json();
            line["kind"] = kind.into();
            writeln!(stdout, "{line}")
        } else {
            writeln!(stdout, "{kind:<8} {}", change.describe())
        };
        // Standard output closed (`promo diff ... | head`): stop reading.
        match failed {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    let summary = if json {
        serde_json::json!({ "summary": churn.to_json() }).to_string()
    } else {
        let (from, to) = (old.sequence(), new.sequence());
        format!("generation {from} -> {to}: {}", churn.summary())
    };
    let written = failed
        .and_then(|()| writeln!(stdout, "{summary}"))
        .and_then(|()| stdout.flush());
    match written {
        // Whoever read the output stopped: they had the differences they
        // wanted, and there were some.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(1)),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::from(if churn.is_same() { 0 } else { 1 })),
    }
}

/// One side of `promo diff`, verified: a generation file, a sequence in
/// `data_dir`, or a store URL with `#sequence`.
fn open_generation(arg: &str, data_dir: &Path, scratch: &Path) -> anyhow::Result<Table> {
    if let Some((url, sequence)) = arg.rsplit_once('#').filter(|(url, _)| url.contains("://")) {
        let sequence: u64 = sequence.parse().map_err(|_| {
            anyhow::anyhow!("{arg:?}: expected a sequence after '#', as in s3://bucket/prefix#7")
        })?;
        return Ok(fetch::fetch_sequence(
            url,
            sequence,
            scratch,
            std::io::stderr().is_terminal(),
        )?);
    }
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) && !Path::new(arg).exists() {
        let sequence: u64 = arg.parse()?;
        let entry = local::list(data_dir)?
            .into_iter()
            .find(|e| e.sequence == sequence)
            .ok_or_else(|| anyhow::anyhow!("{}: no generation {sequence}", data_dir.display()))?;
        return Ok(Table::open_verified(&entry.path, sequence)?);
    }
    let path = Path::new(arg);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let sequence = local::parse_name(name).unwrap_or(0);
    Ok(Table::open_verified(path, sequence)?)
}
