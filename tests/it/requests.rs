//! Requests a public endpoint gets besides good ones: overlong, malformed
//! and odd ones, slow clients and idle ones. Each gets a defined answer,
//! none takes the server down, and none keeps other clients waiting.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const REAL_ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";

fn serve_fixture(dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    Server::start_with(&data, extra)
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

#[test]
fn overlong_malformed_and_odd_requests_get_defined_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_fixture(dir.path(), &[]);
    let hit = format!("/promotions/{REAL_ID}");
    let pct = format!("/promotions/{}", REAL_ID.replace('-', "%2D"));
    let long_target = format!("/promotions/{}", "a".repeat(4000));
    let long_query = format!("/healthz?{}", "x".repeat(3000));
    let huge_target = format!("/promotions/{}", "a".repeat(20_000));
    let big_header = format!(
        "GET {hit} HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let many_headers = format!(
        "GET {hit} HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a hit", get(&hit), 200),
        (
            "a query string is ignored",
            get(&format!("{hit}?utm=x&y")),
            200,
        ),
        ("percent-encoded hyphens", get(&pct), 200),
        (
            "a percent-encoded letter",
            get(&format!("/promotions/%64{}", &REAL_ID[1..])),
            200,
        ),
        ("a bad percent escape", get("/promotions/%zz"), 404),
        ("a percent escape cut short", get(&format!("{hit}%4")), 404),
        ("an encoded non-UTF-8 byte", get("/promotions/%ff%fe"), 404),
        ("a trailing slash", get(&format!("{hit}/")), 404),
        (
            "dot segments are not resolved",
            get("/promotions/../healthz"),
            404,
        ),
        ("a double slash in front", get(&format!("/{hit}")), 404),
        (
            "a double slash inside",
            get(&format!("/promotions//{REAL_ID}")),
            404,
        ),
        (
            "an absolute-form target",
            get(&format!("http://test{hit}")),
            200,
        ),
        (
            "HTTP/1.0 without Host",
            format!("GET {hit} HTTP/1.0\r\n\r\n").into_bytes(),
            200,
        ),
        (
            "an unknown method",
            format!("BREW {hit} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            405,
        ),
        ("a target over 2 KiB", get(&long_target), 414),
        ("a query over 2 KiB", get(&long_query), 414),
        ("a target over 16 KiB", get(&huge_target), 431),
        ("a header over 16 KiB", big_header.into_bytes(), 431),
        ("200 headers", many_headers.into_bytes(), 431),
        (
            "raw non-UTF-8 in the path",
            b"GET /promotions/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a space in the path",
            b"GET /promotions/a b HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        ("garbage", b"\x00\x01\x02 garbage\r\n\r\n".to_vec(), 400),
        (
            "an unknown version",
            format!("GET {hit} HTTP/7.1\r\n\r\n").into_bytes(),
            400,
        ),
    ];
    for (what, bytes, want) in &cases {
        let r = Client::connect(server.addr).send(bytes, false);
        assert_eq!(r.status, *want, "{what}: {}", r.text());
        if *want == 200 {
            assert!(
                r.text().contains("\"price\":60.683466"),
                "{what}: {}",
                r.text()
            );
        }
    }
    // Nothing above took the server down or stuck it.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get(&hit).status, 200);
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Client connections the server process holds: its sockets (from
/// /proc/PID/fd) that are TCP connections on its port, not listeners (from
/// /proc/net/tcp). Other sockets, such as the signal handlers' pair, are
/// not counted.
fn connections(server: &Server) -> usize {
    let inodes: std::collections::HashSet<String> =
        std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|t| {
                let t = t.to_string_lossy().into_owned();
                Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
    let port = format!(":{:04X}", server.addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // local_address, state (0A is LISTEN), ..., inode
        .filter(|f| f[1].ends_with(&port) && f[3] != "0A" && inodes.contains(f[9]))
        .count()
}

/// How a slow client's connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The server closed it (perhaps after a 408).
    ByServer,
    /// Still open when the client gave up, after `limit`.
    StillOpen,
}

/// A slowloris client: sends a request head a header line at a time, one
/// every 200 ms, and never finishes it. Returns how the connection ended.
fn slowloris(addr: std::net::SocketAddr, limit: Duration) -> Ended {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(b"GET /promotions/ HTTP/1.1\r\nHost: test\r\n");
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let mut i = 0;
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Ended::ByServer,
            // A 408 before the close; the close follows.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ended::ByServer, // reset
        }
        i += 1;
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            return Ended::ByServer;
        }
    }
    Ended::StillOpen
}

#[test]
fn slow_clients_do_not_keep_others_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_fixture(
        dir.path(),
        &["--max-connections", "64", "--header-timeout", "60"],
    );
    let addr = server.addr;
    let slow: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(move || slowloris(addr, Duration::from_secs(3))))
        .collect();
    // While all sixteen trickle their headers, others are answered...
    let wait = Instant::now();
    while connections(&server) < 16 {
        assert!(
            wait.elapsed() < Duration::from_secs(20),
            "slow clients not accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client::connect(addr);
    for _ in 0..20 {
        assert_eq!(c.get(&format!("/promotions/{REAL_ID}")).status, 200);
    }
    let open = server.metric("promo_http_open_connections");
    assert!(open >= 17.0, "{open} open connections");
    // ...and the slow ones are still being waited for, not dropped.
    for t in slow {
        assert_eq!(t.join().unwrap(), Ended::StillOpen);
    }
}

#[test]
fn the_header_timeout_closes_slow_and_idle_clients_and_the_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_fixture(
        dir.path(),
        &[
            "--max-connections",
            "4",
            "--header-timeout",
            "2",
            "--threads",
            "2",
        ],
    );
    let addr = server.addr;

    // Twice the cap of slow clients: four are served, four wait in the
    // backlog, and every one of them is closed by the header timeout.
    let slow: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || slowloris(addr, Duration::from_secs(30))))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Each serving thread may hold one accepted connection waiting for a
    // permit; the rest wait in the backlog.
    let threads = 2;
    let accepted = connections(&server);
    assert!(
        accepted <= 4 + threads,
        "{accepted} connections open with a cap of 4 and {threads} threads"
    );
    // A good client behind them is answered once the slow ones are gone.
    let r = Client::connect(addr).send(&get(&format!("/promotions/{REAL_ID}")), false);
    assert_eq!(r.status, 200);
    for t in slow {
        assert_eq!(t.join().unwrap(), Ended::ByServer);
    }

    // So are a connection that never sends anything, and a kept-alive one
    // that goes quiet after a request.
    let mut silent = Client::connect(addr);
    let mut quiet = Client::connect(addr);
    assert_eq!(quiet.get("/healthz").status, 200);
    assert!(silent.closed_by_server(), "a silent connection stayed open");
    assert!(
        quiet.closed_by_server(),
        "an idle kept-alive connection stayed open"
    );
    assert!(!server.log().contains("panicked"));
}
