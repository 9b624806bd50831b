//! `gen-promotions`: a fast, seeded generator of realistic partner promotion feeds.
//!
//! It writes CSV exactly like the real partner feed: one row per line, no
//! header, LF line endings, three fields:
//!
//! ```text
//! d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST
//! e2649ca5-7e05-4d53-a8ff-919917a4922e,66.640497,2018-08-22 18:34:11 +0200 CEST
//! ```
//!
//! * `id`: a random version-4 UUID, lowercase and hyphenated;
//! * `price`: uniform in `0.01..=100`, always with 6 decimals;
//! * `expiration_date`: an instant in 2018..=2026 written in Go's
//!   `2006-01-02 15:04:05 -0700 MST` layout. About 92% of rows are written in
//!   Europe/Berlin time, so they carry `+0200 CEST` or `+0100 CET` as the EU
//!   daylight-saving rules say for that instant (CEST is the most common
//!   zone, about 54% of rows); the other 8% are written as `+0000 UTC`.
//!
//! # Why it exists
//!
//! Benchmarks need feeds of 10^8 rows and more, which are too big to keep in
//! the repository and too slow to make with a script; tests need data that is
//! the same on every machine. So the generator is fast (it formats rows by
//! hand on every core) and reproducible: the same `--seed`, `--rows` and
//! `--duplicates` give byte-identical output whatever the number of threads
//! (`RAYON_NUM_THREADS`) and whether or not `--ids-out` is given. The output
//! for `--rows N` is also a prefix of the output for any larger `--rows`.
//!
//! # Usage
//!
//! ```text
//! # 1000 rows on stdout
//! cargo run --release --bin gen-promotions
//!
//! # a 100-million-row benchmark feed, plus 100000 of its ids for lookups
//! gen-promotions --rows 100000000 --seed 7 --out bench-data/promotions.csv \
//!     --ids-out bench-data/ids.txt
//!
//! # 5% of rows repeat an earlier id with a new price ("later row wins")
//! gen-promotions --rows 1000000 --duplicates 0.05 --out /tmp/dups.csv
//!
//! # a peek; a closed pipe ends the program quietly
//! gen-promotions --rows 1000000000 | head -3
//! ```
//!
//! # How it is fast
//!
//! Rows are made in chunks of [`CHUNK_ROWS`]; chunk `i` draws from its own
//! PRNG seeded from `(seed, i)`, so no chunk depends on another or on the
//! thread that makes it. Batches of chunks are made in parallel with rayon
//! while the main thread writes the previous batch, in order, through a large
//! buffered writer; buffers are recycled, so memory stays bounded (a few
//! batches) however many rows are asked for. Rows are formatted into a byte
//! buffer with lookup tables for hex and digits, never with `format!`.
//!
//! # Duplicates
//!
//! With `--duplicates P`, each row other than the first of its chunk is, with
//! probability `P`, a repeat: it takes one of the ids already written in the
//! same chunk (chosen uniformly among them) with a price different from the
//! one that id last had, so "later row wins" is always visible. Repeats stay
//! inside a chunk so that they are as deterministic as the rest.
//!
//! # Churn
//!
//! With `--churn P`, the output is the feed without it (the same `--seed`,
//! `--rows` and `--duplicates`) with a fraction `P` of its rows changed,
//! a quarter each way: another price, another expiration date, the row
//! left out, or a new id after it: the next feed of a partner whose
//! promotions change. Which rows change is drawn from a PRNG of its own,
//! seeded from `--churn-seed`, so the rows that do not change are the
//! same bytes as without it. A sampled id (`--ids-out`) whose row is
//! left out is not written.
//!
//! # Sampled ids
//!
//! `--ids-out PATH` also writes `K = min(--ids-sample, --rows)` ids of the
//! output, one per line, taken from the rows `floor(j * rows / K)` for
//! `j in 0..K`: spread evenly over the file and in file order. Without
//! duplicates they are distinct; with duplicates a sampled row may be a repeat,
//! so an id may then appear more than once.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rayon::prelude::*;

/// Rows per chunk, the unit of parallel work and of seeding.
///
/// Changing it changes the output for a given seed.
const CHUNK_ROWS: u64 = 65_536;
/// Longest row: 36 (id) + 1 + 10 (`100.000000`) + 1 + 30 (date) + 1 (LF) = 79.
const MAX_ROW_LEN: usize = 80;
/// Capacity of each buffered writer.
const WRITER_CAPACITY: usize = 8 << 20;
/// Most chunks generated per batch; bounds memory on machines with many cores.
const MAX_BATCH_CHUNKS: usize = 32;

/// Smallest and largest price, in millionths.
const PRICE_MIN: u64 = 10_000;
const PRICE_MAX: u64 = 100_000_000;

/// First and last year of expiration dates.
const FIRST_YEAR: i64 = 2018;
const LAST_YEAR: i64 = 2026;
const YEARS: usize = (LAST_YEAR - FIRST_YEAR + 1) as usize;
/// Percent of rows written in UTC rather than Europe/Berlin time.
const UTC_PERCENT: u64 = 8;

const SECS_PER_DAY: i64 = 86_400;

/// Generate a realistic, reproducible promotions CSV (id,price,expiration_date).
#[derive(Parser, Debug)]
#[command(
    name = "gen-promotions",
    version,
    about = "A fast, seeded generator of realistic partner promotion feeds (CSV).",
    long_about = None
)]
struct Args {
    /// Rows to write.
    #[arg(long, default_value_t = 1000)]
    rows: u64,

    /// PRNG seed: the same seed, rows and duplicates give byte-identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Fraction (0..=1) of rows that repeat an earlier row's id with another price.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    duplicates: f64,

    /// Where to write the CSV; `-` is stdout.
    #[arg(long, default_value = "-")]
    out: PathBuf,

    /// Also write ids present in the output here, one per line; `-` is stdout.
    #[arg(long)]
    ids_out: Option<PathBuf>,

    /// How many ids `--ids-out` gets, sampled evenly (capped at --rows).
    #[arg(long, default_value_t = 100_000)]
    ids_sample: u64,

    /// Fraction (0..=1) of rows changed against the same feed without it:
    /// each such row, in equal shares, gets another price, another
    /// expiration date, is left out, or is followed by a new id.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    churn: f64,

    /// Which rows `--churn` changes, and how: another seed is another feed
    /// of the same churn against the same base.
    #[arg(long, default_value_t = 1)]
    churn_seed: u64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let p: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a fraction within 0..=1"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nobody wants the rest, and that is fine.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-promotions: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A large buffered writer on `path`, or on stdout for `-`.
fn open_output(path: &Path) -> Result<Box<dyn Write>> {
    if is_stdout(path) {
        return Ok(Box::new(BufWriter::with_capacity(
            WRITER_CAPACITY,
            io::stdout().lock(),
        )));
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(BufWriter::with_capacity(WRITER_CAPACITY, file)))
}

fn run(args: &Args) -> Result<()> {
    if let Some(ids) = &args.ids_out {
        if is_stdout(ids) && is_stdout(&args.out) {
            bail!("--out and --ids-out cannot both be stdout (`-`)");
        }
    }
    let plan = Plan::new(args);
    let mut out = open_output(&args.out)?;
    let mut ids_out = match &args.ids_out {
        Some(path) => Some((open_output(path)?, path)),
        None => None,
    };
    let out_name = args.out.display();

    let n_chunks = args.rows.div_ceil(CHUNK_ROWS);
    let batch_chunks = (2 * rayon::current_num_threads()).clamp(4, MAX_BATCH_CHUNKS) as u64;
    let pool = Pool::default();

    std::thread::scope(|scope| -> Result<()> {
        // One batch in the channel, one being made, one being written.
        let (tx, rx) = sync_channel::<Vec<Chunk>>(1);
        let (plan, pool) = (&plan, &pool);
        scope.spawn(move || {
            let mut first = 0;
            while first < n_chunks {
                let last = (first + batch_chunks).min(n_chunks);
                let batch: Vec<Chunk> = (first..last)
                    .into_par_iter()
                    .map(|index| {
                        let mut chunk = pool.take();
                        plan.fill(index, &mut chunk);
                        chunk
                    })
                    .collect();
                if tx.send(batch).is_err() {
                    return; // the writer failed and said why
                }
                first = last;
            }
        });
        // Leaving early drops `rx`, which stops the producer.
        for batch in rx {
            for chunk in batch {
                out.write_all(&chunk.rows)
                    .with_context(|| format!("cannot write {out_name}"))?;
                if let Some((ids, path)) = &mut ids_out {
                    ids.write_all(&chunk.ids)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                pool.put(chunk);
            }
        }
        Ok(())
    })?;

    out.flush()
        .with_context(|| format!("cannot write {out_name}"))?;
    if let Some((ids, path)) = &mut ids_out {
        ids.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The bytes made for one chunk, plus scratch space; recycled through [`Pool`].
#[derive(Default)]
struct Chunk {
    /// CSV rows.
    rows: Vec<u8>,
    /// Sampled ids, one per line.
    ids: Vec<u8>,
    /// Distinct ids of the chunk so far with their latest price; kept only
    /// for duplicates.
    seen: Vec<(u128, u32)>,
}

/// Spent chunks, reused so that steady-state generation allocates nothing.
#[derive(Default)]
struct Pool(Mutex<Vec<Chunk>>);

impl Pool {
    fn take(&self) -> Chunk {
        self.0.lock().unwrap().pop().unwrap_or_default()
    }

    fn put(&self, chunk: Chunk) {
        self.0.lock().unwrap().push(chunk);
    }
}

/// Everything that decides the output: a chunk is a function of the plan and its index.
struct Plan {
    seed: u64,
    rows: u64,
    /// A row repeats an earlier id when a draw is below this; `None` for no duplicates.
    dup_below: Option<u64>,
    /// Ids to sample for `--ids-out` (0 when not asked for).
    samples: u64,
    /// A row changes when a draw of the churn PRNG is below this; `None`
    /// for no churn.
    churn_below: Option<u64>,
    churn_seed: u64,
    /// Range of instants (Unix seconds) that expiration dates are drawn from.
    first_instant: i64,
    instant_span: u64,
    /// For each year, the instants (Unix seconds) where Central European
    /// Summer Time starts and ends.
    summer: [(i64, i64); YEARS],
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let below = |p: f64| {
            if p <= 0.0 {
                None
            } else if p >= 1.0 {
                Some(u64::MAX)
            } else {
                // Casting a float to an integer saturates.
                Some((p * 18_446_744_073_709_551_616.0) as u64)
            }
        };
        let dup_below = below(args.duplicates);
        let first_instant = days_from_civil(FIRST_YEAR, 1, 1) * SECS_PER_DAY;
        // Stop an hour early so that Berlin time (CET, +1h) stays within LAST_YEAR.
        let end_instant = days_from_civil(LAST_YEAR + 1, 1, 1) * SECS_PER_DAY - 3600;
        let mut summer = [(0, 0); YEARS];
        for (i, s) in summer.iter_mut().enumerate() {
            let year = FIRST_YEAR + i as i64;
            // EU rule: last Sunday of March to last Sunday of October, 01:00 UTC.
            *s = (
                last_sunday(year, 3) * SECS_PER_DAY + 3600,
                last_sunday(year, 10) * SECS_PER_DAY + 3600,
            );
        }
        Plan {
            seed: args.seed,
            rows: args.rows,
            dup_below,
            samples: if args.ids_out.is_some() {
                args.ids_sample.min(args.rows)
            } else {
                0
            },
            churn_below: below(args.churn),
            churn_seed: args.churn_seed,
            first_instant,
            instant_span: (end_instant - first_instant) as u64,
            summer,
        }
    }

    /// Makes chunk `index` into `chunk`, replacing what it held.
    fn fill(&self, index: u64, chunk: &mut Chunk) {
        let start = index * CHUNK_ROWS;
        let end = (start + CHUNK_ROWS).min(self.rows);
        let n = (end - start) as usize;
        let mut rng = Rng::for_chunk(self.seed, index);
        let mut churn = Rng::for_chunk(self.churn_seed ^ 0x00c4_0a2e_5eed_0000, index);

        chunk.rows.clear();
        chunk.rows.reserve(n * MAX_ROW_LEN);
        chunk.ids.clear();
        chunk.seen.clear();

        // Sample j is row floor(j * rows / K); this chunk holds samples
        // ceil(start * K / rows) .. ceil(end * K / rows).
        let (mut sample, samples_end) = if self.samples == 0 {
            (0, 0)
        } else {
            (
                self.first_sample_at_or_after(start),
                self.first_sample_at_or_after(end),
            )
        };
        let mut next_sampled_row = self.sampled_row(sample);

        let mut row = [0u8; MAX_ROW_LEN];
        for i in 0..n {
            let (id, units) = match self.dup_below {
                Some(below) if i > 0 && rng.next() < below => {
                    let k = rng.below(chunk.seen.len() as u64) as usize;
                    let (id, latest) = chunk.seen[k];
                    let mut units = self.price(&mut rng);
                    while units == latest {
                        units = self.price(&mut rng);
                    }
                    chunk.seen[k].1 = units;
                    (id, units)
                }
                _ => {
                    let fresh = (uuid_v4(&mut rng), self.price(&mut rng));
                    if self.dup_below.is_some() {
                        chunk.seen.push(fresh);
                    }
                    fresh
                }
            };
            let mut instant = self.first_instant + rng.below(self.instant_span) as i64;
            let utc = rng.below(100) < UTC_PERCENT;
            // The churn draws come from their own PRNG, after the row's.
            let (mut units, mut kept, mut added) = (units, true, None);
            if self.churn_below.is_some_and(|below| churn.next() < below) {
                match churn.below(4) {
                    0 => {
                        let was = units;
                        while units == was {
                            units = self.price(&mut churn);
                        }
                    }
                    1 => instant = self.first_instant + churn.below(self.instant_span) as i64,
                    2 => kept = false,
                    _ => added = Some((uuid_v4(&mut churn), self.price(&mut churn))),
                }
            }
            let zone = |instant| match utc {
                true => Zone::Utc,
                false if self.is_summer(instant) => Zone::Cest,
                false => Zone::Cet,
            };
            let mut write = |id, units, rows: &mut Vec<u8>| {
                let mut at = write_uuid(id, &mut row);
                row[at] = b',';
                at += 1;
                at += write_price(units, &mut row[at..]);
                row[at] = b',';
                at += 1;
                at += write_date(instant, zone(instant), &mut row[at..]);
                row[at] = b'\n';
                at += 1;
                rows.extend_from_slice(&row[..at]);
            };
            if kept {
                write(id, units, &mut chunk.rows);
            }
            if let Some((id, units)) = added {
                write(id, units, &mut chunk.rows);
            }

            if sample < samples_end && start + i as u64 == next_sampled_row {
                if kept {
                    let mut line = [b'\n'; 37];
                    write_uuid(id, &mut line);
                    chunk.ids.extend_from_slice(&line);
                }
                sample += 1;
                next_sampled_row = self.sampled_row(sample);
            }
        }
    }

    /// A price in millionths, uniform in `PRICE_MIN..=PRICE_MAX`.
    fn price(&self, rng: &mut Rng) -> u32 {
        (PRICE_MIN + rng.below(PRICE_MAX - PRICE_MIN + 1)) as u32
    }

    /// Row of sample `j`: `floor(j * rows / K)`.
    fn sampled_row(&self, j: u64) -> u64 {
        if self.samples == 0 {
            return u64::MAX;
        }
        (u128::from(j) * u128::from(self.rows) / u128::from(self.samples)) as u64
    }

    /// First sample whose row is `>= row`: `ceil(row * K / rows)`.
    fn first_sample_at_or_after(&self, row: u64) -> u64 {
        let k = u128::from(self.samples);
        let rows = u128::from(self.rows);
        (u128::from(row) * k).div_ceil(rows) as u64
    }

    /// Whether Berlin keeps summer time (CEST) at `instant`.
    fn is_summer(&self, instant: i64) -> bool {
        // The average Gregorian year can be a day off the real one near New
        // Year, but then the instant is in winter under either year's rule.
        let year = ((instant - self.first_instant) / 31_556_952) as usize;
        let (start, end) = self.summer[year.min(YEARS - 1)];
        (start..end).contains(&instant)
    }
}

/// A 128-bit random id with the version (4) and variant (RFC 4122) bits set.
fn uuid_v4(rng: &mut Rng) -> u128 {
    let bits = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// Byte `b` as two lowercase hex digits.
static HEX: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    t
};

/// `n < 100` as two decimal digits.
static DEC: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Where each of the 16 id bytes goes in `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
const UUID_AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// Writes `id` as a lowercase hyphenated UUID (36 bytes) at the start of `out`.
#[inline]
fn write_uuid(id: u128, out: &mut [u8]) -> usize {
    let out = &mut out[..36];
    for (byte, &at) in id.to_be_bytes().iter().zip(&UUID_AT) {
        out[at..at + 2].copy_from_slice(&HEX[usize::from(*byte)]);
    }
    for at in [8, 13, 18, 23] {
        out[at] = b'-';
    }
    36
}

#[inline]
fn put2(out: &mut [u8], at: usize, n: u32) {
    out[at..at + 2].copy_from_slice(&DEC[n as usize]);
}

/// Writes `units` millionths (at most 100.000000) with 6 decimals; returns the length.
#[inline]
fn write_price(units: u32, out: &mut [u8]) -> usize {
    let int = units / 1_000_000;
    let frac = units % 1_000_000;
    let mut at = if int >= 100 {
        out[..3].copy_from_slice(b"100");
        3
    } else if int >= 10 {
        put2(out, 0, int);
        2
    } else {
        out[0] = b'0' + int as u8;
        1
    };
    out[at] = b'.';
    put2(out, at + 1, frac / 10_000);
    put2(out, at + 3, frac / 100 % 100);
    put2(out, at + 5, frac % 100);
    at += 7;
    at
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zone {
    Cest,
    Cet,
    Utc,
}

impl Zone {
    fn offset_secs(self) -> i64 {
        match self {
            Zone::Cest => 7200,
            Zone::Cet => 3600,
            Zone::Utc => 0,
        }
    }

    /// What Go's `-0700 MST` writes, with the separating space.
    fn suffix(self) -> &'static [u8] {
        match self {
            Zone::Cest => b" +0200 CEST",
            Zone::Cet => b" +0100 CET",
            Zone::Utc => b" +0000 UTC",
        }
    }
}

/// Writes `instant` (Unix seconds) as `YYYY-MM-DD HH:MM:SS +hhmm ZONE` in `zone`.
#[inline]
fn write_date(instant: i64, zone: Zone, out: &mut [u8]) -> usize {
    let local = instant + zone.offset_secs();
    let (days, secs) = (
        local.div_euclid(SECS_PER_DAY),
        local.rem_euclid(SECS_PER_DAY) as u32,
    );
    let (year, month, day) = civil_from_days(days);
    let year = year as u32;
    put2(out, 0, year / 100);
    put2(out, 2, year % 100);
    out[4] = b'-';
    put2(out, 5, month);
    out[7] = b'-';
    put2(out, 8, day);
    out[10] = b' ';
    put2(out, 11, secs / 3600);
    out[13] = b':';
    put2(out, 14, secs / 60 % 60);
    out[16] = b':';
    put2(out, 17, secs % 60);
    let suffix = zone.suffix();
    out[19..19 + suffix.len()].copy_from_slice(suffix);
    19 + suffix.len()
}

// ---------------------------------------------------------------------------
// Calendar (proleptic Gregorian; Howard Hinnant's algorithms)
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of days since 1970-01-01.
#[inline]
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of the last Sunday of `month` (March or October).
fn last_sunday(year: i64, month: u32) -> i64 {
    let last = days_from_civil(year, month, 31);
    // 1970-01-01 was a Thursday; weekday 0 is Sunday.
    last - (last + 4).rem_euclid(7)
}

// ---------------------------------------------------------------------------
// PRNG: xoshiro256++ seeded with splitmix64
// ---------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng([u64; 4]);

impl Rng {
    /// The stream of chunk `index` under `seed`.
    fn for_chunk(seed: u64, index: u64) -> Rng {
        let mut s = seed;
        let mut state = splitmix64(&mut s);
        let mut i = index;
        state ^= splitmix64(&mut i).rotate_left(32);
        // splitmix64 never yields four zeros in a row, as xoshiro requires.
        Rng(std::array::from_fn(|_| splitmix64(&mut state)))
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Roughly uniform in `0..n` (multiply-shift; the bias is below `n / 2^64`).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rows: u64, duplicates: f64, ids_sample: u64) -> Plan {
        churned(rows, duplicates, ids_sample, 0.0)
    }

    fn churned(rows: u64, duplicates: f64, ids_sample: u64, churn: f64) -> Plan {
        Plan::new(&Args {
            rows,
            seed: 42,
            duplicates,
            out: "-".into(),
            ids_out: Some("ids".into()),
            ids_sample,
            churn,
            churn_seed: 3,
        })
    }

    #[test]
    fn churn_changes_that_share_of_rows_each_way_and_keeps_the_rest() {
        let rows = |plan: &Plan| -> std::collections::HashMap<String, String> {
            let (text, _) = all(plan);
            String::from_utf8(text)
                .unwrap()
                .lines()
                .map(|l| {
                    let (id, rest) = l.split_once(',').unwrap();
                    (id.to_string(), rest.to_string())
                })
                .collect()
        };
        let n = 200_000;
        let (base, next) = (rows(&plan(n, 0.0, 0)), rows(&churned(n, 0.0, 0, 0.02)));
        let (mut price, mut date, mut removed) = (0, 0, 0);
        for (id, was) in &base {
            match next.get(id) {
                None => removed += 1,
                Some(now) if now == was => {}
                Some(now) => {
                    let (p0, d0) = was.split_once(',').unwrap();
                    let (p1, d1) = now.split_once(',').unwrap();
                    price += usize::from(p0 != p1 && d0 == d1);
                    date += usize::from(p0 == p1 && d0 != d1);
                }
            }
        }
        let added = next.keys().filter(|id| !base.contains_key(*id)).count();
        // 2% of 200,000 rows is 4,000, a quarter each way: about 1,000.
        for (kind, count) in [
            ("price", price),
            ("date", date),
            ("removed", removed),
            ("added", added),
        ] {
            assert!((800..1200).contains(&count), "{kind}: {count}");
        }
        assert_eq!(all(&churned(n, 0.0, 0, 0.0)).0, all(&plan(n, 0.0, 0)).0);
    }

    fn all(plan: &Plan) -> (Vec<u8>, Vec<u8>) {
        let (mut rows, mut ids) = (Vec::new(), Vec::new());
        for index in 0..plan.rows.div_ceil(CHUNK_ROWS) {
            let mut chunk = Chunk::default();
            plan.fill(index, &mut chunk);
            rows.extend_from_slice(&chunk.rows);
            ids.extend_from_slice(&chunk.ids);
        }
        (rows, ids)
    }

    #[test]
    fn calendar_round_trips() {
        for days in days_from_civil(1999, 1, 1)..days_from_civil(2031, 1, 1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2023, 3, 1) - 1),
            (2023, 2, 28)
        );
    }

    #[test]
    fn summer_time_follows_eu_rules() {
        let p = plan(1, 0.0, 0);
        // 2018: 25 March 01:00 UTC to 28 October 01:00 UTC.
        let start = days_from_civil(2018, 3, 25) * SECS_PER_DAY + 3600;
        let end = days_from_civil(2018, 10, 28) * SECS_PER_DAY + 3600;
        assert!(!p.is_summer(start - 1) && p.is_summer(start));
        assert!(p.is_summer(end - 1) && !p.is_summer(end));
        // 2026: 29 March to 25 October.
        assert!(p.is_summer(days_from_civil(2026, 3, 29) * SECS_PER_DAY + 3600));
        assert!(!p.is_summer(days_from_civil(2026, 10, 25) * SECS_PER_DAY + 3600));
        assert!(!p.is_summer(p.first_instant));
        assert!(!p.is_summer(p.first_instant + p.instant_span as i64 - 1));
    }

    #[test]
    fn formats_like_the_feed() {
        let mut buf = [0u8; MAX_ROW_LEN];
        let id = 0xd018ef0b_dbd9_48f1_ac1a_eb4d90e57118u128;
        assert_eq!(write_uuid(id, &mut buf), 36);
        assert_eq!(
            &buf[..36],
            uuid::Uuid::from_u128(id)
                .hyphenated()
                .to_string()
                .as_bytes()
        );
        for (units, text) in [
            (60_683_466, "60.683466"),
            (10_000, "0.010000"),
            (100_000_000, "100.000000"),
            (9_000_001, "9.000001"),
        ] {
            let n = write_price(units, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), text);
        }
        let instant = days_from_civil(2018, 8, 4) * SECS_PER_DAY + 3 * 3600 + 32 * 60 + 31;
        let n = write_date(instant, Zone::Cest, &mut buf);
        assert_eq!(&buf[..n], b"2018-08-04 05:32:31 +0200 CEST");
    }

    #[test]
    fn rows_are_valid() {
        let (rows, _) = all(&plan(20_000, 0.0, 0));
        let text = std::str::from_utf8(&rows).unwrap();
        assert_eq!(text.lines().count(), 20_000);
        for line in text.lines() {
            let mut fields = line.split(',');
            let id = uuid::Uuid::parse_str(fields.next().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let price = fields.next().unwrap();
            assert_eq!(price.split('.').nth(1).unwrap().len(), 6);
            let price: f64 = price.parse().unwrap();
            assert!((0.01..=100.0).contains(&price));
            let date = fields.next().unwrap();
            assert!(fields.next().is_none());
            let year: i64 = date[..4].parse().unwrap();
            assert!((FIRST_YEAR..=LAST_YEAR).contains(&year));
            assert!(
                date.ends_with(" +0200 CEST")
                    || date.ends_with(" +0100 CET")
                    || date.ends_with(" +0000 UTC")
            );
        }
    }

    #[test]
    fn output_is_a_prefix_of_longer_output_and_samples_are_rows() {
        let (short, short_ids) = all(&plan(70_000, 0.1, 70_000));
        let (long, _) = all(&plan(200_000, 0.1, 10));
        assert!(long.starts_with(&short));
        let ids: Vec<&[u8]> = short
            .split(|&b| b == b'\n')
            .map(|l| &l[..l.len().min(36)])
            .collect();
        let sampled: Vec<&[u8]> = short_ids.split(|&b| b == b'\n').collect();
        assert_eq!(&ids[..], &sampled[..], "sampling every row gives every id");
    }

    #[test]
    fn duplicates_repeat_earlier_ids_with_other_prices() {
        let (rows, _) = all(&plan(100_000, 0.25, 0));
        let mut seen = std::collections::HashMap::new();
        let mut repeats = 0;
        for line in std::str::from_utf8(&rows).unwrap().lines() {
            let mut f = line.split(',');
            let (id, price) = (f.next().unwrap(), f.next().unwrap());
            if let Some(old) = seen.insert(id, price) {
                assert_ne!(old, price);
                repeats += 1;
            }
        }
        assert!((24_000..26_000).contains(&repeats), "{repeats} repeats");
    }
}
