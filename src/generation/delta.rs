//! Deltas: a generation as what changed against an older one, its base.
//!
//! A feed usually changes a few percent of its promotions, yet a replica
//! that downloads the whole new generation moves the whole data set on
//! every feed. Two generations are both sorted by id, so one merge gives
//! their exact difference: the records of the new one whose 32 bytes are
//! not in the old one (changed or added), and the ids the old one holds and
//! the new one does not. The builder writes that as a delta ([`write`]);
//! a replica whose live generation is the base merges the two back into
//! the new file ([`Delta::apply`]), in one streaming pass, byte for byte:
//! the writer lays every file out in one order that depends on its records
//! alone (see [`format`](super::format)), so an unchanged promotion keeps
//! its bytes and the rebuilt file has the target's very body checksum,
//! which its header (carried in the delta) then vouches for.
//!
//! The layout is defined with the generation's, in [`format`](super::format).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, FormatError, Result};
use crate::generation::format::{self, FileDates, Header, Writer};
use crate::generation::record::{key_of, RECORD_LEN};
use crate::generation::table::Table;

/// The first eight bytes of every delta.
pub const MAGIC: [u8; 8] = *b"PROMODLT";
/// The delta format version this promo writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a delta's own header.
pub const HEADER_LEN: usize = 128;
/// Bytes before the first record: the delta's header and the target's.
pub const PREFIX_LEN: usize = HEADER_LEN + format::HEADER_LEN;
/// Bytes of one removed id: its key, big-endian as in a record.
pub const KEY_LEN: usize = 16;
/// Records (of both generations together) a piece of [`write`]'s merge
/// covers at most: what one piece holds in memory is bounded by it.
const PIECE_RECORDS: u64 = 1 << 20;

/// A delta's header: its base, its target, and its sections' sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The store's sequence and the body checksum of the generation the
    /// delta applies to.
    pub base_sequence: u64,
    pub base_checksum: u64,
    /// The store's sequence of the generation it rebuilds.
    pub target_sequence: u64,
    /// Records of the target that are not in the base (changed or new).
    pub records: u64,
    /// Ids of the base that are not in the target.
    pub removed: u64,
    /// XXH3-64 of every byte after the delta's header.
    pub body_checksum: u64,
    /// The target's header, as it is in the target's file.
    pub target: Header,
}

impl DeltaHeader {
    fn checked_len(&self) -> Option<u64> {
        self.records
            .checked_mul(RECORD_LEN as u64)?
            .checked_add(self.removed.checked_mul(KEY_LEN as u64)?)?
            .checked_add(PREFIX_LEN as u64)?
            .checked_add(self.target.zones_len)?
            .checked_add(self.target.overflow_len)
    }

    /// The delta's whole length.
    pub fn file_len(&self) -> u64 {
        self.checked_len().unwrap_or(u64::MAX)
    }

    /// The delta's header and the target's: [`PREFIX_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.base_sequence.to_le_bytes());
        h[24..32].copy_from_slice(&self.base_checksum.to_le_bytes());
        h[32..40].copy_from_slice(&self.target_sequence.to_le_bytes());
        h[40..48].copy_from_slice(&self.records.to_le_bytes());
        h[48..56].copy_from_slice(&self.removed.to_le_bytes());
        h[56..64].copy_from_slice(&self.body_checksum.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..HEADER_LEN - 8]);
        h[HEADER_LEN - 8..].copy_from_slice(&sum.to_le_bytes());
        h.extend_from_slice(&self.target.encode());
        h
    }

    /// Decodes and checks the first [`PREFIX_LEN`] bytes of a delta of
    /// `file_len` bytes: magic, version, record size, both header
    /// checksums, and the length the sections add up to.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<DeltaHeader, FormatError> {
        if bytes.len() < PREFIX_LEN || file_len < PREFIX_LEN as u64 {
            return Err(FormatError::TooShort { len: file_len });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let magic: [u8; 8] = bytes[0..8].try_into().unwrap();
        if magic != MAGIC {
            return Err(FormatError::DeltaMagic { got: magic });
        }
        if u32_at(8) != VERSION {
            return Err(FormatError::DeltaVersion {
                got: u32_at(8),
                reads: VERSION,
            });
        }
        let computed = xxhash_rust::xxh3::xxh3_64(&bytes[..HEADER_LEN - 8]);
        if u64_at(HEADER_LEN - 8) != computed {
            return Err(FormatError::HeaderChecksum {
                stored: u64_at(HEADER_LEN - 8),
                computed,
            });
        }
        if u32_at(12) != RECORD_LEN as u32 {
            return Err(FormatError::RecordSize {
                expected: RECORD_LEN as u32,
                got: u32_at(12),
            });
        }
        let header = DeltaHeader {
            base_sequence: u64_at(16),
            base_checksum: u64_at(24),
            target_sequence: u64_at(32),
            records: u64_at(40),
            removed: u64_at(48),
            body_checksum: u64_at(56),
            target: Header::decode_detached(&bytes[HEADER_LEN..PREFIX_LEN])?,
        };
        if header.records > header.target.count {
            return Err(FormatError::Delta(format!(
                "{} records for a target of {}",
                header.records, header.target.count
            )));
        }
        format::check_len(header.checked_len(), file_len)?;
        Ok(header)
    }
}

/// Why [`write`] wrote no delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// One of the two is a version-1 file, or they hold different shards.
    Unlike(&'static str),
    /// The delta would be larger than the limit: at least this many bytes.
    TooLarge { at_least: u64, limit: u64 },
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::Unlike(why) => f.write_str(why),
            Skipped::TooLarge { at_least, limit } => write!(
                f,
                "it would be more than {at_least} bytes, over the limit of {limit}"
            ),
        }
    }
}

/// Writes the delta from `base` (the store's generation `base_sequence`)
/// to `target` (its generation `target_sequence`) into `out`, a new empty
/// file at `path`; `Skipped` (and a partial file, for the caller to
/// remove) when the two cannot have one or it would exceed `limit` bytes.
///
/// The key space is cut into pieces, merged a batch at a time on every
/// core; the removed ids go to an unnamed file beside `path` until the
/// changed records are all written.
pub fn write(
    base: (&Table, u64),
    target: (&Table, u64),
    out: File,
    path: &Path,
    limit: u64,
) -> Result<std::result::Result<DeltaHeader, Skipped>> {
    let ((old, base_sequence), (new, target_sequence)) = (base, target);
    if old.header().version != format::VERSION || new.header().version != format::VERSION {
        return Ok(Err(Skipped::Unlike("a version-1 generation has no delta")));
    }
    if old.header().shard != new.header().shard {
        return Ok(Err(Skipped::Unlike(
            "the two generations hold other shards",
        )));
    }
    let io = |e| Error::io_op("writing a delta", path)(e);
    let tables = new.date_tables();
    let fixed = PREFIX_LEN as u64 + tables.len() as u64;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    out.seek(SeekFrom::Start(PREFIX_LEN as u64)).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut removed_ids = BufWriter::new(tempfile::tempfile_in(dir).map_err(io)?);
    let mut hasher = Xxh3::new();
    hasher.update(&new.header().encode());
    let (mut records, mut removed) = (0u64, 0u64);

    let threads = rayon::current_num_threads().max(1);
    let pieces = ((old.len() + new.len()) / PIECE_RECORDS).max(threads as u64 * 4) as u128;
    let step = u128::MAX / pieces;
    let bounds: Vec<(u64, u64)> = (0..=pieces)
        .map(|i| match i {
            0 => (0, 0),
            i if i == pieces => (old.len(), new.len()),
            i => (old.lower_bound(i * step), new.lower_bound(i * step)),
        })
        .collect();
    let pairs: Vec<_> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    // The same header is the same file (an unchanged feed is published as
    // its baseline's file): nothing to merge.
    let identical = old.header() == new.header();
    let merged = old.in_order(|| {
        new.in_order(|| -> Result<Option<u64>> {
            if identical {
                return Ok(None);
            }
            for batch in pairs.chunks(threads) {
                let parts: Vec<(Vec<u8>, Vec<u8>)> = batch
                    .par_iter()
                    .map(|&(from, to)| diff(old.records(), new.records(), from, to))
                    .collect();
                for (changed, gone) in parts {
                    hasher.update(&changed);
                    out.write_all(&changed).map_err(io)?;
                    removed_ids.write_all(&gone).map_err(io)?;
                    records += (changed.len() / RECORD_LEN) as u64;
                    removed += (gone.len() / KEY_LEN) as u64;
                }
                let len = fixed + records * RECORD_LEN as u64 + removed * KEY_LEN as u64;
                if len > limit {
                    return Ok(Some(len));
                }
            }
            Ok(None)
        })
    })?;
    if let Some(at_least) = merged {
        return Ok(Err(Skipped::TooLarge { at_least, limit }));
    }
    let mut removed_ids = removed_ids.into_inner().map_err(|e| io(e.into_error()))?;
    removed_ids.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = removed_ids.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
    }
    hasher.update(tables);
    out.write_all(tables).map_err(io)?;
    let header = DeltaHeader {
        base_sequence,
        base_checksum: old.header().body_checksum,
        target_sequence,
        records,
        removed,
        body_checksum: hasher.digest(),
        target: *new.header(),
    };
    out.seek(SeekFrom::Start(0)).map_err(io)?;
    out.write_all(&header.encode()).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(Ok(header))
}

/// One piece of the merge: the records of `new[from.1..to.1]` not in
/// `old[from.0..to.0]` (byte for byte), and the keys of the old records
/// whose ids the new piece does not hold.
fn diff(old: &[u8], new: &[u8], from: (u64, u64), to: (u64, u64)) -> (Vec<u8>, Vec<u8>) {
    let at = |i: u64| i as usize * RECORD_LEN;
    let old = old[at(from.0)..at(to.0)].chunks_exact(RECORD_LEN);
    let mut new = new[at(from.1)..at(to.1)]
        .chunks_exact(RECORD_LEN)
        .peekable();
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    for a in old {
        while let Some(b) = new.next_if(|b| b[..KEY_LEN] < a[..KEY_LEN]) {
            changed.extend_from_slice(b);
        }
        match new.next_if(|b| b[..KEY_LEN] == a[..KEY_LEN]) {
            Some(b) if a != b => changed.extend_from_slice(b),
            Some(_) => {}
            None => removed.extend_from_slice(&a[..KEY_LEN]),
        }
    }
    for b in new {
        changed.extend_from_slice(b);
    }
    (changed, removed)
}

/// A delta read from a file, its header and body checksums verified.
pub struct Delta {
    /// The whole file. Never written while mapped: see `open`.
    map: Mmap,
    header: DeltaHeader,
    path: PathBuf,
}

impl Delta {
    /// Maps the delta at `path` and verifies it: its headers, its body
    /// checksum, and that its records and removed ids are each in
    /// strictly increasing order.
    pub fn open(path: &Path) -> Result<Delta> {
        let file = File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        if len < PREFIX_LEN as u64 {
            return Err(Error::format(path, FormatError::TooShort { len }));
        }
        // SAFETY: a delta is a file this process downloaded (or wrote) and
        // finished before opening it; nothing writes or truncates it while
        // it is mapped, and deleting it leaves the mapping valid.
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        let bad = |e| Error::format(path, e);
        let header = DeltaHeader::decode(&map, len).map_err(bad)?;
        let computed = xxhash_rust::xxh3::xxh3_64(&map[HEADER_LEN..]);
        if computed != header.body_checksum {
            return Err(bad(FormatError::BodyChecksum {
                stored: header.body_checksum,
                computed,
            }));
        }
        let delta = Delta {
            map,
            header,
            path: path.to_path_buf(),
        };
        let increasing = |bytes: &[u8], width: usize| {
            bytes
                .chunks_exact(width)
                .zip(bytes.chunks_exact(width).skip(1))
                .all(|(a, b)| a[..KEY_LEN] < b[..KEY_LEN])
        };
        if !increasing(delta.records(), RECORD_LEN) || !increasing(delta.removed(), KEY_LEN) {
            return Err(bad(FormatError::Delta(
                "its ids are not in strictly increasing order".into(),
            )));
        }
        Ok(delta)
    }

    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    fn records(&self) -> &[u8] {
        let len = self.header.records as usize * RECORD_LEN;
        &self.map[PREFIX_LEN..PREFIX_LEN + len]
    }

    fn removed(&self) -> &[u8] {
        let at = PREFIX_LEN + self.header.records as usize * RECORD_LEN;
        &self.map[at..at + self.header.removed as usize * KEY_LEN]
    }

    /// The target's zone table and overflow area.
    fn tables(&self) -> &[u8] {
        let at = PREFIX_LEN
            + self.header.records as usize * RECORD_LEN
            + self.header.removed as usize * KEY_LEN;
        &self.map[at..]
    }

    /// Rebuilds the target from `base` into `file`, new and empty at
    /// `path`, in one pass over the base: runs of unchanged records are
    /// copied as they are, and each of the delta's ids replaces, adds or
    /// drops one record. Fails, having checked what the merge can, when
    /// `base` is not the delta's base, when the delta removes an id the
    /// base does not hold or both changes and removes one, and when the
    /// result is not the target (its count or body checksum): the caller
    /// then fetches the whole target instead.
    pub fn apply(&self, base: &Table, file: File, path: &Path) -> Result<Header> {
        let h = &self.header;
        let bad = |why: String| Error::format(&self.path, FormatError::Delta(why));
        let bad_file = |e: FormatError| Error::format(path, e);
        let based = base.header();
        if based.version != format::VERSION || based.body_checksum != h.base_checksum {
            return Err(bad(format!(
                "its base has body checksum {:016x}, but {} has {:016x}",
                h.base_checksum,
                base.path().display(),
                based.body_checksum
            )));
        }
        if based.shard != h.target.shard {
            return Err(bad(format!(
                "its target holds shard {}, but its base {}",
                h.target.shard, based.shard
            )));
        }
        let dates = FileDates::of_tables(&h.target, self.tables()).map_err(bad_file)?;
        let mut writer = Writer::rebuild(file, path, &h.target)?;
        // Each record is checked as it goes in, as a download is checked
        // after: with the writer's order and shard checks and the count and
        // body checksum `finish_as` compares, every check of a verification
        // but the fanout table's, which the writer computes from them. A
        // record copied from the base, whose tables are the target's, is
        // what the base held, which was verified when it went live (or as
        // it was rebuilt): its price and date are not decoded again, which
        // at 10^8 records is most of the rebuild's time.
        let same_tables = base.date_tables() == self.tables();
        let mut written = 0u64;
        let mut push = |writer: &mut Writer, block: &[u8], from_base: bool| -> Result<()> {
            if !(from_base && same_tables) {
                format::check_block(&h.target, &dates, block, written).map_err(bad_file)?;
            }
            written += (block.len() / RECORD_LEN) as u64;
            writer.push_block(block)
        };
        let old = base.records();
        let n = base.len();
        let mut changed = self.records().chunks_exact(RECORD_LEN).peekable();
        let mut removed = self.removed().chunks_exact(KEY_LEN).peekable();
        let mut at = 0u64;
        base.in_order(|| -> Result<()> {
            loop {
                let next_changed = changed.peek().map(|r| key_of(r));
                let next_removed = removed.peek().map(|k| key_of(k));
                let next = match (next_changed, next_removed) {
                    (Some(c), Some(r)) => Some(c.min(r)),
                    (c, r) => c.or(r),
                };
                // The unchanged records before the next id, copied whole.
                let stop = next.map_or(n, |k| base.lower_bound(k));
                let run = &old[at as usize * RECORD_LEN..stop as usize * RECORD_LEN];
                for block in run.chunks(RECORD_LEN << 16) {
                    push(&mut writer, block, true)?;
                }
                at = stop;
                let Some(key) = next else {
                    return Ok(());
                };
                let held = at < n && key_of(&old[at as usize * RECORD_LEN..]) == key;
                if next_changed == Some(key) {
                    if next_removed == Some(key) {
                        return Err(bad(format!(
                            "it both changes and removes id {}",
                            uuid::Uuid::from_u128(key)
                        )));
                    }
                    push(&mut writer, changed.next().expect("peeked"), false)?;
                } else {
                    if !held {
                        return Err(bad(format!(
                            "it removes id {}, which its base does not hold",
                            uuid::Uuid::from_u128(key)
                        )));
                    }
                    removed.next();
                }
                if held {
                    at += 1;
                }
            }
        })?;
        writer.finish_as(&h.target, self.tables())?;
        Ok(h.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A generation of `rows` (key, price in cents, date), written by the
    /// real writer in key order.
    fn table(dir: &Path, name: &str, rows: &[(u128, u64, &str)]) -> Table {
        let rows: Vec<_> = rows
            .iter()
            .map(|&(k, cents, d)| (k, (cents, 2), d))
            .collect();
        crate::generation::churn::tests::table(dir, name, 0, &rows)
    }

    /// Writes the delta from `old` to `new`, applies it to `old`, and
    /// returns the delta's header and the rebuilt file's bytes.
    fn round_trip(dir: &Path, old: &Table, new: &Table) -> (DeltaHeader, Vec<u8>) {
        let path = dir.join("delta");
        let out = File::create(&path).unwrap();
        let header = write((old, 1), (new, 2), out, &path, u64::MAX)
            .unwrap()
            .unwrap();
        let delta = Delta::open(&path).unwrap();
        assert_eq!(*delta.header(), header);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), header.file_len());
        let rebuilt = dir.join("rebuilt");
        delta
            .apply(old, File::create(&rebuilt).unwrap(), &rebuilt)
            .unwrap();
        (header, std::fs::read(&rebuilt).unwrap())
    }

    const D1: &str = "2030-01-01T00:00:00Z";
    const D2: &str = "2030-01-02 00:00:00 +0200 CEST";
    const ODD: &str = "2030-01-02T00:00:00.5Z";

    #[test]
    fn a_delta_holds_what_changed_and_rebuilds_the_target_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let old = table(
            dir.path(),
            "old",
            &[(1, 100, D1), (2, 100, D1), (4, 100, D1), (5, 100, D1)],
        );
        let new = table(
            dir.path(),
            "new",
            // 1 unchanged, 2 removed, 3 added, 4 repriced, 5 re-dated.
            &[(1, 100, D1), (3, 100, D1), (4, 250, D1), (5, 100, D1)],
        );
        let (h, rebuilt) = round_trip(dir.path(), &old, &new);
        assert_eq!((h.records, h.removed), (2, 1));
        assert_eq!((h.base_sequence, h.target_sequence), (1, 2));
        assert_eq!(h.base_checksum, old.header().body_checksum);
        assert_eq!(h.target, *new.header());
        assert_eq!(rebuilt, std::fs::read(new.path()).unwrap());
        Table::open_verified(&dir.path().join("rebuilt"), 2).unwrap();

        // The same generation again: a delta of its headers alone.
        let (h, rebuilt) = round_trip(dir.path(), &new, &new);
        assert_eq!((h.records, h.removed), (0, 0));
        assert_eq!(
            h.file_len(),
            PREFIX_LEN as u64 + new.date_tables().len() as u64
        );
        assert_eq!(rebuilt, std::fs::read(new.path()).unwrap());
    }

    #[test]
    fn deltas_to_and_from_nothing_and_with_new_zones_and_overflow_dates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = table(dir.path(), "empty", &[]);
        let some = table(dir.path(), "some", &[(7, 1, D1), (9, 2, D2), (11, 3, ODD)]);
        let more = table(
            dir.path(),
            "more",
            &[
                (7, 1, D2),
                (8, 5, ODD),
                (9, 2, D2),
                (11, 3, ODD),
                (12, 3, D1),
            ],
        );
        for (old, new) in [
            (&empty, &some),
            (&some, &empty),
            (&some, &more),
            (&more, &some),
        ] {
            let (_, rebuilt) = round_trip(dir.path(), old, new);
            assert_eq!(rebuilt, std::fs::read(new.path()).unwrap());
        }
    }

    #[test]
    fn a_delta_that_is_damaged_or_meets_another_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = table(dir.path(), "old", &[(1, 100, D1), (2, 100, D1)]);
        let new = table(dir.path(), "new", &[(1, 100, D1), (3, 100, D1)]);
        let other = table(dir.path(), "other", &[(1, 100, D1), (2, 200, D1)]);
        let path = dir.path().join("delta");
        write(
            (&old, 1),
            (&new, 2),
            File::create(&path).unwrap(),
            &path,
            u64::MAX,
        )
        .unwrap()
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        let rebuilt = dir.path().join("rebuilt");

        let delta = Delta::open(&path).unwrap();
        let e = delta
            .apply(&other, File::create(&rebuilt).unwrap(), &rebuilt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its base has body checksum"), "{e}");

        for (at, says) in [
            (0, "not a promo delta"),
            (20, "header checksum mismatch"),
            (PREFIX_LEN + 3, "body checksum mismatch"),
            (good.len() - 1, "body checksum mismatch"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let e = Delta::open(&path).err().expect("refused").to_string();
            assert!(e.contains(says), "byte {at}: {e}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let e = Delta::open(&path).err().expect("refused").to_string();
        assert!(e.contains("bytes but its header describes"), "{e}");
    }

    #[test]
    fn a_rebuild_checks_each_record_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let old = table(dir.path(), "old", &[(1, 100, D1), (2, 100, D1)]);
        let new = table(dir.path(), "new", &[(1, 100, D1), (2, 300, D1)]);
        let path = dir.path().join("delta");
        let out = File::create(&path).unwrap();
        let mut h = write((&old, 1), (&new, 2), out, &path, u64::MAX)
            .unwrap()
            .unwrap();
        // The changed record's price made one no price encodes, and the
        // delta's checksums made right again: only the record check is left
        // to catch it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PREFIX_LEN + 16..PREFIX_LEN + 24].copy_from_slice(&u64::MAX.to_le_bytes());
        h.body_checksum = xxhash_rust::xxh3::xxh3_64(&bytes[HEADER_LEN..]);
        bytes[..PREFIX_LEN].copy_from_slice(&h.encode());
        std::fs::write(&path, &bytes).unwrap();
        let delta = Delta::open(&path).unwrap();
        let rebuilt = dir.path().join("rebuilt");
        let e = delta
            .apply(&old, File::create(&rebuilt).unwrap(), &rebuilt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1 holds an invalid price or date"), "{e}");
    }

    #[test]
    fn a_delta_larger_than_the_limit_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<(u128, u64, &str)> = (0..1000u128).map(|k| (k << 100, 1, D1)).collect();
        let old = table(dir.path(), "old", &rows);
        let changed: Vec<_> = rows.iter().map(|&(k, _, d)| (k, 2, d)).collect();
        let new = table(dir.path(), "new", &changed);
        let path = dir.path().join("delta");
        let out = File::create(&path).unwrap();
        let limit = new.header().file_len() / 2;
        match write((&old, 1), (&new, 2), out, &path, limit).unwrap() {
            Err(Skipped::TooLarge { at_least, .. }) => assert!(at_least > limit),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_change_rebuilds_byte_for_byte(
            old in proptest::collection::vec((0u128..400, 1u64..4, 0usize..3), 0..300),
            new in proptest::collection::vec((0u128..400, 1u64..4, 0usize..3), 0..300),
        ) {
            let dates = [D1, D2, ODD];
            // Keys spread over the key space, so that the merge's pieces
            // (cut by key) each get some.
            let rows = |v: &[(u128, u64, usize)]| -> Vec<(u128, u64, &str)> {
                v.iter().map(|&(k, p, d)| (k * (u128::MAX / 400), p, dates[d])).collect()
            };
            let dir = tempfile::tempdir().unwrap();
            let old = table(dir.path(), "old", &rows(&old));
            let new = table(dir.path(), "new", &rows(&new));
            let (_, rebuilt) = round_trip(dir.path(), &old, &new);
            prop_assert_eq!(rebuilt, std::fs::read(new.path()).unwrap());
        }
    }
}
