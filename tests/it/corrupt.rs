//! Corrupt generation files, dropped into the data directory of a running
//! server and present when one starts: each is refused before it goes live,
//! with a log line naming the file and the reason and a count in
//! `promo_generation_load_failures_total`, while the good generation stays
//! live. Builds are not confused by them either.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use promo::generation::local;
use xxhash_rust::xxh3::xxh3_64;

const REAL_ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
const REAL_JSON: &str = r#"{"id":"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118","price":60.683466,"expiration_date":"2018-08-04 05:32:31 +0200 CEST"}"#;
const HEADER_LEN: usize = 128;
const RECORD_LEN: usize = 32;
const LIMIT: Duration = Duration::from_secs(10);

/// A corrupt copy of a good generation file.
struct Variant {
    what: &'static str,
    bytes: Vec<u8>,
    /// Words of the reason the refusal must give.
    reason: String,
}

/// Recomputes the header checksum, so that only what a test changed is wrong.
fn reseal_header(f: &mut [u8]) {
    let sum = xxh3_64(&f[..120]);
    f[120..128].copy_from_slice(&sum.to_le_bytes());
}

/// Recomputes both checksums.
fn reseal(f: &mut [u8]) {
    let sum = xxh3_64(&f[HEADER_LEN..]);
    f[40..48].copy_from_slice(&sum.to_le_bytes());
    reseal_header(f);
}

fn record(f: &mut [u8], i: usize) -> &mut [u8] {
    &mut f[HEADER_LEN + i * RECORD_LEN..HEADER_LEN + (i + 1) * RECORD_LEN]
}

/// Every way a generation file is corrupt, made from the good file `good`.
fn variants(good: &[u8]) -> Vec<Variant> {
    let count = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    assert!(count > 10, "the good file is too small to corrupt");
    let fanout_at = HEADER_LEN + count * RECORD_LEN;
    let with = |change: &dyn Fn(&mut Vec<u8>)| {
        let mut f = good.to_vec();
        change(&mut f);
        f
    };
    let v = |what, bytes, reason: &str| Variant {
        what,
        bytes,
        reason: reason.to_string(),
    };
    vec![
        v(
            "truncated",
            good[..good.len() / 2].to_vec(),
            &format!(
                "file is {} bytes but its header describes {} bytes",
                good.len() / 2,
                good.len()
            ),
        ),
        v("zero-length", Vec::new(), "file is 0 bytes, too short"),
        v(
            "one flipped byte in the body",
            // A byte of record 10's expiration date.
            with(&|f| f[HEADER_LEN + 10 * RECORD_LEN + 26] ^= 0x04),
            "body checksum mismatch",
        ),
        v(
            "one flipped byte in the header",
            // A byte of the creation time, which nothing but the checksum checks.
            with(&|f| f[33] ^= 0x04),
            "header checksum mismatch",
        ),
        v(
            "wrong magic",
            with(&|f| f[..8].copy_from_slice(b"NOTPROMO")),
            "bad magic",
        ),
        v(
            "another format version, checksums valid",
            with(&|f| {
                f[8..12].copy_from_slice(&3u32.to_le_bytes());
                reseal_header(f);
            }),
            "format version 3, but this promo reads versions 1 to 2",
        ),
        v(
            "records out of order, checksums valid",
            with(&|f| {
                let fourth = record(f, 4).to_vec();
                let third = record(f, 3).to_vec();
                record(f, 3).copy_from_slice(&fourth);
                record(f, 4).copy_from_slice(&third);
                reseal(f);
            }),
            "record 4 is not after the record before it",
        ),
        v(
            "a duplicate key, checksums valid",
            with(&|f| {
                let key = record(f, 5)[..16].to_vec();
                record(f, 6)[..16].copy_from_slice(&key);
                reseal(f);
            }),
            "record 6 is not after the record before it",
        ),
        v(
            "an invalid price encoding, checksums valid",
            with(&|f| {
                record(f, 7)[23] |= 0xf8; // price scale 31: no encoder writes it
                reseal(f);
            }),
            "record 7 holds an invalid price or date encoding",
        ),
        v(
            "a wrong fanout entry, checksums valid",
            with(&|f| {
                f[fanout_at + 8] ^= 0x01;
                reseal(f);
            }),
            "fanout entry 1 is",
        ),
        v(
            "extended by a byte",
            with(&|f| f.push(0)),
            &format!(
                "file is {} bytes but its header describes {} bytes",
                good.len() + 1,
                good.len()
            ),
        ),
    ]
}

/// Puts `bytes` in `dir` as generation `sequence` the way a copy should
/// arrive, whole and at once (a temporary name, then a rename), so that
/// the server sees exactly these bytes and never a partial write of them.
fn drop_generation(dir: &Path, sequence: u64, bytes: &[u8]) {
    let tmp = dir.join("incoming.part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(local::file_name(sequence))).unwrap();
}

/// Waits for a line of the server's log that holds every one of `words`.
fn wait_for_log_line(server: &Server, words: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_string();
        }
        assert!(
            start.elapsed() < LIMIT,
            "no log line with {words:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The generation `sequence` is live and answers as the fixture does.
fn assert_live(server: &Server, sequence: u64) {
    let r = server.get(&format!("/promotions/{REAL_ID}"));
    let sequence = sequence.to_string();
    assert_eq!(
        (r.status, r.header("x-promo-generation"), r.text().as_str()),
        (200, Some(sequence.as_str()), REAL_JSON)
    );
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn corrupt_generations_are_refused_while_serving_and_the_live_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    build_ok(data, &fixture("promotions.csv"), &[]);
    let good = std::fs::read(data.join(local::file_name(1))).unwrap();
    let server = Server::start(data);
    assert_live(&server, 1);
    assert_eq!(server.metric("promo_generation_load_failures_total"), 0.0);

    let variants = variants(&good);
    for (k, v) in variants.iter().enumerate() {
        let sequence = k as u64 + 2;
        drop_generation(data, sequence, &v.bytes);
        let refusals = (k + 1) as f64;
        server.wait_for("/metrics", LIMIT, |r| {
            r.text().contains(&format!(
                "promo_generation_load_failures_total {refusals}\n"
            ))
        });
        let name = local::file_name(sequence);
        let line = wait_for_log_line(&server, &[&name, &v.reason]);
        eprintln!("{}: {line}", v.what);
        assert_live(&server, 1);
        assert_eq!(
            server.metric("promo_generation_sequence"),
            1.0,
            "{}",
            v.what
        );
        assert_eq!(server.metric("promo_generation_swaps_total"), 1.0);
    }
    let refused = variants.len() as u64;

    // A good generation still goes live after all of them, under the next
    // sequence, and the refusals were counted once each.
    let summary = build_ok(data, &fixture("promotions.csv"), &[]);
    let next = refused + 2;
    assert_eq!(summary_field(&summary, "generation"), next.to_string());
    server.wait_for(&format!("/promotions/{REAL_ID}"), LIMIT, |r| {
        r.header("x-promo-generation") == Some(next.to_string().as_str())
    });
    assert_live(&server, next);
    assert_eq!(
        server.metric("promo_generation_load_failures_total"),
        refused as f64
    );
    assert_eq!(server.metric("promo_generation_swaps_total"), 2.0);
}

#[test]
fn serve_starts_on_the_newest_valid_generation_past_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    build_ok(data, &fixture("promotions.csv"), &[]);
    build_ok(data, &fixture("promotions.csv"), &[]);
    let good = std::fs::read(data.join(local::file_name(2))).unwrap();
    let variants = variants(&good);
    for (k, v) in variants.iter().enumerate() {
        drop_generation(data, k as u64 + 3, &v.bytes);
    }

    let server = Server::start(data);
    // Live before it listens: no waiting.
    assert_live(&server, 2);
    assert_eq!(server.metric("promo_generation_sequence"), 2.0);
    assert_eq!(
        server.metric("promo_generation_load_failures_total"),
        variants.len() as f64
    );
    for (k, v) in variants.iter().enumerate() {
        let name = local::file_name(k as u64 + 3);
        wait_for_log_line(&server, &[&name, &v.reason]);
    }
}

/// A feed of `rows` rows from data set `set`.
fn feed(dir: &Path, name: &str, set: u64, rows: u64) -> std::path::PathBuf {
    let csv = dir.join(name);
    let rows: Vec<_> = (0..rows)
        .map(|i| (id(set, i), format!("{i}.5"), "2022-02-02 10:00:00".into()))
        .collect();
    write_csv(&csv, &rows);
    csv
}

/// A corrupt generation whose header alone is sound and says `records`
/// records: a good file of that size with one flipped body byte.
fn corrupt_with_sound_header(dir: &Path, records: u64) -> Vec<u8> {
    let scratch = dir.join(format!("scratch-{records}"));
    build_ok(&scratch, &feed(dir, "scratch.csv", 9, records), &[]);
    let mut f = std::fs::read(scratch.join(local::file_name(1))).unwrap();
    f[HEADER_LEN + 40] ^= 0x01;
    let header = promo::generation::format::Header::decode(&f, f.len() as u64).unwrap();
    assert_eq!(header.count, records);
    f
}

#[test]
fn builds_number_past_corrupt_generations_and_measure_shrink_against_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keep = ["--keep", "10"];
    build_ok(&data, &feed(dir.path(), "a.csv", 1, 100), &keep);
    // Newer than the good generation 1: a corrupt one whose header says
    // 1,000 records, and an empty file.
    let big_and_corrupt = corrupt_with_sound_header(dir.path(), 1000);
    drop_generation(&data, 2, &big_and_corrupt);
    drop_generation(&data, 3, &[]);

    // 100 records against the 100 of generation 1, the newest valid one:
    // no shrink, whatever generation 2's header says. Published as 4.
    let summary = build_ok(&data, &feed(dir.path(), "b.csv", 2, 100), &keep);
    assert_eq!(summary_field(&summary, "generation"), "4");
    assert_eq!(temp_files(&data), Vec::<String>::new());

    // The guard still holds, against generation 4 and not the corrupt 5.
    drop_generation(&data, 5, &big_and_corrupt);
    let out = build(&data, &feed(dir.path(), "c.csv", 3, 40), &keep);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("40 records against 100 in generation 4"),
        "{err}"
    );
    assert_eq!(sequences(&data), [1, 2, 3, 4, 5]);
    let summary = build_ok(&data, &feed(dir.path(), "d.csv", 4, 60), &keep);
    assert_eq!(summary_field(&summary, "generation"), "6");
}

/// A refused file is not read again on every scan, but a whole copy renamed
/// over it (after a partial copy, say) is checked, and goes live.
#[test]
fn a_refused_generation_replaced_by_a_whole_copy_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    build_ok(data, &fixture("promotions.csv"), &[]);
    let good = std::fs::read(data.join(local::file_name(1))).unwrap();
    let server = Server::start(data);
    drop_generation(data, 2, &good[..good.len() - 100]);
    server.wait_for("/metrics", LIMIT, |r| {
        r.text()
            .contains("promo_generation_load_failures_total 1\n")
    });
    assert_live(&server, 1);

    drop_generation(data, 2, &good);
    server.wait_for(&format!("/promotions/{REAL_ID}"), LIMIT, |r| {
        r.header("x-promo-generation") == Some("2")
    });
    assert_live(&server, 2);
    assert_eq!(server.metric("promo_generation_load_failures_total"), 1.0);
}

/// Retention counts sound generations only: corrupt files newer than the
/// last good ones do not push the good ones out, so a rollback still has
/// something to go back to.
#[test]
fn retention_keeps_good_generations_behind_newer_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &feed(dir.path(), "a.csv", 1, 100), &[]);
    build_ok(&data, &feed(dir.path(), "b.csv", 2, 100), &[]);
    let good = std::fs::read(data.join(local::file_name(2))).unwrap();
    // 3: a truncated copy of 2; 4: a copy with one flipped body byte, its
    // header sound.
    drop_generation(&data, 3, &good[..good.len() / 2]);
    let mut flipped = good.clone();
    flipped[HEADER_LEN + 10 * RECORD_LEN + 30] ^= 0x04;
    promo::generation::format::Header::decode(&flipped, flipped.len() as u64).unwrap();
    drop_generation(&data, 4, &flipped);

    // The default --keep 3: generation 5 and the two good ones before it
    // are kept, and the corrupt files between them are left alone.
    let summary = build_ok(&data, &feed(dir.path(), "c.csv", 3, 100), &[]);
    assert_eq!(summary_field(&summary, "generation"), "5");
    assert_eq!(sequences(&data), [1, 2, 3, 4, 5]);
    assert!(promo_get(&data, &id(3, 0)).is_some());

    // Rolling back skips the corrupt files and brings generation 2 back.
    let said = rollback_ok(&data);
    assert!(
        said.starts_with("generation 2 is live again as generation 6"),
        "{said}"
    );
    let json = promo_get(&data, &id(2, 7)).expect("generation 2's data is back");
    assert!(json.contains("\"price\":7.5"), "{json}");
    assert_eq!(promo_get(&data, &id(3, 0)), None);
}
