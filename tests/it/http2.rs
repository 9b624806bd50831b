//! HTTP/2 beside HTTP/1.1 on the plain ports: h2c with prior knowledge
//! (HTTP/2 over TLS, chosen by ALPN, is in tls.rs). The same request gets
//! the same status, content type and bytes either way; many lookups share
//! one connection; the admin port takes an upload over HTTP/2; and the
//! known abuses of HTTP/2 (floods of PING, SETTINGS and streams, rapid
//! reset, an HPACK bomb) leave the server up, answering, and within a few
//! MiB of memory.

use crate::common;

use std::process::Command;

use common::*;

/// curl's answer to `args` (checked against docs/openapi.json): "status
/// content-type version", and the body.
fn fetch(args: &[&str]) -> (String, String) {
    let a = curl_answer(args);
    let head = format!(
        "{} {} {}",
        a.status,
        a.content_type.unwrap_or_default(),
        a.http_version
    );
    (head, a.body)
}

fn served() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let server = Server::start(&data);
    (dir, server)
}

#[test]
fn an_answer_over_h2c_is_the_http1_answer() {
    let (_dir, server) = served();
    let present = id_of_fixture();
    let base = format!("http://{}", server.addr);
    let batch = format!(r#"{{"ids":["{present}","00000000-0000-4000-8000-000000000000","nope"]}}"#);
    let requests: Vec<Vec<String>> = vec![
        vec![format!("{base}/promotions/{present}")],
        vec![format!(
            "{base}/promotions/00000000-0000-4000-8000-000000000000"
        )],
        vec![format!("{base}/promotions/nope")],
        vec![
            "-X".into(),
            "DELETE".into(),
            format!("{base}/promotions/{present}"),
        ],
        vec!["-d".into(), batch, format!("{base}/promotions/batch")],
        vec![format!("{base}/readyz")],
        vec![format!("{base}/openapi.json")],
        vec![format!("{base}/nope")],
    ];
    for request in requests {
        let args: Vec<&str> = request.iter().map(String::as_str).collect();
        let (h1, body1) = fetch(&[&["--http1.1"], &args[..]].concat());
        let (h2, body2) = fetch(&[&["--http2-prior-knowledge"], &args[..]].concat());
        assert!(
            h1.ends_with(" 1.1") && h2.ends_with(" 2"),
            "{args:?}: {h1} / {h2}"
        );
        assert_eq!(
            h1.trim_end_matches(" 1.1"),
            h2.trim_end_matches(" 2"),
            "{args:?}"
        );
        assert_eq!(body1, body2, "{args:?}");
    }
}

/// The first id of fixtures/promotions.csv.
fn id_of_fixture() -> String {
    let csv = std::fs::read_to_string(fixture("promotions.csv")).unwrap();
    let row = csv
        .lines()
        .find(|l| l.contains('-') && l.contains(','))
        .unwrap();
    row.split(',').next().unwrap().to_string()
}

#[test]
fn many_lookups_share_one_connection() {
    let (_dir, server) = served();
    let url = format!("http://{}/promotions/{}", server.addr, id_of_fixture());
    // One client, one connection, ten streams at a time.
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "1", "-m", "10", &url])
        .output()
        .expect("h2load is needed; make test installs it: scripts/tools.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2000 succeeded, 0 failed"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert!(text.contains("Application protocol: h2c"), "{text}");
}

#[test]
fn the_admin_port_takes_an_upload_over_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &fixture("promotions.csv"), &[]);
    let token = dir.path().join("token");
    std::fs::write(&token, "h2-token").unwrap();
    let (server, admin) = Server::start_with_admin(&data, &token, &[]);
    let feed = format!("@{}", fixture("promotions.csv").display());
    let (head, body) = fetch(&[
        "--http2-prior-knowledge",
        "-H",
        "Authorization: Bearer h2-token",
        "--data-binary",
        &feed,
        &format!("http://{admin}/upload?force=true"),
    ]);
    assert_eq!(head, "200 application/json 2", "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["generation"],
        2
    );
    assert_eq!(server.live_generation(), 2);
}

/// An HTTP/2 frame: 9 bytes of header, then the payload (RFC 9113, 4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const DATA_HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

/// A GET of `/` as an HPACK block of static-table entries alone:
/// `:method GET`, `:scheme http`, `:path /`, and `:authority` "x".
const GET_ROOT: [u8; 6] = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

/// An HPACK bomb: a 4,000-byte header value put in the dynamic table once,
/// then streams whose 2,000 one-byte references to it would decode to 8 MB
/// of headers each, far past the 16 KiB header list allowed.
fn hpack_bomb() -> impl Iterator<Item = Vec<u8>> {
    // A literal with incremental indexing and a new name, "a"; its value's
    // length, 4000, as a 7-bit prefix integer (127, then 3873 in 7-bit groups).
    let mut first = GET_ROOT.to_vec();
    first.extend_from_slice(&[0x40, 0x01, b'a', 0x7f, 0xa1, 0x1e]);
    first.extend(std::iter::repeat_n(b'v', 4000));
    let bomb: Vec<u8> = GET_ROOT
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0xbe, 2000))
        .collect();
    let first = frame(DATA_HEADERS, END_STREAM_AND_HEADERS, 1, &first);
    std::iter::once(first).chain(
        (1..2_000u32).map(move |i| frame(DATA_HEADERS, END_STREAM_AND_HEADERS, 2 * i + 1, &bomb)),
    )
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `frames` after the preface and a SETTINGS frame on a new
/// connection, as fast as the socket takes them, then waits for the
/// server to answer or close; how the connection ended.
fn abuse(addr: std::net::SocketAddr, frames: Frames) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reader = s.try_clone().unwrap();
    // Whatever the server sends is read and dropped, so that its writes
    // (pongs, acks) never stall on a full socket: the flood is the test.
    let drained = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let mut outcome = "sent everything".to_string();
    let mut out = H2_PREFACE_BYTES.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    if let Err(e) = s.write_all(&out) {
        return format!("closed at once: {e}");
    }
    for (sent, f) in frames.enumerate() {
        if let Err(e) = s.write_all(&f) {
            outcome = format!("closed by the server after {sent} frames: {e}");
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let read = drained.join().unwrap();
    format!("{outcome}; read {read} bytes")
}

/// What a client sends, a frame at a time.
type Frames = Box<dyn Iterator<Item = Vec<u8>>>;

const H2_PREFACE_BYTES: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn floods_and_rapid_resets_leave_the_server_up_and_its_memory_bounded() {
    let (_dir, server) = served();
    let pid = server.child.id();
    let url = format!("http://{}/promotions/{}", server.addr, id_of_fixture());
    let before = rss_kib(pid);
    let floods: Vec<(&str, Frames)> = vec![
        (
            "PING flood",
            Box::new((0..200_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes()))),
        ),
        (
            "SETTINGS flood",
            Box::new((0..200_000).map(|_| frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]))),
        ),
        (
            "rapid reset",
            Box::new((0..100_000u32).flat_map(|i| {
                let stream = 2 * i + 1;
                let mut f = frame(DATA_HEADERS, END_STREAM_AND_HEADERS, stream, &GET_ROOT);
                f.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
                [f]
            })),
        ),
        ("HPACK bomb", Box::new(hpack_bomb())),
        (
            "streams past the limit",
            Box::new(
                (0..10_000u32)
                    .map(|i| frame(DATA_HEADERS, END_STREAM_AND_HEADERS, 2 * i + 1, &GET_ROOT)),
            ),
        ),
    ];
    for (name, flood) in floods {
        let outcome = abuse(server.addr, flood);
        let rss = rss_kib(pid);
        eprintln!("{name}: {outcome}; server RSS {before} KiB before, {rss} KiB after");
        // Another client is answered, and the server holds no more than a
        // few MiB for what it was sent (tens of MB of frames).
        let (head, _) = fetch(&["--http2-prior-knowledge", &url]);
        assert_eq!(head, "200 application/json 2", "after the {name}");
        assert!(
            rss < before + 32 * 1024,
            "{name}: RSS {before} KiB -> {rss} KiB"
        );
        if name == "rapid reset" {
            // 100,000 streams opened and cancelled: the server hangs up
            // long before (CVE-2023-44487).
            assert!(outcome.starts_with("closed by the server"), "{outcome}");
        }
    }
}
