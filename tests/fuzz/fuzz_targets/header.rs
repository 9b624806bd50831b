//! The generation file: `format::Header::decode` and `table::Table::open_verified`.
//!
//! The first byte picks a mode (`% 4`); the rest is its input:
//! - 0: a header's bytes after an 8-byte little-endian file length;
//! - 1: a forged header: flags, then 64 bytes made right where the flags say
//!   (magic, version, record size, fanout bits, count, length) and always
//!   given a correct checksum, so that decoding gets past the checksum;
//! - 2: a whole file, as is, opened from a temporary file;
//! - 3: a forged whole file: count, fanout bits and flags, then records (keys
//!   sorted or not, prices sanitised or not), a fanout table (computed or
//!   from the input), and a header with a right or a wrong body checksum.
//!
//! Properties:
//! - `decode` accepts exactly what the README's layout table allows;
//! - an accepted header encodes to the same fields and decodes back equal;
//! - `open_verified` never panics; it accepts a forged file exactly when its
//!   checksum, key order, prices and fanout are right, and an accepted
//!   table finds every record it holds, at its index, and no other key.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use promo::generation::local::format::{fanout_len, Header, HEADER_LEN};
use promo::generation::local::record::{Record, RECORD_LEN};
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

/// Whether the README's header table allows `b` as the header of a file of
/// `file_len` bytes. Lengths are computed in u128, so nothing wraps.
fn header_allowed(b: &[u8], file_len: u64) -> bool {
    if b.len() < 64 || file_len < 64 {
        return false;
    }
    let (count, bits) = (u128::from(le64(b, 16)), le32(b, 24));
    &b[0..8] == b"PROMOGEN"
        && le32(b, 8) == 1
        && le32(b, 12) == 64
        && bits <= 26
        && xxh3_64(&b[..56]) == le64(b, 56)
        && 64 + 64 * count + 8 * ((1u128 << bits) + 1) == u128::from(file_len)
}

fn check_decode(bytes: &[u8], file_len: u64) {
    let got = Header::decode(bytes, file_len);
    assert_eq!(
        got.is_ok(),
        header_allowed(bytes, file_len),
        "decode said {got:?}"
    );
    if bytes.len() > HEADER_LEN {
        // Only the first 64 bytes are the header.
        assert_eq!(Header::decode(&bytes[..HEADER_LEN], file_len), got);
    }
    let Ok(h) = got else { return };
    assert_eq!(h.file_len(), file_len);
    assert_eq!(
        h.fanout_offset() as u64 + fanout_len(h.fanout_bits),
        file_len
    );
    let encoded = h.encode();
    assert_eq!(Header::decode(&encoded, file_len), Ok(h));
    // Every field the decoder reads is encoded as it was; the reserved
    // words are written as zeros (and the checksum follows them).
    assert_eq!(encoded[..28], bytes[..28]);
    assert_eq!(encoded[32..48], bytes[32..48]);
    assert_eq!(encoded[28..32], [0; 4]);
    assert_eq!(encoded[48..56], [0; 8]);
}

fn forged_header(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let (len, data) = take_u64(data);
    let mut b = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    b[..n].copy_from_slice(&data[..n]);
    if flags & 1 != 0 {
        b[0..8].copy_from_slice(b"PROMOGEN");
    }
    if flags & 2 != 0 {
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
    }
    if flags & 4 != 0 {
        b[12..16].copy_from_slice(&64u32.to_le_bytes());
    }
    if flags & 8 != 0 {
        let bits = le32(&b, 24) % 27;
        b[24..28].copy_from_slice(&bits.to_le_bytes());
    }
    if flags & 16 != 0 {
        let count = le64(&b, 16) % (1 << 20);
        b[16..24].copy_from_slice(&count.to_le_bytes());
    }
    let sum = xxh3_64(&b[..56]);
    b[56..64].copy_from_slice(&sum.to_le_bytes());
    let file_len = if flags & 32 != 0 {
        // The length the header describes, wrapped to 64 bits if it must:
        // a wrapped length must not pass for the right one.
        let (count, bits) = (u128::from(le64(&b, 16)), le32(&b, 24).min(100));
        (64 + 64 * count + 8 * ((1u128 << bits) + 1)) as u64
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
    let checksum_right = flags & 8 == 0;
    let header = Header {
        count: records.len() as u64,
        fanout_bits: bits,
        created_ms,
        body_checksum: xxh3_64(&body) ^ u64::from(!checksum_right),
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(&body);

    let valid = checksum_right
        && keys.windows(2).all(|w| w[0] < w[1])
        && records
            .iter()
            .all(|r| u64::from_le_bytes(r[16..24].try_into().unwrap()) >> 59 <= 18)
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
        assert_eq!(table.record(i as u64), *r);
        assert_eq!(table.position(r.key()), Some(i as u64));
        assert_eq!(table.get(r.key()), Some(*r));
        for near in [r.key().wrapping_sub(1), r.key().wrapping_add(1), !r.key()] {
            if !held(near) {
                assert_eq!(table.get(near), None, "{near:032x}");
            }
        }
    }
    for k in [0, u128::MAX, 1 << 127] {
        if !held(k) {
            assert_eq!(table.get(k), None, "{k:032x}");
        }
    }
}
