//! The `promo` command line: the clap types, the value parsers, logging,
//! and the exit codes; one module a command runs it.
//!
//! [`build`], [`serve`], [`fetch`], [`get`], [`inspect`], [`diff`] and
//! [`rollback`] each hold their command's arguments and run it;
//! [`manual`] prints the completions and manual pages made from these
//! types; [`output`] is where a command says what it did (a line, or a
//! JSON log event) and renders its tables.

mod build;
mod diff;
mod fetch;
mod get;
mod inspect;
mod manual;
mod output;
mod rollback;
mod serve;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use promo::builder::pipeline::{self, BuildOptions, GuardLimit, InvalidLimit};
use promo::generation::shard::Shard;
use promo::store::layout::shard_url;

use output::Output;

/// Serve partner promotion feeds from immutable, memory-mapped generations.
#[derive(Parser)]
#[command(version = promo::metrics::VERSION_LINE, about, long_about = None)]
pub struct Cli {
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

#[derive(Subcommand)]
enum Command {
    /// Validate, sort and publish a CSV as a new generation.
    Build(build::Build),
    /// Serve the newest generation over HTTP, swapping to newer ones as they appear.
    Serve(Box<serve::Serve>),
    /// Download the store's newest valid generation into the data directory
    /// if it is newer than the newest there, once.
    Fetch(fetch::Fetch),
    /// Print the JSON the server would return for an id (exit 1 when not found).
    Get(get::Get),
    /// Make the generation before the live one, or generation N, live
    /// again (as a new generation); builds then refuse the feeds it undid.
    Rollback(rollback::Rollback),
    /// Print the ids whose promotion differs between two generations, with
    /// their old and new values, then a summary; exit 0 when they hold the
    /// same promotions, 1 when they differ.
    Diff(diff::Diff),
    /// List the generations and check each one.
    Inspect(inspect::Inspect),
    /// Print shell completions for promo.
    Completions(manual::Completions),
    /// Print promo's manual page (roff), or write a page for each command
    /// into a directory.
    Man(manual::Man),
}

/// What `promo` exits with: every command's codes, in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `diff`, the generations hold the same promotions.
    Success = 0,
    /// `get`: no such promotion; `diff`: the generations differ.
    No = 1,
    /// Anything failed: bad arguments, input, disk or store.
    Failed = 2,
    /// A guard refused the feed (the feed's fault, not the build's).
    Refused = 3,
}

/// Every exit status and what it means, for every command: the one table
/// of them, which `promo man` prints and docs/cli.md repeats (a test
/// compares the two).
pub const EXIT_CODES: [(Exit, &str); 4] = [
    (
        Exit::Success,
        "success. `diff`: the two hold the same promotions. `fetch`: also when the data \
         directory is up to date. `build`: also when, after publishing, an old generation \
         cannot be removed or the directory cannot be synced (a warning says so)",
    ),
    (
        Exit::No,
        "`get`: the id is not in the generation. `diff`: the two differ, like `grep`",
    ),
    (
        Exit::Failed,
        "an error, with a message on standard error (bad arguments among them). A build that \
         fails publishes nothing (a failed `--publish` upload leaves the local generation \
         published, and says so)",
    ),
    (
        Exit::Refused,
        "a refused feed (`build`, `build --publish`): `--max-shrink`, `--max-churn` or \
         `--max-price-jumps` refused it, or it builds the same records as a generation a \
         rollback undid; nothing is published. `--force` publishes it once. An upload to the \
         admin port gets `422` instead",
    ),
];

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Parses nothing more: sets up logging, runs the command, and turns its
/// outcome into the exit code.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(&cli);
    let out = Output {
        json: cli.log_format == LogFormat::Json,
    };
    let ran = match cli.command {
        Command::Build(c) => c.run(out),
        Command::Serve(c) => c.run(),
        Command::Fetch(c) => c.run(out),
        Command::Get(c) => c.run(),
        Command::Rollback(c) => c.run(out),
        Command::Diff(c) => c.run(),
        Command::Inspect(c) => c.run(),
        Command::Completions(c) => c.run(),
        Command::Man(c) => c.run(),
    };
    match ran {
        Ok(exit) => exit.into(),
        Err(e) => {
            out.error(&e);
            let refused = e
                .downcast_ref::<promo::Error>()
                .is_some_and(promo::Error::is_refusal);
            (if refused { Exit::Refused } else { Exit::Failed }).into()
        }
    }
}

/// Logs to standard error, as text or JSON. Builds and servers log what
/// they do; queries print only their answer. `RUST_LOG` overrides.
fn init_logging(cli: &Cli) {
    let default_level = match cli.command {
        Command::Get(_)
        | Command::Inspect(_)
        | Command::Diff(_)
        | Command::Completions(_)
        | Command::Man(_) => "warn",
        Command::Build(_) | Command::Serve(_) | Command::Rollback(_) | Command::Fetch(_) => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if cli.log_format == LogFormat::Json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[derive(Args, Clone)]
struct DataDir {
    /// Directory that holds the generations.
    #[arg(long, env = "PROMO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
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
    /// With a store: upload beside each generation the delta from the
    /// store's newest (what changed), which replicas that have that one
    /// fetch instead, unless it is over this percentage of the
    /// generation's bytes (50% or 50), or off: no deltas.
    #[arg(long, value_name = "PCT|off", default_value = "50%", value_parser = parse_percent)]
    max_delta: GuardLimit,
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
        shard_url(&url, self.shard.unwrap_or_default())
    }

    fn options(&self, data_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            memory_limit: self.memory_limit,
            max_invalid: self.max_invalid,
            keep: self.keep as usize,
            max_shrink: self.max_shrink.0,
            max_churn: self.max_churn.0,
            max_price_jumps: self.max_price_jumps.0,
            max_delta: self.max_delta.0,
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

/// Whether progress bars are drawn: on a terminal only.
fn progress() -> bool {
    std::io::stderr().is_terminal()
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// docs/cli.md's table of exit codes is [`EXIT_CODES`], row for row.
    #[test]
    fn the_docs_give_the_exit_codes_the_commands_use() {
        let docs = include_str!("../../docs/cli.md");
        let table = docs
            .split("## Exit codes")
            .nth(1)
            .expect("an exit codes section");
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let expected: Vec<String> = EXIT_CODES
            .iter()
            .map(|&(exit, meaning)| format!("| {} | {meaning} |", exit as u8))
            .collect();
        assert_eq!(rows, expected);
    }
}
