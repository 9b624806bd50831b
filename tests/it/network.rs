//! The network between the machines misbehaves: a fault-injecting proxy
//! (`common::proxy`) between the replicas and a real S3 server, and
//! between nginx and one replica. Fetches complete through latency and a
//! rate cap, resume through connections reset midway, and wait out a store
//! that answers nothing while the replicas keep serving; nginx keeps
//! answering when the link to one replica slows down.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::proxy::{Faults, Proxy};
use common::s3::S3;
use common::{promo, Client, Server};
use promo::generation::local::file_name;

/// A feed of `n` ids of data set 6; every `every`th id (if any) priced
/// `changed` instead of its usual price.
fn feed(dir: &Path, name: &str, n: u64, every: Option<u64>, changed: &str) -> PathBuf {
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let price = match every {
                Some(e) if i % e == 0 => changed.to_string(),
                _ => format!("3.{:02}", i % 11),
            };
            (common::id(6, i), price, "2031-06-01T12:00:00Z".to_string())
        })
        .collect();
    let path = dir.join(name);
    common::write_csv(&path, &rows);
    path
}

/// `promo fetch` of `url` into `replica` with `env`; its standard output.
fn fetch(url: &str, replica: &Path, env: &[(String, String)]) -> String {
    let out = promo()
        .args(["fetch", url, "--data-dir", replica.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the replica's generation `sequence` is the S3 object of it.
fn same_as_store(s3: &S3, prefix: &str, replica: &Path, sequence: u64) -> bool {
    let manifest = s3
        .dir(prefix)
        .join(format!("manifests/{sequence:010}.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let object = s3.dir(prefix).join(manifest["object"].as_str().unwrap());
    std::fs::read(replica.join(file_name(sequence))).unwrap() == std::fs::read(object).unwrap()
}

/// 50 ms each way and 10 MiB/s between the replica and the store: a whole
/// generation and then a delta come through, and the delta moves a
/// fraction of the bytes.
#[test]
fn fetches_through_latency_and_a_rate_cap_complete_and_a_delta_moves_little() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let s3 = S3::start();
    let url = s3.url("slow");
    let proxy = Proxy::start(s3.addr());
    proxy.set(Faults {
        latency: Duration::from_millis(50),
        rate: Some(10 << 20),
        ..Faults::default()
    });
    let (builder, replica) = (w.join("builder"), w.join("replica"));
    let publish = |csv: &Path| {
        common::build_ok_env(&builder, csv, &["--publish", &url], &s3.env());
    };
    publish(&feed(w, "a.csv", 60_000, None, ""));
    let out = fetch(&url, &replica, &s3.env_via(proxy.addr));
    assert!(out.contains("fetched generation 1 ("), "{out}");
    let whole = std::fs::metadata(replica.join(file_name(1))).unwrap().len();
    assert!(proxy.delivered() >= whole);
    assert!(same_as_store(&s3, "slow", &replica, 1));

    // 1% of the prices change.
    publish(&feed(w, "b.csv", 60_000, Some(100), "9.99"));
    let before = proxy.delivered();
    let out = fetch(&url, &replica, &s3.env_via(proxy.addr));
    assert!(
        out.contains("fetched generation 2 (") && out.contains("a delta"),
        "{out}"
    );
    let moved = proxy.delivered() - before;
    assert!(
        moved * 20 < whole,
        "{moved} bytes through the proxy for a 1% change"
    );
    assert!(same_as_store(&s3, "slow", &replica, 2));
}

/// Connections reset at random in the middle of objects: the whole
/// generation and the delta after it still arrive, each read resuming
/// from the byte it reached.
#[test]
fn fetches_through_connections_reset_midway_resume_and_finish() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let s3 = S3::start();
    let url = s3.url("flaky");
    let proxy = Proxy::start(s3.addr());
    let (builder, replica) = (w.join("builder"), w.join("replica"));
    let publish = |csv: &Path| {
        common::build_ok_env(&builder, csv, &["--publish", &url], &s3.env());
    };
    publish(&feed(w, "a.csv", 100_000, None, ""));
    proxy.set(Faults {
        reset_after: Some(256 << 10),
        ..Faults::default()
    });
    let out = fetch(&url, &replica, &s3.env_via(proxy.addr));
    assert!(out.contains("fetched generation 1 ("), "{out}");
    assert!(same_as_store(&s3, "flaky", &replica, 1));
    let resets = proxy.resets();
    assert!(resets >= 3, "only {resets} connections were reset");

    publish(&feed(w, "b.csv", 100_000, Some(50), "7.77"));
    let out = fetch(&url, &replica, &s3.env_via(proxy.addr));
    assert!(out.contains("fetched generation 2 ("), "{out}");
    assert!(same_as_store(&s3, "flaky", &replica, 2));
}

/// The store accepts connections and answers nothing for 30 s: the
/// replica keeps serving its live generation and stays ready, its
/// requests time out and go out again, and it catches up once the store
/// answers.
#[test]
fn a_blackholed_store_never_stops_serving_and_the_replica_catches_up() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let s3 = S3::start();
    let url = s3.url("dark");
    let proxy = Proxy::start(s3.addr());
    let builder = w.join("builder");
    let publish = |csv: &Path| {
        common::build_ok_env(&builder, csv, &["--publish", &url], &s3.env());
    };
    publish(&feed(w, "a.csv", 1000, None, ""));
    let server = Server::start_env(
        &w.join("replica"),
        "127.0.0.1:0",
        &["--source", &url, "--source-interval", "0.5"],
        &s3.env_via(proxy.addr),
    );
    server.wait_for("/readyz", Duration::from_secs(30), |r| r.status == 200);
    let id = common::id(6, 7);

    proxy.set(Faults {
        blackhole: true,
        ..Faults::default()
    });
    publish(&feed(w, "b.csv", 1000, Some(2), "4.44"));
    let connections = proxy.connections();
    let dark = Instant::now();
    while dark.elapsed() < Duration::from_secs(30) {
        assert_eq!(server.get("/readyz").status, 200);
        let r = server.get(&format!("/promotions/{id}"));
        assert_eq!(r.status, 200);
        assert!(r.text().contains("\"price\":3.07"), "{}", r.text());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(server.live_generation(), 1);
    // The request in flight timed out (`READ_TIMEOUT`, 20 s) and was sent
    // again on a new connection, which the dark store accepted too.
    let retried = proxy.connections() - connections;
    assert!(retried >= 1, "{retried} new connections in the dark");
    proxy.set(Faults::default());
    server.wait_for("/readyz", Duration::from_secs(120), |r| {
        r.text().trim().ends_with(" 2")
    });
    assert!(server
        .get(&format!("/promotions/{id}"))
        .text()
        .contains("\"price\":3.07"));
    let other = common::id(6, 8);
    assert!(server
        .get(&format!("/promotions/{other}"))
        .text()
        .contains("\"price\":4.44"));
}

/// nginx in front of two replicas, the link to one slowed to 200 ms each
/// way: with `deploy/nginx/promo.conf`, every lookup through nginx is
/// answered, and the slow replica gets a small share of them (nginx sends
/// each request to the replica with the fewest in flight).
#[test]
fn nginx_sends_little_to_a_replica_behind_a_slow_link() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let csv = feed(w, "a.csv", 1000, None, "");
    let (fast_dir, slow_dir) = (w.join("fast"), w.join("slow"));
    common::build_ok(&fast_dir, &csv, &[]);
    common::build_ok(&slow_dir, &csv, &[]);
    let fast = Server::start(&fast_dir);
    let slow = Server::start(&slow_dir);
    let proxy = Proxy::start(slow.addr);
    proxy.set(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    });
    let conf = Nginx::deploy_file("promo.conf")
        .replace("127.0.0.1:1331", &fast.addr.to_string())
        .replace("127.0.0.1:1332", &proxy.addr.to_string());
    let nginx = Nginx::start(&conf);

    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            let addr: SocketAddr = nginx.addr();
            std::thread::spawn(move || {
                // Through nginx, which may answer its own errors (counted).
                let mut client = Client::connect_unchecked(addr);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let r = client.get(&format!("/promotions/{}", common::id(6, i % 1000)));
                    match r.status {
                        200 => answered.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    // nginx closes a client's connection after 1000 requests.
                    if r.header("connection") == Some("close") {
                        client = Client::connect(addr);
                    }
                    i += 8;
                }
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < 4000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let hits = |s: &Server| s.metric("promo_lookups_total{result=\"hit\"}");
    let (to_fast, to_slow) = (hits(&fast), hits(&slow));
    assert!(
        to_slow * 20.0 < to_fast,
        "the slow replica answered {to_slow} lookups, the fast one {to_fast}"
    );
}
