//! Range shards for real: four shards built from one feed, a `promo serve`
//! for each, and Debian's nginx in front with `deploy/nginx/shards.conf`.

use crate::common;

use common::nginx::Nginx;
use common::*;

const ROWS: u64 = 2000;

/// The shard of 4 an id's text belongs to: its first hex digit, by fours.
fn shard_of(id: &str) -> usize {
    usize::from_str_radix(&id[..1], 16).unwrap() / 4
}

#[test]
fn four_shards_behind_nginx_answer_every_id_and_misroutes_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("feed.csv");
    let dates = [
        "2018-08-04 05:32:31 +0200 CEST",
        "2019-01-01T00:00:00Z",
        "2020-02-29 12:00:00.250 -0300 -03",
    ];
    let rows: Vec<_> = (0..ROWS)
        .map(|i| {
            (
                id(7, i),
                format!("{i}.5"),
                dates[i as usize % 3].to_string(),
            )
        })
        .collect();
    write_csv(&csv, &rows);
    let whole = dir.path().join("whole");
    build_ok(&whole, &csv, &[]);

    let mut servers = Vec::new();
    let mut records = 0;
    for k in 0..4u64 {
        let data = dir.path().join(format!("shard-{k}"));
        let summary = build_ok(&data, &csv, &["--shard", &format!("{k}/4")]);
        let kept: u64 = summary_field(&summary, "records").parse().unwrap();
        let others: u64 = summary_field(&summary, "other_shards").parse().unwrap();
        assert_eq!(kept + others, ROWS, "{summary}");
        let in_shard = rows.iter().filter(|r| shard_of(&r.0) == k as usize).count();
        assert_eq!(kept, in_shard as u64, "shard {k}");
        records += kept;
        let listed = inspect_dir(&data);
        assert_eq!(listed[0]["shard"], format!("{k}/4"));
        assert_eq!(listed[0]["version"], 2);
        let server = Server::start(&data);
        assert_eq!(
            server.get("/readyz").text(),
            format!("ready: generation 1, shard {k}/4\n")
        );
        assert_eq!(server.metric("promo_generation_shard"), k as f64);
        assert_eq!(server.metric("promo_generation_shards"), 4.0);
        servers.push(server);
    }
    assert_eq!(records, ROWS, "every row is in exactly one shard");

    // The operator's file, with this test's ports for the four shards.
    let mut conf = Nginx::deploy_file("shards.conf");
    for (k, s) in servers.iter().enumerate() {
        let from = format!("127.0.0.1:{}", 1341 + k);
        assert!(conf.contains(&from), "shards.conf has no {from}");
        conf = conf.replace(&from, &s.addr.to_string());
    }
    let nginx = Nginx::start(&conf);

    // Hits, in both cases, answer what the unsharded generation answers.
    let mut by_shard = [0; 4];
    for (i, row) in rows.iter().enumerate().step_by(13) {
        let want = promo_get(&whole, &row.0).unwrap();
        let id = if i % 2 == 0 {
            row.0.clone()
        } else {
            row.0.to_uppercase()
        };
        let r = request(nginx.addr(), "GET", &format!("/promotions/{id}"));
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.text().trim(), want.trim(), "{id}");
        by_shard[shard_of(&row.0)] += 1;
    }
    assert!(by_shard.iter().all(|&n| n > 10), "{by_shard:?}");
    // Misses are 404 from the right shard, in both cases.
    for i in 0..40 {
        let absent = id(8, i);
        let absent = if i % 2 == 0 {
            absent
        } else {
            absent.to_uppercase()
        };
        let r = request(nginx.addr(), "GET", &format!("/promotions/{absent}"));
        assert_eq!(r.status, 404, "{absent}");
        assert_eq!(r.json()["error"], "promotion not found");
    }
    // Not an id: 404 from any shard.
    let r = request(nginx.addr(), "GET", "/promotions/not-an-id");
    assert_eq!(r.status, 404);
    // Batches cannot be routed across shards.
    // nginx's own answer (deploy/nginx/shards.conf), not promo's.
    let r = Client::connect_unchecked(nginx.addr()).request_with("POST", "/promotions/batch", true);
    assert_eq!(r.status, 421);

    // A request sent to the wrong shard directly: 421, never 404.
    for (k, s) in servers.iter().enumerate() {
        let other = rows.iter().find(|r| shard_of(&r.0) == (k + 1) % 4).unwrap();
        let r = s.get(&format!("/promotions/{}", other.0));
        assert_eq!(r.status, 421, "shard {k}");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains(&format!("serves shard {k}/4")),
            "shard {k}: {error}"
        );
        assert_eq!(s.metric("promo_lookups_total{result=\"misdirected\"}"), 1.0);
    }
}

#[test]
fn serve_with_shard_refuses_generations_of_other_shards_and_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<_> = (0..ROWS)
        .map(|i| (id(7, i), "1".to_string(), "2030-01-01 00:00:00".to_string()))
        .collect();
    let csv = dir.path().join("feed.csv");
    write_csv(&csv, &rows);
    let data = dir.path().join("data");
    build_ok(&data, &csv, &["--shard", "1/4"]);
    let server = Server::start_with(&data, &["--shard", "1/4"]);
    assert_eq!(server.metric("promo_generation_sequence"), 1.0);

    // Generations built elsewhere, for shard 2 of 4 and for every id, put
    // in the data directory as generations 2 and 3: both refused, and
    // shard 1's generation stays live.
    for (sequence, shard, said) in [
        (2, Some("2/4"), "it was built for shard 2/4"),
        (3, None, "it was built for every id (no --shard)"),
    ] {
        let other = dir.path().join(format!("other-{sequence}"));
        let args: Vec<&str> = shard.map(|s| vec!["--shard", s]).unwrap_or_default();
        build_ok(&other, &csv, &args);
        std::fs::rename(
            other.join(promo::generation::local::file_name(1)),
            data.join(promo::generation::local::file_name(sequence)),
        )
        .unwrap();
        server.wait_log(
            &format!("refused generation {sequence}: "),
            std::time::Duration::from_secs(20),
        );
        let log = server.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("refused generation {sequence}: ")))
            .unwrap();
        assert!(
            line.contains(said) && line.contains("this server serves shard 1/4 (--shard)"),
            "{line}"
        );
        assert_eq!(
            server.metric("promo_generation_load_failures_total"),
            (sequence - 1) as f64
        );
        assert_eq!(server.metric("promo_generation_sequence"), 1.0);
        assert_eq!(
            server.get("/readyz").text(),
            "ready: generation 1, shard 1/4\n"
        );
    }
    // Its own shard's next generation goes live, past the refused ones.
    build_ok(&data, &csv, &["--shard", "1/4", "--force"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.metric("promo_generation_sequence") != 4.0 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Refused once each: the scans that followed did not count them again.
    assert_eq!(server.metric("promo_generation_load_failures_total"), 2.0);
}
