//! Deltas end to end: builds that publish what changed beside each
//! generation, and replicas (`promo fetch`, `promo serve --source`) that
//! rebuild the generation from their live one byte for byte, or fall back
//! to the whole object when a delta fails, against a shared directory and
//! a real S3 server.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::S3;
use common::{promo_get, run_env as run, Server};
use promo::generation::local::file_name;

/// A feed of ids `0..n` of data set 4, priced `base + i % 7` cents above
/// a dollar, except where `change` says otherwise: `Some(price)` for a new
/// price, `None` to leave the id out.
fn feed(dir: &Path, name: &str, n: u64, change: impl Fn(u64) -> Option<Option<String>>) -> PathBuf {
    let rows: Vec<_> = (0..n)
        .filter_map(|i| {
            let price = match change(i) {
                None => Some(format!("1.{:02}", i % 7)),
                Some(changed) => changed,
            }?;
            Some((common::id(4, i), price, "2030-01-01T00:00:00Z".to_string()))
        })
        .collect();
    let path = dir.join(name);
    common::write_csv(&path, &rows);
    path
}

/// 400 ids; `round` reprices 10, drops 5 and adds 5 (ids 400..) each.
fn feed_round(dir: &Path, round: u64) -> PathBuf {
    feed(dir, &format!("feed-{round}.csv"), 400 + 5 * round, |i| {
        if round == 0 {
            return None;
        }
        if i % 40 == round {
            Some(Some(format!("2.{round:02}")))
        } else if i % 80 == round + 1 {
            Some(None)
        } else {
            None
        }
    })
}

fn publish(
    csv: &Path,
    builder: &Path,
    url: &str,
    env: &[(String, String)],
    extra: &[&str],
) -> String {
    let args = [&["--publish", url][..], extra].concat();
    common::build_ok_env(builder, csv, &args, env)
}

fn fetch(url: &str, replica: &Path, env: &[(String, String)]) -> String {
    let (code, out, err) = run(
        &["fetch", url, "--data-dir", replica.to_str().unwrap()],
        env,
    );
    assert_eq!(code, 0, "{err}");
    out
}

fn inspect(url: &str, env: &[(String, String)]) -> Vec<serde_json::Value> {
    let (code, out, err) = run(&["inspect", "--source", url, "--json"], env);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

/// Whether `replica`'s generation `sequence` is, byte for byte, the
/// store's object of that generation; `objects` is the directory the
/// store keeps its objects in.
fn same_as_store(
    replica: &Path,
    sequence: u64,
    url: &str,
    objects: &Path,
    env: &[(String, String)],
) -> bool {
    let listed = inspect(url, env);
    let g = listed.iter().find(|g| g["sequence"] == sequence).unwrap();
    let object = objects.join(g["object"].as_str().unwrap());
    std::fs::read(replica.join(file_name(sequence))).unwrap() == std::fs::read(object).unwrap()
}

/// Publishes generations, fetching each as deltas: one, a chain of two,
/// an unchanged feed, then a rollback (whole) and a build after it.
fn deltas_round_trip(url: &str, objects: &Path, env: &[(String, String)]) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (builder, replica) = (w.join("builder"), w.join("replica"));

    publish(&feed_round(w, 0), &builder, url, env, &[]);
    let out = fetch(url, &replica, env);
    assert!(
        out.contains("fetched generation 1 (") && !out.contains("delta"),
        "{out}"
    );

    let out = publish(&feed_round(w, 1), &builder, url, env, &[]);
    assert!(out.contains("a delta from its generation 1 of"), "{out}");
    let listed = inspect(url, env);
    assert_eq!(
        listed[0]["delta"],
        serde_json::Value::Null,
        "the first has none"
    );
    let delta = &listed[1]["delta"];
    assert_eq!(delta["base"], 1, "{delta}");
    assert_eq!(delta["state"], "ok", "{delta}");
    // Some 15 changed or added records and 5 removed ids, two headers
    // and a zone table: under a tenth of this small generation.
    let bytes = delta["bytes"].as_u64().unwrap();
    let whole = listed[1]["bytes"].as_u64().unwrap();
    assert!(
        bytes > 256 + 10 * 32 && bytes * 10 < whole,
        "{delta} of {whole}"
    );

    let out = fetch(url, &replica, env);
    assert!(
        out.contains(&format!("fetched generation 2 ({bytes} bytes: a delta")),
        "{out}"
    );
    assert!(same_as_store(&replica, 2, url, objects, env));
    let id = common::id(4, 1);
    assert!(promo_get(&replica, &id).unwrap().contains("\"price\":2.01"));

    // Two generations behind: the chain of both deltas.
    publish(&feed_round(w, 2), &builder, url, env, &[]);
    publish(&feed_round(w, 3), &builder, url, env, &[]);
    let out = fetch(url, &replica, env);
    assert!(
        out.contains("fetched generation 4 (") && out.contains("2 deltas"),
        "{out}"
    );
    assert!(same_as_store(&replica, 4, url, objects, env));

    // The same feed again: the builder publishes the same file (its
    // records did not change), the store names the same object (nothing
    // uploaded but a delta of headers and zones), and the replica links
    // the file it has.
    let out = publish(&feed_round(w, 3), &builder, url, env, &[]);
    assert!(out.contains("a delta from its generation 4 of"), "{out}");
    let listed = inspect(url, env);
    let (four, five) = (&listed[listed.len() - 2], listed.last().unwrap());
    assert_eq!(four["object"], five["object"], "uploaded again");
    assert!(five["delta"]["bytes"].as_u64().unwrap() < 300, "{five}");
    let out = fetch(url, &replica, env);
    assert!(
        out.contains("(0 bytes: the data directory holds it, as generation 4"),
        "{out}"
    );
    assert!(same_as_store(&replica, 5, url, objects, env));

    // A rollback's manifest names no delta: the whole object is fetched.
    let (code, _, err) = run(&["rollback", "--publish", url], env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        inspect(url, env).last().unwrap()["delta"],
        serde_json::Value::Null
    );
    let out = fetch(url, &replica, env);
    assert!(
        out.contains("fetched generation 6 (") && !out.contains("delta"),
        "{out}"
    );
    // A build after it measures against the store's newest, the rollback,
    // and its delta starts there.
    let out = publish(
        &feed_round(w, 4),
        &builder,
        url,
        env,
        &["--max-churn", "off"],
    );
    assert!(out.contains("a delta from its generation 6 of"), "{out}");
    let out = fetch(url, &replica, env);
    assert!(
        out.contains("fetched generation 7 (") && out.contains("a delta"),
        "{out}"
    );
    assert!(same_as_store(&replica, 7, url, objects, env));
    assert!(common::temp_files(&replica).is_empty());
}

#[test]
fn a_replica_rebuilds_each_generation_from_deltas_in_a_shared_directory() {
    let store = tempfile::tempdir().unwrap();
    deltas_round_trip(
        &format!("file://{}", store.path().display()),
        store.path(),
        &[],
    );
}

#[test]
fn a_replica_rebuilds_each_generation_from_deltas_in_s3() {
    let s3 = S3::start();
    deltas_round_trip(&s3.url("deltas"), &s3.dir("deltas"), &s3.env());
}

/// No delta for a first build, with `--max-delta off`, or over the share
/// `--max-delta` allows; retention removes deltas with their generations.
#[test]
fn deltas_are_written_only_when_asked_and_small_enough_and_retention_removes_them() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let store = w.join("store");
    std::fs::create_dir(&store).unwrap();
    let url = format!("file://{}", store.display());
    let builder = w.join("builder");
    publish(&feed_round(w, 0), &builder, &url, &[], &["--keep", "9"]);
    publish(
        &feed_round(w, 1),
        &builder,
        &url,
        &[],
        &["--max-delta", "off", "--keep", "9"],
    );
    // A quarter of the prices change: a delta of about a quarter.
    let quarter = feed(w, "quarter.csv", 400, |i| {
        (i % 4 == 0).then(|| Some("1.50".into()))
    });
    let out = publish(
        &quarter,
        &builder,
        &url,
        &[],
        &["--max-delta", "10%", "--keep", "9"],
    );
    assert!(!out.contains("a delta"), "{out}");
    let out = publish(
        &feed_round(w, 0),
        &builder,
        &url,
        &[],
        &["--max-delta", "30", "--keep", "9"],
    );
    assert!(out.contains("a delta from its generation 3"), "{out}");
    let deltas: Vec<_> = inspect(&url, &[])
        .iter()
        .map(|g| g["delta"].clone())
        .collect();
    assert!(deltas[..3].iter().all(|d| d.is_null()), "{deltas:?}");
    assert_eq!(deltas[3]["base"], 3);

    let objects = |suffix: &str| {
        std::fs::read_dir(store.join("generations"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(suffix)
            })
            .count()
    };
    assert_eq!((objects(".promo"), objects(".delta")), (4, 1));
    for _ in 0..2 {
        publish(&feed_round(w, 0), &builder, &url, &[], &["--keep", "2"]);
    }
    // Generations 5 and 6 stay, each with its delta; 4's delta went with
    // it. Both hold feed 0's records, as 4 did: the one object they name
    // is 4's, uploaded once.
    assert_eq!((objects(".promo"), objects(".delta")), (1, 2));
    let kept: Vec<_> = inspect(&url, &[])
        .iter()
        .map(|g| g["delta"]["base"].clone())
        .collect();
    assert_eq!(kept, [4, 5]);
}

/// A replica that has generation 1 live fetches generation 2, whose delta
/// is damaged, or gone, or meets another base: each time it downloads the
/// whole generation instead, once, and counts why.
#[test]
fn a_delta_that_fails_falls_back_to_the_whole_generation_and_is_counted() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let store = w.join("store");
    std::fs::create_dir(&store).unwrap();
    let url = format!("file://{}", store.display());
    let (builder, replica) = (w.join("builder"), w.join("replica"));
    let serve = || {
        let server = Server::start_with(&replica, &["--source", &url, "--source-interval", "0.2"]);
        server.wait_for("/readyz", Duration::from_secs(20), |r| r.status == 200);
        server
    };
    let live = |server: &Server, sequence: u64| {
        server.wait_for("/readyz", Duration::from_secs(30), |r| {
            r.text().trim().ends_with(&format!(" {sequence}"))
        });
    };
    let delta_of = |sequence: u64| -> (PathBuf, u64) {
        let listed = inspect(&url, &[]);
        let g = &listed.iter().find(|g| g["sequence"] == sequence).unwrap()["delta"];
        (
            store.join(g["object"].as_str().unwrap()),
            g["bytes"].as_u64().unwrap(),
        )
    };
    let counted = |server: &Server, reason: &str| {
        server.metric(&format!(
            "promo_fetch_delta_fallbacks_total{{reason=\"{reason}\"}}"
        ))
    };
    let bytes = |server: &Server, kind: &str| {
        server.metric(&format!("promo_fetch_bytes_total{{kind=\"{kind}\"}}"))
    };

    publish(&feed_round(w, 0), &builder, &url, &[], &[]);
    let server = serve();
    live(&server, 1);
    server.terminate();

    // A damaged delta: downloaded, refused, then the whole object.
    publish(&feed_round(w, 1), &builder, &url, &[], &[]);
    let (path, delta_bytes) = delta_of(2);
    let mut damaged = std::fs::read(&path).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    std::fs::write(&path, damaged).unwrap();
    let server = serve();
    live(&server, 2);
    assert_eq!(counted(&server, "corrupt"), 1.0);
    assert_eq!(bytes(&server, "delta"), delta_bytes as f64);
    let whole = std::fs::metadata(replica.join(file_name(2))).unwrap().len();
    assert_eq!(bytes(&server, "full"), whole as f64);
    assert!(same_as_store(&replica, 2, &url, &store, &[]));
    assert!(server
        .log()
        .contains("fetching the whole generation instead of its deltas"));
    server.terminate();

    // A delta that is gone.
    publish(&feed_round(w, 2), &builder, &url, &[], &[]);
    std::fs::remove_file(delta_of(3).0).unwrap();
    let server = serve();
    live(&server, 3);
    assert_eq!(counted(&server, "missing"), 1.0);
    assert_eq!(bytes(&server, "delta"), 0.0);
    assert!(same_as_store(&replica, 3, &url, &store, &[]));

    // A good one, while the server runs: no fallback.
    publish(&feed_round(w, 3), &builder, &url, &[], &[]);
    live(&server, 4);
    assert_eq!(bytes(&server, "delta"), delta_of(4).1 as f64);
    assert_eq!(
        counted(&server, "missing") + counted(&server, "corrupt"),
        1.0
    );
    assert!(same_as_store(&replica, 4, &url, &store, &[]));
    server.terminate();

    // A replica whose generation 4 is another one (built here from
    // another feed): the delta's base is not there.
    let other = w.join("other");
    common::build_ok(&other, &feed_round(w, 0), &[]);
    for _ in 0..3 {
        common::build_ok(&other, &feed_round(w, 0), &[]);
    }
    assert_eq!(common::sequences(&other), [2, 3, 4]);
    publish(&feed_round(w, 4), &builder, &url, &[], &[]);
    let server = Server::start_with(&other, &["--source", &url, "--source-interval", "0.2"]);
    live(&server, 5);
    assert_eq!(counted(&server, "base"), 1.0);
    assert!(same_as_store(&other, 5, &url, &store, &[]));
    assert!(common::temp_files(&replica).is_empty() && common::temp_files(&other).is_empty());
}
