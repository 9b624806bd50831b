//! The generation file format, byte by byte: the one place that defines it.
//!
//! A generation is one immutable file. Everything is little-endian except
//! the keys, which are big-endian so that byte order, integer order and the
//! order of the UUIDs' text are the same order.
//!
//! ```text
//! offset          size        field
//! ------          ----        -----
//! header (HEADER_LEN = 64 bytes)
//!  0               8          magic, b"PROMOGEN"
//!  8               4          format version, u32 (VERSION)
//! 12               4          record size in bytes, u32 (RECORD_LEN = 64)
//! 16               8          record count n, u64
//! 24               4          fanout bits b, u32 (0..=MAX_FANOUT_BITS)
//! 28               4          reserved, zero
//! 32               8          created, milliseconds since the Unix epoch, u64
//! 40               8          body checksum: XXH3-64 of every byte after the header
//! 48               8          reserved, zero
//! 56               8          header checksum: XXH3-64 of bytes 0..56
//! records (starting at 64, so every record sits inside one page)
//! 64 + 64*i       64          record i, strictly increasing by key:
//!                              0  16  key: the UUID's 16 bytes, big-endian
//!                             16   8  price, u64: scale in the top 5 bits,
//!                                     units in the low 59 (price = units / 10^scale)
//!                             24  40  expiration date as written, ASCII,
//!                                     NUL-padded (no NUL inside)
//! fanout table (starting at 64 + 64*n)
//! ...             8*(2^b+1)   u64 entries: entry j is the index of the first
//!                             record whose key's top b bits are >= j;
//!                             entry 2^b is n
//! ```
//!
//! The file's length is therefore exactly `64 + 64*n + 8*(2^b + 1)`. The
//! fanout table comes last because its size depends on the count, which the
//! writer only knows once the sorted records have streamed past; the header
//! is written last of all, so a file with a valid header is complete.
//!
//! A lookup reads the two fanout entries of the key's bucket, interpolates
//! inside the bucket (keys are uniformly distributed UUIDs) and searches
//! outward from the guess, which stays correct for skewed keys too.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::generation::record::{key_of, Record, RECORD_LEN};

/// The first eight bytes of every generation file.
pub const MAGIC: [u8; 8] = *b"PROMOGEN";
/// The format version this promo writes and reads. A file of another version
/// is refused (serve skips it and keeps the generation it has); rebuild the
/// generation from its CSV with this promo.
pub const VERSION: u32 = 1;
/// Bytes before the first record.
pub const HEADER_LEN: usize = 64;
/// Largest fanout: 2^26 buckets is a 512 MiB table, for about 10^10 records.
pub const MAX_FANOUT_BITS: u32 = 26;

/// Why a generation file must not be served. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {len} bytes, too short for a {HEADER_LEN}-byte header (truncated?)")]
    TooShort { len: u64 },
    #[error("bad magic {got:02x?}: not a promo generation file")]
    Magic { got: [u8; 8] },
    #[error(
        "format version {got}, but this promo reads version {expected}; rebuild it with this promo"
    )]
    Version { expected: u32, got: u32 },
    #[error("record size {got}, expected {expected}")]
    RecordSize { expected: u32, got: u32 },
    #[error("fanout bits {got}, at most {MAX_FANOUT_BITS} allowed")]
    FanoutBits { got: u32 },
    #[error(
        "header checksum mismatch (stored {stored:016x}, computed {computed:016x}): corrupt header"
    )]
    HeaderChecksum { stored: u64, computed: u64 },
    #[error("file is {got} bytes but its header describes {expected} bytes (truncated or extended copy?)")]
    Length { expected: u64, got: u64 },
    #[error(
        "body checksum mismatch (stored {stored:016x}, computed {computed:016x}): corrupt file"
    )]
    BodyChecksum { stored: u64, computed: u64 },
    #[error("record {index} is not after the record before it: keys must be strictly increasing")]
    OutOfOrder { index: u64 },
    #[error("fanout entry {bucket} is {got}, but the records say {expected}")]
    Fanout {
        bucket: u64,
        expected: u64,
        got: u64,
    },
    #[error("record {index} holds an invalid price encoding")]
    BadRecord { index: u64 },
}

/// The fixed header of a generation file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub count: u64,
    pub fanout_bits: u32,
    pub created_ms: u64,
    pub body_checksum: u64,
}

impl Header {
    /// Total file length this header describes.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.count * RECORD_LEN as u64 + fanout_len(self.fanout_bits)
    }

    /// Byte offset of the fanout table.
    pub fn fanout_offset(&self) -> usize {
        HEADER_LEN + self.count as usize * RECORD_LEN
    }

    /// Encodes the header, computing its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..28].copy_from_slice(&self.fanout_bits.to_le_bytes());
        h[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        h[40..48].copy_from_slice(&self.body_checksum.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..56]);
        h[56..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Decodes and checks a header against the length of its file: the cheap
    /// checks that run before a file is trusted at all.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if bytes.len() < HEADER_LEN || file_len < HEADER_LEN as u64 {
            return Err(FormatError::TooShort { len: file_len });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let magic: [u8; 8] = bytes[0..8].try_into().unwrap();
        if magic != MAGIC {
            return Err(FormatError::Magic { got: magic });
        }
        if u32_at(8) != VERSION {
            return Err(FormatError::Version {
                expected: VERSION,
                got: u32_at(8),
            });
        }
        let computed = xxhash_rust::xxh3::xxh3_64(&bytes[..56]);
        if u64_at(56) != computed {
            return Err(FormatError::HeaderChecksum {
                stored: u64_at(56),
                computed,
            });
        }
        if u32_at(12) != RECORD_LEN as u32 {
            return Err(FormatError::RecordSize {
                expected: RECORD_LEN as u32,
                got: u32_at(12),
            });
        }
        let fanout_bits = u32_at(24);
        if fanout_bits > MAX_FANOUT_BITS {
            return Err(FormatError::FanoutBits { got: fanout_bits });
        }
        let header = Header {
            count: u64_at(16),
            fanout_bits,
            created_ms: u64_at(32),
            body_checksum: u64_at(40),
        };
        // Checked arithmetic: a hostile count must not wrap into a "valid" length.
        let expected = header
            .count
            .checked_mul(RECORD_LEN as u64)
            .and_then(|r| r.checked_add(HEADER_LEN as u64 + fanout_len(fanout_bits)));
        if expected != Some(file_len) {
            return Err(FormatError::Length {
                expected: expected.unwrap_or(u64::MAX),
                got: file_len,
            });
        }
        Ok(header)
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

/// Checks everything the header cannot: the body checksum, the key order,
/// the fanout table and every price encoding. `file` is the whole file,
/// whose header already passed [`Header::decode`].
pub fn verify_body(header: &Header, file: &[u8]) -> Result<(), FormatError> {
    let body = &file[HEADER_LEN..];
    let computed = xxhash_rust::xxh3::xxh3_64(body);
    if computed != header.body_checksum {
        return Err(FormatError::BodyChecksum {
            stored: header.body_checksum,
            computed,
        });
    }
    let records = &file[HEADER_LEN..header.fanout_offset()];
    let fanout = &file[header.fanout_offset()..];
    let entry = |j: u64| {
        let at = j as usize * 8;
        u64::from_le_bytes(fanout[at..at + 8].try_into().unwrap())
    };
    let mut expected = FanoutBuilder::new(header.fanout_bits);
    let mut prev: Option<u128> = None;
    for (i, rec) in records.chunks_exact(RECORD_LEN).enumerate() {
        let key = key_of(rec);
        if prev.is_some_and(|p| p >= key) {
            return Err(FormatError::OutOfOrder { index: i as u64 });
        }
        prev = Some(key);
        if Record::from_bytes(rec.try_into().unwrap())
            .price()
            .is_none()
        {
            return Err(FormatError::BadRecord { index: i as u64 });
        }
        expected.push(key);
    }
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
    Ok(())
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

/// Writes a generation file from records in strictly increasing key order.
///
/// The header goes in last, so an interrupted write never looks complete;
/// the caller publishes the file (rename) only after [`Writer::finish`].
pub struct Writer {
    out: BufWriter<File>,
    hasher: Xxh3,
    fanout: FanoutBuilder,
    prev: Option<u128>,
    path: std::path::PathBuf,
    /// Bytes written so far, and how many of them writeback was started for.
    written: u64,
    flushed: u64,
}

/// What a failed write was doing, for the error message: on a full disk
/// (`No space left on device`, or `File too large` past `ulimit -f`) the
/// message names the file and says that it was the generation being written.
const WRITING: &str = "writing the new generation";

/// Bytes between two early writeback requests.
const WRITEBACK_STEP: u64 = 64 << 20;

impl Writer {
    /// Starts a generation in `file` (new and empty) at `path`. `max_count`
    /// bounds the records to come and sizes the fanout table.
    pub fn new(file: File, path: &Path, max_count: u64) -> Result<Writer> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(Error::io_op(WRITING, path))?;
        Ok(Writer {
            out,
            hasher: Xxh3::new(),
            fanout: FanoutBuilder::new(fanout_bits_for(max_count)),
            prev: None,
            path: path.to_path_buf(),
            written: HEADER_LEN as u64,
            flushed: 0,
        })
    }

    /// Appends the next record; its key must be greater than the last one's.
    pub fn push(&mut self, record: &Record) -> Result<()> {
        self.push_block(record.as_bytes())
    }

    /// Appends whole records, each key greater than the one before.
    pub fn push_block(&mut self, block: &[u8]) -> Result<()> {
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
            self.prev = Some(key);
            self.fanout.push(key);
        }
        self.hasher.update(block);
        self.out
            .write_all(block)
            .map_err(Error::io_op(WRITING, &self.path))?;
        self.written += block.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(())
    }

    /// Asks the kernel to start writing what was written so far, without
    /// waiting, so that the final fsync has little left to do.
    fn start_writeback(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(Error::io_op(WRITING, &self.path))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only reads its arguments; the file
            // descriptor is open for as long as `self.out` lives.
            let rc = unsafe {
                libc::sync_file_range(
                    self.out.get_ref().as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            // Only a hint: the fsync in `finish` is what makes the file durable.
            if rc != 0 {
                tracing::debug!("sync_file_range: {}", std::io::Error::last_os_error());
            }
        }
        self.flushed = self.written;
        Ok(())
    }

    /// Writes the fanout table and the header, and syncs the file to disk.
    pub fn finish(mut self) -> Result<Header> {
        let io = |e| Error::io_op(WRITING, &self.path)(e);
        let count = self.fanout.count;
        let bits = self.fanout.bits;
        for entry in std::mem::replace(&mut self.fanout, FanoutBuilder::new(0)).finish() {
            let bytes = entry.to_le_bytes();
            self.hasher.update(&bytes);
            self.out.write_all(&bytes).map_err(io)?;
        }
        let header = Header {
            count,
            fanout_bits: bits,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            body_checksum: self.hasher.digest(),
        };
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
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
        Ok(header)
    }
}

/// Reads and checks the header of the file at `path` without mapping it.
pub fn read_header(path: &Path) -> Result<Header> {
    use std::io::Read;
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

    fn header() -> impl Strategy<Value = Header> {
        (
            0u64..1 << 40,
            0..=MAX_FANOUT_BITS,
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(count, fanout_bits, created_ms, body_checksum)| Header {
                count,
                fanout_bits,
                created_ms,
                body_checksum,
            })
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
            bytes[at] ^= 1 << bit;
            prop_assert!(Header::decode(&bytes, h.file_len()).is_err());
        }
    }

    #[test]
    fn a_header_names_what_is_wrong() {
        let h = Header {
            count: 10,
            fanout_bits: 1,
            created_ms: 0,
            body_checksum: 0,
        };
        let mut bytes = h.encode();
        bytes[8] = 2;
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..56]);
        bytes[56..64].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            Header::decode(&bytes, h.file_len()),
            Err(FormatError::Version {
                expected: VERSION,
                got: 2
            })
        );
        assert_eq!(
            Header::decode(&bytes[..10], 10),
            Err(FormatError::TooShort { len: 10 })
        );
    }
}
