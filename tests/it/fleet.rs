//! A fleet for real: builds publishing to an object store (a real S3 server
//! in-process, s3s-fs, and a `file://` store), `promo serve` replicas
//! fetching from it, and Debian's nginx in front with
//! `deploy/nginx/promo.conf`, while a client loops on lookups through it.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::s3::S3;
use common::{free_port, Client, Server};

/// A store to run the fleet against: the S3 server, or a shared directory.
enum Store {
    S3(S3),
    File(tempfile::TempDir),
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::S3(s3) => s3.url("fleet"),
            Store::File(dir) => format!("file://{}", dir.path().join("fleet").display()),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Store::S3(s3) => s3.env(),
            // Credentials that must not be needed, so that none leaks in.
            Store::File(_) => Vec::new(),
        }
    }

    /// The directory the store's objects are files in.
    fn dir(&self) -> PathBuf {
        match self {
            Store::S3(s3) => s3.dir("fleet"),
            Store::File(dir) => dir.path().join("fleet"),
        }
    }

    fn new_s3() -> Store {
        Store::S3(S3::start())
    }

    fn new_file() -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("fleet")).unwrap();
        Store::File(dir)
    }

    /// Takes the store away: the server stops, or the directory vanishes
    /// (as an unmounted share does).
    fn take_away(&mut self) {
        match self {
            Store::S3(s3) => s3.stop(),
            Store::File(dir) => {
                std::fs::rename(dir.path().join("fleet"), dir.path().join("away")).unwrap()
            }
        }
    }

    fn bring_back(&mut self) {
        match self {
            Store::S3(s3) => s3.resume(),
            Store::File(dir) => {
                std::fs::rename(dir.path().join("away"), dir.path().join("fleet")).unwrap()
            }
        }
    }

    /// `promo build <csv> --data-dir <dir> --publish <url>`, which must succeed.
    fn publish(&self, dir: &Path, csv: &Path) -> String {
        common::build_ok_env(dir, csv, &["--publish", &self.url()], &self.env())
    }
}

/// A CSV of `n` rows of data set `set`, every one priced `price`.
fn feed(dir: &Path, name: &str, set: u64, n: u64, price: &str) -> PathBuf {
    let path = dir.join(name);
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                common::id(set, i),
                price.to_string(),
                "2030-01-01 00:00:00 +0000 UTC".to_string(),
            )
        })
        .collect();
    common::write_csv(&path, &rows);
    path
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const POLL: &str = "0.3";

/// Bytes a server downloaded from the store, whole generations and deltas.
fn fetched_bytes(server: &Server) -> f64 {
    ["full", "delta"]
        .iter()
        .map(|kind| server.metric(&format!("promo_fetch_bytes_total{{kind=\"{kind}\"}}")))
        .sum()
}

fn replica(store: &Store, dir: &Path, port: u16) -> Server {
    Server::start_env(
        dir,
        &format!("127.0.0.1:{port}"),
        &["--source", &store.url(), "--source-interval", POLL],
        &store.env(),
    )
}

/// Waits until every replica has generation `sequence` live.
fn converge(replicas: &[Option<Server>], sequence: u64) {
    wait_until(
        &format!("every replica on generation {sequence}"),
        Duration::from_secs(30),
        || {
            replicas
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.live_generation() == sequence))
        },
    );
}

/// nginx with `deploy/nginx/promo.conf`, its upstream pointed at `replicas`.
fn nginx(replicas: &[u16]) -> Nginx {
    // The operator's file, with this test's addresses: the upstream's
    // server lines are the only ones changed (and the listen line, by Nginx).
    let conf = Nginx::deploy_file("promo.conf");
    let mut servers = String::new();
    for p in replicas {
        servers.push_str(&format!(
            "    server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;\n"
        ));
    }
    let mut out = String::new();
    let mut placed = false;
    for line in conf.lines() {
        if line.trim_start().starts_with("server 127.0.0.1:") {
            if !placed {
                out.push_str(&servers);
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        placed,
        "deploy/nginx/promo.conf has no upstream server lines"
    );
    Nginx::start(&out)
}

/// A client looping on lookups through nginx until stopped, on kept-alive
/// connections, counting answers that are not a 200 with the promotion.
struct Lookups {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Lookups {
    fn start(addr: SocketAddr, ids: Vec<String>) -> Lookups {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            // Through nginx, which may answer its own errors (counted).
            let mut client = Client::connect_unchecked(addr);
            let mut i = 0;
            while !s.load(Ordering::Relaxed) {
                let id = &ids[i % ids.len()];
                i += 1;
                let r = client.get(&format!("/promotions/{id}"));
                if r.status != 200 || !r.text().contains(id.as_str()) {
                    failures.push(format!("{id}: {} {}", r.status, r.text()));
                }
                d.fetch_add(1, Ordering::Relaxed);
                if r.header("connection") == Some("close") {
                    client = Client::connect(addr);
                }
            }
            failures
        });
        Lookups {
            stop,
            done,
            thread: Some(thread),
        }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Lets at least `n` more lookups happen.
    fn wait_for_more(&self, n: u64) {
        let target = self.count() + n;
        wait_until("lookups through nginx", Duration::from_secs(30), || {
            self.count() >= target
        });
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.take().unwrap().join().unwrap();
        (self.count(), failures)
    }
}

/// The whole flow the issue asks for, against `store`.
fn fleet_behind_nginx(mut store: Store) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let builder = w.join("builder");
    // Every feed holds the ids of set 1, so a lookup of one is a 200 from
    // any generation; the price tells the generations apart.
    let ids: Vec<String> = (0..200).map(|i| common::id(1, i)).collect();
    store.publish(&builder, &feed(w, "a.csv", 1, 300, "1.00"));

    let ports = [free_port(), free_port()];
    let dirs = [w.join("r0"), w.join("r1")];
    let mut replicas: Vec<Option<Server>> = (0..2)
        .map(|i| Some(replica(&store, &dirs[i], ports[i])))
        .collect();
    converge(&replicas, 1);
    let nginx = nginx(&ports);
    let r = common::request(nginx.addr(), "GET", &format!("/promotions/{}", ids[0]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-promo-generation"),
        Some("1"),
        "passed through nginx"
    );

    let lookups = Lookups::start(nginx.addr(), ids.clone());
    lookups.wait_for_more(200);

    // A new generation reaches both replicas.
    store.publish(&builder, &feed(w, "b.csv", 1, 320, "2.00"));
    converge(&replicas, 2);
    lookups.wait_for_more(200);
    let r = common::request(nginx.addr(), "GET", &format!("/promotions/{}", ids[5]));
    assert!(r.text().contains("\"price\":2"), "{}", r.text());

    // A replica dies: nginx retries on the other one, lookups and batches
    // alike (a batch is a POST of several KiB, which nginx must take and
    // may send again).
    replicas[0].take().unwrap().kill();
    lookups.wait_for_more(500);
    let batch = serde_json::json!({ "ids": ids }).to_string();
    assert!(batch.len() > 4096);
    for _ in 0..4 {
        let r = common::Client::connect(nginx.addr()).post_json("/promotions/batch", &batch);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["promotions"].as_array().unwrap().len(), ids.len());
    }

    // It comes back with an empty data directory, fetches the newest
    // generation, and only then says it is ready.
    std::fs::remove_dir_all(&dirs[0]).unwrap();
    replicas[0] = Some(replica(&store, &dirs[0], ports[0]));
    converge(&replicas, 2);
    lookups.wait_for_more(200);

    // The store goes away: both keep serving and stay ready.
    store.take_away();
    let errors_before: Vec<f64> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().metric("promo_source_errors_total"))
        .collect();
    wait_until("source errors counted", Duration::from_secs(30), || {
        replicas.iter().zip(&errors_before).all(|(r, before)| {
            r.as_ref().unwrap().metric("promo_source_errors_total") >= before + 3.0
        })
    });
    lookups.wait_for_more(200);
    for r in replicas.iter().map(|r| r.as_ref().unwrap()) {
        assert_eq!(r.live_generation(), 2, "still ready on generation 2");
        let log = r.log();
        let warned = log
            .matches("serving the live generation and retrying")
            .count();
        assert_eq!(
            warned, 1,
            "one warning for the outage, not one a poll:\n{log}"
        );
    }
    store.bring_back();
    wait_until("the store readable again", Duration::from_secs(30), || {
        replicas
            .iter()
            .all(|r| r.as_ref().unwrap().log().contains("fetching works again"))
    });

    store.publish(&builder, &feed(w, "c.csv", 1, 330, "3.00"));
    converge(&replicas, 3);

    // A corrupt generation 4 (a byte flipped in its object: what a bad
    // disk or a bad copy in the store looks like). Refused by both, once,
    // and not downloaded again.
    let failures_before: Vec<f64> = replicas
        .iter()
        .map(|r| {
            r.as_ref()
                .unwrap()
                .metric("promo_generation_load_failures_total")
        })
        .collect();
    corrupt_next_generation(&store, w, 4);
    wait_until(
        "the corrupt generation refused",
        Duration::from_secs(30),
        || {
            replicas.iter().zip(&failures_before).all(|(r, before)| {
                r.as_ref()
                    .unwrap()
                    .metric("promo_generation_load_failures_total")
                    > *before
            })
        },
    );
    let fetched: Vec<f64> = replicas
        .iter()
        .map(|r| fetched_bytes(r.as_ref().unwrap()))
        .collect();
    std::thread::sleep(Duration::from_millis(1500)); // five polls
    for (r, bytes) in replicas.iter().zip(&fetched) {
        let r = r.as_ref().unwrap();
        assert_eq!(
            r.live_generation(),
            3,
            "the corrupt generation 4 never went live"
        );
        assert_eq!(
            fetched_bytes(r),
            *bytes,
            "a refused generation is not downloaded again"
        );
        assert_eq!(r.metric("promo_source_newest_sequence"), 4.0);
    }
    // The next good generation goes live past it.
    store.publish(&builder, &feed(w, "e.csv", 1, 350, "5.00"));
    converge(&replicas, 5);
    lookups.wait_for_more(200);

    let (count, failures) = lookups.finish();
    assert!(
        failures.is_empty(),
        "{} of {count} lookups through nginx failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // Each replica keeps the newest 2 generations it has (retention runs
    // just after the swap).
    for dir in &dirs {
        wait_until(
            "the replica keeps 2 generations",
            Duration::from_secs(10),
            || common::sequences(dir) == [3, 5],
        );
    }
}

/// Puts a generation `sequence` into the store whose object has one body
/// byte flipped, and whose manifest is right: the header matches, the body
/// does not. It is published whole to another prefix first, then its files
/// are copied into this store's layout, the object before the manifest (as
/// a builder would), so that no replica sees it before it is corrupt.
fn corrupt_next_generation(store: &Store, work: &Path, sequence: u64) {
    let staging = match store {
        Store::S3(s3) => s3.url("staging"),
        Store::File(dir) => {
            std::fs::create_dir_all(dir.path().join("staging")).unwrap();
            format!("file://{}", dir.path().join("staging").display())
        }
    };
    let staging_dir = match store {
        Store::S3(s3) => s3.dir("staging"),
        Store::File(dir) => dir.path().join("staging"),
    };
    let csv = feed(work, "corrupt.csv", 1, 340, "4.00");
    common::build_ok_env(
        &work.join("staging-builder"),
        &csv,
        &["--publish", &staging],
        &store.env(),
    );
    let manifest_path = staging_dir.join("manifests/0000000001.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let object = manifest["object"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(staging_dir.join(&object)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let target = store.dir();
    let tmp = target.join("generations/.incoming");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, target.join(&object)).unwrap();
    manifest["sequence"] = sequence.into();
    let tmp = target.join("manifests/.incoming");
    std::fs::write(&tmp, serde_json::to_vec(&manifest).unwrap()).unwrap();
    std::fs::rename(&tmp, target.join(format!("manifests/{sequence:010}.json"))).unwrap();
}

#[test]
fn a_fleet_on_s3_behind_nginx_loses_no_request() {
    fleet_behind_nginx(Store::new_s3());
}

#[test]
fn a_fleet_on_a_shared_directory_behind_nginx_loses_no_request() {
    fleet_behind_nginx(Store::new_file());
}

/// A replica started on an empty data directory, before the store has any
/// generation, is not ready (nginx sends its requests elsewhere) until it
/// has fetched one; then it reports what it serves and how old it is.
#[test]
fn an_empty_replica_is_not_ready_until_it_has_fetched() {
    let store = Store::new_file();
    let work = tempfile::tempdir().unwrap();
    let server = replica(&store, &work.path().join("r"), free_port());
    let id = common::id(1, 0);
    std::thread::sleep(Duration::from_millis(700)); // two polls of nothing
    assert_eq!(server.get("/readyz").status, 503);
    assert_eq!(server.get(&format!("/promotions/{id}")).status, 503);
    assert_eq!(server.metric("promo_source_errors_total"), 0.0);
    assert_eq!(server.metric("promo_source_newest_sequence"), 0.0);

    store.publish(
        &work.path().join("b"),
        &feed(work.path(), "a.csv", 1, 10, "1.00"),
    );
    wait_until("ready on generation 1", Duration::from_secs(30), || {
        server.live_generation() == 1
    });
    assert_eq!(server.get(&format!("/promotions/{id}")).status, 200);
    assert_eq!(server.metric("promo_source_newest_sequence"), 1.0);
    let bytes = std::fs::metadata(
        work.path()
            .join("r")
            .join(promo::generation::local::file_name(1)),
    )
    .unwrap()
    .len();
    assert_eq!(
        server.metric("promo_fetch_bytes_total{kind=\"full\"}"),
        bytes as f64
    );
    assert_eq!(
        server.metric("promo_fetch_bytes_total{kind=\"delta\"}"),
        0.0
    );
    wait_until(
        "the generation's age exported",
        Duration::from_secs(5),
        || server.metric("promo_generation_age_seconds") > 0.0,
    );
    let age = server.metric("promo_generation_age_seconds");
    assert!(age < 60.0, "a generation built just now is {age} s old");
}

/// SIGTERM during a download stops the server at once (a throttled 2 MB
/// download would take minutes), and leaves no partial file behind.
#[test]
fn a_download_in_progress_does_not_hold_up_a_shutdown() {
    let store = Store::new_file();
    let work = tempfile::tempdir().unwrap();
    store.publish(
        &work.path().join("b"),
        &feed(work.path(), "a.csv", 1, 30_000, "1.00"),
    );
    let data = work.path().join("r");
    let server = Server::start_env(
        &data,
        "127.0.0.1:0",
        &["--source", &store.url(), "--fetch-rate", "10KiB"],
        &[],
    );
    wait_until("the download started", Duration::from_secs(30), || {
        server.log().contains("downloading a generation")
    });
    assert_eq!(server.get("/readyz").status, 503);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        common::temp_files(&data).is_empty(),
        "{:?}",
        common::temp_files(&data)
    );
    assert!(common::sequences(&data).is_empty());
}
