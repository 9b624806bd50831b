//! The generation file format and its delta's, byte by byte: the one place
//! that defines them.
//!
//! A generation is one immutable file. Everything is little-endian except
//! the keys, which are big-endian so that byte order, integer order and the
//! order of the UUIDs' text are the same order. promo writes version 2 and
//! reads versions 1 and 2, so a fleet upgrades its servers before its
//! builders and an old generation stays servable.
//!
//! ## Version 2
//!
//! ```text
//! offset          size        field
//! ------          ----        -----
//! header (128 bytes)
//!   0              8          magic, b"PROMOGEN"
//!   8              4          format version, u32 = 2
//!  12              4          record size in bytes, u32 = 32
//!  16              8          record count n, u64
//!  24              4          fanout bits b, u32 (0..=MAX_FANOUT_BITS)
//!  28              4          reserved, zero
//!  32              8          created, milliseconds since the Unix epoch, u64
//!  40              8          body checksum: XXH3-64 of every byte after the header
//!  48              4          shard index K, u32
//!  52              4          shard count N, u32 (K < N; 0/1 is every id)
//!  56              8          zone table length z, in bytes, u64
//!  64              8          overflow area length o, in bytes, u64
//!  72             48          reserved, zero
//! 120              8          header checksum: XXH3-64 of bytes 0..120
//! records (starting at 128: two records a cache line, none across a page)
//! 128 + 32*i      32          record i, strictly increasing by key:
//!                              0  16  key: the UUID's 16 bytes, big-endian
//!                             16   8  price, u64: scale in the top 5 bits,
//!                                     units in the low 59 (price = units / 10^scale)
//!                             24   8  expiration date, u64, one of:
//!                                     bit 63 = 0, compact: the date is
//!                                       YYYY-MM-DD?HH:MM:SS then zone Z:
//!                                       bits  0-5  second (0-60)
//!                                       bits  6-11 minute (0-59)
//!                                       bits 12-16 hour (0-23)
//!                                       bits 17-21 day (1-31)
//!                                       bits 22-25 month (1-12)
//!                                       bits 26-39 year (0-9999)
//!                                       bits 40-41 ? = ' ', 'T', 't' (0, 1, 2)
//!                                       bits 42-61 Z, an index in the zone table
//!                                       bit  62    zero
//!                                     bit 63 = 1, overflow: the date is the
//!                                       bits 0-7 bytes at offset bits 8-62
//!                                       of the overflow area
//! fanout table (starting at 128 + 32*n)
//! ...             8*(2^b+1)   u64 entries: entry j is the index of the first
//!                             record whose key's top b bits are >= j;
//!                             entry 2^b is n
//! zone table (z bytes): each zone as one length byte (0..=21) and its
//!                             bytes: the text after a date's seconds
//!                             (` +0200 CEST`, `Z`, `+02:00`, or nothing);
//!                             promo writes them sorted by their bytes
//! overflow area (o bytes): dates kept as written, which records point to;
//!                             promo writes them in the order of the
//!                             records that point to them
//! ```
//!
//! Readers take the zone table and the overflow area in any order. promo
//! writes them in that one order so that a file's bytes depend on its
//! records alone: the same promotions, whatever order their rows came in,
//! make the same body (the same checksum), and a promotion that did not
//! change keeps its 32 bytes from one generation to the next while the
//! feed's set of zones stays the same.
//!
//! The file's length is therefore exactly `128 + 32*n + 8*(2^b + 1) + z + o`.
//! Every compact date's fields are printed at their fixed widths, so a
//! compact date renders back byte for byte (see `date`).
//!
//! ## Version 1
//!
//! The same but for these: a 64-byte header (bytes 48..56 reserved, zero;
//! the header checksum at 56 covers bytes 0..56), no shard (every id), no
//! zone table and no overflow area, and 64-byte records at `64 + 64*i`
//! whose bytes 24..64 hold the date as written, NUL-padded (no NUL inside).
//! The length is `64 + 64*n + 8*(2^b + 1)`.
//!
//! ## Both
//!
//! The fanout table and the tables after it come after the records because
//! their sizes depend on the count, which the writer only knows once the
//! sorted records have streamed past; the header is written last of all, so
//! a file with a valid header is complete.
//!
//! A lookup reads the two fanout entries of the key's bucket, interpolates
//! inside the bucket (keys are uniformly distributed UUIDs) and searches
//! outward from the guess, which stays correct for skewed keys too.
//!
//! ## Delta, version 1
//!
//! What generation N changes against an older generation, its base: what a
//! replica whose live generation is the base downloads instead of N (see
//! `delta`). Sorted by key like a generation, and checksummed the same way.
//!
//! ```text
//! offset          size        field
//! ------          ----        -----
//! header (128 bytes)
//!   0              8          magic, b"PROMODLT"
//!   8              4          delta format version, u32 = 1
//!  12              4          record size in bytes, u32 = 32
//!  16              8          base: the store's sequence, u64
//!  24              8          base: its body checksum, u64
//!  32              8          target: the store's sequence, u64
//!  40              8          records r (changed or added), u64
//!  48              8          removed ids d, u64
//!  56              8          body checksum: XXH3-64 of every byte after
//!                             this header (the target's header included)
//!  64             56          reserved, zero
//! 120              8          header checksum: XXH3-64 of bytes 0..120
//! 128            128          the target's header, exactly as in its file
//!                             (version 2: its count, fanout bits, creation
//!                             time, body checksum, shard, table lengths)
//! 256 + 32*i      32          record i: a record of the target whose 32
//!                             bytes are not the base's record of that id
//!                             (changed) or whose id the base lacks (added),
//!                             strictly increasing by key
//! 256 + 32*r + 16*j  16       removed id j: a key the base holds and the
//!                             target does not, strictly increasing
//! then z + o bytes            the target's zone table and overflow area, as
//!                             in its file (z and o from its header)
//! ```
//!
//! The length is exactly `256 + 32*r + 16*d + z + o`. The target is the
//! base's records with the ids removed, the changed ones replaced and the
//! added ones inserted, in key order; then the fanout table computed from
//! them with the target's fanout bits; then the tables; then the header.
//! Its body checksum must be the target header's, or the rebuild failed.
//! Both generations are version 2 and of the same shard.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

/// Why a file is refused: defined with the one error type, named here too.
pub use crate::error::FormatError;
use crate::error::{Error, Result};
use crate::generation::date::{DateTables, DateWord, Dates, Decoded};
use crate::generation::direct::DirectWriter;
use crate::generation::record::{key_of, price_of, Price, Record, RECORD_LEN};
use crate::generation::shard::Shard;

/// The first eight bytes of every generation file.
pub const MAGIC: [u8; 8] = *b"PROMOGEN";
/// The format version this promo writes.
pub const VERSION: u32 = 2;
/// The oldest version this promo reads.
pub const OLDEST_READABLE: u32 = 1;
/// Bytes of a version-2 header: bytes before the first record.
pub const HEADER_LEN: usize = 128;
/// Bytes of a version-1 header and record.
pub const V1_HEADER_LEN: usize = 64;
pub const V1_RECORD_LEN: usize = 64;
/// Bytes of the shortest header; a shorter file cannot be a generation.
const MIN_HEADER_LEN: usize = V1_HEADER_LEN;
/// Largest fanout: 2^26 buckets is a 512 MiB table, for about 10^10 records.
pub const MAX_FANOUT_BITS: u32 = 26;

/// The header of a generation file, of either version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u32,
    pub count: u64,
    pub fanout_bits: u32,
    pub created_ms: u64,
    pub body_checksum: u64,
    /// The ids the file holds (always every id in version 1).
    pub shard: Shard,
    /// Bytes of the zone table and of the overflow area (0 in version 1).
    pub zones_len: u64,
    pub overflow_len: u64,
}

impl Header {
    /// A version-2 header of `count` records in a fanout of `fanout_bits`,
    /// without tables, checksum or time: the parts a test varies.
    pub fn new(count: u64, fanout_bits: u32) -> Header {
        Header {
            version: VERSION,
            count,
            fanout_bits,
            created_ms: 0,
            body_checksum: 0,
            shard: Shard::WHOLE,
            zones_len: 0,
            overflow_len: 0,
        }
    }

    /// Bytes before the first record.
    pub fn header_len(&self) -> usize {
        layout(self.version)
            .expect("a header holds a version promo reads")
            .0
    }

    /// Bytes of one record.
    pub fn record_len(&self) -> usize {
        layout(self.version)
            .expect("a header holds a version promo reads")
            .1
    }

    /// Total file length this header describes, or `None` if it overflows.
    fn checked_len(&self) -> Option<u64> {
        self.count
            .checked_mul(self.record_len() as u64)?
            .checked_add(self.header_len() as u64 + fanout_len(self.fanout_bits))?
            .checked_add(self.zones_len)?
            .checked_add(self.overflow_len)
    }

    /// Total file length this header describes.
    pub fn file_len(&self) -> u64 {
        self.checked_len().unwrap_or(u64::MAX)
    }

    /// Byte offset of the fanout table.
    pub fn fanout_offset(&self) -> usize {
        self.header_len() + self.count as usize * self.record_len()
    }

    /// Byte offset of the zone table.
    pub fn zones_offset(&self) -> usize {
        self.fanout_offset() + fanout_len(self.fanout_bits) as usize
    }

    /// Byte offset of the overflow area.
    pub fn overflow_offset(&self) -> usize {
        self.zones_offset() + self.zones_len as usize
    }

    /// Encodes the header, computing its checksum: `header_len()` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; self.header_len()];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(self.record_len() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..28].copy_from_slice(&self.fanout_bits.to_le_bytes());
        h[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        h[40..48].copy_from_slice(&self.body_checksum.to_le_bytes());
        if self.version >= 2 {
            h[48..52].copy_from_slice(&self.shard.index().to_le_bytes());
            h[52..56].copy_from_slice(&self.shard.count().to_le_bytes());
            h[56..64].copy_from_slice(&self.zones_len.to_le_bytes());
            h[64..72].copy_from_slice(&self.overflow_len.to_le_bytes());
        }
        let at = h.len() - 8;
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..at]);
        h[at..].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Decodes and checks a header against the length of its file: the cheap
    /// checks that run before a file is trusted at all.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if bytes.len() < MIN_HEADER_LEN || file_len < MIN_HEADER_LEN as u64 {
            return Err(FormatError::TooShort { len: file_len });
        }
        let header = Header::decode_fields(bytes, file_len)?;
        // Checked arithmetic: a hostile count must not wrap into a "valid" length.
        check_len(header.checked_len(), file_len)?;
        Ok(header)
    }

    /// Decodes and checks a version-2 header that is not at the head of its
    /// file: the target a delta carries. Its length must not overflow.
    pub fn decode_detached(bytes: &[u8]) -> Result<Header, FormatError> {
        let len = bytes.len() as u64;
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::TooShort { len });
        }
        let header = Header::decode_fields(bytes, len)?;
        if header.version != VERSION {
            return Err(FormatError::Version {
                got: header.version,
                oldest: VERSION,
                newest: VERSION,
            });
        }
        if header.checked_len().is_none() {
            return Err(FormatError::Length {
                expected: u64::MAX,
                got: len,
            });
        }
        Ok(header)
    }

    /// The checks of [`Header::decode`] but the file's length (`file_len`
    /// is only what a short header is reported as).
    fn decode_fields(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let magic: [u8; 8] = bytes[0..8].try_into().unwrap();
        if magic != MAGIC {
            return Err(FormatError::Magic { got: magic });
        }
        let version = u32_at(8);
        let (header_len, _) = layout(version).ok_or(FormatError::Version {
            got: version,
            oldest: OLDEST_READABLE,
            newest: VERSION,
        })?;
        if bytes.len() < header_len || file_len < header_len as u64 {
            return Err(FormatError::TooShort { len: file_len });
        }
        let at = header_len - 8;
        let computed = xxhash_rust::xxh3::xxh3_64(&bytes[..at]);
        if u64_at(at) != computed {
            return Err(FormatError::HeaderChecksum {
                stored: u64_at(at),
                computed,
            });
        }
        let mut header = Header {
            version,
            count: u64_at(16),
            fanout_bits: u32_at(24),
            created_ms: u64_at(32),
            body_checksum: u64_at(40),
            shard: Shard::WHOLE,
            zones_len: 0,
            overflow_len: 0,
        };
        if u32_at(12) != header.record_len() as u32 {
            return Err(FormatError::RecordSize {
                expected: header.record_len() as u32,
                got: u32_at(12),
            });
        }
        if header.fanout_bits > MAX_FANOUT_BITS {
            return Err(FormatError::FanoutBits {
                got: header.fanout_bits,
                max: MAX_FANOUT_BITS,
            });
        }
        if version >= 2 {
            let (index, count) = (u32_at(48), u32_at(52));
            header.shard = Shard::new(index, count).ok_or(FormatError::Shard { index, count })?;
            header.zones_len = u64_at(56);
            header.overflow_len = u64_at(64);
        }
        Ok(header)
    }
}

/// `Ok` when a file of `got` bytes is the length its header describes
/// (`None`: a length that overflows, which no file is).
pub(crate) fn check_len(expected: Option<u64>, got: u64) -> Result<(), FormatError> {
    match expected {
        Some(len) if len == got => Ok(()),
        _ => Err(FormatError::Length {
            expected: expected.unwrap_or(u64::MAX),
            got,
        }),
    }
}

/// The header and record sizes of format `version`, if promo reads it.
fn layout(version: u32) -> Option<(usize, usize)> {
    match version {
        1 => Some((V1_HEADER_LEN, V1_RECORD_LEN)),
        VERSION => Some((HEADER_LEN, RECORD_LEN)),
        _ => None,
    }
}

/// Bytes in a fanout table of `bits` bits.
pub fn fanout_len(bits: u32) -> u64 {
    8 * ((1u64 << bits) + 1)
}

/// The fanout bits the writer picks for `count` records: 32 to 63 records a
/// bucket, so that the interpolated guess is within a few records (a few
/// cache lines, one page) of the key. The reader copies the table to memory:
/// 16 MiB at 10^8 records.
pub fn fanout_bits_for(count: u64) -> u32 {
    let log2 = 63 - count.max(1).leading_zeros();
    log2.saturating_sub(5).min(MAX_FANOUT_BITS)
}

/// The fanout bucket of `key` in a table of `bits` bits.
#[inline]
pub fn bucket_of(key: u128, bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        (key >> (128 - bits)) as u64
    }
}

/// A file's zone table and overflow area, borrowed from the mapped file.
pub struct FileDates<'a> {
    zones: DateTables,
    overflow: &'a [u8],
}

impl<'a> FileDates<'a> {
    /// The tables of `file` (the whole file, whose header passed
    /// [`Header::decode`]); empty for version 1.
    pub fn of(header: &Header, file: &'a [u8]) -> Result<FileDates<'a>, FormatError> {
        let zones = &file[header.zones_offset()..header.overflow_offset()];
        Ok(FileDates {
            zones: DateTables::decode_zones(zones).ok_or(FormatError::Zones)?,
            overflow: &file[header.overflow_offset()..],
        })
    }

    /// The tables of a file whose header is `header`, from `tables`: the
    /// bytes after its fanout table (a delta carries them).
    pub fn of_tables(header: &Header, tables: &'a [u8]) -> Result<FileDates<'a>, FormatError> {
        let zones = tables
            .get(..header.zones_len as usize)
            .ok_or(FormatError::Zones)?;
        Ok(FileDates {
            zones: DateTables::decode_zones(zones).ok_or(FormatError::Zones)?,
            overflow: &tables[zones.len()..],
        })
    }

    /// The zone table alone, kept by a table for its lookups.
    pub fn into_zones(self) -> DateTables {
        self.zones
    }
}

impl Dates for FileDates<'_> {
    fn zone(&self, i: u32) -> Option<&[u8]> {
        self.zones.zone(i)
    }

    fn overflow_area(&self) -> &[u8] {
        self.overflow
    }
}

/// Checks everything the header cannot: the body checksum, the key order,
/// the shard, the fanout table, every price and every date. `file` is the
/// whole file, whose header already passed [`Header::decode`].
///
/// The file is read once, front to back, in windows of [`VERIFY_WINDOW`]
/// bytes; `done` is told each byte range once it has been read for good,
/// so that a caller may let its pages go. A damaged file is reported as a
/// checksum mismatch first: a flipped byte is that, whatever else it breaks.
pub fn verify_body(
    header: &Header,
    file: &[u8],
    mut done: impl FnMut(std::ops::Range<usize>),
) -> Result<(), FormatError> {
    let mut hasher = Xxh3::new();
    // The tables after the records, read first: the dates point into them.
    let tail = header.fanout_offset()..file.len();
    let dates = FileDates::of(header, file);
    let fanout = &file[header.fanout_offset()..header.zones_offset()];
    let records_at = header.header_len()..header.fanout_offset();
    let width = header.record_len();
    let window = (VERIFY_WINDOW / width).max(1) * width;
    let mut expected = FanoutBuilder::new(header.fanout_bits);
    let mut prev: Option<u128> = None;
    let mut first_error: Option<FormatError> = dates.as_ref().err().cloned();
    let mut index = 0u64;
    let mut at = records_at.start;
    while at < records_at.end {
        let end = (at + window).min(records_at.end);
        let part = &file[at..end];
        hasher.update(part);
        for rec in part.chunks_exact(width) {
            if first_error.is_none() {
                first_error = check_record(header, dates.as_ref().ok(), rec, index, prev).err();
            }
            let key = key_of(rec);
            prev = Some(key);
            expected.push(key);
            index += 1;
        }
        done(at..end);
        at = end;
    }
    hasher.update(&file[tail.clone()]);
    let computed = hasher.digest();
    if computed != header.body_checksum {
        return Err(FormatError::BodyChecksum {
            stored: header.body_checksum,
            computed,
        });
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let entry = |j: u64| {
        let at = j as usize * 8;
        u64::from_le_bytes(fanout[at..at + 8].try_into().unwrap())
    };
    for (j, want) in expected.finish().into_iter().enumerate() {
        let got = entry(j as u64);
        if got != want {
            return Err(FormatError::Fanout {
                bucket: j as u64,
                expected: want,
                got,
            });
        }
    }
    done(tail);
    Ok(())
}

/// Bytes of a generation verified at a time.
pub const VERIFY_WINDOW: usize = 64 << 20;

/// Checks the records of `block`, numbered from `first`, as
/// [`verify_body`] does but for their order (which the [`Writer`] checks
/// as they are pushed): their shard, prices and dates against `dates`.
/// A file rebuilt from a delta is verified so, as it is written.
pub fn check_block(
    header: &Header,
    dates: &FileDates,
    block: &[u8],
    first: u64,
) -> Result<(), FormatError> {
    let width = header.record_len();
    for (i, rec) in block.chunks_exact(width).enumerate() {
        check_record(header, Some(dates), rec, first + i as u64, None)?;
    }
    Ok(())
}

/// Checks record `index` against the one before it, the shard, and its
/// price and date encodings.
fn check_record(
    header: &Header,
    dates: Option<&FileDates>,
    rec: &[u8],
    index: u64,
    prev: Option<u128>,
) -> Result<(), FormatError> {
    let key = key_of(rec);
    if prev.is_some_and(|p| p >= key) {
        return Err(FormatError::OutOfOrder { index });
    }
    if !header.shard.contains(key) {
        return Err(FormatError::OutsideShard { index });
    }
    let date_ok = header.version == 1 || dates.is_some_and(|d| date_points_inside(d, rec));
    if price_of(rec).is_none() || !date_ok {
        return Err(FormatError::BadRecord { index });
    }
    Ok(())
}

/// Whether a version-2 record's date decodes and points inside its tables.
fn date_points_inside(dates: &FileDates, rec: &[u8]) -> bool {
    let word = Record::from_bytes(rec.try_into().unwrap()).date();
    match word.decode() {
        Some(Decoded::Compact { zone, .. }) => dates.zone(zone).is_some(),
        Some(Decoded::Overflow { offset, len }) => dates.overflow(offset, len).is_some(),
        None => false,
    }
}

/// Builds a fanout table from keys in increasing order.
struct FanoutBuilder {
    bits: u32,
    table: Vec<u64>,
    count: u64,
}

impl FanoutBuilder {
    fn new(bits: u32) -> Self {
        FanoutBuilder {
            bits,
            table: Vec::with_capacity((1usize << bits) + 1),
            count: 0,
        }
    }

    fn push(&mut self, key: u128) {
        let bucket = bucket_of(key, self.bits);
        while self.table.len() as u64 <= bucket {
            self.table.push(self.count);
        }
        self.count += 1;
    }

    fn finish(mut self) -> Vec<u64> {
        self.table.resize((1usize << self.bits) + 1, self.count);
        self.table
    }
}

/// The dates of a build's records, made canonical on their way into the
/// file: the zone table sorted by its bytes, and the overflow area laid
/// out in key order. Rows arrive in any order and are parsed in parallel,
/// so the table and the area first follow the order the rows came in; two
/// feeds with the same promotions in another order would then give two
/// files that differ in every record of a renumbered zone. Made canonical,
/// a file's bytes depend on its records alone, and an unchanged promotion
/// keeps its 32 bytes from one generation to the next whenever the set of
/// zones is the same.
struct Canonical {
    /// A built zone index → its index in the sorted table; `None` when the
    /// table arrived sorted.
    zones: Option<Vec<u32>>,
    /// The overflow area as built: in memory, or in a file of that length.
    overflow: Option<Overflow>,
    /// The area in key order, written as records come, and its length.
    laid_out: Option<(io::BufWriter<File>, u64)>,
    /// The block being rewritten.
    block: Vec<u8>,
}

enum Overflow {
    Memory(Vec<u8>),
    /// The build's spill file, mapped: its dates are read in key order,
    /// which is not the order they were written in.
    Mapped(memmap2::Mmap),
}

impl Overflow {
    fn area(&self) -> &[u8] {
        match self {
            Overflow::Memory(area) => area,
            Overflow::Mapped(map) => map,
        }
    }
}

impl Canonical {
    /// The sorted zone table, and what rewriting the records takes (`None`
    /// when nothing has to change).
    fn new(
        mut dates: DateTables,
        spill: Option<(File, u64)>,
        path: &Path,
    ) -> Result<(DateTables, Option<Canonical>)> {
        let zones: Vec<&[u8]> = dates.zones().collect();
        let mut order: Vec<u32> = (0..zones.len() as u32).collect();
        order.sort_by_key(|&i| zones[i as usize]);
        let mut sorted = DateTables::default();
        let mut remap = vec![0u32; zones.len()];
        for &built in &order {
            remap[built as usize] = sorted
                .intern(zones[built as usize])
                .expect("a table of the same zones fits");
        }
        let identity = remap.iter().enumerate().all(|(i, &z)| i as u32 == z);
        let overflow = match spill {
            Some((file, len)) => {
                // SAFETY: the spill is an unnamed temporary file of this
                // build's, complete (its writer was flushed), which nothing
                // writes or truncates while it is mapped here.
                let map = unsafe { memmap2::Mmap::map(&file) }
                    .map_err(Error::io_op(READING_OVERFLOW, path))?;
                if (map.len() as u64) < len {
                    let short = std::io::ErrorKind::UnexpectedEof.into();
                    return Err(Error::io_op(READING_OVERFLOW, path)(short));
                }
                Some(Overflow::Mapped(map))
            }
            None if dates.overflow.is_empty() => None,
            None => Some(Overflow::Memory(std::mem::take(&mut dates.overflow))),
        };
        if identity && overflow.is_none() {
            return Ok((sorted, None));
        }
        let laid_out = match overflow {
            Some(_) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let file = tempfile::tempfile_in(dir).map_err(Error::io_op(OVERFLOW, dir))?;
                Some((io::BufWriter::with_capacity(1 << 20, file), 0))
            }
            None => None,
        };
        let canonical = Canonical {
            zones: (!identity).then_some(remap),
            overflow,
            laid_out,
            block: Vec::new(),
        };
        Ok((sorted, Some(canonical)))
    }

    /// `block` with its records' dates in the file's own terms.
    fn rewrite(&mut self, block: &[u8], path: &Path) -> Result<&[u8]> {
        self.block.clear();
        self.block.extend_from_slice(block);
        for record in self.block.chunks_exact_mut(RECORD_LEN) {
            let word = DateWord(u64::from_le_bytes(record[24..32].try_into().unwrap()));
            let word = match (word.decode(), &self.zones) {
                (Some(Decoded::Compact { .. }), Some(zones)) => word.relocate(zones, 0),
                (Some(Decoded::Overflow { offset, len }), _) => {
                    let area = self.overflow.as_ref().expect("an overflow area").area();
                    let text = usize::try_from(offset)
                        .ok()
                        .and_then(|at| area.get(at..at.checked_add(len)?))
                        .ok_or_else(|| {
                            let cause = std::io::ErrorKind::UnexpectedEof.into();
                            Error::io_op(READING_OVERFLOW, path)(cause)
                        })?;
                    let (out, len_so_far) = self.laid_out.as_mut().expect("an area to lay out");
                    out.write_all(text).map_err(Error::io_op(OVERFLOW, path))?;
                    let word = DateWord::overflow(*len_so_far, len);
                    *len_so_far += len as u64;
                    word
                }
                _ => word,
            };
            record[24..32].copy_from_slice(&word.0.to_le_bytes());
        }
        Ok(&self.block)
    }

    /// The overflow area laid out in key order, if there is one.
    fn finish(self, path: &Path) -> Result<Option<(File, u64)>> {
        match self.laid_out {
            Some((out, len)) => {
                let file = out
                    .into_inner()
                    .map_err(|e| Error::io_op(OVERFLOW, path)(e.into_error()))?;
                Ok(Some((file, len)))
            }
            None => Ok(None),
        }
    }
}

/// What a failed read or write of the overflow area was doing.
const READING_OVERFLOW: &str = "reading the dates kept as written";
const OVERFLOW: &str = "writing the dates kept as written";

/// Writes a generation file from records in strictly increasing key order.
///
/// The header goes in last, so an interrupted write never looks complete;
/// the caller publishes the file (rename) only after [`Writer::finish`].
pub struct Writer {
    /// The file, written past the page cache: see [`direct`](super::direct).
    out: DirectWriter,
    /// The zone table, and the overflow area unless `spill` holds it.
    dates: DateTables,
    /// The overflow area, in a file of its own that `finish` appends.
    spill: Option<(File, u64)>,
    /// How the records' dates are rewritten on their way in, so that the
    /// file depends on its records alone (see [`Canonical`]).
    canonical: Option<Canonical>,
    shard: Shard,
    hasher: Xxh3,
    fanout: FanoutBuilder,
    prev: Option<u128>,
    path: std::path::PathBuf,
}

/// What a failed write was doing, for the error message: on a full disk
/// (`No space left on device`, or `File too large` past `ulimit -f`) the
/// message names the file and says that it was the generation being written.
const WRITING: &str = "writing the new generation";

impl Writer {
    /// Starts a generation in `file` (new and empty) at `path`. `max_count`
    /// bounds the records to come and sizes the fanout table.
    pub fn new(file: File, path: &Path, max_count: u64) -> Result<Writer> {
        let mut out = DirectWriter::new(file).map_err(Error::io_op(WRITING, path))?;
        out.write(&[0u8; HEADER_LEN])
            .map_err(Error::io_op(WRITING, path))?;
        Ok(Writer {
            out,
            dates: DateTables::default(),
            spill: None,
            canonical: None,
            shard: Shard::WHOLE,
            hasher: Xxh3::new(),
            fanout: FanoutBuilder::new(fanout_bits_for(max_count)),
            prev: None,
            path: path.to_path_buf(),
        })
    }

    /// Starts the generation `target` describes, whose records are to come
    /// from a merge (see [`delta`](super::delta)): the fanout and shard are
    /// the target's, and [`Writer::finish_as`] makes the file it, byte for
    /// byte, or fails.
    pub fn rebuild(file: File, path: &Path, target: &Header) -> Result<Writer> {
        let mut writer = Writer::new(file, path, 0)?.with_shard(target.shard);
        writer.fanout = FanoutBuilder::new(target.fanout_bits);
        Ok(writer)
    }

    /// The file holds only the ids of `shard` (checked as they are pushed).
    pub fn with_shard(mut self, shard: Shard) -> Writer {
        self.shard = shard;
        self
    }

    /// The records to come have their dates in `dates` (its zones, and its
    /// overflow area or the first `len` bytes of `spill`), in the order the
    /// rows arrived. The file gets them in a canonical order instead (see
    /// [`Canonical`]): the zones sorted, the overflow area in key order.
    pub fn with_dates(mut self, dates: DateTables, spill: Option<(File, u64)>) -> Result<Writer> {
        debug_assert!(spill.is_none() || dates.overflow.is_empty());
        let (sorted, canonical) = Canonical::new(dates, spill, &self.path)?;
        self.dates = sorted;
        self.canonical = canonical;
        Ok(self)
    }

    /// Appends the next record; its key must be greater than the last one's.
    pub fn push(&mut self, record: &Record) -> Result<()> {
        self.push_block(record.as_bytes())
    }

    /// Appends a record from its fields, the date as written; for callers
    /// that do not parse feeds (tests, tools), as `with_dates` is not used.
    pub fn push_row(&mut self, key: u128, price: Price, date: &[u8]) -> Result<()> {
        let word = self.dates.encode_text(date);
        self.push(&Record::new(key, price, word))
    }

    /// Appends whole records, each key greater than the one before.
    pub fn push_block(&mut self, block: &[u8]) -> Result<()> {
        match self.canonical.take() {
            None => self.push_canonical(block),
            Some(mut canonical) => {
                let rewritten = canonical.rewrite(block, &self.path);
                let pushed = rewritten.and_then(|b| self.push_canonical(b));
                self.canonical = Some(canonical);
                pushed
            }
        }
    }

    /// [`Writer::push_block`] for records whose dates are the file's own.
    fn push_canonical(&mut self, block: &[u8]) -> Result<()> {
        assert_eq!(block.len() % RECORD_LEN, 0, "a block holds whole records");
        for record in block.chunks_exact(RECORD_LEN) {
            let key = key_of(record);
            if self.prev.is_some_and(|p| p >= key) {
                // A sorter bug, caught before it reaches a reader.
                return Err(Error::format(
                    &self.path,
                    FormatError::OutOfOrder {
                        index: self.fanout.count,
                    },
                ));
            }
            if !self.shard.contains(key) {
                return Err(Error::format(
                    &self.path,
                    FormatError::OutsideShard {
                        index: self.fanout.count,
                    },
                ));
            }
            self.prev = Some(key);
            self.fanout.push(key);
        }
        self.hasher.update(block);
        self.out
            .write(block)
            .map_err(Error::io_op(WRITING, &self.path))
    }

    /// Writes what follows the records (a body part, hashed).
    fn write_body(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.out
            .write(bytes)
            .map_err(Error::io_op(WRITING, &self.path))
    }

    /// Writes the fanout table, the zone table, the overflow area and the
    /// header, and syncs the file to disk.
    pub fn finish(mut self) -> Result<Header> {
        let count = self.fanout.count;
        let bits = self.fanout.bits;
        let fanout = std::mem::replace(&mut self.fanout, FanoutBuilder::new(0)).finish();
        let fanout: Vec<u8> = fanout.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.write_body(&fanout)?;
        let zones = self.dates.encode_zones();
        self.write_body(&zones)?;
        let overflow = std::mem::take(&mut self.dates.overflow);
        self.write_body(&overflow)?;
        let mut overflow_len = overflow.len() as u64;
        if let Some(canonical) = self.canonical.take() {
            self.spill = canonical.finish(&self.path)?;
        }
        if let Some((mut spill, len)) = self.spill.take() {
            let path = self.path.clone();
            let reading = |e| Error::io_op(READING_OVERFLOW, &path)(e);
            spill.seek(SeekFrom::Start(0)).map_err(reading)?;
            let mut spill = spill.take(len);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = spill.read(&mut buf).map_err(reading)?;
                if n == 0 {
                    break;
                }
                self.write_body(&buf[..n])?;
                overflow_len += n as u64;
            }
            if overflow_len != len {
                return Err(reading(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let header = Header {
            version: VERSION,
            count,
            fanout_bits: bits,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            body_checksum: self.hasher.digest(),
            shard: self.shard,
            zones_len: zones.len() as u64,
            overflow_len,
        };
        self.seal(&header)?;
        Ok(header)
    }

    /// Finishes the file [`Writer::rebuild`] started: writes the fanout
    /// table, then `tables` (the target's zone table and overflow area, as
    /// they are), then the target's header, once the records and bytes
    /// written are the target's: their count and body checksum. A merge
    /// that went wrong fails here, before anything reads the file.
    pub fn finish_as(mut self, target: &Header, tables: &[u8]) -> Result<()> {
        let fanout = std::mem::replace(&mut self.fanout, FanoutBuilder::new(0));
        if fanout.count != target.count {
            let e = format!(
                "rebuilt {} records, but the target holds {}",
                fanout.count, target.count
            );
            return Err(Error::format(&self.path, FormatError::Delta(e)));
        }
        let fanout: Vec<u8> = fanout
            .finish()
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        self.write_body(&fanout)?;
        self.write_body(tables)?;
        let computed = self.hasher.digest();
        if computed != target.body_checksum {
            let e = FormatError::BodyChecksum {
                stored: target.body_checksum,
                computed,
            };
            return Err(Error::format(&self.path, e));
        }
        self.seal(target)
    }

    /// Writes `header` at the front and syncs the file to disk.
    fn seal(self, header: &Header) -> Result<()> {
        let io = |e| Error::io_op(WRITING, &self.path)(e);
        let mut file = self.out.into_file().map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header.encode()).map_err(io)?;
        let started = std::time::Instant::now();
        file.sync_all().map_err(Error::io_op(
            "syncing the new generation to disk",
            &self.path,
        ))?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "synced the generation file"
        );
        Ok(())
    }
}

/// Reads and checks the header of the file at `path` without mapping it.
pub fn read_header(path: &Path) -> Result<Header> {
    let file = File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    let mut buf = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .map_err(Error::io(path))?;
    Header::decode(&buf, len).map_err(|e| Error::format(path, e))
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, for people.
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Headers of both versions (version 1 has no shard and no tables).
    fn header() -> impl Strategy<Value = Header> {
        (
            (
                0u64..1 << 40,
                0..=MAX_FANOUT_BITS,
                any::<u64>(),
                any::<u64>(),
            ),
            (
                1u32..=2,
                1u32..64,
                any::<u32>(),
                0u64..1 << 30,
                0u64..1 << 40,
            ),
        )
            .prop_map(
                |((count, fanout_bits, created_ms, body_checksum), (version, n, k, z, o))| {
                    let v2 = version == 2;
                    Header {
                        version,
                        count,
                        fanout_bits,
                        created_ms,
                        body_checksum,
                        shard: if v2 {
                            Shard::new(k % n, n).unwrap()
                        } else {
                            Shard::WHOLE
                        },
                        zones_len: if v2 { z } else { 0 },
                        overflow_len: if v2 { o } else { 0 },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..160),
            file_len in any::<u64>(),
        ) {
            if let Ok(h) = Header::decode(&bytes, file_len) {
                prop_assert_eq!(h.file_len(), file_len);
                prop_assert_eq!(Header::decode(&h.encode(), file_len), Ok(h));
            }
        }

        #[test]
        fn headers_round_trip_against_their_length(h in header()) {
            let bytes = h.encode();
            prop_assert_eq!(Header::decode(&bytes, h.file_len()), Ok(h));
            let short = Header::decode(&bytes, h.file_len() - 1);
            let long = Header::decode(&bytes, h.file_len() + 1);
            prop_assert!(matches!(short, Err(FormatError::Length { .. })), "{:?}", short);
            prop_assert!(matches!(long, Err(FormatError::Length { .. })), "{:?}", long);
        }

        /// Every byte of the header is covered: magic, version or checksum.
        #[test]
        fn any_flipped_header_bit_is_refused(h in header(), at in 0..HEADER_LEN, bit in 0..8u32) {
            let mut bytes = h.encode();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            prop_assert!(Header::decode(&bytes, h.file_len()).is_err());
        }
    }

    #[test]
    fn a_header_names_what_is_wrong() {
        let h = Header::new(10, 1);
        let mut bytes = h.encode();
        bytes[8] = 3;
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..120]);
        bytes[120..128].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            Header::decode(&bytes, h.file_len()),
            Err(FormatError::Version {
                got: 3,
                oldest: OLDEST_READABLE,
                newest: VERSION
            })
        );
        assert_eq!(
            Header::decode(&bytes[..10], 10),
            Err(FormatError::TooShort { len: 10 })
        );
    }
}
