//! `http::route` with an arbitrary method and request target, against a
//! real table built once from fixtures/promotions.csv (or no table at all).
//!
//! The input is one control byte, then the method, then the target:
//! `ctl & 0x0f` is the method's length (0: `GET`), `ctl & 0x80` means no
//! generation is loaded.
//!
//! Properties:
//! - the status is 200, 400, 404, 405 or 414, or 503 when no generation is
//!   loaded: never another 5xx;
//! - only GET and HEAD get a 200, a 405 says `Allow: GET, HEAD`, and a
//!   short target (an id URL is under 100 bytes) never gets a 414;
//! - a 200 for a promotion is the JSON of the record the URL names (after
//!   percent-decoding its path), exactly as the table holds it;
//! - every answer on the promotions route names the generation;
//! - an error answered as JSON is `{"error": "..."}`;
//! - for a plain target (no `?`, no `%`, short), the answer is the one the
//!   API table of docs/http-api.md gives.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use promo::builder::ingest::parse_chunk;
use promo::generation::date::Dates;
use promo::generation::format::Writer;
use promo::generation::record::{write_json, Price};
use promo::generation::table::{Found, Table};
use promo::server::http::{route, GENERATION_HEADER};
use uuid::Uuid;

const SEQUENCE: u64 = 7;
const PROMOTIONS: &str = "/promotions/";

struct Fixture {
    /// Holds the table's file; removed when the process ends.
    _dir: tempfile::TempDir,
    table: Table,
}

/// The table, written by `format::Writer` from the fixture CSV and opened
/// verified, as `promo serve` opens a generation.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let csv = include_bytes!("../../../fixtures/promotions.csv");
        let parsed = parse_chunk(csv, true);
        assert!(!parsed.records.is_empty());
        // The later row wins, as in `promo build`; each date as written.
        let rows: BTreeMap<u128, (Price, Vec<u8>)> = parsed
            .records
            .iter()
            .map(|r| {
                let mut date = Vec::new();
                assert!(parsed.dates.write(r.date(), &mut date));
                (r.key(), (r.price().expect("a valid price"), date))
            })
            .collect();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("gen.promo");
        let file = std::fs::File::create(&path).expect("create the table file");
        let mut w = Writer::new(file, &path, rows.len() as u64).expect("start the table");
        for (&key, (price, date)) in &rows {
            w.push_row(key, *price, date).expect("records in key order");
        }
        w.finish().expect("finish the table");
        let table = Table::open_verified(&path, SEQUENCE).expect("open the table");
        // Every record is served as itself.
        for (&key, (price, date)) in &rows {
            let url = format!("{PROMOTIONS}{}", Uuid::from_u128(key));
            let routed = route(&Method::GET, &url, Some(&table), None);
            assert_eq!(routed.response.status(), StatusCode::OK, "{url}");
            let mut expected = Vec::new();
            write_json(key, Some(*price), &mut expected, |o| {
                o.extend_from_slice(date)
            });
            assert_eq!(body_bytes(routed.response.into_body()), expected);
        }
        Fixture { _dir: dir, table }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let table = (ctl & 0x80 == 0).then_some(&fixture.table);
    let method_len = usize::from(ctl & 0x0f).min(rest.len());
    let (method, target) = rest.split_at(method_len);
    let method = if method.is_empty() {
        Method::GET
    } else {
        match Method::from_bytes(method) {
            Ok(m) => m,
            Err(_) => return,
        }
    };
    let target = String::from_utf8_lossy(target);
    check(&method, &target, table);
});

fn check(method: &Method, target: &str, table: Option<&Table>) {
    let routed = route(method, target, table, None);
    let response = routed.response;
    let status = response.status();
    let readable = matches!(*method, Method::GET | Method::HEAD);
    let context = format!("{method} {target:?} with table: {}", table.is_some());

    let allowed = [200, 400, 404, 405, 414];
    assert!(
        allowed.contains(&status.as_u16())
            || (status == StatusCode::SERVICE_UNAVAILABLE && table.is_none()),
        "status {status} for {context}"
    );
    if status == StatusCode::OK {
        assert!(readable, "200 for {context}");
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // The batch route takes POST alone; every other route GET and HEAD.
        let batch = target.split('?').next() == Some("/promotions/batch");
        let (allow, allowed) = if batch {
            ("POST", *method == Method::POST)
        } else {
            ("GET, HEAD", readable)
        };
        assert!(!allowed, "405 for {context}");
        assert_eq!(response.headers()["allow"], allow, "{context}");
    }
    if target.len() <= 100 {
        assert_ne!(status, StatusCode::URI_TOO_LONG, "{context}");
    }
    if routed.route == "promotions" {
        let seq = table.map_or(0, |t| t.sequence());
        assert_eq!(
            response
                .headers()
                .get(GENERATION_HEADER)
                .map(|v| v.as_bytes()),
            Some(seq.to_string().as_bytes()),
            "{context}"
        );
    }
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    let body = body_bytes(response.into_body());

    if status == StatusCode::OK && routed.route == "promotions" {
        let table = table.expect("a 200 for a promotion needs a table");
        let named = named_key(target);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let id = v["id"].as_str().expect("an id");
        let key = Uuid::try_parse(id).expect("a UUID").as_u128();
        assert_eq!(named, Some(key), "{context} answered {id}");
        let record = table.get(key).expect("the answered id is in the table");
        assert_eq!(body, json(&record), "{context}");
    } else if status != StatusCode::OK && is_json {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(v["error"].is_string(), "{context}: {v}");
    }

    // The API table of docs/http-api.md, for targets every version of the router
    // reads the same way.
    if target.contains(['?', '%']) || target.len() > 1000 {
        return;
    }
    let want = if let Some(id) = target.strip_prefix(PROMOTIONS) {
        match (readable, table) {
            (false, _) => StatusCode::METHOD_NOT_ALLOWED,
            (true, None) => StatusCode::SERVICE_UNAVAILABLE,
            (true, Some(t)) => match Uuid::try_parse(id) {
                Ok(u) if t.get(u.as_u128()).is_some() => StatusCode::OK,
                _ => StatusCode::NOT_FOUND,
            },
        }
    } else if !readable {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        match (target, table) {
            ("/healthz", _) | ("/readyz", Some(_)) => StatusCode::OK,
            ("/readyz", None) => StatusCode::SERVICE_UNAVAILABLE,
            // `/metrics` without a metrics handle, and every other path.
            _ => StatusCode::NOT_FOUND,
        }
    };
    assert_eq!(status, want, "{context}");
}

/// The id a promotion URL names: its path (before any `?`) after the
/// prefix, percent-decoded, as a UUID.
fn named_key(target: &str) -> Option<u128> {
    let path = target.split('?').next()?;
    let id = path.strip_prefix(PROMOTIONS)?.as_bytes();
    let mut decoded = Vec::with_capacity(id.len());
    let mut i = 0;
    while i < id.len() {
        if id[i] == b'%' {
            let hex = std::str::from_utf8(id.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(id[i]);
            i += 1;
        }
    }
    Uuid::try_parse_ascii(&decoded).ok().map(|u| u.as_u128())
}

/// The API's JSON for a record.
fn json(record: &Found<'_>) -> Bytes {
    let mut out = Vec::new();
    record.write_json(&mut out);
    Bytes::from(out)
}

/// The whole body of a response `route` built: it is in memory, so one poll.
fn body_bytes<B>(body: B) -> Bytes
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                if let Ok(data) = frame.expect("an in-memory body").into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) => return Bytes::from(out),
            Poll::Pending => panic!("an in-memory body is never pending"),
        }
    }
}
