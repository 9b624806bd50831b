//! Feeds where partners drop them: read by URL from a real S3 server and
//! a plain HTTP server (with a dropped connection and an object replaced
//! mid-read), and compressed, told apart by content from any source.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::http_file::HttpFile;
use common::s3::S3;
use common::{build, build_env, fixture, promo, promo_get, sequences, summary_field, temp_files};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn feed_bytes() -> Vec<u8> {
    std::fs::read(fixture("promotions.csv")).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// The fixture's first row is served as the fixture says.
fn serves_the_fixture(data: &Path) {
    let text = String::from_utf8(feed_bytes()).unwrap();
    let row = text.lines().nth(1).unwrap();
    let id = row.split(',').next().unwrap();
    let price = row.split(',').nth(1).unwrap();
    let got = promo_get(data, id).unwrap();
    assert!(got.contains(&format!("\"price\":{price}")), "{got}");
}

#[test]
fn a_feed_is_built_from_an_s3_object_plain_gzip_or_zstd() {
    let s3 = S3::start();
    let feeds = s3.dir("feeds");
    std::fs::create_dir_all(&feeds).unwrap();
    std::fs::write(feeds.join("today.csv"), feed_bytes()).unwrap();
    std::fs::write(feeds.join("today.csv.gz"), gzip(&feed_bytes())).unwrap();
    std::fs::write(feeds.join("today.zst"), zstd(&feed_bytes())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (n, name) in ["today.csv", "today.csv.gz", "today.zst"]
        .iter()
        .enumerate()
    {
        let out = build_env(
            &data,
            Path::new(&s3.url(&format!("feeds/{name}"))),
            &[],
            &s3.env(),
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let summary = String::from_utf8_lossy(&out.stdout);
        assert_eq!(summary_field(&summary, "records"), "203", "{name}");
        assert_eq!(summary_field(&summary, "generation"), (n + 1).to_string());
        if n > 0 {
            assert_eq!(summary_field(&summary, "unchanged"), "203", "{name}");
        }
    }
    serves_the_fixture(&data);
    // Nothing of the feed was written to the data directory.
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("gen-") && !n.starts_with(".build"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // A missing object fails before anything else, naming it.
    let out = build_env(&data, Path::new(&s3.url("feeds/none.csv")), &[], &s3.env());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("s3://promo/feeds/none.csv: looking up a feed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sequences(&data), [1, 2, 3]);
}

#[test]
fn a_dropped_connection_is_resumed_at_the_byte_where_it_stopped() {
    let body = gzip(&feed_bytes());
    let len = body.len();
    let server = HttpFile::start(body, "v1");
    server.behaviour.lock().unwrap().cut_after = vec![1000, 2500];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = build(&data, Path::new(&server.url("feed.csv.gz")), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Asked for the whole range, then from byte 1000, then from 3500.
    assert_eq!(
        server.gets(),
        [
            Some(format!("bytes=0-{}", len - 1)),
            Some(format!("bytes=1000-{}", len - 1)),
            Some(format!("bytes=3500-{}", len - 1)),
        ]
    );
    serves_the_fixture(&data);
}

#[test]
fn a_feed_replaced_during_the_read_fails_and_publishes_nothing() {
    let server = HttpFile::start(feed_bytes(), "v1");
    {
        let mut b = server.behaviour.lock().unwrap();
        b.cut_after = vec![4000];
        let mut other = feed_bytes();
        other.extend_from_slice(b"\n");
        b.replace_after = Some((1, other, "v2".into()));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = build(&data, Path::new(&server.url("feed.csv")), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("the object changed during the read (it was ETag \"v1\", now \"v2\")"),
        "{}",
        stderr(&out)
    );
    assert!(sequences(&data).is_empty());
    assert!(temp_files(&data).is_empty());
}

/// A presigned URL, the way partners share one object: requested exactly
/// as written, query included, with GETs alone; its query is not shown.
#[test]
fn a_presigned_url_is_read_as_written_and_its_query_is_not_shown() {
    let signed = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=300&X-Amz-Signature=5e1f7a9c";
    let server = HttpFile::start(feed_bytes(), "v1");
    server.behaviour.lock().unwrap().signed_query = Some(signed.into());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = format!("{}?{signed}", server.url("bucket/feed.csv"));
    let out = build(&data, Path::new(&url), &[]);
    let (err, summary) = (stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{err}");
    assert_eq!(summary_field(&summary, "records"), "203");
    serves_the_fixture(&data);
    // Looked up with a GET of one byte, then read: each the URL as written.
    let len = feed_bytes().len();
    assert_eq!(
        server.gets(),
        [
            Some("bytes=0-0".into()),
            Some(format!("bytes=0-{}", len - 1))
        ]
    );
    let b = server.behaviour.lock().unwrap();
    assert_eq!(b.seen.len(), 2, "{:?}", b.seen);
    let target = format!("/bucket/feed.csv?{signed}");
    assert!(b.targets.iter().all(|t| *t == target), "{:?}", b.targets);
    drop(b);
    assert!(
        !err.contains("5e1f7a9c") && !summary.contains("5e1f7a9c"),
        "{err}{summary}"
    );

    // Another signature: refused by the server, and the message says so
    // without showing the query.
    let wrong = format!("{}?X-Amz-Signature=0bad0bad", server.url("bucket/feed.csv"));
    let out = build(&data, Path::new(&wrong), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}?…: looking up a feed",
            server.url("bucket/feed.csv")
        )),
        "{err}"
    );
    assert!(err.contains("403"), "{err}");
    assert!(!err.contains("0bad0bad"), "{err}");

    // Other URLs with a query or a fragment are refused before anything is
    // contacted.
    for (url, says) in [
        (
            "s3://bucket/feed.csv?versionId=3".to_string(),
            "s3://bucket/feed.csv?…: a query or a fragment (?..., #...) cannot be read",
        ),
        (
            "file:///tmp/feed.csv#2".to_string(),
            "a query or a fragment (?..., #...) cannot be read",
        ),
        (
            format!("{}#2", server.url("feed.csv")),
            "a fragment (#...) is never sent to the server",
        ),
    ] {
        let out = build(&data, Path::new(&url), &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{url}");
        assert!(err.contains(says), "{url}: {err}");
    }
    assert_eq!(sequences(&data), [1]);
}

#[test]
fn a_connection_that_keeps_dropping_fails_after_bounded_retries() {
    let server = HttpFile::start(feed_bytes(), "v1");
    server.behaviour.lock().unwrap().cut_after = vec![100; 20];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = server.url("feed.csv");
    let out = build(&data, Path::new(&url), &[]);
    assert_eq!(out.status.code(), Some(2));
    // The first answer and five resumes, 100 bytes each, then it gives up.
    let err = stderr(&out);
    assert!(
        err.contains(&format!("promo: error: {url}: at byte 600: ")),
        "{err}"
    );
    let gets = server.gets();
    assert_eq!(gets.len(), 1 + promo::store::remote::RETRIES, "{gets:?}");
    assert!(
        gets[5].as_deref().unwrap().starts_with("bytes=500-"),
        "{gets:?}"
    );
    assert!(sequences(&data).is_empty());
}

/// Python's `http.server`, serving `dir` on a port of its own, until dropped.
struct PythonHttp(std::process::Child, String);

impl PythonHttp {
    fn start(dir: &Path) -> PythonHttp {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs http.server");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split('(')
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("http.server said {line:?}"))
            .to_string();
        PythonHttp(child, base)
    }
}

impl Drop for PythonHttp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_server_that_takes_no_ranges_is_read_as_one_stream() {
    // Python's http.server answers a range request with the whole file.
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("www");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("feed.csv"), feed_bytes()).unwrap();
    std::fs::write(files.join("feed.csv.zst"), zstd(&feed_bytes())).unwrap();
    let server = PythonHttp::start(&files);
    for (name, data) in [("feed.csv", "plain"), ("feed.csv.zst", "zstd")] {
        let data = dir.path().join(data);
        let url = format!("{}{name}", server.1);
        let out = build(&data, Path::new(&url), &[]);
        let err = stderr(&out);
        assert!(out.status.success(), "{url}: {err}");
        assert!(
            err.contains("the server does not take range requests: reading it as one stream"),
            "{url}: {err}"
        );
        serves_the_fixture(&data);
    }

    // Such a stream cannot resume: one that drops fails the build, says
    // why, and publishes nothing.
    let server = HttpFile::start(feed_bytes(), "v1");
    {
        let mut b = server.behaviour.lock().unwrap();
        b.ignore_range = true;
        b.cut_after = vec![usize::MAX, 3000];
    }
    let data = dir.path().join("dropped");
    let url = server.url("feed.csv");
    let out = build(&data, Path::new(&url), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("the stream dropped at byte 3000"), "{err}");
    assert!(err.contains("cannot resume"), "{err}");
    assert!(sequences(&data).is_empty());
}

#[test]
fn compressed_feeds_are_read_by_content_from_files_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Named for neither format: the bytes tell.
    let gz = dir.path().join("feed.bin");
    std::fs::write(&gz, gzip(&feed_bytes())).unwrap();
    let out = build(&data, &gz, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Two gzip members, as concatenated files make: both are read.
    let text = String::from_utf8(feed_bytes()).unwrap();
    let (head, tail) = text.split_at(text.len() / 2);
    let cut = head.rfind('\n').unwrap() + 1;
    let (first, second) = (&text[..cut], format!("{}{tail}", &head[cut..]));
    let mut members = gzip(first.as_bytes());
    members.extend(gzip(second.as_bytes()));
    let multi = dir.path().join("multi.gz");
    std::fs::write(&multi, members).unwrap();
    let out = build(&data, &multi, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        summary_field(&String::from_utf8_lossy(&out.stdout), "records"),
        "203"
    );

    let mut child = promo()
        .args(["build", "-", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&zstd(&feed_bytes()))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        summary_field(&String::from_utf8_lossy(&out.stdout), "unchanged"),
        "203"
    );
    assert_eq!(sequences(&data), [1, 2, 3]);
    serves_the_fixture(&data);
}

#[test]
fn a_corrupt_compressed_feed_is_named_with_its_byte_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::build_ok(&data, &fixture("promotions.csv"), &[]);
    for (name, mut bytes) in [
        ("cut.gz", gzip(&feed_bytes())),
        ("cut.zst", zstd(&feed_bytes())),
    ] {
        bytes.truncate(bytes.len() / 2);
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out = build(&data, &path, &[]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let format = if name.ends_with("gz") { "gzip" } else { "zstd" };
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{}: corrupt {format} stream near compressed byte ",
                path.display()
            )),
            "{err}"
        );
    }
    // A flipped byte in the middle of a zstd frame with a checksum, as the
    // zstd command writes them.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(true).unwrap();
    encoder.write_all(&feed_bytes()).unwrap();
    let mut bytes = encoder.finish().unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    let flipped = dir.path().join("flipped.zst");
    std::fs::write(&flipped, &bytes).unwrap();
    let out = build(&data, &flipped, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("corrupt zstd stream near compressed byte"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sequences(&data), [1]);
    assert!(temp_files(&data).is_empty());
}

#[test]
fn ranges_in_flight_come_back_in_order_and_a_later_one_of_another_object_fails() {
    use promo::store::ranged::ObjectReader;
    use std::io::Read;
    let body: Vec<u8> = (0..25_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let server = HttpFile::start(body.clone(), "v1");
    // 1000-byte ranges, three in flight: 100 ranges, reassembled in order.
    let mut reader = ObjectReader::open(&server.url("numbers"), 1000, 3).unwrap();
    assert_eq!(reader.len, Some(body.len() as u64));
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(got == body, "the bytes came back out of order or changed");
    let gets = server.gets();
    assert_eq!(gets.len(), 100);
    assert!(gets.contains(&Some("bytes=99000-99999".into())), "{gets:?}");

    // The object replaced after two ranges were read (one at a time, so
    // that which answers come from which object is certain): the third
    // answer is another object's, and the read fails there, for good.
    let server = HttpFile::start(body.clone(), "v1");
    let other: Vec<u8> = body.iter().map(|b| b ^ 1).collect();
    server.behaviour.lock().unwrap().replace_after = Some((2, other, "v2".into()));
    let mut reader = ObjectReader::open(&server.url("numbers"), 1000, 1).unwrap();
    let mut first = vec![0; 2000];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first, body[..2000]);
    let err = reader.read(&mut [0; 10]).unwrap_err();
    assert!(
        err.to_string()
            .contains("the object changed during the read (it was ETag \"v1\", now \"v2\")"),
        "{err}"
    );
    assert!(
        reader.read(&mut [0; 10]).is_err(),
        "a failed read stays failed"
    );
}
