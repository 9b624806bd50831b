//! End to end: build with the real binary, serve on 127.0.0.1:0, real HTTP.

use crate::common;

use std::time::{Duration, Instant};

use common::*;

const REAL: [(&str, &str); 3] = [
    (
        "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118",
        r#"{"id":"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118","price":60.683466,"expiration_date":"2018-08-04 05:32:31 +0200 CEST"}"#,
    ),
    (
        "e2649ca5-7e05-4d53-a8ff-919917a4922e",
        r#"{"id":"e2649ca5-7e05-4d53-a8ff-919917a4922e","price":66.640497,"expiration_date":"2018-08-22 18:34:11 +0200 CEST"}"#,
    ),
    (
        "78bfd79d-53c4-421d-b054-013ad294deab",
        r#"{"id":"78bfd79d-53c4-421d-b054-013ad294deab","price":42.780199,"expiration_date":"2018-10-07 00:55:20 +0200 CEST"}"#,
    ),
];

#[test]
fn build_then_serve_hits_misses_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let summary = build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let rows = std::fs::read_to_string(fixture("promotions.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(summary_field(&summary, "rows"), rows.to_string());
    assert_eq!(summary_field(&summary, "invalid"), "0");
    assert_eq!(summary_field(&summary, "generation"), "1");

    let server = Server::start(dir.path());
    for (id, json) in REAL {
        let r = server.get(&format!("/promotions/{id}"));
        assert_eq!(r.status, 200, "{id}");
        assert_eq!(r.text(), json);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-promo-generation"), Some("1"));
        // Any case in the URL; the answer is lowercase.
        let upper = server.get(&format!("/promotions/{}", id.to_uppercase()));
        assert_eq!((upper.status, upper.text()), (200, json.to_string()));
    }

    let miss = server.get("/promotions/00000000-0000-4000-8000-000000000000");
    assert_eq!(miss.status, 404);
    assert!(miss.json()["error"].is_string());
    assert_eq!(miss.header("x-promo-generation"), Some("1"));
    for bad in [
        "not-a-uuid",
        "",
        "d018ef0b-dbd9-48f1-ac1a-eb4d90e5711",
        "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118/x",
    ] {
        let r = server.get(&format!("/promotions/{bad}"));
        assert_eq!(r.status, 404, "{bad:?}");
        assert!(r.json()["error"].is_string());
        assert_eq!(r.header("x-promo-generation"), Some("1"));
    }

    let head = request(server.addr, "HEAD", &format!("/promotions/{}", REAL[0].0));
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(REAL[0].1.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    for method in ["POST", "PUT", "DELETE"] {
        let r = request(server.addr, method, &format!("/promotions/{}", REAL[0].0));
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert_eq!(r.header("x-promo-generation"), Some("1"));
    }
    assert_eq!(server.get("/nowhere").status, 404);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);

    // Many requests on one keep-alive connection.
    let mut client = Client::connect(server.addr);
    for _ in 0..200 {
        assert_eq!(
            client.get(&format!("/promotions/{}", REAL[1].0)).text(),
            REAL[1].1
        );
    }

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    let samples = parse_metrics(&metrics.text());
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}"))
    };
    assert!(value(r#"promo_lookups_total{result="hit"}"#) >= 206.0);
    assert!(value(r#"promo_lookups_total{result="miss"}"#) >= 1.0);
    assert!(value(r#"promo_lookups_total{result="invalid"}"#) >= 3.0);
    assert_eq!(value("promo_generation_sequence"), 1.0);
    assert_eq!(value("promo_generation_rows"), rows as f64);
    assert_eq!(value("promo_generation_swaps_total"), 1.0);
    assert_eq!(value("promo_generation_load_failures_total"), 0.0);
    assert!(value("promo_generation_loaded_timestamp_seconds") > 1.6e9);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value(r#"promo_http_requests_total{route="promotions",status="200"}"#) >= 206.0);
    assert!(value(r#"promo_http_requests_total{route="promotions",status="405"}"#) >= 3.0);
    assert!(value(r#"promo_http_request_duration_seconds_count{route="promotions"}"#) >= 206.0);
    // Which build this is: the package's version and a commit, which is
    // hex from git or "unknown" for sources built without .git.
    let info: Vec<&(String, f64)> = samples
        .iter()
        .filter(|(n, _)| n.starts_with("promo_build_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let (labels, one) = info[0];
    assert_eq!(*one, 1.0);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(labels.contains(&version), "{labels}");
    let commit = labels
        .split("commit=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no commit in {labels}"));
    assert!(
        commit == "unknown"
            || (!commit.is_empty() && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{labels}"
    );
    for name in [
        "promo_http_requests_total",
        "promo_http_request_duration_seconds",
        "promo_lookups_total",
        "promo_generation_sequence",
        "promo_generation_rows",
        "promo_generation_loaded_timestamp_seconds",
        "promo_generation_swaps_total",
        "promo_generation_load_failures_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "promo_build_info",
    ] {
        assert!(
            metrics.text().contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
    promtool_check(&metrics.text());

    let status = server.terminate();
    assert!(status.success(), "serve exited with {status}");
}

/// Parses the text exposition format into (name{labels}, value), checking
/// each line's shape on the way.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((name.to_string(), value));
    }
    out
}

/// Runs `promtool check metrics`; a missing promtool fails the test
/// (`make test` installs it, Debian's package prometheus).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: make test installs it (scripts/tools.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_starts_empty_then_goes_live_when_a_generation_appears() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(server.get("/healthz").status, 200);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503);
    let r = server.get(&format!("/promotions/{}", REAL[0].0));
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
    let batch = Client::connect(server.addr).post_json("/promotions/batch", r#"{"ids":[]}"#);
    assert_eq!(batch.status, 503);
    // Every 503 says when to come back.
    for r in [&ready, &r, &batch] {
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }

    // How soon it goes live is a benchmark's business; here, that it does.
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let r = server.wait_for(
        &format!("/promotions/{}", REAL[0].0),
        Duration::from_secs(5),
        |r| r.status == 200,
    );
    assert_eq!(r.text(), REAL[0].1);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.header("retry-after"), None);
}

/// `GET path` on `client`'s connection with `If-None-Match: etag`.
fn get_if_none_match(client: &mut Client, path: &str, etag: &str) -> Response {
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nIf-None-Match: {etag}\r\n\r\n");
    client.send(head.as_bytes(), false)
}

#[test]
fn a_lookup_has_an_etag_that_a_conditional_get_turns_into_304() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("feed.csv");
    let (a, b, c) = (id(34, 0), id(34, 1), id(34, 2));
    let row =
        |id: &str, price: &str, date: &str| (id.to_owned(), price.to_owned(), date.to_owned());
    write_csv(
        &csv,
        &[
            row(&a, "1.00", "2030-01-01 00:00:00 +0200 CEST"),
            row(&b, "2.00", "2030-01-02 00:00:00 +0200 CEST"),
        ],
    );
    build_ok(&data, &csv, &[]);
    let server = Server::start(&data);
    let (path_a, path_b) = (format!("/promotions/{a}"), format!("/promotions/{b}"));
    let first = server.get(&path_a);
    assert_eq!(first.status, 200);
    let etag_a = first
        .header("etag")
        .expect("a lookup has an ETag")
        .to_owned();
    assert!(
        etag_a.starts_with('"') && etag_a.ends_with('"') && etag_a.len() > 2,
        "not a strong ETag: {etag_a}"
    );
    let etag_b = server.get(&path_b).header("etag").unwrap().to_owned();
    assert_ne!(etag_a, etag_b);

    // On one kept-alive connection: a 304 sends no body, so the answer
    // after it is read whole from where the 304 ended.
    let mut client = Client::connect(server.addr);
    for holding in [
        etag_a.clone(),
        format!("W/{etag_a}"),
        format!("\"x\", {etag_a}"),
        "*".into(),
    ] {
        let r = get_if_none_match(&mut client, &path_a, &holding);
        assert_eq!(r.status, 304, "{holding}");
        assert_eq!(r.header("etag"), Some(etag_a.as_str()));
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.header("x-promo-generation"), Some("1"));
        assert!(r.body.is_empty());
    }
    let other = get_if_none_match(&mut client, &path_a, &etag_b);
    assert_eq!(other.status, 200);
    assert_eq!(other.header("etag"), Some(etag_a.as_str()));
    assert_eq!(other.body, first.body);
    let miss = get_if_none_match(&mut client, &format!("/promotions/{c}"), "*");
    assert_eq!(miss.status, 404);

    // The next feed reprices a and adds c; b is as it was.
    write_csv(
        &csv,
        &[
            row(&c, "3.00", "2030-01-03 00:00:00Z"),
            row(&a, "1.50", "2030-01-01 00:00:00 +0200 CEST"),
            row(&b, "2.00", "2030-01-02 00:00:00 +0200 CEST"),
        ],
    );
    // Two ids of two changed is churn a guard may refuse: forced.
    build_ok(&data, &csv, &["--force"]);
    server.wait_for(&path_a, Duration::from_secs(10), |r| {
        r.header("x-promo-generation") == Some("2")
    });
    let repriced = get_if_none_match(&mut client, &path_a, &etag_a);
    assert_eq!(repriced.status, 200);
    assert_eq!(repriced.json()["price"], 1.5);
    let etag_a2 = repriced.header("etag").unwrap();
    assert_ne!(etag_a2, etag_a);
    assert_eq!(get_if_none_match(&mut client, &path_a, etag_a2).status, 304);
    // An unchanged promotion keeps its ETag in the new generation.
    let unchanged = get_if_none_match(&mut client, &path_b, &etag_b);
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.header("x-promo-generation"), Some("2"));
}

/// Every response during a swap is a whole answer from one generation, and
/// the new generation goes live within a second of being published.
#[test]
fn swap_under_load_never_fails_or_mixes_generations() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000u64;
    let date = "2019-01-01 00:00:00 +0000 UTC".to_string();
    // Generation 1: ids 0..n priced 1.<i>. Generation 2: ids n/2..n+n/2 priced 2.<i>.
    let g1: Vec<_> = (0..n)
        .map(|i| (id(1, i), format!("1.{i}"), date.clone()))
        .collect();
    let g2: Vec<_> = (n / 2..n + n / 2)
        .map(|i| (id(1, i), format!("2.{i}"), date.clone()))
        .collect();
    let csv1 = dir.path().join("g1.csv");
    let csv2 = dir.path().join("g2.csv");
    write_csv(&csv1, &g1);
    write_csv(&csv2, &g2);
    let data = dir.path().join("data");
    build_ok(&data, &csv1, &[]);
    let server = Server::start(&data);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (addr, stop) = (server.addr, stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut seen = Vec::new();
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = (i * 7919) % (n + n / 2);
                    let r = client.get(&format!("/promotions/{}", id(1, k)));
                    let generation: u64 = r.header("x-promo-generation").unwrap().parse().unwrap();
                    seen.push((k, generation, r.status, r.text(), Instant::now()));
                    i += 2;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    build_ok(&data, &csv2, &[]);
    let published = Instant::now();
    server.wait_for("/readyz", Duration::from_secs(5), |r| {
        r.text().contains("generation 2")
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut first_new = None;
    let mut total = 0;
    for c in clients {
        let seen = c.join().unwrap();
        let mut last_generation = 1;
        for (k, generation, status, body, at) in seen {
            total += 1;
            assert!(
                generation >= last_generation,
                "went back to generation {generation}"
            );
            last_generation = generation;
            let present = match generation {
                1 => k < n,
                2 => k >= n / 2,
                g => panic!("unexpected generation {g}"),
            };
            if present {
                assert_eq!(status, 200, "id {k} in generation {generation}: {body}");
                let expected = format!(
                    r#"{{"id":"{}","price":{generation}.{k},"expiration_date":"{date}"}}"#,
                    id(1, k)
                );
                assert_eq!(body, expected);
            } else {
                assert_eq!(status, 404, "id {k} in generation {generation}: {body}");
            }
            if generation == 2 {
                first_new = Some(first_new.map_or(at, |f: Instant| f.min(at)));
            }
        }
    }
    assert!(total > 100, "only {total} requests were made");
    // The old generation is unmapped once its last request is done: one
    // generation file stays mapped.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.child.id())).unwrap();
    let mapped: Vec<&str> = maps.lines().filter(|l| l.contains(".promo")).collect();
    assert_eq!(mapped.len(), 1, "{mapped:#?}");
    assert!(mapped[0].contains("gen-0000000002.promo"), "{mapped:#?}");
    let first_new = first_new.expect("no client saw generation 2");
    let delay = first_new.saturating_duration_since(published);
    assert!(
        delay < Duration::from_secs(1),
        "generation 2 went live {delay:?} after publishing"
    );
}

/// `promo rollback` makes the previous generation live again on a running server.
#[test]
fn rollback_brings_the_previous_generation_back_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    // Generation 2: the same ids, every price 1.
    let repriced: String = std::fs::read_to_string(fixture("promotions.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            format!("{},1,{}\n", f[0], f[2])
        })
        .collect();
    let csv2 = dir.path().join("repriced.csv");
    std::fs::write(&csv2, repriced).unwrap();
    build_ok(&data, &csv2, &[]);

    let server = Server::start(&data);
    let path = format!("/promotions/{}", REAL[0].0);
    let r = server.get(&path);
    assert_eq!((r.status, r.header("x-promo-generation")), (200, Some("2")));
    assert!(r.text().contains("\"price\":1,"), "{}", r.text());

    let said = rollback_ok(&data);
    assert!(
        said.contains("generation 1 is live again as generation 3"),
        "{said}"
    );
    let r = server.wait_for(&path, Duration::from_secs(5), |r| {
        r.header("x-promo-generation") == Some("3")
    });
    assert_eq!(
        r.text(),
        REAL[0].1,
        "generation 3 answers as generation 1 did"
    );
    let published = data.join(promo::generation::local::file_name(3));
    assert!(std::fs::metadata(published)
        .unwrap()
        .permissions()
        .readonly());

    // With one valid generation only, there is nothing to roll back to.
    let lone = dir.path().join("lone");
    build_ok(&lone, &fixture("promotions.csv"), &[]);
    let out = promo()
        .args(["rollback", "--data-dir"])
        .arg(&lone)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to roll back to"));
}

/// The whole serving process starts from the library, in this process:
/// what `promo serve` runs, without the binary.
#[test]
fn a_server_starts_in_process_from_the_library() {
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let config = promo::server::Config {
        threads: 1,
        ..promo::server::Config::new(dir.path(), "127.0.0.1:0".parse().unwrap())
    };
    let server = promo::server::Server::start(config).unwrap();
    assert_eq!(server.live().current().as_ref().unwrap().sequence(), 1);
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let r = request(
        addr,
        "GET",
        "/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-promo-generation"), Some("1"));
    server.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
}

/// A fleet upgrades its servers before its builders: a server of this
/// version serves a version-1 generation (written by the last release that
/// wrote version 1, from fixtures/promotions.csv) as that release did, and
/// swaps from it to a version-2 generation built from the same feed.
#[test]
fn a_version_1_generation_is_served_and_swapped_for_a_version_2_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("promotions-v1.promo"),
        dir.path().join("gen-0000000001.promo"),
    )
    .unwrap();
    let server = Server::start(dir.path());
    let csv = std::fs::read_to_string(fixture("promotions.csv")).unwrap();
    let rows: Vec<(&str, &str, &str)> = csv
        .lines()
        .filter(|l| !l.starts_with("id,"))
        .map(|l| {
            let mut f = l.splitn(3, ',');
            (f.next().unwrap(), f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    let check = |generation: &str| {
        for (id, price, date) in &rows {
            let r = server.get(&format!("/promotions/{id}"));
            assert_eq!(r.status, 200, "{id}");
            assert_eq!(r.header("x-promo-generation"), Some(generation));
            // Digit for digit, as the feed wrote them.
            assert_eq!(
                r.text(),
                format!(r#"{{"id":"{id}","price":{price},"expiration_date":"{date}"}}"#)
            );
        }
    };
    check("1");
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    server.wait_for("/readyz", Duration::from_secs(20), |r| {
        r.text().trim() == "ready: generation 2"
    });
    check("2");
}

/// The process's anonymous resident memory, in bytes.
fn anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Lifts this process's open-files limit to its maximum, for `n` sockets.
fn room_for_sockets(n: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit, which
    // `limit` is.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(limit.rlim_cur as usize > n + 100, "{}", limit.rlim_cur);
}

const MEMORY_ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";

/// A server on the fixture's generation that has answered a lookup of
/// [`MEMORY_ID`], and room in this process for `n` sockets to it.
fn server_for_connections(n: usize) -> (tempfile::TempDir, Server) {
    room_for_sockets(n);
    let dir = tempfile::tempdir().unwrap();
    build_ok(dir.path(), &fixture("promotions.csv"), &[]);
    let server = Server::start(dir.path());
    assert_eq!(server.get(&format!("/promotions/{MEMORY_ID}")).status, 200);
    (dir, server)
}

/// `n` connections to `server`, each having sent `request`.
fn connections_that_sent(server: &Server, n: usize, request: &str) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(server.addr).unwrap();
            c.write_all(request.as_bytes()).unwrap();
            c
        })
        .collect()
}

#[test]
fn idle_kept_alive_connections_hold_no_buffers() {
    use std::io::{Read, Write};
    const IDLE: usize = 2000;
    let (_dir, server) = server_for_connections(IDLE);
    let pid = server.child.id();
    // Let go of within two QUIET_AFTERs, handed back to the system by the
    // allocator within a second more.
    let settle = promo::server::connection::QUIET_AFTER * 2 + Duration::from_secs(2);
    let per_connection = |before: u64| anon_bytes(pid).saturating_sub(before) / IDLE as u64;

    // What a connection costs that never had hyper's buffers: one that has
    // sent nothing yet (its task and socket).
    let before = anon_bytes(pid);
    let silent = connections_that_sent(&server, IDLE, "");
    std::thread::sleep(Duration::from_millis(500));
    let bare = per_connection(before);
    drop(silent);
    std::thread::sleep(settle);

    // Each asks once and stays open, as a keep-alive client does. Once
    // quiet, it costs about what a silent one does, not hyper's two 8 KiB
    // buffers more.
    let before = anon_bytes(pid);
    let request = format!("GET /promotions/{MEMORY_ID} HTTP/1.1\r\nHost: promo\r\n\r\n");
    let mut conns = connections_that_sent(&server, IDLE, &request);
    for c in &mut conns {
        let mut buf = [0u8; 1024];
        assert!(c.read(&mut buf).unwrap() > 0);
    }
    std::thread::sleep(settle);
    let idle = per_connection(before);
    eprintln!("per connection: {bare} bytes silent, {idle} bytes idle after a request");
    assert!(
        idle < bare + 4096,
        "an idle connection costs {idle} bytes, a silent one {bare}: it kept its buffers"
    );
    // And the whole of it is within 4 KB: the connection's task, socket
    // and timers, and no room kept for a TLS handshake it never makes.
    assert!(idle <= 4096, "an idle connection costs {idle} bytes");
    // And each still answers its next request.
    for c in conns.iter_mut().take(50) {
        c.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

#[test]
fn memory_taken_by_a_burst_of_connections_is_given_back_once_they_close() {
    const BURST: usize = 2000;
    let (_dir, server) = server_for_connections(BURST);
    let pid = server.child.id();
    let before = anon_bytes(pid);

    // Each is halfway through a request head: hyper holds its buffers.
    let conns = connections_that_sent(&server, BURST, "GET /promotions/");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut during = anon_bytes(pid);
    while during < before + (8 << 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        during = anon_bytes(pid);
    }
    assert!(
        during > before + (8 << 20),
        "{BURST} connections took only {} KiB",
        (during - before) >> 10
    );

    // Closed: within 10 s, back within 8 MiB of where it was.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = anon_bytes(pid);
        if now < before + (8 << 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after {BURST} connections closed: {} MiB anonymous, {} MiB before, {} MiB during",
            now >> 20,
            before >> 20,
            during >> 20
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A memory cgroup (v2, or v1's memory controller) limited to `limit`
/// bytes, removed when dropped (after what runs in it has stopped).
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let root = std::path::Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let base = if v2 {
            root.to_path_buf()
        } else {
            root.join("memory")
        };
        let dir = base.join(format!("promo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "this test needs a memory cgroup it may create (root): {}: {e}",
                dir.display()
            )
        });
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(file), limit.to_string()).unwrap();
        MemoryCgroup { dir }
    }

    /// `cmd` run inside the cgroup (a shell joins it, then runs `cmd`).
    fn wrap(&self, cmd: &std::process::Command) -> std::process::Command {
        let procs = self.dir.join("cgroup.procs");
        let mut wrapped = std::process::Command::new("sh");
        wrapped
            .arg("-c")
            .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_generation_larger_than_its_memory_is_served_by_reads_from_disk() {
    // On the disk the tests build on: a tmpfs would hold the file in memory.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("big.csv");
    let date = "2026-12-03 10:00:00 +0000 UTC".to_string();
    let rows: Vec<_> = (0..1_000_000u64)
        .map(|i| {
            (
                id(23, i),
                format!("{}.{:02}", i % 997, i % 100),
                date.clone(),
            )
        })
        .collect();
    write_csv(&csv, &rows);
    build_ok(&data, &csv, &[]);
    let generation = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "promo"))
        .unwrap();
    let size = std::fs::metadata(&generation).unwrap().len();
    // 32 MB of records in 24 MiB, the server's own memory included.
    let limit = 24 << 20;
    assert!(size > limit, "{size} bytes");
    // Out of the page cache, so that what the server reads comes from disk.
    let file = std::fs::File::open(&generation).unwrap();
    // SAFETY: posix_fadvise takes no pointers.
    let rc = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);

    let cgroup = MemoryCgroup::new(limit);
    let mut serve = promo();
    serve.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    serve.arg(&data);
    let server = Server::spawn(cgroup.wrap(&serve));
    let mut client = Client::connect(server.addr);
    for (i, (id, price, date)) in rows.iter().enumerate().step_by(499) {
        let r = client.get(&format!("/promotions/{id}"));
        assert_eq!(r.status, 200, "row {i}: {}", r.text());
        let json = r.json();
        assert_eq!(json["id"], id.as_str());
        assert_eq!(json["price"].as_f64(), price.parse().ok(), "row {i}");
        assert_eq!(json["expiration_date"], date.as_str());
    }
    let missing = client.get("/promotions/00000000-0000-4000-8000-000000000000");
    assert_eq!(missing.status, 404);
    let reads = server.metric("promo_lookup_disk_reads_total");
    assert!(
        reads > 200.0,
        "{reads} of 2,005 lookups read their records from disk; log:\n{}",
        server.log()
    );
    assert!(
        !server.log().contains("io_uring unavailable"),
        "{}",
        server.log()
    );
}

/// `promo serve` with `args`, run until it exits by itself: what it said.
fn serve_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = promo()
        .arg("serve")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_on_a_used_port_fails_at_start_unless_it_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let first = Server::start_env(&data, &listen, &[], &[]);
    // The same address, and every address on the same port: both refused.
    for other in [listen.clone(), format!(":{port}")] {
        let (code, err) = serve_fails(&["--listen", &other, "--data-dir", data.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "port {port}: another promo server is listening on it"
            )),
            "{err}"
        );
    }
    assert_eq!(first.get("/healthz").status, 200);

    // --handover shares the port, then holds it alone once the first stops.
    let second = Server::start_env(&data, &listen, &["--handover"], &[]);
    assert!(
        second.log().contains("sharing it until that one stops"),
        "{}",
        second.log()
    );
    first.kill();
    second.wait_log("the port is this server's alone", Duration::from_secs(10));
    assert_eq!(second.get("/healthz").status, 200);
    let (code, err) = serve_fails(&["--listen", &listen, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn listen_takes_a_port_a_colon_port_and_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    for form in ["PORT", ":PORT", "localhost:PORT"] {
        let port = free_port();
        let listen = form.replace("PORT", &port.to_string());
        let server = Server::start_env(&data, &listen, &[], &[]);
        assert_eq!(server.addr.port(), port, "{listen}");
        let r = request(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "GET",
            "/healthz",
        );
        assert_eq!(r.status, 200, "{listen}");
    }
    let (code, err) = serve_fails(&["--listen", "localhost:http-ish", "--data-dir", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected ADDR:PORT, HOST:PORT, :PORT or PORT"),
        "{err}"
    );
}

#[test]
fn a_mistyped_data_directory_is_an_error_for_serve_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo-dir");
    let (code, err) = serve_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        typo.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("typo-dir: no such directory"), "{err}");
    assert!(!typo.exists());
    let out = promo()
        .args(["inspect", "--data-dir"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo-dir: no such data directory"), "{err}");
    // An existing empty directory is served, answering 503 until a
    // generation arrives, as before.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let server = Server::start(&empty);
    assert_eq!(server.get("/readyz").status, 503);
    let out = promo()
        .args(["inspect", "--data-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn diff_and_inspect_write_prices_as_numbers_like_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rows = |first: &str| -> Vec<(String, String, String)> {
        (0..100)
            .map(|i| {
                let price = if i == 0 {
                    first.to_string()
                } else {
                    "12.50".into()
                };
                (id(1, i), price, "2030-01-01 00:00:00 +0100 CET".into())
            })
            .collect()
    };
    for (name, first) in [("a.csv", "12.50"), ("b.csv", "21.646606")] {
        let csv = dir.path().join(name);
        write_csv(&csv, &rows(first));
        build_ok(&data, &csv, &[]);
    }
    let out = promo()
        .args(["diff", "--json", "1", "2", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["new"]["price"], serde_json::json!(21.646606), "{line}");
    assert_eq!(line["old"]["price"], serde_json::json!(12.5), "{line}");
    let listed = inspect_dir(&data);
    assert_eq!(
        listed[1]["churn"]["examples"][0]["new"]["price"],
        serde_json::json!(21.646606),
        "{listed}"
    );
}

#[test]
fn a_store_given_as_a_plain_path_is_an_error_that_shows_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = promo()
        .current_dir(dir.path())
        .args(["inspect", "--source", "store"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let abs = dir.path().canonicalize().unwrap().join("store");
    assert!(
        err.contains("not a URL") && err.contains(&format!("file://{}", abs.display())),
        "{err}"
    );
}
