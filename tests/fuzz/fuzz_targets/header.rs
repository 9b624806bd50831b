//! The generation file: `format::Header::decode` and `table::Table::open_verified`.
//!
//! The first byte picks a mode (`% 4`); the rest is its input:
//! - 0: a header's bytes after an 8-byte little-endian file length;
//! - 1: a forged header: flags, then 128 bytes made right where the flags
//!   say (magic, version 1 or 2, record size, fanout bits, count, shard,
//!   table lengths, file length) and always given a correct checksum, so
//!   that decoding gets past the checksum;
//! - 2: a whole file, as is, opened from a temporary file;
//! - 3: a forged whole version-2 file: count, fanout bits and flags, then
//!   records (keys sorted or not, prices and dates sanitised or not), a
//!   fanout table (computed or from the input), a zone table of one zone and
//!   an overflow area of 8 bytes, and a header with a right or a wrong body
//!   checksum.
//!
//! Properties:
//! - `decode` accepts exactly what the layout table in src/generation/format.rs allows;
//! - an accepted header encodes to the same fields and decodes back equal;
//! - `open_verified` never panics; it accepts a forged file exactly when its
//!   checksum, key order, prices, dates and fanout are right, and an accepted
//!   table finds every record it holds, at its index, and no other key.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use promo::generation::date::{DateWord, Decoded, Fields};
use promo::generation::format::{fanout_len, Header, HEADER_LEN};
use promo::generation::record::{Record, RECORD_LEN};
use promo::generation::table::Table;
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let (len, bytes) = take_u64(rest);
            check_decode(bytes, len);
        }
        1 => forged_header(rest),
        2 => raw_file(rest),
        _ => forged_file(rest),
    }
});

/// A little-endian u64 from the first 8 bytes (zero-padded), and the rest.
fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut le = [0u8; 8];
    le[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(le), &data[n..])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Whether the header tables in src/generation/format.rs allow `b` as the header of a file
/// of `file_len` bytes, in version 1 or 2. Lengths are computed in u128, so
/// nothing wraps.
fn header_allowed(b: &[u8], file_len: u64) -> bool {
    if b.len() < 64 || file_len < 64 || &b[0..8] != b"PROMOGEN" {
        return false;
    }
    let version = le32(b, 8);
    let (header_len, record_len) = match version {
        1 => (64usize, 64u128),
        2 => (128, 32),
        _ => return false,
    };
    if b.len() < header_len || file_len < header_len as u64 {
        return false;
    }
    let (count, bits) = (u128::from(le64(b, 16)), le32(b, 24));
    let at = header_len - 8;
    let mut ok = le32(b, 12) == record_len as u32 && bits <= 26 && xxh3_64(&b[..at]) == le64(b, at);
    let mut len = header_len as u128 + record_len * count + 8 * ((1u128 << bits.min(26)) + 1);
    if version == 2 {
        ok &= le32(b, 48) < le32(b, 52);
        len += u128::from(le64(b, 56)) + u128::from(le64(b, 64));
    }
    ok && len == u128::from(file_len)
}

fn check_decode(bytes: &[u8], file_len: u64) {
    let got = Header::decode(bytes, file_len);
    assert_eq!(
        got.is_ok(),
        header_allowed(bytes, file_len),
        "decode said {got:?}"
    );
    if bytes.len() > HEADER_LEN {
        // Only the first 64 or 128 bytes are the header.
        assert_eq!(Header::decode(&bytes[..HEADER_LEN], file_len), got);
    }
    let Ok(h) = got else { return };
    assert_eq!(h.file_len(), file_len);
    assert_eq!(
        h.zones_offset() as u64 + h.zones_len + h.overflow_len,
        file_len
    );
    assert_eq!(
        h.fanout_offset() as u64 + fanout_len(h.fanout_bits),
        h.zones_offset() as u64
    );
    let encoded = h.encode();
    assert_eq!(encoded.len(), h.header_len());
    assert_eq!(Header::decode(&encoded, file_len), Ok(h));
    // Every field the decoder reads is encoded as it was; the reserved
    // words are written as zeros (and the checksum follows them).
    assert_eq!(encoded[..28], bytes[..28]);
    assert_eq!(encoded[32..48], bytes[32..48]);
    assert_eq!(encoded[28..32], [0; 4]);
    if h.version == 1 {
        assert_eq!(encoded[48..56], [0; 8]);
    } else {
        assert_eq!(encoded[48..72], bytes[48..72]);
        assert_eq!(encoded[72..120], [0; 48]);
    }
}

fn forged_header(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let (len, data) = take_u64(data);
    let v2 = flags & 64 != 0;
    let (header_len, record_len, version) = if v2 { (128, 32u32, 2u32) } else { (64, 64, 1) };
    let mut b = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    b[..n].copy_from_slice(&data[..n]);
    if flags & 1 != 0 {
        b[0..8].copy_from_slice(b"PROMOGEN");
    }
    if flags & 2 != 0 {
        b[8..12].copy_from_slice(&version.to_le_bytes());
    }
    if flags & 4 != 0 {
        b[12..16].copy_from_slice(&record_len.to_le_bytes());
    }
    if flags & 8 != 0 {
        let bits = le32(&b, 24) % 27;
        b[24..28].copy_from_slice(&bits.to_le_bytes());
    }
    if flags & 16 != 0 {
        let count = le64(&b, 16) % (1 << 20);
        b[16..24].copy_from_slice(&count.to_le_bytes());
    }
    if v2 && flags & 128 != 0 {
        // A shard that exists and tables of sizes a file could have.
        let shards = le32(&b, 52) % 16 + 1;
        let index = le32(&b, 48) % shards;
        b[48..52].copy_from_slice(&index.to_le_bytes());
        b[52..56].copy_from_slice(&shards.to_le_bytes());
        for at in [56, 64] {
            let small = le64(&b, at) % 4096;
            b[at..at + 8].copy_from_slice(&small.to_le_bytes());
        }
    }
    let at = header_len - 8;
    let sum = xxh3_64(&b[..at]);
    b[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    let file_len = if flags & 32 != 0 {
        // The length the header describes, wrapped to 64 bits if it must:
        // a wrapped length must not pass for the right one.
        let (count, bits) = (u128::from(le64(&b, 16)), le32(&b, 24).min(100));
        let tables = if v2 {
            u128::from(le64(&b, 56)) + u128::from(le64(&b, 64))
        } else {
            0
        };
        let records = u128::from(record_len) * count;
        let fanout = 8u128.wrapping_mul((1u128 << bits.min(127)).wrapping_add(1));
        (header_len as u128)
            .wrapping_add(records)
            .wrapping_add(fanout)
            .wrapping_add(tables) as u64
    } else {
        len
    };
    check_decode(&b, file_len);
}

/// Where this process writes the files it opens.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

/// Opens `bytes` as a generation file. Each is a new file, removed after:
/// truncating and rewriting one file makes ext4 flush it on close, which
/// slowed the fuzzer to a crawl.
fn open(bytes: &[u8]) -> promo::Result<Table> {
    let mut file = tempfile::NamedTempFile::new_in(scratch()).expect("a scratch file");
    file.write_all(bytes).expect("write the scratch file");
    Table::open_verified(file.path(), 1)
}

fn raw_file(bytes: &[u8]) {
    let result = open(bytes);
    let header_ok = header_allowed(bytes, bytes.len() as u64);
    if let Ok(table) = result {
        assert!(header_ok, "a table with a bad header opened");
        let records: Vec<Record> = bytes[HEADER_LEN..table.header().fanout_offset()]
            .chunks_exact(RECORD_LEN)
            .map(|r| Record::from_bytes(r.try_into().unwrap()))
            .collect();
        check_table(&table, &records);
    }
}

/// The fanout table of `keys` (sorted): entry j is the number of keys whose
/// top `bits` bits are below j.
fn fanout(keys: &[u128], bits: u32) -> Vec<u64> {
    let bucket = |k: u128| if bits == 0 { 0 } else { k >> (128 - bits) };
    (0..=(1u128 << bits))
        .map(|j| keys.iter().filter(|&&k| bucket(k) < j).count() as u64)
        .collect()
}

fn forged_file(data: &[u8]) {
    let Some((&[count, bits, flags], data)) = data.split_first_chunk::<3>() else {
        return;
    };
    let (count, bits) = (usize::from(count % 64), u32::from(bits % 5));
    let (created_ms, data) = take_u64(data);
    let take = (count * RECORD_LEN).min(data.len());
    let (record_bytes, data) = data.split_at(take);
    let mut records: Vec<[u8; RECORD_LEN]> = (0..count)
        .map(|i| {
            let mut r = [0u8; RECORD_LEN];
            for (j, b) in r.iter_mut().enumerate() {
                // Cycle through the input, changed on each pass so that a
                // short input still makes different records.
                if !record_bytes.is_empty() {
                    let at = i * RECORD_LEN + j;
                    let pass = at / record_bytes.len();
                    *b = record_bytes[at % record_bytes.len()] ^ (pass as u8);
                }
            }
            r
        })
        .collect();
    let sort = flags & 1 != 0;
    if sort {
        records.sort_by_key(|r| u128::from_be_bytes(r[..16].try_into().unwrap()));
        records.dedup_by_key(|r| u128::from_be_bytes(r[..16].try_into().unwrap()));
    }
    if flags & 2 != 0 {
        // Make every price encoding valid: a scale of at most 18.
        for r in &mut records {
            let bits = u64::from_le_bytes(r[16..24].try_into().unwrap());
            let scale = (bits >> 59) % 19;
            let fixed = (scale << 59) | (bits & ((1 << 59) - 1));
            r[16..24].copy_from_slice(&fixed.to_le_bytes());
        }
    }
    if flags & 16 != 0 {
        // Make every date point inside the tables: a compact date of the
        // one zone, or a slice of the 8-byte overflow area.
        for (i, r) in records.iter_mut().enumerate() {
            let word = if i % 2 == 0 {
                let fields = Fields {
                    year: 2000 + u32::from(r[24]),
                    month: 1 + u32::from(r[25] % 12),
                    day: 1 + u32::from(r[26] % 28),
                    hour: u32::from(r[27] % 24),
                    minute: u32::from(r[28] % 60),
                    second: u32::from(r[29] % 60),
                    sep: b' ',
                };
                DateWord::compact(fields, 0).expect("fields in range")
            } else {
                let offset = u64::from(r[24] % 8);
                DateWord::overflow(offset, usize::from(r[25]) % (9 - offset as usize))
            };
            r[24..32].copy_from_slice(&word.0.to_le_bytes());
        }
    }
    let keys: Vec<u128> = records
        .iter()
        .map(|r| u128::from_be_bytes(r[..16].try_into().unwrap()))
        .collect();
    let right_fanout = fanout(&keys, bits);
    let table: Vec<u64> = if flags & 4 != 0 {
        right_fanout.clone()
    } else {
        (0..right_fanout.len())
            .map(|j| {
                let at = j * 8;
                let mut le = [0u8; 8];
                for (k, b) in le.iter_mut().enumerate() {
                    *b = data.get(at + k).copied().unwrap_or(0);
                }
                u64::from_le_bytes(le)
            })
            .collect()
    };

    let mut body = Vec::new();
    for r in &records {
        body.extend_from_slice(r);
    }
    for entry in &table {
        body.extend_from_slice(&entry.to_le_bytes());
    }
    // One zone (" CET") and an overflow area of 8 bytes.
    let zones = b"\x04 CET";
    let overflow = b"whenever";
    body.extend_from_slice(zones);
    body.extend_from_slice(overflow);
    let checksum_right = flags & 8 == 0;
    let header = Header {
        body_checksum: xxh3_64(&body) ^ u64::from(!checksum_right),
        created_ms,
        zones_len: zones.len() as u64,
        overflow_len: overflow.len() as u64,
        ..Header::new(records.len() as u64, bits)
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(&body);

    let valid = checksum_right
        && keys.windows(2).all(|w| w[0] < w[1])
        && records
            .iter()
            .all(|r| u64::from_le_bytes(r[16..24].try_into().unwrap()) >> 59 <= 18)
        && records.iter().all(|r| {
            match DateWord(u64::from_le_bytes(r[24..32].try_into().unwrap())).decode() {
                Some(Decoded::Compact { zone, .. }) => zone == 0,
                Some(Decoded::Overflow { offset, len }) => offset + len as u64 <= 8,
                None => false,
            }
        })
        && table == right_fanout;
    let result = open(&file);
    assert_eq!(
        result.is_ok(),
        valid,
        "open_verified said {:?}",
        result.err()
    );
    if let Ok(table) = result {
        assert_eq!(*table.header(), header);
        let records: Vec<Record> = records.iter().map(|r| Record::from_bytes(*r)).collect();
        check_table(&table, &records);
    }
}

/// An opened table holds `records`, in order, finds each at its index, and
/// finds no key next to one of them that it does not hold.
fn check_table(table: &Table, records: &[Record]) {
    assert_eq!(table.len(), records.len() as u64);
    assert_eq!(table.is_empty(), records.is_empty());
    let held = |k: u128| records.iter().any(|r| r.key() == k);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(table.record(i as u64).bytes(), r.as_bytes());
        assert_eq!(table.position(r.key()), Some(i as u64));
        assert_eq!(
            table.get(r.key()).map(|f| f.bytes().to_vec()),
            Some(r.as_bytes().to_vec())
        );
        for near in [r.key().wrapping_sub(1), r.key().wrapping_add(1), !r.key()] {
            if !held(near) {
                assert!(table.get(near).is_none(), "{near:032x}");
            }
        }
    }
    for k in [0, u128::MAX, 1 << 127] {
        if !held(k) {
            assert!(table.get(k).is_none(), "{k:032x}");
        }
    }
}
