//! What one generation changes against another: one merge of two sorted
//! files.
//!
//! Read-only stores check that a version is intact, never that it is sane:
//! a feed with every price zeroed is swapped in like any other. Both
//! generations are sorted by the same key, so walking them side by side
//! gives the exact difference (ids added, removed, repriced, re-dated) in
//! one sequential pass over files that are usually still in the page cache,
//! in memory that does not grow with them. The builder compares every new
//! generation with the live one ([`Churn::between`], on every core), its
//! guards refuse what no sane feed does, and `promo diff` prints the ids
//! themselves ([`walk`]).
//!
//! Prices compare by value (`12.50` and `12.5` are the same price); dates
//! compare as the text the API returns.

use std::ops::{ControlFlow, Range};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::generation::date::{Dates, Decoded};
use crate::generation::json;
use crate::generation::record::Price;
use crate::generation::table::{Found, Table};

/// The kinds of ids a churn counts, in the order it lists them.
pub const KINDS: [&str; 5] = ["added", "removed", "price", "expiry", "unchanged"];

/// Changes kept as examples for a refusal's message and the sidecar.
pub const EXAMPLES: usize = 5;

/// A price that moved by more than this factor, either way, is a jump
/// (cents for units is 100x; a price that went to 0 is one too).
pub const JUMP_FACTOR: f64 = 10.0;

/// One id that differs: its old values, its new ones, or both. In JSON,
/// `{"id": ..., "old": {...} or null, "new": {...} or null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    #[serde(rename = "id", with = "json::id")]
    pub key: u128,
    #[serde(default)]
    pub old: Option<Values>,
    #[serde(default)]
    pub new: Option<Values>,
}

/// A promotion's price and expiration date, as the API prints them (in
/// JSON as the API writes them too: see [`json::price`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values {
    #[serde(with = "json::price")]
    pub price: String,
    #[serde(rename = "expiration_date")]
    pub date: String,
}

impl Values {
    fn of(found: &Found<'_>) -> Values {
        let mut price = Vec::new();
        if let Some(p) = found.price() {
            p.write_to(&mut price);
        }
        Values {
            price: String::from_utf8_lossy(&price).into_owned(),
            date: String::from_utf8_lossy(&found.date()).into_owned(),
        }
    }
}

impl Change {
    /// `id price,date -> price,date` (the values as the feed's columns),
    /// with `-` for a side that has none: the form of a refusal's examples
    /// and of `promo diff`'s lines.
    pub fn describe(&self) -> String {
        let side = |v: &Option<Values>| match v {
            Some(v) => format!("{},{}", v.price, v.date),
            None => "-".to_string(),
        };
        format!(
            "{} {} -> {}",
            uuid::Uuid::from_u128(self.key).hyphenated(),
            side(&self.old),
            side(&self.new)
        )
    }
}

/// What a generation changes against the one before it. In JSON (a
/// sidecar, a manifest, `inspect --json`, `GET /generations`), the fields
/// of its private `StoredChurn` form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredChurn", from = "StoredChurn")]
pub struct Churn {
    /// The sequence compared against (0 when unknown: a store's manifest
    /// whose builder compared with a generation the store does not hold as
    /// its newest), its record count, and its body checksum, which names
    /// it in any directory or store.
    pub previous: u64,
    pub previous_records: u64,
    pub previous_checksum: u64,
    /// Ids only in the new generation, and only in the old one.
    pub added: u64,
    pub removed: u64,
    /// Ids in both whose price changed, whose date changed, whose price or
    /// date changed (an id may be in both of the first two), and neither.
    pub price: u64,
    pub expiry: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Ids in both whose price went to 0 or moved by more than
    /// [`JUMP_FACTOR`] either way.
    pub price_jumps: u64,
    /// The median of new / old - 1 over the ids whose price changed
    /// (within 0.23%: see [`Ratios`]); `None` when none did.
    pub median_price_change: Option<f64>,
    /// The first [`EXAMPLES`] differing ids, and the first price jumps.
    pub examples: Vec<Change>,
    pub jump_examples: Vec<Change>,
}

impl Churn {
    /// Compares `new` with `old`, on every core: the key space is cut into
    /// ranges, each merged on its own, and the counts added up.
    pub fn between(old: &Table, new: &Table) -> Churn {
        let dates = SameDate::new(old, new);
        let pieces = (rayon::current_num_threads() * 4) as u128;
        let step = u128::MAX / pieces;
        let bounds: Vec<(u64, u64)> = (0..=pieces)
            .map(|i| match i {
                0 => (0, 0),
                i if i == pieces => (old.len(), new.len()),
                i => (old.lower_bound(i * step), new.lower_bound(i * step)),
            })
            .collect();
        let parts: Vec<Tally> = old.in_order(|| {
            new.in_order(|| {
                bounds
                    .par_windows(2)
                    .map(|w| {
                        let mut tally = Tally::default();
                        let (a, b) = (w[0].0..w[1].0, w[0].1..w[1].1);
                        merge(old, a, new, b, &dates, &mut tally, None);
                        tally
                    })
                    .collect()
            })
        });
        let mut tally = Tally::default();
        for part in parts {
            tally.add(part);
        }
        tally.churn(old)
    }

    /// Added, removed and changed ids, in percent of the previous
    /// generation's ids (100% when it had none).
    pub fn churn_percent(&self) -> f64 {
        percent(
            self.added + self.removed + self.changed,
            self.previous_records,
        )
    }

    /// Ids whose price jumped, in percent of the ids in both generations.
    pub fn price_jump_percent(&self) -> f64 {
        percent(self.price_jumps, self.changed + self.unchanged)
    }

    /// Whether the two generations hold the same promotions.
    pub fn is_same(&self) -> bool {
        self.added + self.removed + self.changed == 0
    }

    /// The figures in one line: `added=3 removed=1 price=2 ...`.
    pub fn summary(&self) -> String {
        let median = match self.median_price_change {
            Some(m) => format!("{:+.1}%", m * 100.0),
            None => "-".to_string(),
        };
        format!(
            "against={} added={} removed={} price={} expiry={} unchanged={} churn={:.2}% \
             price_jumps={} price_jump_share={:.2}% median_price_change={median}",
            self.previous,
            self.added,
            self.removed,
            self.price,
            self.expiry,
            self.unchanged,
            self.churn_percent(),
            self.price_jumps,
            self.price_jump_percent(),
        )
    }

    /// The counts by kind ([`KINDS`]), as `promo_build_churn_ids{kind}`
    /// labels them.
    pub fn kinds(&self) -> [(&'static str, u64); 5] {
        let counts = [
            self.added,
            self.removed,
            self.price,
            self.expiry,
            self.unchanged,
        ];
        std::array::from_fn(|i| (KINDS[i], counts[i]))
    }
}

/// A [`Churn`] as JSON: its figures, and the two percentages it implies
/// (written for readers, not read back).
#[derive(Serialize, Deserialize)]
struct StoredChurn {
    /// The sequence compared against; null when unknown.
    against: Option<u64>,
    against_records: u64,
    #[serde(with = "json::hex")]
    against_checksum: u64,
    added: u64,
    removed: u64,
    price: u64,
    expiry: u64,
    changed: u64,
    unchanged: u64,
    price_jumps: u64,
    median_price_change: Option<f64>,
    #[serde(default, skip_deserializing)]
    churn_percent: f64,
    #[serde(default, skip_deserializing)]
    price_jump_percent: f64,
    examples: Vec<Change>,
    jump_examples: Vec<Change>,
}

impl From<Churn> for StoredChurn {
    fn from(c: Churn) -> StoredChurn {
        StoredChurn {
            against: (c.previous != 0).then_some(c.previous),
            against_records: c.previous_records,
            against_checksum: c.previous_checksum,
            churn_percent: c.churn_percent(),
            price_jump_percent: c.price_jump_percent(),
            added: c.added,
            removed: c.removed,
            price: c.price,
            expiry: c.expiry,
            changed: c.changed,
            unchanged: c.unchanged,
            price_jumps: c.price_jumps,
            median_price_change: c.median_price_change,
            examples: c.examples,
            jump_examples: c.jump_examples,
        }
    }
}

impl From<StoredChurn> for Churn {
    fn from(s: StoredChurn) -> Churn {
        Churn {
            previous: s.against.unwrap_or(0),
            previous_records: s.against_records,
            previous_checksum: s.against_checksum,
            added: s.added,
            removed: s.removed,
            price: s.price,
            expiry: s.expiry,
            changed: s.changed,
            unchanged: s.unchanged,
            price_jumps: s.price_jumps,
            median_price_change: s.median_price_change,
            examples: s.examples,
            jump_examples: s.jump_examples,
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        if part == 0 {
            0.0
        } else {
            100.0
        }
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Streams every difference between `old` and `new` to `each`, in id
/// order, on one thread: `promo diff`. Returns the counts; they are of the
/// ids before the stop if `each` stops the walk (its reader went away).
pub fn walk(old: &Table, new: &Table, mut each: impl FnMut(&Change) -> ControlFlow<()>) -> Churn {
    let mut tally = Tally::default();
    let dates = SameDate::new(old, new);
    let (a, b) = (0..old.len(), 0..new.len());
    old.in_order(|| new.in_order(|| merge(old, a, new, b, &dates, &mut tally, Some(&mut each))));
    tally.churn(old)
}

/// Counts of one merged range.
#[derive(Default)]
struct Tally {
    added: u64,
    removed: u64,
    price: u64,
    expiry: u64,
    changed: u64,
    unchanged: u64,
    jumps: u64,
    ratios: Ratios,
    examples: Vec<Change>,
    jump_examples: Vec<Change>,
}

impl Tally {
    /// Adds a later range's counts; the examples stay the first by id.
    fn add(&mut self, other: Tally) {
        self.added += other.added;
        self.removed += other.removed;
        self.price += other.price;
        self.expiry += other.expiry;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.jumps += other.jumps;
        self.ratios.add(&other.ratios);
        for (mine, theirs) in [
            (&mut self.examples, other.examples),
            (&mut self.jump_examples, other.jump_examples),
        ] {
            let room = EXAMPLES - mine.len();
            mine.extend(theirs.into_iter().take(room));
        }
    }

    fn churn(self, old: &Table) -> Churn {
        Churn {
            previous: old.sequence(),
            previous_records: old.len(),
            previous_checksum: old.header().body_checksum,
            added: self.added,
            removed: self.removed,
            price: self.price,
            expiry: self.expiry,
            changed: self.changed,
            unchanged: self.unchanged,
            price_jumps: self.jumps,
            median_price_change: self.ratios.median().map(|r| r - 1.0),
            examples: self.examples,
            jump_examples: self.jump_examples,
        }
    }
}

/// Merges records `a` of `old` with records `b` of `new` (the same key
/// range of each) into `tally`, handing each difference to `each` if given.
/// A difference is rendered (its prices and dates as text) only when
/// `each` or the examples want it.
/// What a walk hands each difference to; `Break` stops the walk.
type Each<'a> = dyn FnMut(&Change) -> ControlFlow<()> + 'a;

fn merge(
    old: &Table,
    a: Range<u64>,
    new: &Table,
    b: Range<u64>,
    dates: &SameDate,
    tally: &mut Tally,
    mut each: Option<&mut Each<'_>>,
) {
    let (mut i, mut j) = (a.start, b.start);
    let mut stop = false;
    let mut keep = |tally: &mut Tally, jump: bool, o: Option<&Found<'_>>, n: Option<&Found<'_>>| {
        let example = tally.examples.len() < EXAMPLES;
        let jump_example = jump && tally.jump_examples.len() < EXAMPLES;
        if each.is_none() && !example && !jump_example {
            return false;
        }
        let change = Change {
            key: o.or(n).map(|f| f.key()).unwrap_or_default(),
            old: o.map(Values::of),
            new: n.map(Values::of),
        };
        let stopped = each.as_mut().is_some_and(|each| each(&change).is_break());
        if jump_example {
            tally.jump_examples.push(change.clone());
        }
        if example {
            tally.examples.push(change);
        }
        stopped
    };
    while (i < a.end || j < b.end) && !stop {
        let o = (i < a.end).then(|| old.record(i));
        let n = (j < b.end).then(|| new.record(j));
        match (o, n) {
            (Some(o), Some(n)) if o.key() == n.key() => {
                i += 1;
                j += 1;
                // Most ids are unchanged: the same price and date bytes,
                // which mean the same values when the zone tables agree.
                if dates.same_bytes(&o, &n) {
                    tally.unchanged += 1;
                    continue;
                }
                let (op, np) = (o.price(), n.price());
                let price_changed = !same_price(op, np);
                let date_changed = !dates.same(&o, &n);
                if !price_changed && !date_changed {
                    tally.unchanged += 1;
                    continue;
                }
                tally.changed += 1;
                tally.expiry += u64::from(date_changed);
                let mut jump = false;
                if price_changed {
                    tally.price += 1;
                    let ratio = ratio(op, np);
                    tally.ratios.push(ratio);
                    jump = !(1.0 / JUMP_FACTOR..=JUMP_FACTOR).contains(&ratio);
                    tally.jumps += u64::from(jump);
                }
                stop = keep(tally, jump, Some(&o), Some(&n));
            }
            (Some(o), n) if n.is_none_or(|n| o.key() < n.key()) => {
                i += 1;
                tally.removed += 1;
                stop = keep(tally, false, Some(&o), None);
            }
            (_, Some(n)) => {
                j += 1;
                tally.added += 1;
                stop = keep(tally, false, None, Some(&n));
            }
            (_, None) => unreachable!("the loop runs while either side has records"),
        }
    }
}

/// Whether two prices are the same number, however many decimals each was
/// written with: `units_a / 10^sa == units_b / 10^sb`, in integers (units
/// are below 2^59 and scales at most 18, so the products fit a u128).
fn same_price(a: Option<Price>, b: Option<Price>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            u128::from(a.units()) * 10u128.pow(u32::from(b.scale()))
                == u128::from(b.units()) * 10u128.pow(u32::from(a.scale()))
        }
        (a, b) => a == b,
    }
}

fn value(p: Option<Price>) -> f64 {
    p.map_or(0.0, |p| p.units() as f64 / 10f64.powi(i32::from(p.scale())))
}

/// new / old; infinite when the old price was 0.
fn ratio(old: Option<Price>, new: Option<Price>) -> f64 {
    let (o, n) = (value(old), value(new));
    if o == 0.0 {
        f64::INFINITY
    } else {
        n / o
    }
}

/// Whether two records' dates read the same, without rendering them when
/// both are compact dates of version-2 files: the fields compare as bits
/// and the zones through a map from the old file's zone table to the new's.
struct SameDate {
    /// Old zone index to new zone index (`None`: no such zone in the new
    /// file); empty when either file is version 1.
    zones: Vec<Option<u32>>,
    /// Both files are version 2 and every old zone has the same index in
    /// the new table: equal compact date words are equal dates.
    same_indices: bool,
}

impl SameDate {
    /// Bits 0..42 of a compact word: every field but the zone.
    const FIELDS: u64 = (1 << 42) - 1;

    fn new(old: &Table, new: &Table) -> SameDate {
        let mut zones = Vec::new();
        if old.header().version >= 2 && new.header().version >= 2 {
            let by_text: std::collections::HashMap<&[u8], u32> =
                (0..).map_while(|i| new.zone(i).map(|z| (z, i))).collect();
            zones = (0..)
                .map_while(|i| old.zone(i))
                .map(|z| by_text.get(z).copied())
                .collect();
        }
        let same_indices =
            !zones.is_empty() && zones.iter().enumerate().all(|(i, z)| *z == Some(i as u32));
        SameDate {
            zones,
            same_indices,
        }
    }

    /// Whether two version-2 records' price and date are the same bytes,
    /// the date a compact one (an overflow word points into each file's
    /// own area) and the zone tables in agreement: then the promotion is
    /// unchanged, and nothing need be decoded.
    #[inline]
    fn same_bytes(&self, o: &Found<'_>, n: &Found<'_>) -> bool {
        let (o, n) = (o.bytes(), n.bytes());
        self.same_indices && o[16..32] == n[16..32] && o[31] & 0x80 == 0
    }

    fn same(&self, o: &Found<'_>, n: &Found<'_>) -> bool {
        if let (Some(ow), Some(nw)) = (o.date_word(), n.date_word()) {
            if let (
                Some(Decoded::Compact { zone: oz, .. }),
                Some(Decoded::Compact { zone: nz, .. }),
            ) = (ow.decode(), nw.decode())
            {
                return ow.0 & Self::FIELDS == nw.0 & Self::FIELDS
                    && self.zones.get(oz as usize).copied().flatten() == Some(nz);
            }
        }
        o.date() == n.date()
    }
}

/// A histogram of price ratios (new / old) on a log scale, for their
/// median in fixed memory: buckets a thousandth of a decade wide (0.23%)
/// from 10^-9 to 10^9, a ratio of 0 below them and larger ones (and
/// infinite: the old price was 0) above. The median is the mean of the
/// ratios in the bucket that holds it, so it is within 0.23% of the true
/// one, and exact when the ratios there are all the same (every price
/// doubled, or zeroed).
#[derive(Clone, Default)]
struct Ratios {
    counts: Vec<u64>,
    sums: Vec<f64>,
    total: u64,
}

impl Ratios {
    const PER_DECADE: f64 = 1000.0;
    const DECADES: f64 = 9.0;
    /// Bucket 0 holds 0 and tiny ratios; the last, huge ones.
    const BUCKETS: usize = (2.0 * Self::DECADES * Self::PER_DECADE) as usize + 2;

    fn bucket(ratio: f64) -> usize {
        if ratio <= 0.0 {
            return 0;
        }
        let at = (ratio.log10() + Self::DECADES) * Self::PER_DECADE;
        if at < 0.0 {
            0
        } else {
            // Saturating: an infinite ratio lands in the last bucket.
            (at.min((Self::BUCKETS - 2) as f64) as usize + 1).min(Self::BUCKETS - 1)
        }
    }

    fn push(&mut self, ratio: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; Self::BUCKETS];
            self.sums = vec![0.0; Self::BUCKETS];
        }
        let b = Self::bucket(ratio);
        self.counts[b] += 1;
        self.sums[b] += ratio;
        self.total += 1;
    }

    fn add(&mut self, other: &Ratios) {
        if other.total == 0 {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The ratio in the middle, or `None` when no price changed.
    fn median(&self) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let half = self.total.div_ceil(2);
        let mut seen = 0;
        let bucket = self.counts.iter().position(|&c| {
            seen += c;
            seen >= half
        })?;
        Some(self.sums[bucket] / self.counts[bucket] as f64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::generation::format::Writer;
    use std::path::Path;

    /// A generation of `rows` (key, price "units/scale", date), written by
    /// the real writer in key order, the first row of a key kept. The
    /// delta's tests write theirs with it too.
    pub(crate) fn table(
        dir: &Path,
        name: &str,
        sequence: u64,
        rows: &[(u128, (u64, u8), &str)],
    ) -> Table {
        let mut rows = rows.to_vec();
        rows.sort_by_key(|r| r.0);
        rows.dedup_by_key(|r| r.0);
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut w = Writer::new(file, &path, rows.len() as u64).unwrap();
        for (key, (units, scale), date) in rows {
            w.push_row(key, Price::new(units, scale).unwrap(), date.as_bytes())
                .unwrap();
        }
        w.finish().unwrap();
        Table::open_verified(&path, sequence).unwrap()
    }

    const D1: &str = "2030-01-01 00:00:00 +0200 CEST";
    const D2: &str = "2030-01-02 00:00:00 +0200 CEST";

    #[test]
    fn counts_every_kind_of_change_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let old = table(
            dir.path(),
            "old",
            7,
            &[
                (1, (100, 0), D1),  // unchanged
                (2, (100, 0), D1),  // removed
                (3, (1000, 1), D1), // the same price with a decimal more
                (4, (100, 0), D1),  // price
                (5, (100, 0), D1),  // expiry
                (6, (100, 0), D1),  // both
                (7, (100, 0), D1),  // to 0: a jump
                (8, (100, 0), D1),  // cents for units: a jump
            ],
        );
        let new = table(
            dir.path(),
            "new",
            8,
            &[
                (1, (100, 0), D1),
                (3, (100, 0), D1),
                (4, (110, 0), D1),
                (5, (100, 0), D2),
                (6, (90, 0), D2),
                (7, (0, 0), D1),
                (8, (10000, 0), D1),
                (9, (5, 0), "2030-01-01T00:00:00Z"), // added
            ],
        );
        let churn = Churn::between(&old, &new);
        assert_eq!(
            (churn.previous, churn.previous_records),
            (7, 8),
            "{churn:?}"
        );
        assert_eq!((churn.added, churn.removed), (1, 1));
        assert_eq!((churn.price, churn.expiry, churn.changed), (4, 2, 5));
        assert_eq!((churn.unchanged, churn.price_jumps), (2, 2));
        // Ratios 1.1, 0.9, 0, 100: the median lies between 0.9 and 1.1.
        let median = churn.median_price_change.unwrap();
        assert!((-0.1..=0.1).contains(&median), "{median}");
        assert!((churn.churn_percent() - 700.0 / 8.0).abs() < 1e-9);
        assert!((churn.price_jump_percent() - 200.0 / 7.0).abs() < 1e-9);
        let ids: Vec<u128> = churn.examples.iter().map(|c| c.key).collect();
        assert_eq!(ids, [2, 4, 5, 6, 7]);
        let jumps: Vec<String> = churn.jump_examples.iter().map(Change::describe).collect();
        assert_eq!(
            jumps,
            [
                format!("{} 100,{D1} -> 0,{D1}", uuid::Uuid::from_u128(7)),
                format!("{} 100,{D1} -> 10000,{D1}", uuid::Uuid::from_u128(8)),
            ]
        );

        // One walk finds the same, one difference at a time, in id order.
        let mut seen = Vec::new();
        let walked = walk(&old, &new, |c| {
            seen.push(c.key);
            ControlFlow::Continue(())
        });
        assert_eq!(seen, [2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(walked, churn);
        // Prices are JSON numbers, so "1.50" reads back as "1.5": the
        // JSON round-trips.
        let json = serde_json::to_value(&churn).unwrap();
        let back: Churn = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }

    #[test]
    fn the_same_dates_in_other_zone_tables_are_the_same() {
        let dir = tempfile::tempdir().unwrap();
        // The new file interns its zones in another order, and one date is
        // kept as written (overflow) in both.
        let odd = "next tuesday";
        let old = table(
            dir.path(),
            "old",
            1,
            &[
                (1, (1, 0), D1),
                (2, (1, 0), "2030-01-01 00:00:00Z"),
                (3, (1, 0), odd),
            ],
        );
        let new = table(
            dir.path(),
            "new",
            2,
            &[
                (0, (1, 0), "2031-01-01 00:00:00Z"),
                (1, (1, 0), D1),
                (2, (1, 0), "2030-01-01 00:00:00Z"),
                (3, (1, 0), odd),
            ],
        );
        let churn = Churn::between(&old, &new);
        assert_eq!(
            (churn.added, churn.changed, churn.unchanged),
            (1, 0, 3),
            "{churn:?}"
        );
        let other = table(
            dir.path(),
            "other",
            3,
            &[
                (1, (1, 0), D1),
                (2, (1, 0), "2030-01-01 00:00:00+00:00"),
                (3, (1, 0), "next monday"),
            ],
        );
        let churn = Churn::between(&old, &other);
        assert_eq!((churn.expiry, churn.unchanged), (2, 1), "{churn:?}");
        // The same zone tables, and another date kept as written at the
        // same place and length: the same bytes, yet another date.
        let same_zones = table(
            dir.path(),
            "same-zones",
            4,
            &[
                (1, (1, 0), D1),
                (2, (1, 0), "2030-01-01 00:00:00Z"),
                (3, (1, 0), "next sunday."),
            ],
        );
        let o = old.record(2);
        let n = same_zones.record(2);
        assert_eq!(
            o.bytes()[16..],
            n.bytes()[16..],
            "the test needs equal bytes"
        );
        let churn = Churn::between(&old, &same_zones);
        assert_eq!((churn.expiry, churn.unchanged), (1, 2), "{churn:?}");
    }

    #[test]
    fn parallel_ranges_agree_with_one_walk_on_many_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state
        };
        let mut old_rows = Vec::new();
        let mut new_rows = Vec::new();
        for _ in 0..20_000 {
            let key = (u128::from(next()) << 64) | u128::from(next());
            let roll = next() % 10;
            if roll != 0 {
                old_rows.push((key, (100, 2), D1));
            }
            if roll != 1 {
                let price = if roll == 2 { (250, 2) } else { (100, 2) };
                new_rows.push((key, price, D1));
            }
        }
        let old = table(dir.path(), "old", 1, &old_rows);
        let new = table(dir.path(), "new", 2, &new_rows);
        let mut walked_changes = 0;
        let walked = walk(&old, &new, |_| {
            walked_changes += 1;
            ControlFlow::Continue(())
        });
        let churn = Churn::between(&old, &new);
        assert_eq!(churn, walked);
        assert_eq!(walked_changes, churn.added + churn.removed + churn.changed);
        assert!(churn.added > 1000 && churn.removed > 1000 && churn.price > 1000);
        let median = churn.median_price_change.unwrap();
        assert!((median - 1.5).abs() < 0.005, "{median}");
        assert_eq!(churn.price_jumps, 0);
    }

    #[test]
    fn median_ratios_are_within_a_bucket() {
        let mut r = Ratios::default();
        assert_eq!(r.median(), None);
        for x in [0.5, 2.0, 3.0] {
            r.push(x);
        }
        assert_eq!(r.median(), Some(2.0));
        r.push(2.003);
        r.push(2.003);
        let mean = (2.0 + 2.0 * 2.003) / 3.0;
        assert!(
            (r.median().unwrap() - mean).abs() < 1e-9,
            "the mean of one bucket"
        );
        let mut zeros = Ratios::default();
        zeros.push(0.0);
        zeros.push(0.0);
        zeros.push(f64::INFINITY);
        assert_eq!(zeros.median(), Some(0.0));
    }
}
