//! End to end: `promo build`, `get` and `inspect` with the real binary and real files.

use crate::common;

use common::*;
use promo::generation::local;
use promo::generation::table::Table;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The expected verdicts of fixtures/odd-rows.csv: (line, Some(json) | None).
fn odd_rows_expected() -> Vec<(u64, Option<String>)> {
    std::fs::read_to_string(fixture("odd-rows.expected"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let line = f.next().unwrap().parse().unwrap();
            match f.next().unwrap() {
                "valid" => (line, Some(f.next().unwrap().to_string())),
                _ => (line, None),
            }
        })
        .collect()
}

#[test]
fn odd_rows_are_reported_by_line_and_the_later_duplicate_wins() {
    let dir = tempfile::tempdir().unwrap();
    let expected = odd_rows_expected();
    let invalid: Vec<u64> = expected
        .iter()
        .filter(|e| e.1.is_none())
        .map(|e| e.0)
        .collect();
    let valid: Vec<&String> = expected.iter().filter_map(|e| e.1.as_ref()).collect();

    // With the default limit of 1% the feed is refused, and says why.
    let out = build(dir.path(), &fixture("odd-rows.csv"), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} of {} rows are invalid",
            invalid.len(),
            expected.len()
        )),
        "{err}"
    );
    assert!(
        sequences(dir.path()).is_empty(),
        "a refused feed published something"
    );

    let out = build(
        dir.path(),
        &fixture("odd-rows.csv"),
        &["--max-invalid", "100%"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    // The first ten invalid rows are reported with their line numbers.
    for line in &invalid[..10] {
        assert!(
            err.contains(&format!("odd-rows.csv:{line}: invalid row")),
            "line {line} not reported:\n{err}"
        );
    }
    assert!(!err.contains(&format!("odd-rows.csv:{}: invalid row", invalid[10])));
    let summary = String::from_utf8(out.stdout).unwrap();
    assert_eq!(summary_field(&summary, "rows"), expected.len().to_string());
    assert_eq!(
        summary_field(&summary, "invalid"),
        invalid.len().to_string()
    );
    assert_eq!(summary_field(&summary, "valid"), valid.len().to_string());
    assert_eq!(summary_field(&summary, "duplicates"), "1");

    // Every valid row is served as expected; of the two rows with the same
    // id, the later one (the last in the list) is the one served.
    let table = Table::open_verified(&local::list(dir.path()).unwrap()[0].path, 1).unwrap();
    assert_eq!(table.len(), valid.len() as u64 - 1);
    let mut by_id = std::collections::HashMap::new();
    for json in &valid {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        by_id.insert(v["id"].as_str().unwrap().to_string(), json.to_string());
    }
    for (id, json) in &by_id {
        assert_eq!(promo_get(dir.path(), id).as_ref(), Some(json));
    }
    assert!(by_id["d018ef0b-dbd9-48f1-ac1a-eb4d90e57118"].contains("99.99"));
}

#[test]
fn a_failed_build_publishes_nothing_and_keeps_the_old_generation() {
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let before = std::fs::read(dir.path().join(local::file_name(1))).unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "garbage\nmore garbage,1\n").unwrap();
    let out = build(dir.path(), &bad, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("2 of 2 rows are invalid"),
        "{}",
        stderr(&out)
    );
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let out = build(dir.path(), &empty, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no valid rows"), "{}", stderr(&out));
    let out = build(dir.path(), &dir.path().join("missing.csv"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.csv"), "{}", stderr(&out));
    assert_eq!(sequences(dir.path()), [1]);
    assert_eq!(
        std::fs::read(dir.path().join(local::file_name(1))).unwrap(),
        before
    );
    // No temporary file is left behind.
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn a_count_limit_on_invalid_rows_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    let mut rows: Vec<_> = (0..20)
        .map(|i| (id(5, i), "1".into(), "2020-01-01 00:00:00".into()))
        .collect();
    rows.push(("x".into(), "1".into(), "2020-01-01 00:00:00".into()));
    rows.push(("y".into(), "1".into(), "2020-01-01 00:00:00".into()));
    write_csv(&csv, &rows);
    assert!(!build(dir.path(), &csv, &["--max-invalid", "1"])
        .status
        .success());
    assert!(sequences(dir.path()).is_empty());
    build_ok(dir.path(), &csv, &["--max-invalid", "2"]);
    assert_eq!(sequences(dir.path()), [1]);
}

/// A header of other column names than `id,price,expiration_date` is read
/// as a header, not as an invalid row; a first row of data with a bad id is
/// still an invalid row, on line 1.
#[test]
fn a_header_of_other_column_names_is_skipped_but_a_bad_first_row_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let body: String = (0..5)
        .map(|i| format!("{},1.{i},2020-01-01 00:00:00\n", id(7, i)))
        .collect();
    let feed = |name: &str, first: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{first}\n{body}")).unwrap();
        path
    };

    // Five rows: one of them invalid would be over the default limit of 1%.
    let out = build(&data, &feed("named.csv", "uuid,price,expiration_date"), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let summary = String::from_utf8(out.stdout).unwrap();
    assert_eq!(summary_field(&summary, "rows"), "5");
    assert_eq!(summary_field(&summary, "valid"), "5");
    assert_eq!(summary_field(&summary, "invalid"), "0");
    assert!(
        err.contains("the first line was read as a header (column names), not as a row: \"uuid,price,expiration_date\""),
        "{err}"
    );
    assert!(!err.contains("invalid row"), "{err}");
    assert!(promo_get(&data, &id(7, 4)).is_some_and(|got| got.contains("\"price\":1.4")));

    // A mistyped id on the first line: a row of data, and an invalid one.
    let bad = "d018ef0b-dbd9-48f1-ac1a-eb4d90e5711z";
    let typo = feed("typo.csv", &format!("{bad},1.5,2020-01-01 00:00:00"));
    let out = build(&data, &typo, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("typo.csv:1: invalid row: bad id \"{bad}\"\n")),
        "{err}"
    );
    assert!(err.contains("1 of 6 rows are invalid"), "{err}");
    assert!(!err.contains("read as a header"), "{err}");

    // Nearly a header: invalid, and the reason says what it looks like.
    let near = feed("near.csv", "uuid,price,expiration date (UTC)");
    let out = build(&data, &near, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "near.csv:1: invalid row: bad id \"uuid\" (the first line looks like a header, but \
             is not read as one"
        ),
        "{err}"
    );
    assert!(err.contains("1 of 6 rows are invalid"), "{err}");
    assert_eq!(sequences(&data), [1]);
}

/// Row counts at and around the sorter's spill boundaries, with a memory
/// limit of 1 KiB (20 rows a run): every row must come back, exactly once.
#[test]
fn builds_are_exact_at_and_around_spill_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    let per_run = (1024 - 1024 / 16) / promo::builder::sort::ITEM_LEN; // as pipeline::build sizes it
    assert_eq!(per_run, 20);
    let mut counts = vec![1, 2];
    for k in [1, 2, 3, 10, 77] {
        for base in [per_run * k, (per_run + 1) * k] {
            counts.extend([base - 1, base, base + 1]);
        }
    }
    counts.sort_unstable();
    counts.dedup();
    for (round, &n) in counts.iter().enumerate() {
        // Every fifth id repeats an earlier one with a new price: the later row wins.
        let rows: Vec<_> = (0..n as u64)
            .map(|i| {
                let key = if i % 5 == 4 { i / 2 } else { i };
                (
                    id(9, key),
                    format!("{i}.5"),
                    "2020-01-01 00:00:00".to_string(),
                )
            })
            .collect();
        write_csv(&csv, &rows);
        let data = dir.path().join(format!("d{round}"));
        let summary = build_ok(&data, &csv, &["--memory-limit", "1KiB"]);
        let mut model = std::collections::BTreeMap::new();
        for (i, (id, _, _)) in rows.iter().enumerate() {
            model.insert(uuid::Uuid::parse_str(id).unwrap().as_u128(), i);
        }
        assert_eq!(
            summary_field(&summary, "records"),
            model.len().to_string(),
            "{n} rows"
        );
        assert_eq!(
            summary_field(&summary, "duplicates"),
            (n - model.len()).to_string()
        );
        let table = Table::open_verified(&data.join(local::file_name(1)), 1).unwrap();
        assert_eq!(table.len(), model.len() as u64, "{n} rows");
        for (i, (&key, &row)) in model.iter().enumerate() {
            let r = table.record(i as u64);
            assert_eq!(r.key(), key);
            assert_eq!(
                r.price().unwrap().to_string(),
                format!("{row}.5"),
                "{n} rows, key {i}"
            );
            assert_eq!(table.position(key), Some(i as u64));
        }
    }
}

#[test]
fn reads_standard_input_and_keeps_the_newest_generations() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let csv = std::fs::read(fixture("promotions.csv")).unwrap();
    for round in 1..=4u64 {
        let mut child = promo()
            .args(["build", "-", "--keep", "2", "--data-dir"])
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&csv).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            summary_field(&String::from_utf8(out.stdout).unwrap(), "generation"),
            round.to_string()
        );
    }
    assert_eq!(sequences(dir.path()), [3, 4]);
    let published = dir.path().join(local::file_name(4));
    assert!(std::fs::metadata(published)
        .unwrap()
        .permissions()
        .readonly());
}

#[test]
fn a_second_concurrent_build_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let _held = local::BuildLock::acquire(dir.path()).unwrap();
    let out = build(dir.path(), &fixture("promotions.csv"), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is using this data directory"),
        "{}",
        stderr(&out)
    );
    assert!(sequences(dir.path()).is_empty());
}

#[test]
fn get_and_inspect_report_generations_and_skip_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let id = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
    let get = |id: &str| promo_get_output(dir.path(), id);
    let hit = get(id);
    assert!(hit.status.success());
    assert!(String::from_utf8_lossy(&hit.stdout).contains("\"price\":60.683466"));
    assert_eq!(
        get("00000000-0000-4000-8000-000000000000").status.code(),
        Some(1)
    );

    // A newer generation with one flipped byte: skipped by get, flagged by inspect.
    let mut bytes = std::fs::read(dir.path().join(local::file_name(1))).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    std::fs::write(dir.path().join(local::file_name(2)), &bytes).unwrap();
    assert!(get(id).status.success());
    let list = inspect_dir(dir.path());
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["sequence"], 1);
    assert_eq!(list[0]["checksum"], "ok");
    assert_eq!(list[0]["live"], true);
    assert_eq!(list[0]["rows"], 203);
    assert_eq!(list[1]["sequence"], 2);
    assert!(list[1]["checksum"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));
    assert_eq!(list[1]["live"], false);
    let text = promo()
        .args(["inspect", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("gen-0000000001.promo"));
}

#[test]
fn a_feed_that_shrinks_too_much_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let before = std::fs::read(dir.path().join(local::file_name(1))).unwrap();
    let small = dir.path().join("small.csv");
    let rows: Vec<_> = (0..50)
        .map(|i| (id(7, i), "1".into(), "2020-01-01 00:00:00".into()))
        .collect();
    write_csv(&small, &rows);

    let out = build(dir.path(), &small, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("50 records against 203 in generation 1"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(sequences(dir.path()), [1]);
    assert_eq!(
        std::fs::read(dir.path().join(local::file_name(1))).unwrap(),
        before
    );
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());

    // A looser guard, then an explicit override, let it through.
    build_ok(dir.path(), &small, &["--max-shrink", "80%"]);
    assert_eq!(sequences(dir.path()), [1, 2]);
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    build_ok(dir.path(), &small, &["--force"]);
    assert_eq!(sequences(dir.path()), [2, 3, 4]);
}

/// A `--tmp-dir` that does not exist or is not a directory, or a
/// `--data-dir` that cannot be created, fails the build before it reads
/// the feed, not at the first spill after reading all of it.
#[test]
fn an_unusable_tmp_dir_or_data_dir_fails_before_the_feed_is_read() {
    use std::io::Seek;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let cases = [
        (
            "--tmp-dir",
            dir.path().join("missing"),
            data.clone(),
            "does not exist",
        ),
        (
            "--tmp-dir",
            file.clone(),
            data.clone(),
            "is not a directory",
        ),
        (
            "--data-dir",
            dir.path().to_path_buf(),
            file.join("data"),
            "cannot be created",
        ),
    ];
    for (option, tmp_dir, data_dir, reason) in cases {
        // The feed on standard input is an open file whose offset the build
        // shares: it stays at 0 unless the build reads.
        let feed = std::fs::File::open(fixture("promotions.csv")).unwrap();
        // 1 KiB of memory: the sort would spill after a dozen rows.
        let out = promo()
            .args(["build", "-", "--memory-limit", "1KiB", "--tmp-dir"])
            .arg(&tmp_dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(feed.try_clone().unwrap())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        let path = if option == "--tmp-dir" {
            &tmp_dir
        } else {
            &data_dir
        };
        let named = format!("{option} {}: {reason}", path.display());
        assert!(err.contains(&named), "{named:?} not in {err}");
        assert!(err.contains("nothing was read or published"), "{err}");
        assert_eq!(
            (&feed).stream_position().unwrap(),
            0,
            "the feed was read: {err}"
        );
    }
    // Not even the data directory was made.
    assert!(!data.exists());
}

/// Once the new generation is renamed into place the build has succeeded:
/// an old generation that cannot be removed is a warning, not a failure.
/// (A directory named like a generation: removing it as a file fails, even
/// for root.)
#[test]
fn a_failure_to_remove_an_old_generation_after_publishing_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = dir.path().join(local::file_name(1));
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("something"), "in the way").unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    assert_eq!(sequences(dir.path()), [1, 2]);

    let out = promo()
        .args(["build", "--keep", "1", "--data-dir"])
        .arg(dir.path())
        .arg(fixture("promotions.csv"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let summary = String::from_utf8(out.stdout).unwrap();
    assert_eq!(summary_field(&summary, "generation"), "3");
    assert!(
        err.contains("WARN") && err.contains(&format!("{}: removing", stuck.display())),
        "{err}"
    );
    // The other old generation is removed all the same; the new one serves.
    assert_eq!(sequences(dir.path()), [1, 3]);
    assert!(promo_get(dir.path(), "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118").is_some());
}

/// The feeds a partner gets wrong: each fails with a message that says why,
/// or is refused by the shrink guard, and the live generation stays.
#[test]
fn bad_feeds_fail_clearly_and_replace_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = std::fs::read(fixture("promotions.csv")).unwrap();
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let before = std::fs::read(data.join(local::file_name(1))).unwrap();
    let feed = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    // Cut in half, mid-row: the shrink guard refuses it.
    let half = feed("half.csv", &good[..good.len() / 2]);
    let err = stderr(&build(&data, &half, &["--max-invalid", "5"]));
    assert!(
        err.contains("half.csv: the new generation would hold"),
        "{err}"
    );
    assert!(err.contains("--max-shrink 50%"), "{err}");

    // Another delimiter: every row is one field, and the error says which
    // delimiter the file seems to use.
    for (name, delimiter, said) in [
        ("semicolons.csv", ";", "';'"),
        ("tabs.csv", "\t", "tabs"),
        ("pipes.csv", "|", "'|'"),
    ] {
        let text = String::from_utf8(good.clone())
            .unwrap()
            .replace(',', delimiter);
        let out = build(&data, &feed(name, text.as_bytes()), &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}");
        assert!(
            err.contains(&format!(
                "{name}:1: invalid row: expected 3 fields separated by commas, found 1 field \
                 holding {said}"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "rows are invalid, more than the limit of 1%; nothing was published (see the \
                 lines reported above, or raise --max-invalid). The file seems to use {said} \
                 between fields: promo reads comma-separated values (id,price,expiration_date)"
            )),
            "{err}"
        );
    }
    // Rows of one field without such a delimiter, or a mix: no guess.
    let lone = feed("lone.csv", b"id,price,expiration_date\nabc\ndef;ghi\n");
    let err = stderr(&build(&data, &lone, &["--max-invalid", "100%"]));
    assert!(
        err.contains("lone.csv:2: invalid row: expected 3 fields, found 1\n"),
        "{err}"
    );
    assert!(
        err.contains("lone.csv: no valid rows (2 rows read); nothing was published\n"),
        "{err}"
    );
    assert!(!err.contains("seems to use"), "{err}");

    // Binary garbage.
    let mut noise = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let out = build(&data, &feed("noise.bin", &noise), &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("noise.bin:") && err.contains("nothing was published"),
        "{err}"
    );

    assert_eq!(sequences(&data), [1]);
    assert_eq!(
        std::fs::read(data.join(local::file_name(1))).unwrap(),
        before
    );
    assert_eq!(temp_files(&data), Vec::<String>::new());
}

/// Every line of `text` is one JSON object with the fields a log collector
/// expects; returns them.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
            for field in ["timestamp", "level", "message", "target"] {
                assert!(v.get(field).is_some(), "no {field} in {line}");
            }
            v
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_a_line_with_the_build_as_fields() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("feed.csv");
    let rows: Vec<_> = (0..5)
        .map(|i| (id(1, i), "1.5".into(), "2030-01-01 00:00:00".into()))
        .collect();
    write_csv(&csv, &rows);
    let data = dir.path().join("data");

    let out = build(&data, &csv, &["--log-format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The summary line stays on standard output, for scripts.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(summary_field(&stdout, "records"), "5", "{stdout}");
    let events = json_lines(&stderr(&out));
    let built = events
        .iter()
        .find(|e| e["message"] == "built generation 1")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(built["level"], "INFO");
    assert_eq!(built["rows"], 5);
    assert_eq!(built["records"], 5);
    assert_eq!(built["generation"], 1);

    // A bad row and the error that ends the command, both as JSON; the
    // environment variable does what the flag does.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,price,expiration_date\nnot-an-id,1,2030-01-01\n").unwrap();
    let out = promo()
        .arg("build")
        .arg(&bad)
        .arg("--data-dir")
        .arg(&data)
        .env("PROMO_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let events = json_lines(&stderr(&out));
    assert!(events
        .iter()
        .any(|e| e["level"] == "WARN" && e["message"].as_str().unwrap().contains("bad.csv:2:")));
    let last = events.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(last["message"]
        .as_str()
        .unwrap()
        .contains("nothing was published"));

    // Queries answer on stdout as before; their logs (none here) would be JSON.
    let out = promo()
        .args(["--log-format", "json", "inspect", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    json_lines(&stderr(&out));

    // Text stays the default.
    let out = build(&data, &csv, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rows=5 "));
}

#[test]
fn the_metrics_file_says_how_each_build_went_and_keeps_the_last_success() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("feed.csv");
    let rows: Vec<_> = (0..7)
        .map(|i| (id(2, i), "2".into(), "2030-01-01 00:00:00".into()))
        .chain([(id(2, 0), "3".into(), "2030-01-01 00:00:00".into())])
        .collect();
    write_csv(&csv, &rows);
    let data = dir.path().join("data");
    let textfile = dir.path().join("textfile");
    let metrics = textfile.join("promo_build.prom");
    let metrics_arg = metrics.to_str().unwrap();

    // Its directory is checked before the feed is read.
    let out = build(&data, &csv, &["--metrics-file", metrics_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--metrics-file"), "{}", stderr(&out));
    assert!(sequences(&data).is_empty());

    std::fs::create_dir(&textfile).unwrap();
    build_ok(&data, &csv, &["--metrics-file", metrics_arg]);
    let value = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(&metrics).unwrap();
        let prefix = format!("{name}{{shard=\"0/1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    assert_eq!(value("promo_build_last_attempt_success"), Some(1.0));
    assert_eq!(value("promo_build_rows"), Some(8.0));
    assert_eq!(value("promo_build_duplicate_rows"), Some(1.0));
    assert_eq!(value("promo_build_invalid_rows"), Some(0.0));
    assert_eq!(value("promo_build_generation"), Some(1.0));
    let success = value("promo_build_last_success_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&success),
        "{success} vs {now}"
    );

    // A feed the shrink guard refuses: the attempt fails (exit 3, a
    // refusal), the success stays.
    assert_eq!(value("promo_build_last_attempt_refused"), Some(0.0));
    let small = dir.path().join("small.csv");
    write_csv(&small, &rows[..1]);
    let out = build(&data, &small, &["--metrics-file", metrics_arg]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(value("promo_build_last_attempt_success"), Some(0.0));
    assert_eq!(value("promo_build_last_attempt_refused"), Some(1.0));
    assert_eq!(
        value("promo_build_last_success_timestamp_seconds"),
        Some(success)
    );
    assert_eq!(value("promo_build_generation"), Some(1.0));
    assert!(value("promo_build_last_attempt_timestamp_seconds").unwrap() >= success);

    // promtool reads it as Prometheus would.
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics).unwrap())
        .output()
        .expect("promtool is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing but the file: the temporary ones were renamed or removed.
    assert_eq!(std::fs::read_dir(&textfile).unwrap().count(), 1);
}

#[test]
fn get_names_a_missing_id_as_the_api_does() {
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let out = promo_get_output(dir.path(), "17C6A0E2-4F3B-4A3D-9D2E-0123456789AB");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "promo: no promotion 17c6a0e2-4f3b-4a3d-9d2e-0123456789ab in generation 1\n"
    );
}

#[test]
fn files_that_are_not_what_they_should_be_are_named_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    // A directory named like a generation: inspect says what it is, and
    // the generation before it stays live.
    std::fs::create_dir(data.join("gen-0000000005.promo")).unwrap();
    let out = promo()
        .args(["inspect", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let line = table
        .lines()
        .find(|l| l.contains("gen-0000000005.promo"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("is a directory, not a regular file"),
        "{line}"
    );
    assert!(!table.contains("os error"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("gen-0000000001.promo") && l.contains(" * ")),
        "{table}"
    );
    assert!(promo_get(&data, "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118").is_some());

    // A directory given as the feed.
    let out = build(&data, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "promo: error: {}: is a directory, not a file\n",
            dir.path().display()
        )
    );

    // A file given as the data directory.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let out = promo_get_output(&file, "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("os error"), "{err}");
    assert!(err.contains("plain"), "{err}");
}

/// The records of generation `sequence` in `data`, and its body checksum.
fn records_of(data: &std::path::Path, sequence: u64) -> (Vec<[u8; 32]>, u64) {
    let path = data.join(format!("gen-{sequence:010}.promo"));
    let header = promo::generation::format::read_header(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let records = bytes[128..128 + 32 * header.count as usize]
        .chunks_exact(32)
        .map(|r| r.try_into().unwrap())
        .collect();
    (records, header.body_checksum)
}

#[test]
fn the_same_promotions_in_any_order_build_the_same_bytes() {
    // Three zones, RFC 3339 dates, and dates kept as written (fractions)
    // in the overflow area, mixed through the feed.
    let date = |i: u64| match i % 5 {
        0 => "2030-06-01 10:00:00 +0200 CEST".to_string(),
        1 => "2030-01-01 10:00:00 +0100 CET".to_string(),
        2 => "2030-01-01 10:00:00 +0000 UTC".to_string(),
        3 => format!("2030-01-01 10:00:{:02}.{i} +0000 UTC", i % 60),
        _ => format!("2030-01-01T10:00:00.{i}Z"),
    };
    let rows: Vec<(String, String, String)> = (0..4000)
        .map(|i| (id(7, i), format!("{}.{:02}", i % 97, i % 100), date(i)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let build_rows = |name: &str, rows: &[(String, String, String)]| {
        let csv = dir.path().join(format!("{name}.csv"));
        write_csv(&csv, rows);
        let data = dir.path().join(name);
        let out = build(&data, &csv, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        records_of(&data, 1)
    };
    let (sorted, sorted_sum) = build_rows("in-order", &rows);
    // The same rows, reversed and interleaved: another order of arrival
    // for the zones and the dates kept as written.
    let mut shuffled: Vec<_> = rows.iter().rev().cloned().collect();
    let (odd, even): (Vec<_>, Vec<_>) = shuffled
        .drain(..)
        .enumerate()
        .partition(|(i, _)| i % 2 == 1);
    let shuffled: Vec<_> = odd.into_iter().chain(even).map(|(_, r)| r).collect();
    let (again, again_sum) = build_rows("shuffled", &shuffled);
    assert_eq!(
        again_sum, sorted_sum,
        "the body depends on the order rows came in"
    );
    assert!(again == sorted);

    // One price changed: one record's bytes change, and no other's.
    let mut repriced = shuffled.clone();
    let at = repriced.iter().position(|r| r.0 == rows[1234].0).unwrap();
    repriced[at].1 = "999.5".into();
    let (changed, _) = build_rows("repriced", &repriced);
    let differ = changed.iter().zip(&sorted).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 1);
}
