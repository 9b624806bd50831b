//! Builds killed with SIGKILL at arbitrary points never publish a partial
//! generation, never disturb the server, and leave nothing the next build
//! does not clean up. `PROMO_FAULT_RUNS` sets the number of kills (default
//! 3; `make fault` runs 30).

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use promo::generation::local;
use promo::generation::table::Table;

const REAL_ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";

#[test]
fn killed_builds_never_publish_a_partial_generation() {
    let runs: u64 = std::env::var("PROMO_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);

    // A feed big enough that a build takes a while; how long, measured.
    let big = dir.path().join("big.csv");
    let rows: Vec<_> = (0..200_000)
        .map(|i| {
            (
                id(11, i),
                format!("{i}.25"),
                "2021-06-01 12:00:00 +0200 CEST".to_string(),
            )
        })
        .collect();
    write_csv(&big, &rows);
    let started = Instant::now();
    build_ok(&dir.path().join("timing"), &big, &[]);
    let full = started.elapsed();

    let server = Server::start(&data);
    for k in 0..runs {
        // Kill points spread over the whole build and a little beyond it.
        let at = full.mul_f64(((k * 37) % 100) as f64 / 80.0);
        let mut child = promo()
            .args(["build", "--max-shrink", "100%", "--data-dir"])
            .arg(&data)
            .arg(&big)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        // Every generation anyone can see is complete and valid.
        for e in local::list(&data).unwrap() {
            Table::open_verified(&e.path, e.sequence)
                .unwrap_or_else(|err| panic!("kill {k} at {at:?} left a bad generation: {err}"));
        }
        // The server answers whole answers from a whole generation.
        let r = server.get(&format!("/promotions/{REAL_ID}"));
        let g: u64 = r.header("x-promo-generation").unwrap().parse().unwrap();
        if g == 1 {
            assert_eq!(r.status, 200);
            assert!(r.text().contains("\"price\":60.683466"), "{}", r.text());
        } else {
            assert_eq!(r.status, 404, "generation {g} is the big feed");
            let hit = server.get(&format!("/promotions/{}", id(11, 7)));
            assert_eq!(hit.status, 200);
            assert!(hit.text().contains("\"price\":7.25"), "{}", hit.text());
        }
    }
    assert_eq!(server.get("/healthz").status, 200);

    // The next build succeeds, publishes exactly one generation (a build
    // killed after its rename, the commit point, has published its own),
    // and removes what the killed ones left.
    let before = local::list(&data).unwrap().last().unwrap().sequence;
    let summary = build_ok(&data, &big, &[]);
    assert_eq!(summary_field(&summary, "records"), "200000");
    assert_eq!(temp_files(&data), Vec::<String>::new());
    let newest = local::list(&data).unwrap().last().unwrap().sequence;
    assert_eq!(newest, before + 1);
    let r = server.wait_for(
        &format!("/promotions/{}", id(11, 9)),
        Duration::from_secs(5),
        |r| r.header("x-promo-generation") == Some(newest.to_string().as_str()),
    );
    assert!(r.text().contains("\"price\":9.25"));
}
