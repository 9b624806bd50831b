//! Deltas: `delta::write`, `Delta::open` (`DeltaHeader::decode` and the body
//! checksum) and `Delta::apply`, against one fixed base generation of 64
//! records written by the real writer.
//!
//! The first byte picks a mode (`% 3`); the rest is its input:
//! - 0: a delta file, as is, opened and applied to the base;
//! - 1: edits that make a target from the base, three bytes each (what:
//!   reprice, re-date, remove or add; which record; a value): the delta
//!   from the base to the target is written, opened and applied;
//! - 2: as 1, with one byte of the written delta flipped first (the last
//!   three bytes of the input say which and how).
//!
//! Properties:
//! - nothing panics, whatever the delta's bytes;
//! - an applied delta's result is complete and verifies, and its header is
//!   the target the delta names (`finish_as` checks the count and body
//!   checksum before the header goes on);
//! - a written delta rebuilds its target byte for byte;
//! - a delta with a flipped byte is refused, or (never, with checksums on
//!   both headers and the body) rebuilds that same target.
#![no_main]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use promo::generation::delta::{self, Delta};
use promo::generation::format::Writer;
use promo::generation::record::Price;
use promo::generation::table::Table;

const BASE_RECORDS: u128 = 64;
const DATES: [&str; 3] = [
    "2030-01-01T00:00:00Z",
    "2030-01-02 00:00:00 +0200 CEST",
    "2030-01-02T00:00:00.25Z",
];

/// A promotion: key, price in cents, date (an index in `DATES`).
type Row = (u128, u64, usize);

/// The scratch directory and the base, made once.
fn base() -> &'static (tempfile::TempDir, PathBuf, Vec<Row>) {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf, Vec<Row>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = (0..BASE_RECORDS)
            .map(|i| (i * (u128::MAX / BASE_RECORDS), 100 + i as u64, i as usize % 2))
            .collect();
        let path = dir.path().join("base");
        write(&path, &rows);
        (dir, path, rows)
    })
}

/// A generation of `rows` at `path`, by the real writer.
fn write(path: &Path, rows: &[Row]) {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.0);
    rows.dedup_by_key(|r| r.0);
    let mut w = Writer::new(File::create(path).unwrap(), path, rows.len() as u64).unwrap();
    for (key, cents, date) in rows {
        w.push_row(key, Price::new(cents, 2).unwrap(), DATES[date].as_bytes())
            .unwrap();
    }
    w.finish().unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (dir, base_path, base_rows) = base();
    let base = Table::open(base_path, 1).unwrap();
    let scratch = tempfile::tempdir_in(dir.path()).unwrap();
    let at = scratch.path().join("delta");
    match mode % 3 {
        0 => {
            std::fs::write(&at, rest).unwrap();
            apply(&base, &at, scratch.path());
        }
        flip => {
            let target = scratch.path().join("target");
            write(&target, &edited(base_rows, rest));
            let target = Table::open(&target, 2).unwrap();
            let out = File::create(&at).unwrap();
            let written = delta::write((&base, 1), (&target, 2), out, &at, u64::MAX)
                .unwrap()
                .expect("no limit, the same shard and version");
            if flip == 2 && rest.len() >= 3 {
                let mut bytes = std::fs::read(&at).unwrap();
                let n = rest.len();
                let which = u16::from_le_bytes([rest[n - 3], rest[n - 2]]) as usize % bytes.len();
                bytes[which] ^= rest[n - 1] | 1;
                std::fs::write(&at, bytes).unwrap();
            }
            if let Some(rebuilt) = apply(&base, &at, scratch.path()) {
                assert_eq!(
                    rebuilt,
                    std::fs::read(target.path()).unwrap(),
                    "the delta ({written:?}) did not rebuild its target"
                );
            }
        }
    }
});

/// The base's rows edited by `ops`, three bytes an edit.
fn edited(base: &[Row], ops: &[u8]) -> Vec<Row> {
    let mut rows = base.to_vec();
    for op in ops.chunks_exact(3) {
        let (what, which, value) = (op[0] % 4, op[1] as usize, op[2]);
        if rows.is_empty() && what != 3 {
            continue;
        }
        let i = which % rows.len().max(1);
        match what {
            0 => rows[i].1 = 1 + u64::from(value),
            1 => rows[i].2 = value as usize % DATES.len(),
            2 => {
                rows.remove(i);
            }
            _ => rows.push((
                (u128::from(value) << 120) | (which as u128) << 100 | 7,
                u64::from(value) + 1,
                which % DATES.len(),
            )),
        }
    }
    rows
}

/// Opens the delta at `path` and applies it to `base`: the rebuilt file's
/// bytes if both succeed, which must then verify as the named target.
fn apply(base: &Table, path: &Path, scratch: &Path) -> Option<Vec<u8>> {
    let delta = Delta::open(path).ok()?;
    let out = scratch.join("rebuilt");
    let target = delta.apply(base, File::create(&out).unwrap(), &out).ok()?;
    assert_eq!(target, delta.header().target);
    let table = Table::open_verified(&out, 2).expect("an applied delta's result verifies");
    assert_eq!(*table.header(), target);
    Some(std::fs::read(&out).unwrap())
}
