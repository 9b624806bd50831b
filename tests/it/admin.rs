//! The admin port, end to end, with curl as the client: every answer of
//! `POST /upload` (the seeds' own curl lines among them), uploads cut off
//! or racing a `promo build`, `GET /generations` and `POST /rollback`.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "0123456789abcdef-test-token";

/// A server with an admin port on loopback and a token, and its files.
struct Admin {
    server: Server,
    admin: SocketAddr,
    data: PathBuf,
    dir: tempfile::TempDir,
}

/// A feed of `n` rows of data set `set`, all priced `price`.
fn feed(dir: &Path, name: &str, set: u64, n: u64, price: &str) -> PathBuf {
    let path = dir.join(name);
    let rows: Vec<_> = (0..n)
        .map(|i| (id(set, i), price.to_string(), "2030-01-01 00:00:00".into()))
        .collect();
    write_csv(&path, &rows);
    path
}

fn start(extra: &[&str]) -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    build_ok(&data, &feed(dir.path(), "first.csv", 1, 1000, "1"), &[]);
    let token = dir.path().join("token");
    // Trailing whitespace and a newline, as `echo` or an editor leaves.
    std::fs::write(&token, format!("  {TOKEN} \n")).unwrap();
    let (server, admin) = Server::start_with_admin(&data, &token, extra);
    Admin {
        server,
        admin,
        data,
        dir,
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

impl Admin {
    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.admin.port())
    }

    /// curl with the token header, then `args`.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let auth = format!("Authorization: Bearer {TOKEN}");
        let mut all = vec!["--header", &auth];
        all.extend_from_slice(args);
        curl(&all)
    }

    fn upload(&self, csv: &Path, query: &str) -> (u16, serde_json::Value) {
        let file = format!("@{}", csv.display());
        let (code, body) = self.curl(&[
            "--data-binary",
            &file,
            &self.url(&format!("/upload{query}")),
        ]);
        (code, json(&body))
    }

    fn live(&self) -> u64 {
        self.server
            .get("/readyz")
            .text()
            .trim()
            .strip_prefix("ready: generation ")
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[test]
fn the_seeds_curl_lines_and_a_raw_body_each_make_a_live_generation() {
    let a = start(&[]);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let upload = a.url("/upload");
    for (round, price) in ["2", "3", "4"].into_iter().enumerate() {
        let csv = feed(a.dir.path(), &format!("feed{round}.csv"), 1, 1000, price);
        let file = format!("file=@{}", csv.display());
        let data = format!("data=@{}", csv.display());
        let raw = format!("@{}", csv.display());
        let (code, body) = match round {
            // curl -X POST -F "file=@promotions.csv" http://localhost:1322/upload
            0 => curl(&["-H", &auth, "-X", "POST", "-F", &file, &upload]),
            // curl --request POST --url ".../upload" --header "Content-Type:
            // multipart/form-data" --form data=@promotions.csv
            1 => curl(&[
                "-H",
                &auth,
                "--request",
                "POST",
                "--url",
                &upload,
                "--header",
                "Content-Type: multipart/form-data",
                "--form",
                &data,
            ]),
            // The raw body, chunked, as a streaming client sends it.
            _ => curl(&[
                "-H",
                &auth,
                "-H",
                "Content-Type: text/csv",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &raw,
                &upload,
            ]),
        };
        assert_eq!(code, 200, "round {round}: {body}");
        let j = json(&body);
        // The answer is what `promo build` says of the same file.
        let expected = build_ok(&a.dir.path().join(format!("check{round}")), &csv, &[]);
        for field in ["rows", "valid", "invalid", "duplicates", "records"] {
            assert_eq!(
                j[field].to_string(),
                summary_field(&expected, field),
                "{field}: {body}"
            );
        }
        assert!(j["seconds"].as_f64().unwrap() > 0.0);
        // Live on the serving port before the answer was sent.
        let generation = j["generation"].as_u64().unwrap();
        assert_eq!(generation, 2 + round as u64);
        assert_eq!(a.live(), generation);
        let r = a.server.get(&format!("/promotions/{}", id(1, 7)));
        assert_eq!(r.json()["price"].to_string(), price);
    }
    assert!(temp_files(&a.data).is_empty());
    assert!(a.server.log().contains("admin: POST /upload: 200"));
}

#[test]
fn requests_without_the_token_are_refused_and_routes_are_checked() {
    let a = start(&[]);
    let csv = feed(a.dir.path(), "f.csv", 1, 1000, "9");
    let file = format!("file=@{}", csv.display());
    let before = sequences(&a.data);
    let (upload, generations) = (a.url("/upload"), a.url("/generations"));
    for auth in [
        vec![],
        vec!["-H", "Authorization: Bearer wrong"],
        vec!["-H", "Authorization: Bearer 0123456789abcdef-test-toke"],
        vec![
            "-H",
            "Authorization: Basic MDEyMzQ1Njc4OWFiY2RlZi10ZXN0LXRva2Vu",
        ],
    ] {
        let mut args = auth.clone();
        args.extend_from_slice(&["-F", &file, &upload]);
        let (code, body) = curl(&args);
        assert_eq!(code, 401, "{auth:?}: {body}");
        let mut args = auth.clone();
        args.push(&generations);
        assert_eq!(curl(&args).0, 401);
    }
    let (code, _) = curl(&["-I", &a.url("/generations")]);
    assert_eq!(code, 401);
    assert_eq!(sequences(&a.data), before, "a refused upload published");

    assert_eq!(a.curl(&[&a.url("/upload")]).0, 405);
    assert_eq!(a.curl(&["-X", "DELETE", &a.url("/generations")]).0, 405);
    assert_eq!(a.curl(&[&a.url("/nope")]).0, 404);
    // The admin routes are not on the serving port.
    assert_eq!(a.server.get("/generations").status, 404);
}

#[test]
fn refused_feeds_get_422_with_their_first_invalid_lines_and_force_overrides_the_shrink_guard() {
    let a = start(&[]);
    // Too many invalid rows: line 1 is a row (no header), so the bad rows
    // are lines 3 and 5.
    let bad = a.dir.path().join("bad.csv");
    let mut text = std::fs::read_to_string(feed(a.dir.path(), "g.csv", 2, 5, "1")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = "not-an-id,1,2030-01-01 00:00:00".into();
    lines[4] = format!("{},free,2030-01-01 00:00:00", id(2, 4));
    text = lines.join("\n") + "\n";
    std::fs::write(&bad, &text).unwrap();
    let (code, j) = a.upload(&bad, "");
    assert_eq!(code, 422, "{j}");
    let error = j["error"].as_str().unwrap();
    assert!(error.contains("2 of 5 rows are invalid"), "{j}");
    // The message points at this answer's own list, not at a terminal's.
    assert!(error.contains("see first_invalid in this answer"), "{j}");
    assert!(!error.contains("reported above"), "{j}");
    let lines: Vec<u64> = j["first_invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 5], "{j}");
    assert!(j["first_invalid"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not-an-id"));

    // No valid row at all.
    let empty = a.dir.path().join("empty.csv");
    std::fs::write(&empty, "id,price,expiration_date\n").unwrap();
    let (code, j) = a.upload(&empty, "");
    assert_eq!(code, 422, "{j}");

    // A feed a tenth the size: the shrink guard refuses it, force takes it.
    let small = feed(a.dir.path(), "small.csv", 1, 100, "5");
    let (code, j) = a.upload(&small, "");
    assert_eq!(code, 422, "{j}");
    let error = j["error"].as_str().unwrap();
    assert!(error.contains("--max-shrink"), "{j}");
    // An upload forces with the query, not with the command's flag.
    assert!(error.contains("upload it again with ?force=true"), "{j}");
    assert!(!error.contains("--force"), "{j}");
    assert_eq!(sequences(&a.data), [1]);
    assert_eq!(a.live(), 1);
    let (code, j) = a.upload(&small, "?force=true");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["records"], 100);
    assert_eq!(a.live(), 2);
    assert!(temp_files(&a.data).is_empty());
}

#[test]
fn compressed_uploads_are_read_by_content_and_a_corrupt_one_is_refused() {
    let a = start(&[]);
    let csv = std::fs::read(feed(a.dir.path(), "next.csv", 1, 1000, "3")).unwrap();
    let gz = a.dir.path().join("next.csv.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, &csv).unwrap();
    let mut bytes = e.finish().unwrap();
    std::fs::write(&gz, &bytes).unwrap();
    let (code, j) = a.upload(&gz, "");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["records"], 1000);
    assert_eq!(j["churn"]["price"], 1000);
    assert_eq!(a.live(), 2);

    bytes.truncate(bytes.len() / 2);
    std::fs::write(&gz, &bytes).unwrap();
    let (code, j) = a.upload(&gz, "");
    assert_eq!(code, 422, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("corrupt gzip stream near compressed byte"),
        "{j}"
    );
    assert_eq!(a.live(), 2);
    assert!(temp_files(&a.data).is_empty());
}

#[test]
fn the_churn_guards_refuse_uploads_with_422_and_force_overrides_them() {
    let a = start(&["--max-churn", "50", "--max-price-jumps", "5"]);
    let metric = |guard: &str| -> String {
        let text = a.server.get("/metrics").text();
        let prefix = format!("promo_upload_refusals_total{{guard=\"{guard}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    assert_eq!(metric("price_jumps"), "0");

    // Every price from 1 to 0.01: cents for units.
    let cents = feed(a.dir.path(), "cents.csv", 1, 1000, "0.01");
    let (code, j) = a.upload(&cents, "");
    assert_eq!(code, 422, "{j}");
    let error = j["error"].as_str().unwrap();
    assert!(
        error.contains("refused by --max-price-jumps 5%: 100.00% of the 1000 ids in both"),
        "{error}"
    );
    assert!(
        error.contains(" 1,2030-01-01 00:00:00 -> 0.01,2030-01-01 00:00:00"),
        "{error}"
    );
    assert!(
        error.contains("?force=true") && !error.contains("--force"),
        "{error}"
    );
    assert_eq!(metric("price_jumps"), "1");
    assert_eq!(sequences(&a.data), [1]);
    assert_eq!(a.live(), 1);

    // Another partner's ids: the churn guard.
    let other = feed(a.dir.path(), "other.csv", 5, 1000, "1");
    let (code, j) = a.upload(&other, "");
    assert_eq!(code, 422, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("--max-churn 50%"),
        "{j}"
    );
    assert_eq!(metric("churn"), "1");
    assert_eq!(a.live(), 1);
    assert!(temp_files(&a.data).is_empty());

    // ?force=true takes it, and the answer says what it changed.
    let (code, j) = a.upload(&cents, "?force=true");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["churn"]["price_jumps"], 1000);
    assert_eq!(a.live(), 2);
}

#[test]
fn oversized_and_malformed_uploads_are_refused_and_leave_nothing() {
    let a = start(&["--max-upload", "10KiB"]);
    let big = feed(a.dir.path(), "big.csv", 1, 1000, "2");
    // Declared too large, and too large only once streamed (chunked).
    let (code, j) = a.upload(&big, "");
    assert_eq!(code, 413, "{j}");
    let file = format!("@{}", big.display());
    let (code, body) = a.curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &file,
        &a.url("/upload"),
    ]);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("--max-upload"), "{body}");

    let multipart = |body: &str| {
        let path = a.dir.path().join("form");
        std::fs::write(&path, body).unwrap();
        let file = format!("@{}", path.display());
        a.curl(&[
            "-H",
            "Content-Type: multipart/form-data; boundary=XyZ",
            "--data-binary",
            &file,
            &a.url("/upload"),
        ])
    };
    let row = format!("{},1,2030-01-01 00:00:00\r\n", id(1, 1));
    let part = |name: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"p.csv\"\r\n\r\n{row}"
        )
    };
    for (body, why) in [
        ("this is not multipart".to_string(), "malformed multipart"),
        (
            "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--XyZ--\r\n"
                .to_string(),
            "no file part",
        ),
        (
            format!("{}{}--XyZ--\r\n", part("a"), part("b")),
            "more than one file part",
        ),
        // Cut off before its closing boundary.
        (part("file"), "malformed multipart"),
    ] {
        let (code, body) = multipart(&body);
        assert_eq!(code, 400, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
    }
    let (code, body) = a.curl(&[
        "-H",
        "Content-Type: multipart/form-data",
        "--data-binary",
        "x",
        &a.url("/upload"),
    ]);
    assert_eq!(code, 400, "no boundary: {body}");

    assert_eq!(sequences(&a.data), [1]);
    assert!(temp_files(&a.data).is_empty());
    assert_eq!(a.live(), 1);
}

/// Sends an upload's head and the first part of its body by hand.
fn partial_upload(admin: SocketAddr, body: &[u8], declared: usize) -> TcpStream {
    let mut s = TcpStream::connect(admin).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/csv\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// Waits until process `pid` has the data directory's build lock file
/// open: a build holds the lock for as long as it has the file open.
fn wait_for_lock(pid: u32, data: &Path) {
    let lock = data
        .canonicalize()
        .unwrap()
        .join(promo::generation::local::LOCK_NAME);
    let start = Instant::now();
    loop {
        let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == lock);
        if held {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no build took the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_client_killed_mid_upload_leaves_nothing_and_the_next_upload_works() {
    let a = start(&[]);
    let csv = std::fs::read(feed(a.dir.path(), "f.csv", 1, 50_000, "3")).unwrap();
    // A child process sends half the body, then is killed.
    let half = a.dir.path().join("half");
    std::fs::write(&half, &csv[..csv.len() / 2]).unwrap();
    let mut client = Command::new("curl")
        .args(["--silent", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(["-H", "Content-Type: text/csv", "-H"])
        .arg(format!("Content-Length: {}", csv.len()))
        .arg("--data-binary")
        .arg(format!("@{}", half.display()))
        .arg(a.url("/upload"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The upload's build runs, and curl has sent all it has and waits for
    // an answer that cannot come before the rest of the body: kill it.
    wait_for_lock(a.server.child.id(), &a.data);
    std::thread::sleep(Duration::from_millis(300));
    client.kill().unwrap();
    client.wait().unwrap();
    a.server
        .wait_log("admin: POST /upload: 400", Duration::from_secs(30));
    assert!(
        a.server.log().contains("nothing was published"),
        "{}",
        a.server.log()
    );
    assert_eq!(sequences(&a.data), [1]);
    assert!(temp_files(&a.data).is_empty(), "{:?}", temp_files(&a.data));
    assert_eq!(a.live(), 1);

    // The lock was released: a whole upload goes through.
    let full = a.dir.path().join("full.csv");
    std::fs::write(&full, &csv).unwrap();
    let (code, j) = a.upload(&full, "");
    assert_eq!(code, 200, "{j}");
    assert_eq!(a.live(), 2);
}

#[test]
fn an_upload_and_a_promo_build_on_one_data_directory_never_run_at_once() {
    let a = start(&[]);
    let csv = std::fs::read(feed(a.dir.path(), "f.csv", 1, 1000, "3")).unwrap();

    // An upload under way holds the data directory: `promo build` waits
    // for nothing and fails, changing nothing.
    let mut upload = partial_upload(a.admin, &csv[..100], csv.len());
    wait_for_lock(a.server.child.id(), &a.data);
    let other = feed(a.dir.path(), "other.csv", 1, 1000, "4");
    let out = build(&a.data, &other, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another `promo build`"), "{stderr}");
    assert_eq!(sequences(&a.data), [1]);
    upload.write_all(&csv[100..]).unwrap();
    let mut answer = String::new();
    upload.read_to_string(&mut answer).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(a.live(), 2);

    // A `promo build` under way (reading a pipe that stays open): an upload
    // gets 409, and the build then finishes.
    let mut building = promo()
        .args(["build", "-", "--data-dir"])
        .arg(&a.data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = building.stdin.take().unwrap();
    stdin.write_all(&csv[..100]).unwrap();
    wait_for_lock(building.id(), &a.data);
    let (code, j) = a.upload(&other, "");
    assert_eq!(code, 409, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("another `promo build`"),
        "{j}"
    );
    stdin.write_all(&csv[100..]).unwrap();
    drop(stdin);
    let out = building.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(temp_files(&a.data).is_empty());
}

#[test]
fn generations_and_rollback_over_the_admin_port() {
    let a = start(&[]);
    let (code, body) = a.curl(&["-X", "POST", &a.url("/rollback")]);
    assert_eq!(code, 409, "one generation: nothing to roll back to: {body}");
    let second = feed(a.dir.path(), "second.csv", 1, 1000, "7");
    assert_eq!(a.upload(&second, "").0, 200);

    let (code, body) = a.curl(&[&a.url("/generations")]);
    assert_eq!(code, 200, "{body}");
    let listed = json(&body);
    let inspected = inspect_dir(&a.data);
    let fields = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["sequence"].clone(),
                    g["rows"].clone(),
                    g["bytes"].clone(),
                    g["live"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&listed), fields(&inspected));
    assert_eq!(listed[1]["live"], true);
    assert_eq!(listed[1]["checksum"], "ok");
    // What each upload changed: every price, from 1 to 7.
    assert_eq!(listed[0]["churn"], serde_json::Value::Null);
    assert_eq!(listed[1]["churn"]["price"], 1000);
    assert_eq!(listed[1]["churn"]["median_price_change"], 6.0);
    assert_eq!(listed[1]["churn"], inspected[1]["churn"]);

    let (code, body) = a.curl(&["-X", "POST", &a.url("/rollback")]);
    assert_eq!(code, 200, "{body}");
    let j = json(&body);
    assert_eq!(j["restored"], 1);
    assert_eq!(j["generation"], 3);
    assert_eq!(a.live(), 3);
    let r = a.server.get(&format!("/promotions/{}", id(1, 7)));
    assert_eq!(r.json()["price"], 1);
    // ?to=N goes back to any kept generation, and the listing says what
    // each rollback restored and undid.
    let (code, body) = a.curl(&["-X", "POST", &a.url("/rollback?to=2")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["restored"], 2);
    assert_eq!(a.live(), 4);
    let (_, body) = a.curl(&[&a.url("/generations")]);
    let listed = json(&body);
    assert_eq!(listed[3]["rollback"]["of"], 2, "{listed}");
    assert_eq!(
        listed[3]["rollback"]["undone"][0]["sequence"], 3,
        "{listed}"
    );
    for (to, status) in [("9", 409), ("x", 400)] {
        let (code, body) = a.curl(&["-X", "POST", &a.url(&format!("/rollback?to={to}"))]);
        assert_eq!(code, status, "{to}: {body}");
    }
}

#[test]
fn serve_refuses_an_open_admin_port_without_a_token_and_an_empty_token() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--admin-listen", "0.0.0.0:0"], "needs --admin-token-file"),
        (
            &[
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token-file",
                empty.to_str().unwrap(),
            ],
            "token file is empty",
        ),
        (&["--admin-token-file", "x"], "--admin-listen"),
    ];
    for (args, why) in cases {
        let out = promo()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

#[test]
fn an_upload_with_publish_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let url = format!("file://{}", store.display());
    let a = start(&["--publish", &url]);
    let csv = feed(a.dir.path(), "f.csv", 1, 1000, "5");
    let (code, j) = a.upload(&csv, "");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["published"]["sequence"], 1, "{j}");
    let listed = inspect_source(&url);
    assert_eq!(listed[0]["rows"], 1000);
    assert_eq!(listed[0]["state"], "ok");

    // A rollback on the admin port rolls the store back to the same
    // object, uploading nothing, and records what it undid.
    let csv = feed(a.dir.path(), "g.csv", 1, 1000, "6");
    assert_eq!(a.upload(&csv, "").0, 200);
    let (code, body) = a.curl(&["-X", "POST", &a.url("/rollback")]);
    assert_eq!(code, 200, "{body}");
    let j = json(&body);
    assert_eq!(j["published"]["sequence"], 3, "{j}");
    assert_eq!(j["published"]["bytes"], 0, "nothing uploaded: {j}");
    let listed = inspect_source(&url);
    assert_eq!(listed[2]["object"], listed[0]["object"], "{listed}");
    assert_eq!(listed[2]["rollback"]["of"], 1, "{listed}");
    assert_eq!(
        listed[2]["rollback"]["undone"][0]["sequence"], 2,
        "{listed}"
    );
}
