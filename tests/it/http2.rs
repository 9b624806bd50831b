//! HTTP/2 beside HTTP/1.1 on the plain ports: h2c with prior knowledge
//! (HTTP/2 over TLS, chosen by ALPN, is in tls.rs). The same request gets
//! the same status, content type and bytes either way; many lookups share
//! one connection; the admin port takes an upload over HTTP/2.

use crate::common;

use std::process::Command;

use common::*;

/// curl's answer to `args`: status, content type, HTTP version and body.
fn fetch(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "20", "--write-out"])
        .arg("\n%{http_code} %{content_type} %{http_version}")
        .args(args)
        .output()
        .expect("curl must be installed (make test installs it: scripts/tools.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, head) = text.rsplit_once('\n').unwrap();
    (head.to_string(), body.to_string())
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
    let admin = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(
        &data,
        &[
            "--admin-listen",
            &admin,
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    server.wait_log(
        "admin port listening on",
        std::time::Duration::from_secs(20),
    );
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
