//! `POST /promotions/batch` over real HTTP: answers from one generation
//! even while generations are swapped, and bad or slow bodies get a clear
//! status without holding the server.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn feed(dir: &std::path::Path, name: &str, price: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let rows: Vec<_> = (0..2_000)
        .map(|i| {
            (
                id(3, i),
                price.to_string(),
                "2030-01-01 00:00:00".to_string(),
            )
        })
        .collect();
    write_csv(&path, &rows);
    path
}

#[test]
fn every_batch_comes_from_one_generation_across_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &feed(dir.path(), "a.csv", "1"), &[]);
    let server = Server::start(&data);
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, s) = (server.addr, stop.clone());
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let mut answers = Vec::new();
        let mut round = 0u64;
        while !s.load(Ordering::Relaxed) {
            // 500 present ids (in upper case half the time), one absent,
            // one that is no id.
            let mut ids: Vec<String> = (0..500).map(|i| id(3, (round * 7 + i) % 2_000)).collect();
            if round.is_multiple_of(2) {
                ids = ids.iter().map(|i| i.to_uppercase()).collect();
            }
            ids.push(id(4, round));
            ids.push("not-an-id".into());
            round += 1;
            let r = c.post_json(
                "/promotions/batch",
                &serde_json::json!({ "ids": ids }).to_string(),
            );
            answers.push((
                r.status,
                r.json(),
                r.header("x-promo-generation").map(str::to_owned),
            ));
        }
        answers
    });
    for (i, price) in ["2", "3", "4"].iter().enumerate() {
        std::thread::sleep(Duration::from_millis(300));
        build_ok(&data, &feed(dir.path(), &format!("{i}.csv"), price), &[]);
        server.wait_for("/readyz", Duration::from_secs(20), |r| {
            r.text().contains(&format!("generation {}", i + 2))
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answers = client.join().unwrap();
    let mut generations = std::collections::BTreeSet::new();
    for (status, v, header) in &answers {
        assert_eq!(*status, 200, "{v}");
        let generation = v["generation"].as_u64().unwrap();
        assert_eq!(header.as_deref(), Some(generation.to_string().as_str()));
        let promotions = v["promotions"].as_array().unwrap();
        assert_eq!(promotions.len(), 500);
        // Generation g holds every id at price g: one generation per answer.
        for p in promotions {
            assert_eq!(p["price"].as_u64(), Some(generation), "{p}");
        }
        assert_eq!(v["missing"].as_array().unwrap().len(), 1);
        assert_eq!(v["invalid"], serde_json::json!(["not-an-id"]));
        generations.insert(generation);
    }
    assert!(
        generations.len() >= 2,
        "the batches saw only {generations:?}"
    );
    let batches = server.metric("promo_http_requests_total{route=\"batch\",status=\"200\"}");
    assert_eq!(batches, answers.len() as f64);
}

#[test]
fn oversized_malformed_and_stalled_batches_get_a_status_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &feed(dir.path(), "a.csv", "1"), &[]);
    let server = Server::start_with(&data, &["--header-timeout", "1"]);
    let mut c = Client::connect(server.addr);

    let big = serde_json::json!({ "ids": vec!["x".repeat(100); 700] }).to_string();
    assert!(big.len() > 64 * 1024);
    let r = c.post_json("/promotions/batch", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    let mut c = Client::connect(server.addr);
    let many = serde_json::json!({ "ids": vec![id(3, 0); 1_001] }).to_string();
    assert_eq!(c.post_json("/promotions/batch", &many).status, 413);
    assert_eq!(c.post_json("/promotions/batch", "{\"ids\": 5}").status, 400);
    assert_eq!(c.post_json("/promotions/batch", "not json").status, 400);
    assert_eq!(c.get("/promotions/batch").status, 405);

    // Headers sent, then the body stalls: answered within the header
    // timeout, and others are served meanwhile.
    let mut slow = Client::connect(server.addr);
    let head = "POST /promotions/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"ids\":";
    let stalled = std::thread::spawn(move || slow.send(head.as_bytes(), false).status);
    assert_eq!(server.get(&format!("/promotions/{}", id(3, 1))).status, 200);
    assert_eq!(stalled.join().unwrap(), 400);
    let mut c = Client::connect(server.addr);
    let ok = c.post_json(
        "/promotions/batch",
        &serde_json::json!({ "ids": [id(3, 2)] }).to_string(),
    );
    assert_eq!(ok.status, 200);
}
