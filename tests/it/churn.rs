//! Feed safety through the real binary: each build is compared with the
//! live generation, `--max-churn` and `--max-price-jumps` refuse the feeds
//! no sane partner sends, and `promo diff` shows what changed.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    build, build_ok, id, inspect_dir, promo, promo_get, sequences, summary_field, temp_files,
};

const GUARDS: [&str; 4] = ["--max-churn", "50", "--max-price-jumps", "5"];
const ROWS: u64 = 3000;

type Row = (String, String, String);

/// The partner's usual feed: prices from 10.00 to 89.99, dates over a month.
fn usual() -> Vec<Row> {
    (0..ROWS)
        .map(|i| {
            (
                id(1, i),
                format!("{}.{:02}", 10 + i % 80, i % 100),
                format!("2030-01-{:02} 00:00:00 +0100 CET", 1 + i % 28),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, rows: &[Row]) -> PathBuf {
    let path = dir.join(name);
    common::write_csv(&path, rows);
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first id of `rows` in id order, as the examples list them.
fn first_id(rows: &[Row]) -> String {
    rows.iter().map(|r| r.0.clone()).min().unwrap()
}

/// A data directory whose live generation 1 is the usual feed.
fn live_usual(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    build_ok(&data, &write(dir, "usual.csv", &usual()), &GUARDS);
    data
}

/// Checks that a refused build left generation 1 live and nothing behind.
fn nothing_changed(data: &Path) {
    assert_eq!(sequences(data), [1]);
    assert!(temp_files(data).is_empty());
    let names: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let row = &usual()[0];
    let live = promo_get(data, &row.0).unwrap();
    assert!(live.contains(&format!("\"price\":{}", row.1)), "{live}");
}

#[test]
fn every_price_zeroed_is_refused_by_the_price_jump_guard() {
    let dir = tempfile::tempdir().unwrap();
    let data = live_usual(dir.path());
    let zeroed: Vec<Row> = usual()
        .into_iter()
        .map(|(id, _, date)| (id, "0".into(), date))
        .collect();
    let csv = write(dir.path(), "zeroed.csv", &zeroed);

    let out = build(&data, &csv, &GUARDS);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused by --max-price-jumps 5%: 100.00% of the {ROWS} ids in both would have their \
             price go to 0 or move more than 10x ({ROWS} ids) against generation 1"
        )),
        "{err}"
    );
    // The first example, with its old and new values.
    let first = first_id(&zeroed);
    let old = usual().into_iter().find(|r| r.0 == first).unwrap();
    assert!(
        err.contains(&format!(
            "The first ids, old -> new:\n  {first} {},{} -> 0,{}\n",
            old.1, old.2, old.2
        )),
        "{err}"
    );
    assert_eq!(err.matches(" -> 0,").count(), 5, "five examples: {err}");
    nothing_changed(&data);

    // --force publishes it all the same, and says what it changed.
    let summary = build_ok(&data, &csv, &[&GUARDS[..], &["--force"]].concat());
    assert_eq!(summary_field(&summary, "price"), ROWS.to_string());
    assert_eq!(summary_field(&summary, "price_jumps"), ROWS.to_string());
    assert_eq!(summary_field(&summary, "median_price_change"), "-100.0%");
    assert_eq!(sequences(&data), [1, 2]);
}

#[test]
fn a_shifted_column_is_refused_by_the_churn_guard() {
    let dir = tempfile::tempdir().unwrap();
    let data = live_usual(dir.path());
    // Each id with the price and date of the row before it: still a valid
    // feed, every value plausible, and every id wrong.
    let rows = usual();
    let shifted: Vec<Row> = (0..rows.len())
        .map(|i| {
            let before = &rows[(i + rows.len() - 1) % rows.len()];
            (rows[i].0.clone(), before.1.clone(), before.2.clone())
        })
        .collect();
    let out = build(&data, &write(dir.path(), "shifted.csv", &shifted), &GUARDS);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused by --max-churn 50%: 100.00% of the {ROWS} ids would change (added 0, \
             removed 0, changed {ROWS}) against generation 1"
        )),
        "{err}"
    );
    nothing_changed(&data);
}

#[test]
fn a_third_of_the_ids_replaced_is_refused_by_the_churn_guard_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = live_usual(dir.path());
    let replaced: Vec<Row> = usual()
        .into_iter()
        .enumerate()
        .map(|(i, (id, price, date))| match i as u64 % 3 {
            0 => (common::id(2, i as u64), price, date),
            _ => (id, price, date),
        })
        .collect();
    let csv = write(dir.path(), "replaced.csv", &replaced);
    let env = [("PROMO_MAX_CHURN".to_string(), "50".to_string())];
    let out = common::build_env(&data, &csv, &[], &env);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused by --max-churn 50%: 66.67% of the {ROWS} ids would change (added 1000, \
             removed 1000, changed 0)"
        )),
        "{err}"
    );
    nothing_changed(&data);
}

#[test]
fn a_feed_that_changes_a_tenth_of_a_percent_is_published_with_its_churn() {
    let dir = tempfile::tempdir().unwrap();
    let data = live_usual(dir.path());
    // Three prices zeroed out of 3000: price jumps, but 0.1% of the ids.
    let mut rows = usual();
    for row in rows.iter_mut().take(3) {
        row.1 = "0".into();
    }
    let metrics = dir.path().join("promo_build.prom");
    let summary = build_ok(
        &data,
        &write(dir.path(), "small-change.csv", &rows),
        &[&GUARDS[..], &["--metrics-file", metrics.to_str().unwrap()]].concat(),
    );
    for (name, value) in [
        ("generation", "2"),
        ("against", "1"),
        ("added", "0"),
        ("removed", "0"),
        ("price", "3"),
        ("expiry", "0"),
        ("unchanged", "2997"),
        ("churn", "0.10%"),
        ("price_jumps", "3"),
        ("price_jump_share", "0.10%"),
    ] {
        assert_eq!(summary_field(&summary, name), value, "{name} in {summary}");
    }
    // The metrics file, inspect and the sidecar all say the same.
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "promo_build_churn_ids{shard=\"0/1\",kind=\"price\"} 3",
        "promo_build_churn_ids{shard=\"0/1\",kind=\"unchanged\"} 2997",
        "promo_build_last_attempt_refused{shard=\"0/1\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    let listed = inspect_dir(&data);
    assert_eq!(listed[0]["churn"], serde_json::Value::Null, "the first");
    let churn = &listed[1]["churn"];
    assert_eq!(churn["price"], 3);
    assert_eq!(churn["against"], 1);
    assert_eq!(churn["jump_examples"].as_array().unwrap().len(), 3);
    let out = promo()
        .args(["inspect", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("+0 -0 ~3 (0.10%)"), "{table}");
}

#[test]
fn the_first_build_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let zeroed: Vec<Row> = usual()
        .into_iter()
        .map(|(id, _, date)| (id, "0".into(), date))
        .collect();
    let data = dir.path().join("data");
    let summary = build_ok(&data, &write(dir.path(), "zeroed.csv", &zeroed), &GUARDS);
    assert_eq!(summary_field(&summary, "against"), "none");
    assert_eq!(sequences(&data), [1]);
}

#[test]
fn diff_streams_the_differences_and_exits_like_grep() {
    let dir = tempfile::tempdir().unwrap();
    let data = live_usual(dir.path());
    let mut rows = usual();
    rows[10].1 = "99.99".into();
    rows[20].2 = "2031-01-01 00:00:00 +0100 CET".into();
    rows.remove(30);
    rows.push((id(3, 0), "1".into(), "2030-01-01 00:00:00".into()));
    build_ok(&data, &write(dir.path(), "next.csv", &rows), &GUARDS);
    let diff = |args: &[&str]| {
        promo()
            .arg("diff")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };

    let out = diff(&["1", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let old = usual();
    assert!(
        lines.contains(
            &format!(
                "changed  {} {},{} -> 99.99,{}",
                old[10].0, old[10].1, old[10].2, old[10].2
            )
            .as_str()
        ),
        "{text}"
    );
    assert!(
        lines
            .contains(&format!("removed  {} {},{} -> -", old[30].0, old[30].1, old[30].2).as_str()),
        "{text}"
    );
    assert!(
        lines.contains(&format!("added    {} - -> 1,2030-01-01 00:00:00", id(3, 0)).as_str()),
        "{text}"
    );
    assert!(
        lines[4].starts_with("generation 1 -> 2: against=1 added=1 removed=1 price=1 expiry=1"),
        "{text}"
    );
    // In id order.
    let ids: Vec<&str> = lines[..4]
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    // JSON lines, at most --limit of them, and the summary counts all.
    let out = diff(&[
        "1",
        data.join("gen-0000000002.promo").to_str().unwrap(),
        "--json",
        "--limit",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["kind"].is_string() && lines[0]["id"].is_string());
    let summary = &lines[2]["summary"];
    assert_eq!(
        (summary["added"].as_u64(), summary["removed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(summary["changed"], 2);

    // The same generation: exit 0, nothing but the summary.
    let out = diff(&["2", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // A reader that goes away (`| head`) ends it quietly: differences were
    // found, and there is no error to report.
    let mut child = promo()
        .args(["diff", "1", "2", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");

    // A sequence that is not there is an error, not a difference.
    let out = diff(&["1", "9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no generation 9"), "{}", stderr(&out));
}

/// Checks that `out`'s standard error says `what`.
fn says(out: &Output, what: &str) {
    let err = stderr(out);
    assert!(err.contains(what), "expected {what:?} in:\n{err}");
}

/// `promo build` as a new install runs it: no guard flag, no variable.
fn build_as_installed(data: &Path, csv: &Path, extra: &[&str]) -> Output {
    common::promo_as_installed()
        .arg("build")
        .arg(csv)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn zeroed() -> Vec<Row> {
    usual()
        .into_iter()
        .map(|(id, _, date)| (id, "0".into(), date))
        .collect()
}

/// The usual feed with its first `n` prices raised by one: a sane day.
fn repriced(n: usize) -> Vec<Row> {
    let mut rows = usual();
    for r in rows.iter_mut().take(n) {
        r.1 = format!(
            "{}.50",
            r.1.split('.').next().unwrap().parse::<u64>().unwrap() + 1
        );
    }
    rows
}

#[test]
fn a_zeroed_feed_is_refused_with_no_flag_given_and_off_turns_a_guard_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = build_as_installed(&data, &write(dir.path(), "usual.csv", &usual()), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = write(dir.path(), "zeroed.csv", &zeroed());

    let out = build_as_installed(&data, &csv, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    says(
        &out,
        "refused by --max-price-jumps 5%: 100.00% of the 3000 ids",
    );
    nothing_changed(&data);

    // Off for this build: published, with the refusal it would have been
    // as a warning (the same figures and the first ids).
    let off = ["--max-price-jumps", "off", "--max-churn", "off"];
    let out = build_as_installed(&data, &csv, &off);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("published although --max-price-jumps 5% would refuse it")
            && err.contains("100.00% of the 3000 ids in both")
            && err.contains(&first_id(&usual())),
        "{err}"
    );
    assert_eq!(sequences(&data), [1, 2]);

    // A feed that replaces every id churns 200%: refused by default, and
    // published with PROMO_MAX_CHURN=off.
    let others: Vec<Row> = (0..ROWS)
        .map(|i| {
            (
                common::id(2, i),
                "1.00".into(),
                "2030-01-01 00:00:00 +0100 CET".into(),
            )
        })
        .collect();
    let csv = write(dir.path(), "others.csv", &others);
    let out = build_as_installed(&data, &csv, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    says(&out, "refused by --max-churn 50%: 200.00%");
    let out = common::promo_as_installed()
        .env("PROMO_MAX_CHURN", "off")
        .args(["build", "--data-dir"])
        .arg(&data)
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    says(&out, "--max-churn off; its default refuses it");
    let out = build_as_installed(&data, &csv, &["--max-churn", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    says(&out, "expected a percentage (50%) or off");
}

#[test]
fn a_rollback_goes_back_to_any_generation_and_a_rolled_back_feed_is_refused_when_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = write(dir.path(), "usual.csv", &usual());
    let bad = write(dir.path(), "zeroed.csv", &zeroed());
    assert!(build_as_installed(&data, &good, &[]).status.success());
    // The bad feed forced through, then sent again by the cron job (the
    // same as the live one: no guard fires).
    assert!(build_as_installed(&data, &bad, &["--force"])
        .status
        .success());
    assert!(build_as_installed(&data, &bad, &[]).status.success());

    // One step back is the bad feed again; --to 1 reaches the good one.
    let said = common::rollback_ok(&data);
    assert!(
        said.contains("generation 2 is live again as generation 4"),
        "{said}"
    );
    let out = promo()
        .args(["rollback", "--to", "1", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("generation 1 is live again as generation 5"),
        "{said}"
    );
    let row = &usual()[0];
    let live = promo_get(&data, &row.0).unwrap();
    assert!(live.contains(&format!("\"price\":{}", row.1)), "{live}");

    // inspect says what each rollback restored and undid.
    let out = promo()
        .args(["inspect", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("rollback to 1, undid 4, 3, 2"), "{table}");
    // Generation 3 holds what 2 holds: going back to 2 undid nothing else.
    let four = table
        .lines()
        .find(|l| l.trim_start().starts_with("4 "))
        .unwrap();
    assert!(four.contains("rollback to 2 "), "{table}");
    let rows = inspect_dir(&data);
    assert_eq!(rows[4]["rollback"]["of"], 1, "{rows}");
    assert_eq!(rows[4]["rollback"]["undone"][0]["sequence"], 4, "{rows}");

    // The cron job sends the bad feed again: refused, with no flag.
    let out = build_as_installed(&data, &bad, &["--max-price-jumps", "off"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "the same records as generation 4, which the rollback to generation 1 \
                      (generation 5) undid"
        ),
        "{err}"
    );
    assert_eq!(sequences(&data), [1, 2, 3, 4, 5]);
    // A good feed goes through; --to a generation that is not kept, or the
    // live one, is an error that says so.
    assert!(
        build_as_installed(&data, &write(dir.path(), "r.csv", &repriced(3)), &[])
            .status
            .success()
    );
    for (to, why) in [
        ("1", "no generation 1 (it holds"),
        ("6", "generation 6 is live already"),
    ] {
        let out = promo()
            .args(["rollback", "--to", to, "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        says(&out, why);
    }
    // Forced, the rolled-back feed is published, with a warning.
    let out = build_as_installed(&data, &bad, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    says(&out, "published although refused (--force)");
}

#[test]
fn after_a_store_rollback_the_next_good_feed_publishes_and_the_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let url = format!("file://{}", store.display());
    let builder = dir.path().join("builder");
    let publish = ["--publish", url.as_str()];
    let good = write(dir.path(), "usual.csv", &usual());
    let bad = write(dir.path(), "zeroed.csv", &zeroed());
    assert!(build_as_installed(&builder, &good, &publish)
        .status
        .success());
    let mut forced = publish.to_vec();
    forced.push("--force");
    assert!(build_as_installed(&builder, &bad, &forced).status.success());
    assert!(build_as_installed(&builder, &bad, &publish)
        .status
        .success());

    // The fleet goes back to the store's generation 1.
    let out = promo()
        .args(["rollback", "--to", "1", "--publish", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("generation 1 is the newest again, as generation 4"),
        "{said}"
    );
    let out = promo()
        .args(["inspect", "--source", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("rollback to 1, undid 3, 2"), "{table}");

    // The builder's directory still has the bad feed as its newest; the
    // build compares with what the store serves: the bad feed is refused
    // as rolled back, a good one publishes.
    let out = build_as_installed(&builder, &bad, &publish);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    says(&out, "which the rollback to generation 1");
    let out = build_as_installed(
        &builder,
        &write(dir.path(), "r.csv", &repriced(3)),
        &publish,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(summary_field(&summary, "price"), "3", "{summary}");
    assert!(summary.contains("as its generation 5"), "{summary}");

    // A new builder, with an empty directory, measures against the store's
    // newest too (downloaded): another zeroed feed is refused.
    let fresh = dir.path().join("fresh");
    let mut zeroes = zeroed();
    zeroes[0].1 = "0.00".into();
    let out = build_as_installed(&fresh, &write(dir.path(), "z.csv", &zeroes), &publish);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    says(&out, "refused by --max-price-jumps 5%");
}
