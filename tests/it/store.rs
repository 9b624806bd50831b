//! The object store's contract, through the real commands: `build
//! --publish`, `fetch`, `inspect --source` and `rollback --publish`
//! against a shared directory and a real S3 server (s3s-fs).

use crate::common;

use std::path::{Path, PathBuf};

use common::s3::S3;
use common::{promo_get, run_env as run};
use promo::store::layout::{new_object_name, Manifest};
use promo::store::remote::Remote;

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// A new shared-directory store in `work`: its directory and URL.
fn file_store(work: &Path) -> (PathBuf, String) {
    let dir = work.join("store");
    std::fs::create_dir(&dir).unwrap();
    let url = file_url(&dir);
    (dir, url)
}

/// `promo build <csv> --data-dir <data> --publish <url>`, which must succeed.
fn publish(csv: &Path, data: &Path, url: &str, env: &[(String, String)]) -> String {
    common::build_ok_env(data, csv, &["--publish", url], env)
}

fn fetch(url: &str, data: &Path, env: &[(String, String)]) -> (i32, String, String) {
    run(&["fetch", url, "--data-dir", data.to_str().unwrap()], env)
}

fn inspect(url: &str, env: &[(String, String)]) -> Vec<serde_json::Value> {
    let (code, out, err) = run(&["inspect", "--source", url, "--json"], env);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Two feeds that tell generations apart by the price of one id.
fn feeds(dir: &Path) -> (PathBuf, PathBuf, String) {
    let id = common::id(9, 0);
    let rows = |price: &str| {
        (0..50)
            .map(|i| {
                (
                    common::id(9, i),
                    price.to_string(),
                    "2030-01-01 00:00:00".to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    common::write_csv(&a, &rows("1.00"));
    common::write_csv(&b, &rows("2.00"));
    (a, b, id)
}

/// Publish, inspect, fetch, roll back and fetch again, against `url`.
fn round_trip(url: &str, env: &[(String, String)]) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (a, b, id) = feeds(w);
    let builder = w.join("builder");

    // An empty store: fetch says so and succeeds; nothing to list.
    let (code, out, err) = fetch(url, &w.join("replica"), env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("holds no generation"), "{out}");
    assert!(inspect(url, env).is_empty());

    let out = publish(&a, &builder, url, env);
    assert!(out.contains("as its generation 1"), "{out}");
    publish(&b, &builder, url, env);
    let listed = inspect(url, env);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["sequence"], 2);
    assert_eq!(listed[1]["rows"], 50);
    assert_eq!(listed[1]["state"], "ok");
    let local = std::fs::metadata(builder.join(promo::generation::local::file_name(2))).unwrap();
    assert_eq!(listed[1]["bytes"], local.len());
    // Each manifest carries what its generation changed: nothing to
    // compare the first with, every price in the second.
    assert_eq!(listed[0]["churn"], serde_json::Value::Null);
    assert_eq!(listed[1]["churn"]["price"], 50);
    assert_eq!(listed[1]["churn"]["median_price_change"], 1.0);
    // promo diff reads generations from the store by sequence.
    let (code, out, err) = run(&["diff", &format!("{url}#1"), &format!("{url}#2")], env);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("changed ")).count(),
        50
    );
    assert!(out.contains("price=50 expiry=0 unchanged=0"), "{out}");
    let (code, _, err) = run(&["diff", &format!("{url}#7"), &format!("{url}#2")], env);
    assert_eq!(code, 2);
    assert!(err.contains("no generation 7"), "{err}");

    // A replica's first fetch takes the newest; the second has nothing to do.
    let replica = w.join("replica");
    let (code, out, err) = fetch(url, &replica, env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fetched generation 2"), "{out}");
    assert_eq!(common::sequences(&replica), [2]);
    // The replica keeps the manifest's churn beside the generation.
    let (_, out, _) = run(
        &["inspect", "--json", "--data-dir", replica.to_str().unwrap()],
        env,
    );
    let local: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(local[0]["churn"]["price"], 50, "{local}");
    assert!(promo_get(&replica, &id).unwrap().contains("\"price\":2"));
    let (code, out, _) = fetch(url, &replica, env);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "up to date: the store holds no valid generation newer than the data directory's"
        ),
        "{out}"
    );

    // Rolling the store back publishes generation 1's object as 3.
    let (code, out, err) = run(&["rollback", "--publish", url], env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("generation 1 is the newest again, as generation 3"),
        "{out}"
    );
    let listed = inspect(url, env);
    assert_eq!(listed[2]["sequence"], 3);
    assert_eq!(
        listed[2]["object"], listed[0]["object"],
        "nothing is copied"
    );
    let (code, out, err) = fetch(url, &replica, env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fetched generation 3"), "{out}");
    assert!(promo_get(&replica, &id).unwrap().contains("\"price\":1"));
    // And a second rollback undoes the first.
    let (code, _, err) = run(&["rollback", "--publish", url], env);
    assert_eq!(code, 0, "{err}");
    fetch(url, &replica, env);
    assert!(promo_get(&replica, &id).unwrap().contains("\"price\":2"));
    assert!(common::temp_files(&replica).is_empty());

    // The manifest names what a build was compared with in the store's
    // sequences: the builder's live generation is its own 2, which the
    // store now holds as 4 (the second rollback).
    publish(&b, &builder, url, env);
    let listed = inspect(url, env);
    let churn = &listed.last().unwrap()["churn"];
    assert_eq!(listed.last().unwrap()["sequence"], 5);
    assert_eq!(churn["against"], 4, "{churn}");
    assert_eq!(churn["unchanged"], 50);
    // The second rollback undid generation 3, feed a: a build of it is
    // refused (exit 3) until it is forced.
    let builder2 = w.join("builder-2");
    let build_a = |extra: &[&str]| {
        let args = [
            "build",
            a.to_str().unwrap(),
            "--data-dir",
            builder2.to_str().unwrap(),
        ];
        run(&[&args[..], &["--publish", url], extra].concat(), env)
    };
    let (code, _, err) = build_a(&[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("which the rollback to generation 2 (generation 4) undid"),
        "{err}"
    );
    let (code, _, err) = build_a(&["--force"]);
    assert_eq!(code, 0, "{err}");
    // Another builder published in between: a build compares with the
    // store's newest all the same (this builder's own build of feed a holds
    // the same records), not with its own live generation.
    let out = publish(&b, &builder, url, env);
    assert!(out.contains("as its generation 7"), "{out}");
    let listed = inspect(url, env);
    let churn = &listed.last().unwrap()["churn"];
    assert_eq!(listed.last().unwrap()["sequence"], 7);
    assert_eq!(churn["against"], 6, "{churn}");
    assert_eq!(churn["price"], 50, "against the store's newest, feed a");
}

#[test]
fn a_shared_directory_store_round_trips() {
    let store = tempfile::tempdir().unwrap();
    round_trip(&file_url(store.path()), &[]);
    // A directory whose name must be percent-encoded in a URL.
    let odd = store.path().join("promo feeds");
    std::fs::create_dir(&odd).unwrap();
    round_trip(
        &format!("file://{}/promo%20feeds", store.path().display()),
        &[],
    );
    assert!(odd.join("manifests").is_dir());
}

#[test]
fn an_s3_store_round_trips() {
    let s3 = S3::start();
    round_trip(&s3.url("feeds/partner-a"), &s3.env());
}

#[test]
fn a_store_that_cannot_be_read_is_an_error_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let (a, _, _) = feeds(work.path());
    let missing = file_url(&work.path().join("no-such-dir"));
    let (code, _, err) = fetch(&missing, &work.path().join("r"), &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no-such-dir") && err.contains("does not exist"),
        "{err}"
    );

    // The S3 server is down: fetch fails, and build --publish fails but
    // keeps its local generation.
    let mut s3 = S3::start();
    s3.stop();
    let (code, _, err) = fetch(&s3.url("x"), &work.path().join("r"), &s3.env());
    assert_eq!(code, 2);
    assert!(
        err.contains(&s3.url("x")) && err.contains("listing manifests"),
        "{err}"
    );
    let builder = work.path().join("b");
    let (code, out, err) = run(
        &[
            "build",
            a.to_str().unwrap(),
            "--data-dir",
            builder.to_str().unwrap(),
            "--publish",
            &s3.url("x"),
        ],
        &s3.env(),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("publishing to the store failed; generation 1 stays published"),
        "{err}"
    );
    assert_eq!(common::sequences(&builder), [1]);

    for bad in ["ftp://x/y", "s3:///nobucket"] {
        let (code, _, err) = fetch(bad, &work.path().join("r"), &[]);
        assert_eq!(code, 2);
        assert!(err.contains(bad), "{err}");
    }
}

/// Every way a generation in the store can be bad: each is refused by
/// fetch, which takes the newest good one instead.
#[test]
fn bad_generations_in_the_store_are_refused_and_the_newest_good_one_is_fetched() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (store, url) = file_store(w);
    let (a, _, id) = feeds(w);
    publish(&a, &w.join("builder"), &url, &[]);
    // Feed a with one more price changed each time: four generations, four
    // objects (the same records again would be the same object).
    let next = |sequence: u64| {
        let text = std::fs::read_to_string(&a).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for line in &mut lines[..sequence as usize] {
            *line = line.replacen(",1.00,", ",2.00,", 1);
        }
        let path = w.join(format!("feed-{sequence}.csv"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let object_of = |sequence: u64| {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(store.join(format!("manifests/{sequence:010}.json"))).unwrap(),
        )
        .unwrap();
        store.join(m["object"].as_str().unwrap())
    };
    let good = std::fs::read(object_of(1)).unwrap();
    let mut bad = Vec::new();
    for (sequence, how) in [
        (2, "truncated"),
        (3, "flipped"),
        (4, "missing"),
        (5, "manifest"),
    ] {
        publish(&next(sequence), &w.join("builder"), &url, &[]);
        let object = object_of(sequence);
        match how {
            "truncated" => {
                let bytes = std::fs::read(&object).unwrap();
                std::fs::write(&object, &bytes[..bytes.len() - 100]).unwrap();
            }
            "flipped" => {
                let mut bytes = std::fs::read(&object).unwrap();
                bytes[200] ^= 1;
                std::fs::write(&object, &bytes).unwrap();
            }
            "missing" => std::fs::remove_file(&object).unwrap(),
            _ => std::fs::write(
                store.join(format!("manifests/{sequence:010}.json")),
                b"{ not json",
            )
            .unwrap(),
        }
        bad.push(sequence);
    }
    let replica = w.join("replica");
    let (code, out, err) = fetch(&url, &replica, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fetched generation 1"), "{out}\n{err}");
    assert_eq!(common::sequences(&replica), [1]);
    assert!(promo_get(&replica, &id).unwrap().contains("\"price\":1"));
    for sequence in bad {
        assert!(
            err.contains(&format!("refused generation {sequence}")),
            "{sequence}:\n{err}"
        );
    }
    assert!(
        err.contains("but the manifest says"),
        "the truncated one says its length:\n{err}"
    );
    assert!(err.contains("body checksum mismatch"), "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(err.contains("not JSON"), "{err}");
    assert!(common::temp_files(&replica).is_empty());
    assert_eq!(std::fs::read(object_of(1)).unwrap(), good);
}

/// A builder killed between its upload and its manifest leaves an object
/// that no replica reads; the next publish removes it. Two builders that
/// take the same sequence: one commits, the other is told so.
fn uploads_commit_only_through_their_manifest(remote: &Remote, env: &[(String, String)]) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (a, b, _) = feeds(w);
    let builder = w.join("builder");
    common::build_ok(&builder, &a, &[]);
    let local = builder.join(promo::generation::local::file_name(1));
    let header = promo::generation::format::read_header(&local).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Killed before its manifest: the object is there, invisible.
    let orphan = new_object_name(1);
    rt.block_on(remote.upload(&local, &orphan)).unwrap();
    assert_eq!(rt.block_on(remote.objects()).unwrap().len(), 1);
    assert!(inspect(remote.url(), env).is_empty());
    let (code, out, _) = fetch(remote.url(), &w.join("r"), env);
    assert_eq!(code, 0);
    assert!(out.contains("holds no generation"), "{out}");

    // The next build publishes 1 and removes the orphan.
    publish(&b, &builder, remote.url(), env);
    let objects = rt.block_on(remote.objects()).unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_ne!(objects[0].name, orphan);

    // Two builders both chose sequence 2: the first commit wins.
    let first = Manifest::new(2, new_object_name(2), &header);
    let second = Manifest::new(2, new_object_name(2), &header);
    rt.block_on(remote.upload(&local, &first.object)).unwrap();
    rt.block_on(remote.upload(&local, &second.object)).unwrap();
    rt.block_on(remote.commit(&first)).unwrap();
    let err = rt.block_on(remote.commit(&second)).unwrap_err().to_string();
    assert!(
        err.contains("another builder published generation 2 first"),
        "{err}"
    );
    assert_eq!(
        rt.block_on(remote.manifest(2)).unwrap(),
        Some(first.clone())
    );
    // The loser's upload goes with the next publish.
    publish(&a, &builder, remote.url(), env);
    let names: Vec<String> = rt
        .block_on(remote.objects())
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert!(!names.contains(&second.object), "{names:?}");
    assert!(names.contains(&first.object), "{names:?}");
}

#[test]
fn a_shared_directory_commits_only_through_manifests() {
    let store = tempfile::tempdir().unwrap();
    let remote = Remote::open(&file_url(store.path())).unwrap();
    uploads_commit_only_through_their_manifest(&remote, &[]);
}

#[test]
fn an_s3_store_commits_only_through_manifests() {
    let s3 = S3::start();
    let remote = Remote::open_with(&s3.url("race"), s3.options()).unwrap();
    uploads_commit_only_through_their_manifest(&remote, &s3.env());
}

/// `--keep` holds in the store: the newest sound generations stay, older
/// manifests and the objects only they named go.
#[test]
fn the_store_keeps_the_newest_generations() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (store, url) = file_store(w);
    let (a, _, _) = feeds(w);
    for _ in 0..5 {
        common::build_ok(&w.join("b"), &a, &["--keep", "2", "--publish", &url]);
    }
    let listed = inspect(&url, &[]);
    let sequences: Vec<u64> = listed
        .iter()
        .map(|g| g["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [4, 5]);
    // The same feed each time: every generation is the first's object
    // (uploaded once), and each kept one has its (tiny) delta.
    let mut objects: Vec<String> = std::fs::read_dir(store.join("generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    objects.sort();
    let names: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| (&o[..10], o.rsplit('.').next().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("0000000001", "promo"),
            ("0000000004", "delta"),
            ("0000000005", "delta")
        ]
    );
}

/// `--fetch-rate` is accepted and a throttled fetch is whole.
#[test]
fn a_throttled_fetch_is_whole() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (_, url) = file_store(w);
    let (a, _, id) = feeds(w);
    publish(&a, &w.join("b"), &url, &[]);
    let (code, out, err) = run(
        &[
            "fetch",
            &url,
            "--data-dir",
            w.join("r").to_str().unwrap(),
            "--fetch-rate",
            "1MiB",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fetched generation 1"), "{out}");
    assert!(promo_get(&w.join("r"), &id).is_some());
}

/// A manifest this promo cannot read (a newer builder's format) still
/// names an object: retention deletes no object while one is there.
#[test]
fn retention_leaves_the_objects_of_manifests_it_cannot_read() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (store, url) = file_store(w);
    let (a, b, _) = feeds(w);
    publish(&a, &w.join("builder"), &url, &[]);
    publish(&b, &w.join("builder"), &url, &[]);
    // Generation 3, from a builder of a later format.
    let two = std::fs::read_to_string(store.join("manifests/0000000002.json")).unwrap();
    let two: serde_json::Value = serde_json::from_str(&two).unwrap();
    let object = "generations/0000000003-00000000000000aa.promo";
    std::fs::copy(
        store.join(two["object"].as_str().unwrap()),
        store.join(object),
    )
    .unwrap();
    let mut three = two.clone();
    three["format"] = "promo-manifest/2".into();
    three["sequence"] = 3.into();
    three["object"] = object.into();
    std::fs::write(
        store.join("manifests/0000000003.json"),
        serde_json::to_vec(&three).unwrap(),
    )
    .unwrap();

    common::build_ok(&w.join("builder"), &a, &["--keep", "1", "--publish", &url]);
    assert!(
        store.join(object).exists(),
        "the unreadable manifest's object was deleted"
    );
    assert!(store.join("manifests/0000000004.json").exists());
}
