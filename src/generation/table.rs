//! A memory-mapped generation and its lookup.
//!
//! The table trusts nothing it maps: [`Table::open`] checks the header
//! against the file's length, and [`Table::verify`] reads every byte once
//! (which also brings a cold generation into the page cache before it goes
//! live).

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, MmapOptions};

use crate::error::{Error, Result};
use crate::generation::date::{DateTables, DateWord, Dates};
use crate::generation::format::{self, FileDates, FormatError, Header};
use crate::generation::record::{self, key_of, price_of, Price, Record};

/// One generation, mapped read-only. Dropping it unmaps the file.
pub struct Table {
    /// The whole file. Never written while mapped: see `open`.
    map: Mmap,
    /// The file itself, for reads that bring a lookup's pages into memory
    /// without faulting on them (see [`Table::lookup_range`]).
    file: File,
    /// Whether the file is larger than the memory the page cache may use.
    larger_than_memory: bool,
    /// A copy of the file's fanout table in anonymous memory (huge pages
    /// where the kernel allows), so that a lookup reads one page of the file.
    fanout: Mmap,
    header: Header,
    /// The zone table (version 2), read once: a lookup renders a date
    /// from it without touching the file again.
    zones: DateTables,
    path: PathBuf,
    sequence: u64,
}

impl Table {
    /// Maps the generation at `path` and checks its header (magic, version,
    /// record size, length); see [`Table::verify`] for the full check.
    pub fn open(path: &Path, sequence: u64) -> Result<Table> {
        let file = File::open(path).map_err(Error::io(path))?;
        let meta = file.metadata().map_err(Error::io(path))?;
        if !meta.is_file() {
            let kind = crate::error::file_kind(meta.file_type());
            return Err(Error::format(path, FormatError::NotAFile { kind }));
        }
        let len = meta.len();
        if len < format::V1_HEADER_LEN as u64 {
            return Err(Error::format(path, FormatError::TooShort { len }));
        }
        // SAFETY: a published generation file is never written again: the
        // builder writes a temporary file, makes it read-only and renames it
        // into place, and every later generation is a new file. Deleting it
        // (retention) leaves this mapping valid, as the mapping holds the
        // inode. So the bytes behind this mapping do not change under us.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(Error::io(path))?;
        let header = Header::decode(&map, len).map_err(|e| Error::format(path, e))?;
        let zones = FileDates::of(&header, &map)
            .map_err(|e| Error::format(path, e))?
            .into_zones();
        let table = &map[header.fanout_offset()..header.zones_offset()];
        let mut fanout = MmapOptions::new()
            .len(table.len())
            .map_anon()
            .map_err(Error::io(path))?;
        // Only a hint: without transparent huge pages this is a no-op.
        let _ = fanout.advise(Advice::HugePage);
        fanout.copy_from_slice(table);
        let fanout = fanout.make_read_only().map_err(Error::io(path))?;
        // Lookups touch one random page each. With the default advice, a
        // page fault in a file mapping reads up to the device's read-ahead
        // around it (8 MiB on some disks): a generation larger than the
        // page cache is then served many times slower (BENCHMARKS.md,
        // "Measurements behind the design"). Only advice: on failure the
        // lookups are slower, not wrong.
        let _ = map.advise(Advice::Random);
        // The same for reads of the file itself (see `lookup_range`).
        crate::sys::fadvise(&file, 0, 0, crate::sys::Advice::Random);
        Ok(Table {
            map,
            file,
            larger_than_memory: memory_for_cache().is_some_and(|m| len > m),
            fanout,
            header,
            zones,
            path: path.to_path_buf(),
            sequence,
        })
    }

    /// Checks the body checksum, the key order and the fanout table.
    ///
    /// The whole file is read in order, so the mapping is advised
    /// sequential meanwhile (large read-ahead), then random again for
    /// lookups. A file that fits in memory twice over (the live generation
    /// beside it is usually as large) stays in the page cache, warm for when
    /// it goes live. A larger one is read cold: each window's pages are let
    /// go once verified, so that verifying it does not push the live
    /// generation out of the page cache.
    pub fn verify(&self) -> Result<()> {
        let cold = memory_for_cache().is_some_and(|m| 2 * self.map.len() as u64 > m);
        let verified = self.in_order(|| {
            format::verify_body(&self.header, &self.map, |range| {
                if cold {
                    self.page_out(range);
                }
            })
        });
        verified.map_err(|e| Error::format(&self.path, e))
    }

    /// Runs `read`, which reads the table front to back (verifying it, or
    /// comparing it with another generation), with the mapping advised
    /// sequential: lookups keep it random, which reads a cold file a page
    /// per fault.
    pub fn in_order<R>(&self, read: impl FnOnce() -> R) -> R {
        let _ = self.map.advise(Advice::Sequential);
        let out = read();
        let _ = self.map.advise(Advice::Random);
        out
    }

    /// Lets the kernel reclaim the pages of `range` of the file now.
    fn page_out(&self, range: std::ops::Range<usize>) {
        let page = crate::sys::page_size();
        let start = range.start / page * page;
        // SAFETY: the range is inside the mapping, rounded down to a page
        // boundary; MADV_PAGEOUT only drops clean file pages from memory,
        // to be read again from the file on the next access: the mapping's
        // contents never change.
        let rc = unsafe {
            libc::madvise(
                self.map.as_ptr().add(start) as *mut libc::c_void,
                range.end - start,
                libc::MADV_PAGEOUT,
            )
        };
        if rc != 0 {
            tracing::debug!("MADV_PAGEOUT: {}", std::io::Error::last_os_error());
        }
    }

    /// Opens and fully verifies a generation: the gate before it goes live.
    pub fn open_verified(path: &Path, sequence: u64) -> Result<Table> {
        let table = Table::open(path, sequence)?;
        table.verify()?;
        Ok(table)
    }

    /// The same table, known by `path` from now on: a file that was
    /// verified under a temporary name and then renamed (the mapping
    /// follows the inode, not the name).
    pub fn moved_to(mut self, path: PathBuf) -> Table {
        self.path = path;
        self
    }

    /// The generation's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The file this table maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.header.count
    }

    /// True when the generation holds no record.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Whether the file is larger than the memory its pages may take in the
    /// page cache (this process's memory cgroup, or the machine): lookups
    /// then often wait for the disk.
    pub fn larger_than_memory(&self) -> bool {
        self.larger_than_memory
    }

    /// The open file the table maps.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The bytes of the file that looking up `key` may read (its bucket of
    /// records), or `None` when the lookup reads no record (an empty
    /// bucket) or its bucket is larger than [`LOOKUP_RANGE_MAX`] bytes (keys
    /// far from uniform).
    pub fn lookup_range(&self, key: u128) -> Option<std::ops::Range<u64>> {
        let (lo, hi, _) = self.guess(key)?;
        let (start, end) = (self.record_at(lo) as u64, self.record_at(hi) as u64);
        (end - start <= LOOKUP_RANGE_MAX).then_some(start..end)
    }

    /// [`Table::get`], but from `bucket` when it holds the bytes of
    /// `lookup_range(key)`, read from the file (see
    /// [`crate::server::disk`]): then the record is read from the bucket,
    /// and no page of it is faulted into the mapping (a date kept in the
    /// file's overflow area, with fractional seconds, is still read from
    /// the mapping).
    pub fn get_from<'a>(&'a self, key: u128, bucket: Option<&'a Bucket>) -> Option<Found<'a>> {
        let Some(bucket) = bucket.filter(|b| {
            self.lookup_range(key) == Some(b.range.clone())
                && b.bytes.len() as u64 == b.range.end - b.range.start
        }) else {
            return self.get(key);
        };
        let width = self.header.record_len();
        let (mut lo, mut hi) = (0, bucket.bytes.len() / width);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let bytes = &bucket.bytes[mid * width..(mid + 1) * width];
            match key_of(bytes).cmp(&key) {
                std::cmp::Ordering::Equal => return Some(Found { table: self, bytes }),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Whether every page of `range` (of the file) is in memory now, so
    /// that reading it takes no disk read. `mincore` reports the page
    /// cache, or, for a file this process may not write, only the pages
    /// this mapping has faulted in: either way a page it reports is in
    /// memory, and one it misses costs a read that completes at once.
    pub fn in_memory(&self, range: std::ops::Range<u64>) -> bool {
        let page = crate::sys::page_size();
        let start = range.start as usize / page * page;
        let end = (range.end as usize).min(self.map.len());
        if end <= start {
            return true;
        }
        let mut resident = [0u8; (LOOKUP_RANGE_MAX as usize / 4096) + 1];
        let pages = (end - start).div_ceil(page);
        if pages > resident.len() {
            return false;
        }
        // SAFETY: the range is inside the mapping, from a page boundary,
        // and `resident` has a byte for each of its `pages` pages.
        let rc = unsafe {
            libc::mincore(
                self.map.as_ptr().add(start) as *mut libc::c_void,
                end - start,
                resident.as_mut_ptr(),
            )
        };
        rc == 0 && resident[..pages].iter().all(|b| b & 1 == 1)
    }

    /// Every record's bytes, in key order: `len()` records of
    /// `header().record_len()` bytes.
    pub fn records(&self) -> &[u8] {
        &self.map[self.header.header_len()..self.header.fanout_offset()]
    }

    /// The bytes after the fanout table: the zone table and the overflow
    /// area (nothing in version 1).
    pub fn date_tables(&self) -> &[u8] {
        &self.map[self.header.zones_offset()..]
    }

    /// The record at index `i`, which must be below `len()`.
    pub fn record(&self, i: u64) -> Found<'_> {
        Found {
            table: self,
            bytes: self.record_bytes(i),
        }
    }

    #[inline]
    fn record_bytes(&self, i: u64) -> &[u8] {
        let at = self.record_at(i);
        &self.map[at..at + self.header.record_len()]
    }

    /// Byte offset of record `i` in the file.
    #[inline(always)]
    fn record_at(&self, i: u64) -> usize {
        self.header.header_len() + i as usize * self.header.record_len()
    }

    #[inline]
    fn key_at(&self, i: u64) -> u128 {
        key_of(self.record_bytes(i))
    }

    #[inline]
    fn fanout(&self, bucket: u64) -> u64 {
        let at = bucket as usize * 8;
        u64::from_le_bytes(self.fanout[at..at + 8].try_into().unwrap())
    }

    /// Finds the record with `key`.
    ///
    /// The fanout table narrows the search to one bucket (32 to 63
    /// records); inside it, the key's next 64 bits interpolate a guess, the
    /// cache lines around the guess are prefetched together, and a galloping
    /// search outward from the guess finds the key within a few records when
    /// keys are uniform, and in O(log bucket) when they are not.
    #[inline]
    pub fn get(&self, key: u128) -> Option<Found<'_>> {
        self.position(key).map(|i| self.record(i))
    }

    /// Index of the record with `key`, if present.
    #[inline]
    pub fn position(&self, key: u128) -> Option<u64> {
        self.search(key, |_| {})
    }

    /// The index of the first record whose key is `key` or more (`len()`
    /// when there is none): where a range of keys starts.
    pub fn lower_bound(&self, key: u128) -> u64 {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key_at(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The distinct 4 KiB pages of the file (records; the fanout table is
    /// copied to memory) that looking up `key` reads or prefetches: the
    /// measure of how well the search stays local.
    pub fn pages_touched(&self, key: u128) -> usize {
        let mut pages = Vec::new();
        self.search(key, |offset| {
            let page = offset / 4096;
            if !pages.contains(&page) {
                pages.push(page);
            }
        });
        pages.len()
    }

    /// The bucket `[lo, hi)` that holds `key` if any record does, and the
    /// record its next 64 bits interpolate inside it; `None` for an empty
    /// bucket.
    #[inline(always)]
    fn guess(&self, key: u128) -> Option<(u64, u64, u64)> {
        let bits = self.header.fanout_bits;
        let bucket = format::bucket_of(key, bits);
        let lo = self.fanout(bucket);
        // Bad bytes on disk must not panic: verify() rejects such a table,
        // but stay in bounds even for one that skipped it.
        let hi = self.fanout(bucket + 1).min(self.header.count);
        if lo >= hi {
            return None;
        }
        // The key's position inside its bucket, as a fraction of 2^64.
        let frac = ((key << bits) >> 64) as u64;
        Some((
            lo,
            hi,
            lo + ((u128::from(frac) * u128::from(hi - lo)) >> 64) as u64,
        ))
    }

    /// Lets the lookups of many keys overlap their memory reads, where one
    /// lookup waits for two in turn (its fanout entry, then its record):
    /// call this for every key, then [`Table::prefetch_record`] for every
    /// key, then look them up. Only hints to the CPU: nothing is read from
    /// disk, and the answers do not change.
    #[inline]
    pub fn prefetch_fanout(&self, key: u128) {
        let bucket = format::bucket_of(key, self.header.fanout_bits);
        crate::generation::record::prefetch(&self.fanout[bucket as usize * 8]);
    }

    /// The second step of [`Table::prefetch_fanout`]: reads the fanout
    /// entries (loaded by then) and starts loading the record guessed for
    /// `key`, where its lookup will look first.
    #[inline]
    pub fn prefetch_record(&self, key: u128) {
        if let Some((_, _, guess)) = self.guess(key) {
            crate::generation::record::prefetch(&self.record_bytes(guess)[0]);
        }
    }

    /// The search itself; `touch` sees the byte offset of every cache line
    /// read or prefetched (a no-op in lookups, compiled away).
    #[inline(always)]
    fn search(&self, key: u128, mut touch: impl FnMut(usize)) -> Option<u64> {
        let (mut lo, mut hi, guess) = self.guess(key)?;
        // Uniform keys land within a few records of the guess: fetch those
        // lines in parallel rather than one dependent miss per probe.
        let from = guess.saturating_sub(PREFETCH_RECORDS).max(lo);
        let to = (guess + PREFETCH_RECORDS).min(hi - 1);
        for i in from..=to {
            touch(self.record_at(i));
            crate::generation::record::prefetch(&self.record_bytes(i)[0]);
        }
        let mut probe = |i: u64| {
            touch(self.record_at(i));
            self.key_at(i)
        };
        let k = probe(guess);
        if k == key {
            return Some(guess);
        }
        // Gallop away from the guess until the key is bracketed in [lo, hi).
        let mut step = 1;
        if k < key {
            lo = guess + 1;
            while lo < hi {
                let at = (guess + step).min(hi - 1);
                let pk = probe(at);
                if pk == key {
                    return Some(at);
                }
                if pk > key {
                    hi = at;
                    break;
                }
                lo = at + 1;
                step *= 2;
            }
        } else {
            hi = guess;
            while lo < hi {
                let at = guess.saturating_sub(step).max(lo);
                let pk = probe(at);
                if pk == key {
                    return Some(at);
                }
                if pk < key {
                    lo = at + 1;
                    break;
                }
                hi = at;
                step *= 2;
            }
        }
        // Binary search what is left.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match probe(mid).cmp(&key) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

/// A lookup's bucket of records read from the file: `bytes` are `range`.
pub struct Bucket {
    pub range: std::ops::Range<u64>,
    pub bytes: Vec<u8>,
}

/// The largest [`Table::lookup_range`]: a bucket's records are 32 to 63
/// times the record size when keys are uniform (1-2 KiB).
pub const LOOKUP_RANGE_MAX: u64 = 64 * 1024;

/// Bytes of memory this process may fill with page cache: its memory
/// cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) or the
/// machine's memory, whichever is less.
pub fn memory_for_cache() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let total = meminfo.as_deref().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    });
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match controllers {
            "" => format!("/sys/fs/cgroup{path}/memory.max"),
            c if c.split(',').any(|c| c == "memory") => {
                format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
            }
            _ => return None,
        };
        // "max" (v2) or a huge number (v1) is no limit.
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

/// Records on each side of the interpolated guess that are prefetched.
const PREFETCH_RECORDS: u64 = 8;

impl Dates for Table {
    #[inline]
    fn zone(&self, i: u32) -> Option<&[u8]> {
        self.zones.zone(i)
    }

    #[inline]
    fn overflow_area(&self) -> &[u8] {
        &self.map[self.header.overflow_offset()..]
    }
}

/// A record found in a table, of either format version.
#[derive(Clone, Copy)]
pub struct Found<'a> {
    table: &'a Table,
    bytes: &'a [u8],
}

impl Found<'_> {
    /// The id as a 128-bit integer.
    pub fn key(&self) -> u128 {
        key_of(self.bytes)
    }

    /// The price; `None` only in a file that failed verification.
    pub fn price(&self) -> Option<Price> {
        price_of(self.bytes)
    }

    /// Appends the expiration date as written; `false` (nothing appended)
    /// only in a file that failed verification.
    pub fn write_date(&self, out: &mut Vec<u8>) -> bool {
        if self.table.header.version == 1 {
            out.extend_from_slice(record::v1_date(self.bytes));
            return true;
        }
        let word = Record::from_bytes(self.bytes.try_into().unwrap()).date();
        self.table.write(word, out)
    }

    /// The record as it is on disk.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// The date's eight bytes in a version-2 file; `None` in version 1,
    /// which keeps the text in the record.
    pub fn date_word(&self) -> Option<DateWord> {
        (self.table.header.version >= 2)
            .then(|| Record::from_bytes(self.bytes.try_into().unwrap()).date())
    }

    /// The expiration date as written.
    pub fn date(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        self.write_date(&mut out);
        out
    }

    /// Appends the API's JSON body for this promotion to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        record::write_json(self.key(), self.price(), out, |o| {
            self.write_date(o);
        });
    }
}

impl std::fmt::Debug for Found<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("id", &uuid::Uuid::from_u128(self.key()))
            .field("price", &self.price())
            .field("date", &String::from_utf8_lossy(&self.date()))
            .finish()
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("sequence", &self.sequence)
            .field("header", &self.header)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::date::DateWord;
    use crate::generation::format::{fanout_bits_for, Writer, HEADER_LEN, VERSION};
    use crate::generation::shard::Shard;

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    const DATE: &[u8] = b"2018-08-04 05:32:31 +0200 CEST";

    /// A record whose date is zone 0 of its file, `DATE`'s zone.
    fn record(key: u128) -> Record {
        let word = DateWord::compact(crate::generation::date::split(DATE).unwrap().0, 0);
        Record::new(key, price(key), word.unwrap())
    }

    fn price(key: u128) -> Price {
        Price::new((key % 100_000) as u64, 3).unwrap()
    }

    /// Writes sorted unique `keys` as a generation through the real writer.
    fn write(dir: &Path, keys: &mut Vec<u128>) -> PathBuf {
        keys.sort_unstable();
        keys.dedup();
        let path = dir.join("gen.promo");
        let file = File::create(&path).unwrap();
        let mut w = Writer::new(file, &path, keys.len() as u64).unwrap();
        for &k in keys.iter() {
            w.push_row(k, price(k), DATE).unwrap();
        }
        w.finish().unwrap();
        path
    }

    /// Builds a file by hand, with valid checksums over whatever it is
    /// given; its zone table holds `DATE`'s zone.
    fn raw(records: &[Record], bits: u32, fanout: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in records {
            body.extend_from_slice(r.as_bytes());
        }
        for e in fanout {
            body.extend_from_slice(&e.to_le_bytes());
        }
        let zone = &DATE[19..];
        body.push(zone.len() as u8);
        body.extend_from_slice(zone);
        let header = Header {
            body_checksum: xxhash_rust::xxh3::xxh3_64(&body),
            zones_len: 1 + zone.len() as u64,
            ..Header::new(records.len() as u64, bits)
        };
        let mut out = header.encode();
        out.extend_from_slice(&body);
        out
    }

    fn check_all(path: &Path, keys: &[u128], seed: u64) {
        let t = Table::open_verified(path, 7).unwrap();
        assert_eq!(t.len(), keys.len() as u64);
        assert_eq!(t.sequence(), 7);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(t.position(k), Some(i as u64), "key {k:032x}");
            let found = t.get(k).unwrap();
            assert_eq!((found.key(), found.price()), (k, Some(price(k))));
            assert_eq!(found.date(), DATE);
        }
        // Absent keys: random ones, and the neighbours of present ones.
        let mut s = seed;
        for _ in 0..2000 {
            let k = (u128::from(splitmix(&mut s)) << 64) | u128::from(splitmix(&mut s));
            assert_eq!(t.get(k).is_some(), keys.binary_search(&k).is_ok());
        }
        for &k in keys {
            for n in [k.wrapping_add(1), k.wrapping_sub(1)] {
                assert_eq!(t.get(n).is_some(), keys.binary_search(&n).is_ok());
            }
        }
    }

    #[test]
    fn finds_every_key_and_no_other_for_uniform_keys() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0usize, 1, 2, 3, 127, 128, 129, 1000, 20_000] {
            let mut s = n as u64;
            let mut keys: Vec<u128> = (0..n)
                .map(|_| (u128::from(splitmix(&mut s)) << 64) | u128::from(splitmix(&mut s)))
                .collect();
            let path = write(dir.path(), &mut keys);
            check_all(&path, &keys, 99);
        }
    }

    #[test]
    fn stays_correct_for_skewed_keys() {
        let dir = tempfile::tempdir().unwrap();
        // Sequential ids, all in bucket 0.
        let mut seq: Vec<u128> = (0..5000).collect();
        check_all(&write(dir.path(), &mut seq), &seq, 1);
        // Time-ordered (version 7 style) ids: a 48-bit clock on top.
        let mut s = 3;
        let mut v7: Vec<u128> = (0..5000u128)
            .map(|i| ((1_700_000_000_000 + i * 3) << 80) | u128::from(splitmix(&mut s)))
            .collect();
        check_all(&write(dir.path(), &mut v7), &v7, 2);
        // Extremes and clusters at both ends of the key space.
        let mut ends: Vec<u128> = (0..3000u128)
            .flat_map(|i| [i, u128::MAX - i, (1 << 127) + i * 1_000_003])
            .collect();
        check_all(&write(dir.path(), &mut ends), &ends, 3);
    }

    fn refused(bytes: &[u8]) -> FormatError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.promo");
        std::fs::write(&path, bytes).unwrap();
        match Table::open_verified(&path, 1) {
            Err(Error::Format { path: p, cause }) => {
                assert_eq!(p, path, "the error names the file");
                cause
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    fn good_file() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut keys: Vec<u128> = (0..1000u128)
            .map(|i| i * 0x0123_4567_89ab_cdef_0011)
            .collect();
        std::fs::read(write(dir.path(), &mut keys)).unwrap()
    }

    #[test]
    fn good_file_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.promo");
        std::fs::write(&path, good_file()).unwrap();
        assert_eq!(Table::open_verified(&path, 1).unwrap().len(), 1000);
    }

    /// The kernel's flags of the mapping of `path` in this process
    /// (`/proc/self/smaps`: `rr` is random advice, `sr` sequential).
    fn mapping_flags(path: &Path) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.ends_with(name));
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_else(|| panic!("{name} is not mapped"))
            .to_string()
    }

    /// Lookups must not read around the page they fault on (see the
    /// advice in `open`).
    #[test]
    fn the_mapping_is_advised_random_after_open_and_after_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("advised.promo");
        std::fs::write(&path, good_file()).unwrap();
        let table = Table::open(&path, 1).unwrap();
        let flags = mapping_flags(&path);
        assert!(flags.split_whitespace().any(|f| f == "rr"), "{flags}");
        table.verify().unwrap();
        let flags = mapping_flags(&path);
        assert!(flags.split_whitespace().any(|f| f == "rr"), "{flags}");
        assert!(!flags.split_whitespace().any(|f| f == "sr"), "{flags}");
    }

    /// Verification reads every byte after the header once, in order, and
    /// says so range by range (a cold verification lets each range go).
    #[test]
    fn verification_hands_back_every_range_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys: Vec<u128> = (0..5000u128).map(|i| i * (u128::MAX / 5000)).collect();
        let path = write(dir.path(), &mut keys);
        let t = Table::open(&path, 1).unwrap();
        let mut ranges = Vec::new();
        format::verify_body(t.header(), &t.map, |r| ranges.push(r)).unwrap();
        let mut at = HEADER_LEN;
        for r in &ranges {
            assert_eq!(r.start, at);
            at = r.end;
        }
        assert_eq!(at, t.map.len());
        assert!(memory_for_cache().is_some_and(|m| m > 0));
    }

    #[test]
    fn zero_length_and_short_files_are_refused() {
        assert_eq!(refused(&[]), FormatError::TooShort { len: 0 });
        assert_eq!(
            refused(&good_file()[..63]),
            FormatError::TooShort { len: 63 }
        );
        assert_eq!(
            refused(&good_file()[..127]),
            FormatError::TooShort { len: 127 }
        );
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut f = good_file();
        f[0] = b'X';
        assert!(matches!(refused(&f), FormatError::Magic { .. }));
    }

    #[test]
    fn other_version_is_refused() {
        let mut f = good_file();
        f[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(matches!(refused(&f), FormatError::Version { got, .. } if got == VERSION + 1));
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let f = good_file();
        for cut in [128, 129, 128 + 32 * 500, f.len() - 8, f.len() - 1] {
            assert!(
                matches!(refused(&f[..cut]), FormatError::Length { .. }),
                "cut at {cut}"
            );
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(refused(&longer), FormatError::Length { .. }));
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let f = good_file();
        // Every header byte, and a spread of body bytes (records and fanout).
        let positions = (0..HEADER_LEN)
            .chain((HEADER_LEN..f.len()).step_by(61))
            .chain([f.len() - 1]);
        for at in positions {
            let mut bad = f.clone();
            bad[at] ^= 0x20;
            let err = refused(&bad);
            if at >= HEADER_LEN {
                assert!(
                    matches!(err, FormatError::BodyChecksum { .. }),
                    "byte {at}: {err}"
                );
            }
        }
    }

    #[test]
    fn other_record_size_is_refused() {
        let mut f = good_file();
        f[12..16].copy_from_slice(&64u32.to_le_bytes());
        // Fix the header checksum so that the record size check itself fires.
        let sum = xxhash_rust::xxh3::xxh3_64(&f[..120]);
        f[120..128].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            refused(&f),
            FormatError::RecordSize {
                expected: 32,
                got: 64
            }
        );
    }

    #[test]
    fn unsorted_file_with_valid_checksums_is_refused() {
        let recs = [record(5), record(3), record(9)];
        let f = raw(&recs, 0, &[0, 3]);
        assert_eq!(refused(&f), FormatError::OutOfOrder { index: 1 });
        let dup = raw(&[record(5), record(5)], 0, &[0, 2]);
        assert_eq!(refused(&dup), FormatError::OutOfOrder { index: 1 });
    }

    #[test]
    fn wrong_fanout_with_valid_checksums_is_refused() {
        let recs = [record(1), record(u128::MAX)];
        assert!(matches!(
            refused(&raw(&recs, 1, &[0, 2, 2])),
            FormatError::Fanout { bucket: 1, .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.promo");
        std::fs::write(&path, raw(&recs, 1, &[0, 1, 2])).unwrap();
        assert_eq!(Table::open_verified(&path, 1).unwrap().len(), 2);
    }

    #[test]
    fn header_with_huge_count_is_refused_without_overflow() {
        let f = good_file();
        for at in [16, 56, 64] {
            let mut f = f.clone();
            f[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let sum = xxhash_rust::xxh3::xxh3_64(&f[..120]);
            f[120..128].copy_from_slice(&sum.to_le_bytes());
            assert!(matches!(refused(&f), FormatError::Length { .. }), "at {at}");
        }
    }

    #[test]
    fn dates_pointing_outside_their_tables_are_refused() {
        let outside = [
            DateWord::compact(crate::generation::date::split(DATE).unwrap().0, 1).unwrap(),
            DateWord::overflow(0, 5),
            DateWord(u64::MAX >> 1),
        ];
        for word in outside {
            let recs = [record(1).with_date(word)];
            assert_eq!(
                refused(&raw(&recs, 0, &[0, 1])),
                FormatError::BadRecord { index: 0 },
                "{word:?}"
            );
        }
    }

    #[test]
    fn dates_in_the_overflow_area_and_many_zones_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dates.promo");
        let dates = [
            "2018-08-04 05:32:31.123456789 +0200 CEST",
            "2018-08-04T05:32:31.5Z",
            "2018-08-04 05:32:31 -0300 -03",
            "2018-08-04t05:32:31z",
            "2016-12-31T23:59:60+05:30",
            "2018-08-04 05:32:31",
        ];
        let mut w = Writer::new(File::create(&path).unwrap(), &path, 6).unwrap();
        for (i, d) in dates.iter().enumerate() {
            w.push_row(i as u128, price(1), d.as_bytes()).unwrap();
        }
        let header = w.finish().unwrap();
        assert_eq!(
            header.overflow_len,
            (dates[0].len() + dates[1].len()) as u64
        );
        let t = Table::open_verified(&path, 1).unwrap();
        for (i, d) in dates.iter().enumerate() {
            assert_eq!(t.get(i as u128).unwrap().date(), d.as_bytes());
        }
    }

    #[test]
    fn shard_files_hold_only_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.promo");
        let shard = Shard::new(1, 4).unwrap();
        let mut w = Writer::new(File::create(&path).unwrap(), &path, 2)
            .unwrap()
            .with_shard(shard);
        w.push_row(0x4 << 124, price(1), DATE).unwrap();
        assert!(w.push_row(0x8 << 124, price(1), DATE).is_err());
        w.finish().unwrap();
        let t = Table::open_verified(&path, 1).unwrap();
        assert_eq!(t.header().shard, shard);
        // The same record in a file claiming shard 0/4 is refused.
        let mut f = std::fs::read(&path).unwrap();
        f[48..52].copy_from_slice(&0u32.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&f[..120]);
        f[120..128].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(refused(&f), FormatError::OutsideShard { index: 0 });
    }

    /// A generation written by promo's version-1 writer (the release before
    /// version 2) from fixtures/promotions.csv is still served.
    #[test]
    fn a_version_1_file_is_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = Table::open_verified(&root.join("fixtures/promotions-v1.promo"), 1).unwrap();
        assert_eq!(t.header().version, 1);
        let csv = std::fs::read_to_string(root.join("fixtures/promotions.csv")).unwrap();
        let mut seen = 0;
        for line in csv.lines().filter(|l| !l.starts_with("id")) {
            let mut f = line.split(',');
            let (id, price, date) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let key = uuid::Uuid::parse_str(id).unwrap().as_u128();
            let found = t.get(key).unwrap();
            assert_eq!(found.date(), date.as_bytes());
            assert_eq!(found.price().unwrap().to_string(), price);
            seen += 1;
        }
        assert_eq!(seen, t.len());
    }

    #[test]
    fn writer_refuses_out_of_order_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.promo");
        let mut w = Writer::new(File::create(&path).unwrap(), &path, 2).unwrap();
        w.push_row(2, price(2), DATE).unwrap();
        assert!(w.push_row(2, price(2), DATE).is_err());
        assert!(w.push_row(1, price(1), DATE).is_err());
    }

    #[test]
    fn fanout_bits_grow_with_count() {
        assert_eq!(fanout_bits_for(0), 0);
        assert_eq!(fanout_bits_for(63), 0);
        assert_eq!(fanout_bits_for(64), 1);
        assert_eq!(fanout_bits_for(100_000_000), 21);
        assert_eq!(fanout_bits_for(u64::MAX), format::MAX_FANOUT_BITS);
    }
}
