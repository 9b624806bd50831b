//! `promo build`: CSV in, one published generation out.
//!
//! The steps, in order: check that the data directory and `--tmp-dir` can
//! be written, take the data directory's lock (a second build
//! fails fast), remove leftovers of crashed builds, stream and validate the
//! rows into the sorter, refuse the feed if too many rows are invalid, write
//! the sorted records to a temporary file, and publish it. Nothing is
//! visible to a server until the final rename, and once it is done the
//! build has succeeded: trouble after it (syncing the directory, removing
//! old generations) is logged as a warning.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

// tests/fuzz names the chunker here, where it was first.
pub use crate::builder::chunker::Chunker;
use crate::builder::feed::{self, Input};
use crate::builder::ingest;
use crate::builder::progress::Progress;
use crate::builder::sort::{SortStats, Sorter};
use crate::error::{Error, Guard, InvalidRow, Result};
use crate::generation::churn::{self, Churn};
use crate::generation::date::{DateTables, DateWord};
use crate::generation::format::{read_header, Writer};
use crate::generation::local::{BuildLock, Entry, Known, RemoveOnDrop, Sidecar};
use crate::generation::rollback::{undone_by, Past, Rollback};
use crate::generation::shard::Shard;
use crate::generation::table::Table;
use rayon::prelude::*;

/// How many invalid rows a build tolerates before it fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InvalidLimit {
    /// At most this many rows.
    Count(u64),
    /// At most this percentage of the rows read.
    Percent(f64),
}

impl InvalidLimit {
    /// True when `invalid` of `rows` is more than the limit allows.
    pub fn exceeded(&self, invalid: u64, rows: u64) -> bool {
        match *self {
            InvalidLimit::Count(n) => invalid > n,
            InvalidLimit::Percent(p) => invalid as f64 > rows as f64 * p / 100.0,
        }
    }
}

impl std::str::FromStr for InvalidLimit {
    type Err = String;

    /// Parses `N` or `P%`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid limit {s:?}: expected a row count (100) or a percentage (1%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad());
                }
                Ok(InvalidLimit::Percent(p))
            }
            None => s.trim().parse().map(InvalidLimit::Count).map_err(|_| bad()),
        }
    }
}

impl std::fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidLimit::Count(n) => write!(f, "{n} rows"),
            InvalidLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses a byte size: `1048576`, `64MiB`, `1GiB`, `512k`, `2G`, `10MB`.
/// Binary suffixes (`K`, `KiB`, ...) are powers of 1024; `kB`, `MB`, `GB`
/// are powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?}: expected bytes or a number with KiB, MiB or GiB");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `--max-shrink`'s default: a feed that lost half its promotions is a
/// truncated file far more often than a real change.
pub const DEFAULT_MAX_SHRINK: f64 = 50.0;
/// `--max-churn`'s default. The feeds `make bench`, `make soak` and the
/// tests build change at most a few percent of their ids from one build to
/// the next; a feed whose columns moved, or whose ids were regenerated,
/// changes all of them (100% to 200%).
pub const DEFAULT_MAX_CHURN: f64 = 50.0;
/// `--max-price-jumps`' default: a sane feed reprices by percents, and
/// almost never to 0 or by 10x; a feed in cents or zeroed jumps every price.
pub const DEFAULT_MAX_PRICE_JUMPS: f64 = 5.0;

/// A guard's limit in percent, or `off`: what `--max-shrink`,
/// `--max-churn` and `--max-price-jumps` take. A percentage cannot stand
/// for off: a feed that replaces every id churns 200%.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardLimit(pub Option<f64>);

impl GuardLimit {
    /// Parses `off`, or a percentage (`50`, `50%`, `12.5%`) of at least 0
    /// and at most `max`.
    pub fn parse(s: &str, max: f64) -> Result<GuardLimit, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(GuardLimit(None));
        }
        let p: f64 = s
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse()
            .map_err(|_| format!("invalid limit {s:?}: expected a percentage (50%) or off"))?;
        if (0.0..=max).contains(&p) {
            Ok(GuardLimit(Some(p)))
        } else if max == f64::MAX {
            Err(format!("invalid limit {s:?}: expected 0% or more, or off"))
        } else {
            Err(format!(
                "invalid limit {s:?}: expected 0% to {max}%, or off"
            ))
        }
    }
}

impl std::fmt::Display for GuardLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}%"),
            None => write!(f, "off"),
        }
    }
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub data_dir: PathBuf,
    /// Bytes the build may use for sorting before it spills runs to disk.
    pub memory_limit: u64,
    pub max_invalid: InvalidLimit,
    /// Generations kept after publishing (the new one included).
    pub keep: usize,
    /// Where sorted runs spill; the data directory when `None`.
    pub tmp_dir: Option<PathBuf>,
    /// Show a progress bar on standard error.
    pub progress: bool,
    /// Most a generation may shrink against the newest one, in percent of
    /// its records; a smaller feed is refused (a truncated or half-empty
    /// feed must not replace good data). Off when `None`.
    pub max_shrink: Option<f64>,
    /// Most ids a generation may change against the live one (added,
    /// removed, or with a new price or date), in percent of the live one's
    /// ids; off when `None`.
    pub max_churn: Option<f64>,
    /// Most ids in both generations whose price may go to 0 or move by more
    /// than [`churn::JUMP_FACTOR`], in percent of those ids; off when `None`.
    pub max_price_jumps: Option<f64>,
    /// Publish even if a guard (shrink, churn, price jumps, a rolled-back
    /// feed) would refuse.
    pub force: bool,
    /// Keep only the ids of this shard (every id by default).
    pub shard: Shard,
    /// Most a delta published beside the generation may be, in percent of
    /// the generation's bytes; a larger one is not written. No deltas when
    /// `None`.
    pub max_delta: Option<f64>,
    /// Measure the feed against this store's newest generation (the store
    /// it is published to, which may have been rolled back) instead of the
    /// data directory's newest; the rollbacks refused are the store's.
    pub against_store: Option<String>,
}

impl BuildOptions {
    /// The defaults of `promo build` for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            data_dir: data_dir.into(),
            memory_limit: 1 << 30,
            max_invalid: InvalidLimit::Percent(1.0),
            keep: 3,
            tmp_dir: None,
            progress: false,
            max_shrink: Some(DEFAULT_MAX_SHRINK),
            max_churn: Some(DEFAULT_MAX_CHURN),
            max_price_jumps: Some(DEFAULT_MAX_PRICE_JUMPS),
            force: false,
            shard: Shard::WHOLE,
            max_delta: Some(50.0),
            against_store: None,
        }
    }
}

/// What a successful build did, rendered here and only here: as the
/// summary line scripts parse (`Display`), as JSON (the admin port's
/// answer: `Serialize`, the generation as its sequence) and as a log event
/// ([`BuildSummary::log`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildSummary {
    /// Data rows read (header and blank lines excluded).
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Valid rows replaced by a later row with the same id.
    pub duplicates: u64,
    /// Valid rows left out because their ids are in other shards.
    pub other_shards: u64,
    /// Records in the generation.
    pub records: u64,
    /// The first invalid rows (at most ten), which were also logged.
    pub first_invalid: Vec<InvalidRow>,
    #[serde(serialize_with = "sequence_of")]
    pub generation: Entry,
    /// What it changes against the generation that was live, if any.
    pub churn: Option<Churn>,
    pub seconds: f64,
}

/// A generation in JSON: its sequence.
fn sequence_of<S: serde::Serializer>(entry: &Entry, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(entry.sequence)
}

impl BuildSummary {
    /// Logs the summary as an info event with its figures as fields (with
    /// `--log-format json`, one JSON object with them).
    pub fn log(&self) {
        let churn = self
            .churn
            .as_ref()
            .and_then(|c| serde_json::to_string(c).ok());
        tracing::info!(
            churn,
            rows = self.rows,
            valid = self.valid,
            invalid = self.invalid,
            duplicates = self.duplicates,
            other_shards = self.other_shards,
            records = self.records,
            generation = self.generation.sequence,
            seconds = self.seconds,
            path = %self.generation.path.display(),
            "built generation {}",
            self.generation.sequence
        );
    }
}

impl std::fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rows={} valid={} invalid={} duplicates={} other_shards={} records={} generation={} seconds={:.2} ",
            self.rows,
            self.valid,
            self.invalid,
            self.duplicates,
            self.other_shards,
            self.records,
            self.generation.sequence,
            self.seconds,
        )?;
        match &self.churn {
            Some(churn) => write!(f, "{} ", churn.summary())?,
            None => write!(f, "against=none ")?,
        }
        write!(f, "path={}", self.generation.path.display())
    }
}

/// Invalid rows reported one by one before the rest are only counted.
const REPORTED_INVALID: usize = 10;

/// What to tell the user when every reported row is one field holding the
/// same other delimiter: the file is not comma-separated. Empty otherwise.
pub fn delimiter_hint(first_invalid: &[InvalidRow]) -> String {
    let mut delimiters = first_invalid.iter().map(|r| r.delimiter);
    match delimiters.next() {
        Some(Some(d)) if delimiters.all(|other| other == Some(d)) => format!(
            ". The file seems to use {} between fields: promo reads comma-separated \
             values (id,price,expiration_date)",
            ingest::delimiter_name(d)
        ),
        _ => String::new(),
    }
}

/// Builds and publishes a generation from `input`.
pub fn build(input: &Input, opts: &BuildOptions) -> Result<BuildSummary> {
    let opened = feed::open(input)?;
    build_from(opened.reader, &input.name(), opened.bytes, opts)
}

/// Builds and publishes a generation from what `reader` yields (a file,
/// standard input, an upload's body, an object), plain or compressed (see
/// [`feed::decode`]), named `name` in messages; `total` is its length, if
/// known, for the progress bar. A read error fails the build: nothing is
/// published and no file is left behind.
///
/// The phases, each a function: take the data directory's lock, find the
/// baseline (what the guards compare with) while the feed is read and
/// sorted, write the sorted records, compare, publish, retain.
pub fn build_from(
    reader: impl Read + Send + 'static,
    name: &str,
    total_bytes: Option<u64>,
    opts: &BuildOptions,
) -> Result<BuildSummary> {
    let started = Instant::now();
    let name = name.to_string();
    let lock = lock(opts)?;
    let baseline = baseline(opts);
    let (counts, sorter) = read_and_sort(reader, &name, total_bytes, opts)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        rows = counts.rows,
        "read and parsed"
    );
    let counts = check_rows(counts, &name, opts)?;
    let Scan {
        current,
        known,
        history,
    } = baseline
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    // Unique records are at most the valid rows: refuse early when even
    // those are too few, and exactly once the sort has counted them.
    let kept = counts.valid - counts.other_shards;
    let live = current.as_ref().map(|t| (t.sequence(), t.len()));
    check_shrink(opts, &name, kept, live, false)?;
    let (file, tmp_path) = lock.temp_file(&opts.data_dir)?;
    let tmp = RemoveOnDrop::new(&tmp_path);
    let stats = write_sorted(file, &tmp_path, sorter, counts.dates, kept, opts)?;
    check_shrink(opts, &name, stats.unique, live, true)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        runs = stats.runs,
        "sorted and written"
    );
    let churn = compare(&tmp_path, current.as_ref(), &history, &name, opts)?;
    // A baseline downloaded for the comparison is gone from disk by now
    // (its scratch folder removed): then the file written is published.
    let same = current
        .as_ref()
        .filter(|t| t.path().exists() && same_bytes(t, &tmp_path));
    let written = match same {
        Some(t) => Written::Same(t.path()),
        None => Written::New(&tmp_path, tmp),
    };
    let generation = publish_and_retain(&lock, written, churn.as_ref(), known, opts)?;
    Ok(BuildSummary {
        rows: counts.rows,
        valid: counts.valid,
        invalid: counts.invalid,
        duplicates: stats.duplicates,
        other_shards: counts.other_shards,
        records: stats.unique,
        first_invalid: counts.first_invalid,
        generation,
        churn,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The data directory's lock, taken once the directories are known to be
/// usable: they are checked before the feed is read, not at the first
/// write after reading (maybe) gigabytes of it.
fn lock(opts: &BuildOptions) -> Result<BuildLock> {
    ignore_file_size_signal();
    if let Some(tmp_dir) = &opts.tmp_dir {
        usable_dir("--tmp-dir", tmp_dir, false)?;
    }
    usable_dir("--data-dir", &opts.data_dir, true)?;
    let lock = BuildLock::acquire(&opts.data_dir)?;
    lock.remove_leftovers(&opts.data_dir)?;
    Ok(lock)
}

/// What the guards and the churn measure against, found on a thread of
/// its own while the feed is read: the whole newest generation is read to
/// verify it (about 0.2 s of one core for 10^7 records), and stays in the
/// page cache for the comparison.
fn baseline(opts: &BuildOptions) -> std::thread::JoinHandle<Result<Scan>> {
    let (dir, store, progress) = (
        opts.data_dir.clone(),
        opts.against_store.clone(),
        opts.progress,
    );
    std::thread::spawn(move || match store {
        // A store that cannot be read: the data directory's newest, as
        // before stores; the publish after the build reports the store.
        Some(url) => store_newest(&dir, &url, progress).or_else(|e| {
            tracing::warn!("{e}: comparing with the data directory's newest instead");
            Ok(newest_valid(&dir))
        }),
        None => Ok(newest_valid(&dir)),
    })
}

/// Reads, decodes and parses the feed, counting its rows and handing its
/// records to the sorter. Three things at once: a batch of chunks is
/// parsed in parallel while the previous batch's rows go to the sorter in
/// input order and the next batch is read.
fn read_and_sort(
    reader: impl Read + Send + 'static,
    name: &str,
    total_bytes: Option<u64>,
    opts: &BuildOptions,
) -> Result<(RowCounts, Sorter)> {
    let read_err = |e| Error::Io {
        path: PathBuf::from(name),
        cause: e,
    };
    let (reader, compression) = feed::decode(reader).map_err(read_err)?;
    if let Some(c) = compression {
        tracing::debug!("{name}: {c:?}-compressed");
    }
    // The bar counts the bytes of CSV, so a compressed length is no total.
    let total_bytes = total_bytes.filter(|_| compression.is_none());
    let progress = Progress::new(opts.progress, total_bytes);
    let tmp_dir = opts.tmp_dir.as_deref().unwrap_or(&opts.data_dir);
    // Leave a sixteenth of the budget for everything but the sort buffer.
    let budget = opts.memory_limit - opts.memory_limit / 16;
    let mut sorter = Sorter::new(budget as usize, tmp_dir)?;
    let batch_len = 2 * rayon::current_num_threads();
    let mut chunks = Chunker::new(reader, CHUNK_LEN);
    let mut counts = RowCounts {
        shard: opts.shard,
        dates: BuildDates::new(tmp_dir),
        ..RowCounts::default()
    };
    let mut batch = chunks.batch(batch_len).map_err(read_err)?;
    let mut parsed: Vec<(usize, ingest::ChunkRows)> = Vec::new();
    while !batch.is_empty() || !parsed.is_empty() {
        let (next_parsed, (absorbed, next_batch)) = rayon::join(
            || {
                batch
                    .par_iter()
                    .map(|c| (c.bytes.len(), ingest::parse_chunk(&c.bytes, c.first)))
                    .collect::<Vec<_>>()
            },
            || {
                let absorbed = parsed
                    .drain(..)
                    .try_for_each(|(len, rows)| counts.absorb(name, len, rows, &mut sorter));
                let next = if batch.is_empty() {
                    Ok(Vec::new())
                } else {
                    chunks.batch(batch_len)
                };
                (absorbed, next)
            },
        );
        absorbed?;
        progress.set(counts.bytes);
        // A count limit can fail the build before reading the rest.
        if matches!(opts.max_invalid, InvalidLimit::Count(_))
            && opts.max_invalid.exceeded(counts.invalid, counts.rows)
        {
            break;
        }
        parsed = next_parsed;
        let done = std::mem::replace(&mut batch, next_batch.map_err(read_err)?);
        chunks.recycle(done);
    }
    progress.finish();
    Ok((counts, sorter))
}

/// Refuses a feed with too many invalid rows, or none valid.
fn check_rows(counts: RowCounts, name: &str, opts: &BuildOptions) -> Result<RowCounts> {
    let (rows, invalid) = (counts.rows, counts.invalid);
    let reported = counts.first_invalid.len() as u64;
    if invalid > reported {
        tracing::warn!(
            "{name}: {} more invalid rows were counted, not reported",
            invalid - reported
        );
    }
    let too_many = opts.max_invalid.exceeded(invalid, rows);
    if !too_many && counts.valid > 0 {
        return Ok(counts);
    }
    let (input, first_invalid) = (name.to_string(), counts.first_invalid);
    let hint = delimiter_hint(&first_invalid);
    Err(match too_many {
        true => Error::TooManyInvalid {
            input,
            invalid,
            rows,
            limit: opts.max_invalid.to_string(),
            hint,
            first_invalid,
        },
        false => Error::NoValidRows {
            input,
            rows,
            hint,
            first_invalid,
        },
    })
}

/// Writes the sorted records, `kept` at most, into `file` (at `path`).
fn write_sorted(
    file: std::fs::File,
    path: &Path,
    sorter: Sorter,
    dates: BuildDates,
    kept: u64,
    opts: &BuildOptions,
) -> Result<SortStats> {
    let (zones, spill) = dates.finish()?;
    let mut writer = Writer::new(file, path, kept)?
        .with_shard(opts.shard)
        .with_dates(zones, spill)?;
    let stats = sorter.finish(|block| writer.push_block(block))?;
    writer.finish()?;
    Ok(stats)
}

/// What the new file at `path` changes against the baseline, after the
/// guards have had their say; `None` for a first build.
fn compare(
    path: &Path,
    current: Option<&Table>,
    history: &[Past],
    name: &str,
    opts: &BuildOptions,
) -> Result<Option<Churn>> {
    let new = Table::open(path, 0)?;
    check_undone(opts, name, history, new.header().body_checksum)?;
    let Some(old) = current else {
        return Ok(None);
    };
    let started = Instant::now();
    let churn = Churn::between(old, &new);
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "compared with generation {}",
        old.sequence()
    );
    check_churn(opts, name, &churn)?;
    Ok(Some(churn))
}

/// The file a build publishes.
enum Written<'a> {
    /// The temporary file it wrote, removed unless published.
    New(&'a Path, RemoveOnDrop),
    /// The baseline's file: the feed's records are the baseline's, so
    /// the file written is the baseline's but for its creation time.
    Same(&'a Path),
}

/// Whether the file at `path` holds the bytes of `table`'s, its header's
/// creation time (and so the header's checksum) aside: the same records,
/// laid out the same (see format: a file's bytes depend on its records).
fn same_bytes(table: &Table, path: &Path) -> bool {
    let untimed = |h: &crate::generation::format::Header| crate::generation::format::Header {
        created_ms: 0,
        ..*h
    };
    read_header(path).is_ok_and(|h| untimed(&h) == untimed(table.header()))
}

/// Publishes what the build wrote with its churn beside it, then keeps
/// the newest `--keep`. Once published the build has succeeded, and what
/// fails is a warning (the file and the error), not a failed build.
///
/// A feed whose records are the baseline's is published as a hard link to
/// the baseline's file, not as the file just written: the same bytes,
/// creation time included, so that a replica that has them links them
/// too, whatever their size, instead of fetching or rebuilding a file that
/// differs in its header alone.
fn publish_and_retain(
    lock: &BuildLock,
    written: Written,
    churn: Option<&Churn>,
    mut known: Known,
    opts: &BuildOptions,
) -> Result<Entry> {
    let dir = &opts.data_dir;
    let sidecar = churn.map_or(Sidecar::None, Sidecar::Churn);
    let generation = match written {
        Written::New(tmp_path, tmp) => {
            let generation = lock.publish(dir, tmp_path, sidecar)?;
            tmp.disarm();
            generation
        }
        Written::Same(baseline) => {
            tracing::info!(
                baseline = %baseline.display(),
                "the feed's records are the baseline's: published as a link to its file"
            );
            lock.republish(dir, baseline, sidecar)?
        }
    };
    // What the scan verified also tells retention which files are good and
    // which are bad.
    known.good.push(generation.sequence);
    let retention = lock.retain(dir, opts.keep, &known);
    for old in &retention.removed {
        tracing::info!(path = %old.path.display(), "removed an old generation");
    }
    for e in &retention.failed {
        tracing::warn!("{e} (generation {} is published)", generation.sequence);
    }
    Ok(generation)
}

/// `promo rollback [--to N]`: makes an older generation live again:
/// generation `to`, or by default the newest valid one before the live one.
///
/// It is published again under a new sequence (a hard link), so that "the
/// newest valid generation is live" still holds and servers swap to it as to
/// any new generation. A sidecar records what it restored and which
/// generations it undid (see [`Rollback`]): a build refuses their feeds
/// again, and `inspect` shows it. A second rollback undoes the first.
/// Returns the sequence rolled back to and the generation that now holds it.
pub fn rollback(dir: &Path, to: Option<u64>) -> Result<(u64, Entry)> {
    let lock = BuildLock::acquire(dir)?;
    lock.remove_leftovers(dir)?;
    let all = crate::generation::local::list(dir)?;
    let nothing = |reason: String| Error::NothingToRollBack {
        path: dir.to_path_buf(),
        reason,
    };
    // Newest first, verifying only until the live one and the target.
    let mut valid = all
        .iter()
        .rev()
        .filter(|e| Table::open_verified(&e.path, e.sequence).is_ok());
    let live = valid
        .next()
        .ok_or_else(|| nothing("no valid generation".into()))?;
    let target = match to {
        None => valid.next().ok_or_else(|| {
            nothing(format!(
                "no valid generation before the live one ({})",
                live.sequence
            ))
        })?,
        Some(n) if n == live.sequence => {
            return Err(nothing(format!("generation {n} is live already")))
        }
        Some(n) => {
            let e = all.iter().find(|e| e.sequence == n).ok_or_else(|| {
                let held: Vec<String> = all.iter().map(|e| e.sequence.to_string()).collect();
                nothing(format!(
                    "no generation {n} (it holds {}: see promo inspect)",
                    held.join(", ")
                ))
            })?;
            Table::open_verified(&e.path, n)?;
            e
        }
    };
    // The generations whose header reads, newest first, as the history a
    // build checks a feed against.
    let history = local_history(&all);
    let of_checksum = history
        .iter()
        .find(|p| p.sequence == target.sequence)
        .map_or(0, |p| p.checksum);
    let record = Rollback::to(
        target.sequence,
        of_checksum,
        history.iter().map(|p| (p.sequence, p.checksum)),
    );
    let entry = lock.republish(dir, &target.path, Sidecar::Rollback(&record))?;
    Ok((target.sequence, entry))
}

/// What the scan of the data directory (or the store) for the live
/// generation found.
#[derive(Default)]
struct Scan {
    /// The newest generation that fully verifies, if any.
    current: Option<Table>,
    /// That generation as good, and every newer file, which failed, as bad:
    /// retention counts on it.
    known: Known,
    /// The generations there, newest first, with what rollbacks undid.
    history: Vec<Past>,
}

/// Refuses a generation whose body checksum is that of a generation a
/// rollback in `history` undid (the same feed built again), unless forced.
fn check_undone(opts: &BuildOptions, input: &str, history: &[Past], checksum: u64) -> Result<()> {
    let Some((sequence, rollback, record)) = undone_by(history, checksum) else {
        return Ok(());
    };
    let refusal = Error::RolledBack {
        input: input.to_string(),
        sequence,
        rollback,
        of: record.of,
        checksum,
    };
    if opts.force {
        tracing::warn!("published although refused (--force): {refusal}");
        return Ok(());
    }
    Err(refusal)
}

/// The data directory's generations, newest first, as [`Past`]s (those
/// whose header cannot be read are left out).
fn local_history(entries: &[Entry]) -> Vec<Past> {
    entries
        .iter()
        .rev()
        .filter_map(|e| {
            Some(Past {
                sequence: e.sequence,
                checksum: read_header(&e.path).ok()?.body_checksum,
                rollback: crate::generation::local::rollback_of(&e.path),
            })
        })
        .collect()
}

/// What a build that publishes to the store at `url` measures against:
/// the store's newest generation, which is what the fleet serves. Usually
/// the data directory holds it (the builder published it, or it is the
/// generation a store rollback went back to), found by its body checksum;
/// otherwise it is downloaded for the comparison and removed after. An
/// empty store has nothing to compare with: the data directory's newest is
/// used, as without a store.
fn store_newest(dir: &Path, url: &str, progress: bool) -> Result<Scan> {
    let remote = crate::store::remote::Remote::open(url)?;
    let manifests = crate::store::remote::block_on(remote.manifests())??;
    if manifests.is_empty() {
        return Ok(newest_valid(dir));
    }
    let history = manifests
        .iter()
        .rev()
        .map(|m| Past {
            sequence: m.sequence,
            checksum: m.body_checksum,
            rollback: m.rollback.clone(),
        })
        .collect();
    let entries = crate::generation::local::list(dir)?;
    let mut known = Known::default();
    // The newest that verifies, as replicas choose: a corrupt object in the
    // store is no generation to measure against.
    for newest in manifests.iter().rev() {
        let held = entries
            .iter()
            .rev()
            // The same records, whichever build wrote them.
            .filter(|e| {
                read_header(&e.path).is_ok_and(|h| {
                    h.body_checksum == newest.body_checksum && h.count == newest.rows
                })
            })
            .find_map(|e| Table::open_verified(&e.path, e.sequence).ok());
        if let Some(table) = held {
            tracing::info!(
                url,
                "comparing with the store's newest, its generation {}: generation {} here",
                newest.sequence,
                table.sequence()
            );
            known.good.push(table.sequence());
            return Ok(Scan {
                current: Some(table),
                known,
                history,
            });
        }
        tracing::info!(
            url,
            "comparing with the store's newest, its generation {}, downloaded: the data \
             directory does not hold it",
            newest.sequence
        );
        let scratch = tempfile::Builder::new()
            .prefix(crate::generation::local::DIFF_PREFIX)
            .tempdir_in(dir)
            .map_err(Error::io(dir))?;
        // Mapped, so removing the folder (when `scratch` drops) is safe.
        match crate::store::fetch::fetch_sequence(url, newest.sequence, scratch.path(), progress) {
            Ok(table) => {
                return Ok(Scan {
                    current: Some(table),
                    known,
                    history,
                })
            }
            Err(e @ (Error::Format { .. } | Error::Manifest { .. })) => {
                tracing::warn!("{e}: comparing with the generation before it")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Scan {
        current: None,
        known,
        history,
    })
}

/// Finds the newest generation in `dir` that fully verifies: the one
/// servers have live. A newer file that does not verify (a bad copy, a
/// flipped bit) is refused by servers, so the guards must not measure a
/// feed against it either, even when its header alone is sound. Usually the
/// newest file verifies, and it is the only one read.
fn newest_valid(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let Ok(entries) = crate::generation::local::list(dir) else {
        return scan;
    };
    scan.history = local_history(&entries);
    for e in entries.iter().rev() {
        match Table::open_verified(&e.path, e.sequence) {
            Ok(t) => {
                scan.current = Some(t);
                scan.known.good.push(e.sequence);
                break;
            }
            Err(_) => scan.known.bad.push(e.sequence),
        }
    }
    scan
}

/// Fails with [`Error::Dir`] naming `option` unless `dir` is a directory
/// (created first if `create`) in which a file can be created: an unnamed
/// temporary file, gone at once. Run before the feed is read, so that a
/// mistyped or read-only directory fails the build in a moment, not at the
/// first sorted run or at the generation file.
pub(crate) fn usable_dir(option: &'static str, dir: &Path, create: bool) -> Result<()> {
    let fail = |reason: String| Error::Dir {
        option,
        path: dir.to_path_buf(),
        reason,
    };
    let created = if create {
        std::fs::create_dir_all(dir)
    } else {
        Ok(())
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(fail("is not a directory".into())),
        Ok(_) => {}
        Err(e) => {
            return Err(fail(match created {
                Err(e) => format!("cannot be created: {e}"),
                Ok(()) if e.kind() == io::ErrorKind::NotFound => "does not exist".into(),
                Ok(()) => e.to_string(),
            }))
        }
    }
    tempfile::tempfile_in(dir)
        .map(drop)
        .map_err(|e| fail(format!("cannot create a file in it: {e}")))
}

/// Makes a write past the file size limit (`ulimit -f`, `RLIMIT_FSIZE`) fail
/// with `EFBIG` ("File too large") instead of killing the process.
///
/// Such a write makes the kernel send `SIGXFSZ`, whose default action kills
/// the process: the build would die without a word and leave its temporary
/// file behind. With the signal ignored, the write fails like a write to a
/// full disk, and the build fails the usual way: a message that names the
/// file and the cause, nothing published, no file left behind. It is done
/// here rather than in `main` so that every caller of [`build`] gets that
/// error rather than a dead process; it changes nothing else, as promo
/// handles every failed write as an error already.
fn ignore_file_size_signal() {
    crate::sys::ignore_file_size_signal();
}

/// Refuses a generation of `records` records that shrinks more than
/// `--max-shrink` allows against `current` (its sequence and count). With
/// `warn`, a shrink the guard lets through only because it is off or
/// forced is logged as the refusal it would have been; without, the call
/// is an early check that only refuses (the exact one follows).
fn check_shrink(
    opts: &BuildOptions,
    input: &str,
    records: u64,
    current: Option<(u64, u64)>,
    warn: bool,
) -> Result<()> {
    let Some((sequence, count)) = current else {
        return Ok(());
    };
    let limit = opts.max_shrink.unwrap_or(DEFAULT_MAX_SHRINK);
    let floor = count as f64 * (100.0 - limit) / 100.0;
    if records as f64 >= floor {
        return Ok(());
    }
    let refusal = Error::Shrink {
        input: input.to_string(),
        records,
        current: count,
        sequence,
        max_shrink: limit,
    };
    match unenforced(opts, Guard::Shrink, opts.max_shrink) {
        None => Err(refusal),
        Some(why) if warn => {
            tracing::warn!(
                "{input}: published although --max-shrink {limit}% would refuse it ({why}): \
                 {records} records against {count} in generation {sequence}"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Why a guard that fired does not refuse: `--force`, or the guard is off
/// (its default limit is what fired then). `None`: it refuses.
fn unenforced(opts: &BuildOptions, guard: Guard, limit: Option<f64>) -> Option<String> {
    match (opts.force, limit) {
        (true, _) => Some("--force".to_string()),
        (false, None) => Some(format!("{guard} off; its default refuses it")),
        (false, Some(_)) => None,
    }
}

/// Refuses a generation that jumps more prices than `--max-price-jumps`
/// allows, or changes more ids than `--max-churn` does. Price jumps first:
/// a feed of zeroed prices churns too, and the narrower guard says better
/// what is wrong with it. A guard that is off, or forced, still measures
/// against its default and warns with the same figures and examples.
fn check_churn(opts: &BuildOptions, input: &str, churn: &Churn) -> Result<()> {
    // An empty generation (a shard with no ids) is nothing to measure
    // against, as no generation is.
    if churn.previous_records == 0 {
        return Ok(());
    }
    let jumps = (churn.price_jump_percent(), churn.price_jumps);
    let checks = [
        (
            Guard::PriceJumps,
            opts.max_price_jumps,
            DEFAULT_MAX_PRICE_JUMPS,
            jumps.0,
            format!(
                "{:.2}% of the {} ids in both would have their price go to 0 or move more \
                 than {}x ({} ids)",
                jumps.0,
                churn.changed + churn.unchanged,
                churn::JUMP_FACTOR,
                jumps.1
            ),
            &churn.jump_examples,
        ),
        (
            Guard::Churn,
            opts.max_churn,
            DEFAULT_MAX_CHURN,
            churn.churn_percent(),
            format!(
                "{:.2}% of the {} ids would change (added {}, removed {}, changed {})",
                churn.churn_percent(),
                churn.previous_records,
                churn.added,
                churn.removed,
                churn.changed
            ),
            &churn.examples,
        ),
    ];
    for (guard, given, default, measured, detail, examples) in checks {
        let limit = given.unwrap_or(default);
        if measured <= limit {
            continue;
        }
        let examples: Vec<String> = examples.iter().map(churn::Change::describe).collect();
        match unenforced(opts, guard, given) {
            None => {
                return Err(Error::Refused {
                    input: input.to_string(),
                    guard,
                    limit,
                    detail,
                    sequence: churn.previous,
                    examples,
                })
            }
            Some(why) => tracing::warn!(
                "{input}: published although {guard} {limit}% would refuse it ({why}): {detail} \
                 against generation {}. The first ids, old -> new:\n  {}",
                churn.previous,
                examples.join("\n  ")
            ),
        }
    }
    Ok(())
}

/// Counts of the rows read so far.
#[derive(Default)]
struct RowCounts {
    rows: u64,
    valid: u64,
    invalid: u64,
    /// Valid rows of other shards, left out.
    other_shards: u64,
    shard: Shard,
    /// The zones and the dates kept as written of the records so far.
    dates: BuildDates,
    /// The first [`REPORTED_INVALID`] invalid rows, reported as they come.
    first_invalid: Vec<InvalidRow>,
    /// Lines in the chunks absorbed so far.
    lines: u64,
    bytes: u64,
}

impl RowCounts {
    /// Counts a parsed chunk of `len` bytes, reports its first invalid rows
    /// and hands its records to the sorter.
    fn absorb(
        &mut self,
        name: &str,
        len: usize,
        parsed: ingest::ChunkRows,
        sorter: &mut Sorter,
    ) -> Result<()> {
        self.rows += parsed.rows;
        self.valid += parsed.records.len() as u64;
        self.invalid += parsed.invalid;
        for (line, why) in &parsed.first_invalid {
            if self.first_invalid.len() < REPORTED_INVALID {
                let line = self.lines + line;
                tracing::warn!("{name}:{line}: invalid row: {why}");
                self.first_invalid.push(InvalidRow {
                    line,
                    reason: why.to_string(),
                    delimiter: why.delimiter(),
                });
            }
        }
        let relocate = self.dates.absorb(&parsed.dates)?;
        for &record in &parsed.records {
            if !self.shard.contains(record.key()) {
                self.other_shards += 1;
                continue;
            }
            let record = match relocate.zones.as_ref() {
                Ok(zones) => record.with_date(record.date().relocate(zones, relocate.base)),
                // The file's zone table is full: the date's text goes to
                // the overflow area.
                Err(()) => {
                    let text = parsed.date(&record);
                    record.with_date(self.dates.overflow(&text)?)
                }
            };
            sorter.push(record)?;
        }
        self.lines += parsed.newlines;
        self.bytes += len as u64;
        Ok(())
    }
}

/// The zone table and overflow area of the generation being built. Chunks
/// are parsed in parallel, each into tables of its own; in input order,
/// each chunk's zones are added to the file's table and its overflow text
/// appended to a temporary file, which becomes the file's overflow area.
#[derive(Default)]
struct BuildDates {
    zones: DateTables,
    spill: Option<io::BufWriter<File>>,
    spill_len: u64,
    tmp_dir: PathBuf,
}

/// Where a chunk's dates went: its zones' indices in the file's table
/// (`Err` if one did not fit) and where its overflow text starts.
struct Relocation {
    zones: std::result::Result<Vec<u32>, ()>,
    base: u64,
}

impl BuildDates {
    fn new(tmp_dir: &Path) -> BuildDates {
        BuildDates {
            tmp_dir: tmp_dir.to_path_buf(),
            ..BuildDates::default()
        }
    }

    /// Adds a chunk's zones and overflow text.
    fn absorb(&mut self, chunk: &DateTables) -> Result<Relocation> {
        let zones = chunk
            .zones()
            .map(|z| self.zones.intern(z).ok_or(()))
            .collect();
        let base = self.spill_len;
        if !chunk.overflow.is_empty() {
            self.append(&chunk.overflow)?;
        }
        Ok(Relocation { zones, base })
    }

    /// The word for a date kept as written.
    fn overflow(&mut self, text: &[u8]) -> Result<DateWord> {
        let word = DateWord::overflow(self.spill_len, text.len());
        self.append(text)?;
        Ok(word)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let err = |e| Error::io_op("writing dates kept as written", &self.tmp_dir)(e);
        if self.spill.is_none() {
            let file = tempfile::tempfile_in(&self.tmp_dir).map_err(err)?;
            self.spill = Some(io::BufWriter::with_capacity(1 << 20, file));
        }
        self.spill.as_mut().unwrap().write_all(bytes).map_err(err)?;
        self.spill_len += bytes.len() as u64;
        Ok(())
    }

    /// The zone table, and the overflow area's file and length if any.
    fn finish(self) -> Result<(DateTables, Option<(File, u64)>)> {
        let spill = match self.spill {
            Some(w) => {
                let file = w.into_inner().map_err(|e| {
                    Error::io_op("writing dates kept as written", &self.tmp_dir)(e.into_error())
                })?;
                Some((file, self.spill_len))
            }
            None => None,
        };
        Ok((self.zones, spill))
    }
}

/// Bytes of input parsed as one chunk.
const CHUNK_LEN: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "12 parsecs",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shrink_guard_refuses_big_drops_unless_forced_or_off() {
        let mut opts = BuildOptions::new("unused");
        let current = Some((4, 1000));
        assert!(check_shrink(&opts, "in", 500, current, true).is_ok());
        let err = check_shrink(&opts, "in", 499, current, true).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(
            check_shrink(&opts, "in", 0, None, true).is_ok(),
            "nothing to shrink from"
        );
        opts.max_shrink = Some(10.0);
        assert!(check_shrink(&opts, "in", 900, current, true).is_ok());
        assert!(check_shrink(&opts, "in", 899, current, true).is_err());
        opts.max_shrink = None;
        assert!(check_shrink(&opts, "in", 1, current, true).is_ok());
        opts.max_shrink = Some(10.0);
        opts.force = true;
        assert!(check_shrink(&opts, "in", 1, current, true).is_ok());
    }

    #[test]
    fn guard_limits_parse_off_and_percentages() {
        assert_eq!(GuardLimit::parse("off", 100.0), Ok(GuardLimit(None)));
        assert_eq!(GuardLimit::parse(" OFF ", 100.0), Ok(GuardLimit(None)));
        assert_eq!(GuardLimit::parse("50", 100.0), Ok(GuardLimit(Some(50.0))));
        assert_eq!(
            GuardLimit::parse("12.5%", 100.0),
            Ok(GuardLimit(Some(12.5)))
        );
        assert_eq!(
            GuardLimit::parse("250%", f64::MAX),
            Ok(GuardLimit(Some(250.0)))
        );
        for bad in ["", "x", "101%", "-1", "of"] {
            assert!(GuardLimit::parse(bad, 100.0).is_err(), "{bad}");
        }
        assert_eq!(GuardLimit(None).to_string(), "off");
        assert_eq!(GuardLimit(Some(5.0)).to_string(), "5%");
    }

    #[test]
    fn invalid_limits_parse_and_apply() {
        let pct: InvalidLimit = "1%".parse().unwrap();
        assert!(!pct.exceeded(1, 100));
        assert!(pct.exceeded(2, 100));
        let n: InvalidLimit = "3".parse().unwrap();
        assert!(!n.exceeded(3, 4));
        assert!(n.exceeded(4, 1_000_000));
        assert!("0%".parse::<InvalidLimit>().unwrap().exceeded(1, 1_000_000));
        for bad in ["", "x", "101%", "-1", "1.5"] {
            assert!(bad.parse::<InvalidLimit>().is_err(), "{bad}");
        }
    }
}
