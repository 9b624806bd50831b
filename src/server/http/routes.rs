//! Routing and answers: each request's response as a pure function of
//! its method, target, headers and the live table, without any I/O.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use hyper::{HeaderMap, Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::builder::ingest;
use crate::generation::shard::Shard;
use crate::generation::table::{Bucket, Found, Table};
use crate::metrics as m;
use crate::server::openapi::Port;

/// The response header that names the generation an answer came from.
pub const GENERATION_HEADER: &str = "x-promo-generation";
/// The longest request target (path and query) answered; longer ones get
/// 414. An id URL is under 100 bytes.
pub const MAX_TARGET_LEN: usize = 2048;
/// The `Retry-After` of every 503 (no generation loaded yet), in seconds:
/// the least the header can say. A server becomes ready within moments of
/// a generation being there (the watcher rescans the data directory every
/// 200 ms, and a `--source` server polls its store at start), so a longer
/// wait would only keep clients from a server that is ready; a 503 costs
/// the server next to nothing.
pub const RETRY_AFTER_SECONDS: u64 = 1;

pub(super) const PROMOTIONS: &str = "/promotions/";
const JSON: &str = "application/json";
/// The batch lookup's path.
pub const BATCH: &str = "/promotions/batch";
/// Most ids in one batch; more gets 413.
pub const MAX_BATCH_IDS: usize = 1000;
/// Most bytes in a batch's body; more gets 413.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// What a lookup found, for `promo_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// The id is not a UUID.
    Invalid,
    /// The id is in another shard's range: the request was misrouted.
    Misdirected,
}

impl Lookup {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Invalid => "invalid",
            Lookup::Misdirected => "misdirected",
        }
    }
}

/// A response, the route label it is counted under, and the lookup it made.
pub struct Routed {
    pub route: &'static str,
    pub response: Response<Full<Bytes>>,
    pub lookup: Option<Lookup>,
}

/// Answers one request. `target` is the request's path and query, as sent:
/// paths are matched exactly, without normalising `..` or `//`, and the
/// query is ignored. `table` is the live generation, if any; `metrics`
/// renders `/metrics` (tests may pass `None`).
pub fn route(
    method: &Method,
    target: &str,
    table: Option<&Table>,
    metrics: Option<&PrometheusHandle>,
) -> Routed {
    route_from(method, target, &HeaderMap::new(), table, None, metrics)
}

/// [`route`], with the request's `headers` (a lookup answers its
/// `If-None-Match`) and the lookup's bucket of records already read from
/// disk (see [`Table::get_from`]).
pub(super) fn route_from(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    table: Option<&Table>,
    bucket: Option<&Bucket>,
    metrics: Option<&PrometheusHandle>,
) -> Routed {
    if target.len() > MAX_TARGET_LEN {
        return Routed {
            route: "other",
            response: json_error(StatusCode::URI_TOO_LONG, "request target too long"),
            lookup: None,
        };
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == BATCH {
        // A POST comes with a body and is answered by `batch`.
        return Routed {
            route: "batch",
            response: method_not_allowed("POST"),
            lookup: None,
        };
    }
    if let Some(id) = path.strip_prefix(PROMOTIONS) {
        let (response, lookup) = promotion(method, id, headers, table, bucket);
        return Routed {
            route: "promotions",
            response,
            lookup,
        };
    }
    let (route, response) = match path {
        "/healthz" => ("healthz", text(StatusCode::OK, "ok\n")),
        "/readyz" => match table {
            Some(t) => (
                "readyz",
                text(StatusCode::OK, &{
                    // A shard says which: what an unsharded server says is unchanged.
                    let shard = t.header().shard;
                    if shard.is_whole() {
                        format!("ready: generation {}\n", t.sequence())
                    } else {
                        format!("ready: generation {}, shard {shard}\n", t.sequence())
                    }
                }),
            ),
            None => (
                "readyz",
                retry_later(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no generation loaded\n",
                )),
            ),
        },
        "/metrics" => (
            "metrics",
            match metrics {
                Some(h) => {
                    let mut r = Response::new(Full::new(Bytes::from(m::render(h))));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
            },
        ),
        "/openapi.json" => ("openapi", openapi(Port::Public)),
        _ => ("other", json_error(StatusCode::NOT_FOUND, "no such route")),
    };
    let response = if matches!(*method, Method::GET | Method::HEAD) {
        response
    } else {
        method_not_allowed("GET, HEAD")
    };
    Routed {
        route,
        response,
        lookup: None,
    }
}

/// `GET /promotions/{id}`: the response, and what the lookup found.
/// `headers` are the request's: a hit answers its `If-None-Match`.
pub fn promotion(
    method: &Method,
    id: &str,
    headers: &HeaderMap,
    table: Option<&Table>,
    bucket: Option<&Bucket>,
) -> (Response<Full<Bytes>>, Option<Lookup>) {
    let (mut response, lookup) = if !matches!(*method, Method::GET | Method::HEAD) {
        (method_not_allowed("GET, HEAD"), None)
    } else if let Some(table) = table {
        match id_in_url(id) {
            None => (
                json_error(StatusCode::NOT_FOUND, "not a promotion id"),
                Some(Lookup::Invalid),
            ),
            Some(key) if !table.header().shard.contains(key) => {
                (misdirected(key, table), Some(Lookup::Misdirected))
            }
            Some(key) => match table.get_from(key, bucket) {
                Some(record) => (found(&record, headers), Some(Lookup::Hit)),
                None => (
                    json_error(StatusCode::NOT_FOUND, "promotion not found"),
                    Some(Lookup::Miss),
                ),
            },
        }
    } else {
        (
            retry_later(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no generation loaded yet",
            )),
            None,
        )
    };
    // 0 means no generation is loaded.
    let sequence = table.map_or(0, |t| t.sequence());
    response
        .headers_mut()
        .insert(GENERATION_HEADER, generation_header(sequence));
    (response, lookup)
}

/// A lookup's hit: 200 with the promotion's JSON and its `ETag`, or 304
/// with the `ETag` alone when the request's `If-None-Match` names it.
///
/// The ETag is a hash of the JSON body, the representation itself, not of
/// the record's 32 bytes: a version-2 record's date is an index into its
/// file's zone table or overflow area, so equal bytes in two generations
/// can be different dates. Hashing the body makes it a strong validator in
/// RFC 9110's sense (equal tags, equal bytes, but for a 2^-64 chance), and
/// one that outlives a generation: a promotion a new feed leaves unchanged
/// keeps its ETag, on every replica, so clients' copies stay valid across
/// a rebuild instead of all being fetched again.
///
/// The tag is written after the JSON into the body's buffer and split off
/// it, so a hit allocates nothing more than it did without one.
fn found(record: &Found, headers: &HeaderMap) -> Response<Full<Bytes>> {
    // The longest body is about 140 bytes, and the tag 18.
    let mut body = Vec::with_capacity(160);
    record.write_json(&mut body);
    let len = body.len();
    let hash = xxhash_rust::xxh3::xxh3_64(&body);
    std::io::Write::write_fmt(&mut body, format_args!("\"{hash:016x}\""))
        .expect("writing to a Vec cannot fail");
    let mut body = Bytes::from(body);
    let etag = HeaderValue::from_maybe_shared(body.split_off(len))
        .expect("hex digits in quotes make a header value");
    let mut r = if none_match(headers, etag.as_bytes()) {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(body));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        r
    };
    r.headers_mut().insert(ETAG, etag);
    r
}

/// Whether the request's `If-None-Match` names `etag` (quoted, strong), so
/// that the client's copy is current: RFC 9110 section 13.1.2 compares
/// weakly (`W/"x"` names `"x"`), and `*` names any. The header may come
/// as several fields; one that is not a list of entity tags names nothing.
fn none_match(headers: &HeaderMap, etag: &[u8]) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|field| field_names(field.as_bytes(), etag))
}

/// Whether one `If-None-Match` field value, `*` or a comma-separated list
/// of entity tags, names `etag`.
fn field_names(field: &[u8], etag: &[u8]) -> bool {
    if field.trim_ascii() == b"*" {
        return true;
    }
    let mut named = false;
    // Every tag is read, so that a malformed list names nothing, whichever
    // tag in it is the bad one. Empty elements are allowed (RFC 9110
    // section 5.6.1): `, "a",, "b"`.
    let mut rest = field;
    loop {
        rest = rest.trim_ascii_start();
        let Some((&first, tail)) = rest.split_first() else {
            return named;
        };
        if first == b',' {
            rest = tail;
            continue;
        }
        let tag = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(opaque) = tag.strip_prefix(b"\"") else {
            return false;
        };
        let Some(end) = opaque.iter().position(|&b| b == b'"') else {
            return false;
        };
        // etagc: `!`, `#` to `~`, and obs-text.
        if !opaque[..end]
            .iter()
            .all(|&b| b == b'!' || (b'#'..=b'~').contains(&b) || b >= 0x80)
        {
            return false;
        }
        named |= &tag[..end + 2] == etag;
        rest = opaque[end + 1..].trim_ascii_start();
        match rest.split_first() {
            None => return named,
            Some((b',', tail)) => rest = tail,
            Some(_) => return false,
        }
    }
}

/// `response` (a 503: no generation loaded yet) with `Retry-After`.
fn retry_later(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// 421 for an id of another shard: a misrouted request must not look like
/// a missing promotion.
fn misdirected(key: u128, table: &Table) -> Response<Full<Bytes>> {
    let shard = table.header().shard;
    let its = Shard::new(Shard::of(key, shard.count()), shard.count()).expect("of < count");
    let message = format!(
        "promotion {} is in shard {its}, and this server serves shard {shard}",
        uuid::Uuid::from_u128(key),
    );
    json_error(StatusCode::MISDIRECTED_REQUEST, &message)
}

/// A batch body that could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadBody {
    /// Over [`MAX_BATCH_BYTES`].
    TooLarge,
    /// The client stopped sending it (or the connection broke).
    Incomplete,
}

/// `POST /promotions/batch`, given the whole body: `{"ids":[...]}` in,
/// `{"generation":N,"promotions":[...],"missing":[...],"invalid":[...]}`
/// out, every promotion from `table`, so one generation answers the whole
/// batch. On a shard server, ids of other shards are listed apart, in
/// `"misdirected"`. Also returns the lookups made, as (hits, misses,
/// invalid, misdirected).
pub fn batch(body: Result<&[u8], BadBody>, table: Option<&Table>) -> (Routed, [u64; 4]) {
    let routed = |response| Routed {
        route: "batch",
        response,
        lookup: None,
    };
    let body = match body {
        Ok(body) => body,
        Err(BadBody::TooLarge) => {
            let message = format!("a batch is at most {MAX_BATCH_BYTES} bytes");
            return (
                routed(json_error(StatusCode::PAYLOAD_TOO_LARGE, &message)),
                [0; 4],
            );
        }
        Err(BadBody::Incomplete) => {
            let message = "the request body was not sent whole";
            return (routed(json_error(StatusCode::BAD_REQUEST, message)), [0; 4]);
        }
    };
    let ids = match parse_batch(body) {
        Ok(ids) => ids,
        Err((status, message)) => return (routed(json_error(status, &message)), [0; 4]),
    };
    let Some(table) = table else {
        let r = json_error(StatusCode::SERVICE_UNAVAILABLE, "no generation loaded yet");
        return (routed(retry_later(r)), [0; 4]);
    };
    let shard = table.header().shard;
    let mut counts = [0u64; 4];
    let mut found = Vec::with_capacity(64 + ids.len() * 110);
    let (mut missing, mut invalid, mut misdirected) = (Vec::new(), Vec::new(), Vec::new());
    let keys: Vec<Option<u128>> = ids
        .iter()
        .map(|id| ingest::parse_id(id.as_bytes()))
        .collect();
    // Overlap the memory reads of the whole batch: every fanout entry,
    // then every record, in flight together, instead of two misses in
    // turn per id.
    for &key in keys.iter().flatten() {
        table.prefetch_fanout(key);
    }
    for &key in keys.iter().flatten() {
        table.prefetch_record(key);
    }
    for (id, &key) in ids.iter().zip(&keys) {
        if key.is_some_and(|k| !shard.contains(k)) {
            misdirected.push(id);
            counts[3] += 1;
            continue;
        }
        match key.map(|key| table.get(key)) {
            Some(Some(record)) => {
                found.push(if counts[0] == 0 { b'[' } else { b',' });
                record.write_json(&mut found);
                counts[0] += 1;
            }
            Some(None) => {
                missing.push(id);
                counts[1] += 1;
            }
            None => {
                invalid.push(id);
                counts[2] += 1;
            }
        }
    }
    if counts[0] == 0 {
        found.push(b'[');
    }
    found.push(b']');
    let mut out = Vec::with_capacity(found.len() + 64);
    out.extend_from_slice(
        format!("{{\"generation\":{},\"promotions\":", table.sequence()).as_bytes(),
    );
    out.extend_from_slice(&found);
    out.extend_from_slice(b",\"missing\":");
    serde_json::to_writer(&mut out, &missing).expect("strings serialize");
    out.extend_from_slice(b",\"invalid\":");
    serde_json::to_writer(&mut out, &invalid).expect("strings serialize");
    if !shard.is_whole() {
        out.extend_from_slice(b",\"misdirected\":");
        serde_json::to_writer(&mut out, &misdirected).expect("strings serialize");
    }
    out.push(b'}');
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
        .headers_mut()
        .insert(GENERATION_HEADER, generation_header(table.sequence()));
    (routed(response), counts)
}

/// The ids of a batch body, or the status and message that refuse it.
fn parse_batch(body: &[u8]) -> Result<Vec<String>, (StatusCode, String)> {
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string());
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("the body is not JSON: {e}")))?;
    let ids = value
        .get("ids")
        .and_then(|ids| ids.as_array())
        .ok_or_else(|| bad("expected {\"ids\":[\"<id>\", ...]}"))?;
    if ids.len() > MAX_BATCH_IDS {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} ids, but a batch is at most {MAX_BATCH_IDS}", ids.len()),
        ));
    }
    ids.iter()
        .map(|id| id.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("every id must be a string"))
}

/// The id in a promotion URL, parsed as a feed's ids are
/// ([`ingest::parse_id`]). Percent-encoded characters are decoded first
/// (`%2D` is `-`, as RFC 3986 makes them equivalent); what does not decode
/// to a UUID is `None`.
pub(super) fn id_in_url(id: &str) -> Option<u128> {
    if !id.contains('%') {
        return ingest::parse_id(id.as_bytes());
    }
    // The longest accepted form, urn:uuid:..., is 45 bytes.
    let mut decoded = [0u8; 64];
    let (mut n, mut rest) = (0, id.as_bytes());
    while let Some((&b, tail)) = rest.split_first() {
        let (byte, tail) = match (b, tail) {
            (b'%', [h, l, tail @ ..]) => {
                let hex = |c: u8| (c as char).to_digit(16);
                ((hex(*h)? * 16 + hex(*l)?) as u8, tail)
            }
            (b'%', _) => return None,
            _ => (b, tail),
        };
        *decoded.get_mut(n)? = byte;
        n += 1;
        rest = tail;
    }
    ingest::parse_id(&decoded[..n])
}

/// The `x-promo-generation` value, formatted once per generation and thread.
fn generation_header(sequence: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((s, value)) if *s == sequence => value.clone(),
        _ => {
            let value = HeaderValue::from(sequence);
            *last = Some((sequence, value.clone()));
            value
        }
    })
}

/// `{"error":message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
    }
    json(status, &ErrorBody { error: message })
}

/// `GET /openapi.json`: `port`'s part of the OpenAPI document.
pub(crate) fn openapi(port: Port) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(crate::server::openapi::part(port)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

/// `body` as JSON with `status`.
pub(crate) fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("answers serialize to JSON");
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 405, with the methods `allow`ed.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::format::Writer;
    use crate::generation::record::Price;
    use http_body_util::BodyExt;
    use std::future::Future;

    const ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";

    fn table(dir: &std::path::Path) -> Table {
        let path = dir.join("t.promo");
        let key = uuid::Uuid::parse_str(ID).unwrap().as_u128();
        let mut w = Writer::new(std::fs::File::create(&path).unwrap(), &path, 1).unwrap();
        w.push_row(
            key,
            Price::new(60683466, 6).unwrap(),
            b"2018-08-04 05:32:31 +0200 CEST",
        )
        .unwrap();
        w.finish().unwrap();
        Table::open_verified(&path, 42).unwrap()
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        let bytes = block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Runs a future to completion on a small runtime.
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Shard 3/4 (ids from `c` to `f`) holding `ID` (it starts with `d`).
    fn shard_table(dir: &std::path::Path) -> Table {
        let path = dir.join("s.promo");
        let key = uuid::Uuid::parse_str(ID).unwrap().as_u128();
        let shard = crate::generation::shard::Shard::new(3, 4).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        let mut w = Writer::new(file, &path, 1).unwrap().with_shard(shard);
        w.push_row(key, Price::new(5, 0).unwrap(), b"2018-08-04 05:32:31")
            .unwrap();
        w.finish().unwrap();
        Table::open_verified(&path, 9).unwrap()
    }

    #[test]
    fn a_shard_answers_ids_of_other_shards_421_never_404() {
        let dir = tempfile::tempdir().unwrap();
        let t = shard_table(dir.path());
        let hit = route(&Method::GET, &format!("/promotions/{ID}"), Some(&t), None);
        assert_eq!(hit.response.status(), StatusCode::OK);
        // In range but absent: a real miss.
        let miss = "/promotions/ffffffff-0000-4000-8000-000000000000";
        let r = route(&Method::GET, miss, Some(&t), None);
        assert_eq!(
            (r.response.status(), r.lookup),
            (StatusCode::NOT_FOUND, Some(Lookup::Miss))
        );
        // Out of range, either case: misrouted.
        for id in [
            "3fffffff-0000-4000-8000-000000000000",
            "0A000000-0000-4000-8000-00000000000F",
        ] {
            let r = route(&Method::GET, &format!("/promotions/{id}"), Some(&t), None);
            assert_eq!(r.lookup, Some(Lookup::Misdirected), "{id}");
            assert_eq!(r.response.status(), StatusCode::MISDIRECTED_REQUEST);
            let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
            let error = v["error"].as_str().unwrap();
            assert!(
                error.contains("shard 0/4") && error.contains("serves shard 3/4"),
                "{error}"
            );
        }
        let ready = route(&Method::GET, "/readyz", Some(&t), None);
        assert_eq!(body(ready.response), "ready: generation 9, shard 3/4\n");
        let ids = format!(r#"{{"ids":["{ID}","10000000-0000-4000-8000-000000000000","x"]}}"#);
        let (r, counts) = batch(Ok(ids.as_bytes()), Some(&t));
        assert_eq!(counts, [1, 0, 1, 1]);
        let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
        assert_eq!(v["misdirected"][0], "10000000-0000-4000-8000-000000000000");
        assert_eq!(v["missing"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn promotions_hit_miss_invalid_and_methods() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let r = route(&Method::GET, &format!("/promotions/{ID}"), Some(&t), None);
        assert_eq!(r.route, "promotions");
        assert_eq!(r.lookup, Some(Lookup::Hit));
        assert_eq!(r.response.status(), StatusCode::OK);
        assert_eq!(r.response.headers()[GENERATION_HEADER], "42");
        assert_eq!(r.response.headers()[CONTENT_TYPE], JSON);
        assert_eq!(
            body(r.response),
            r#"{"id":"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118","price":60.683466,"expiration_date":"2018-08-04 05:32:31 +0200 CEST"}"#
        );
        let upper = route(
            &Method::GET,
            &format!("/promotions/{}", ID.to_uppercase()),
            Some(&t),
            None,
        );
        assert_eq!(upper.response.status(), StatusCode::OK);
        for path in [
            "/promotions/00000000-0000-0000-0000-000000000000",
            "/promotions/nope",
            "/promotions/",
        ] {
            let r = route(&Method::GET, path, Some(&t), None);
            assert_eq!(r.response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(r.response.headers()[GENERATION_HEADER], "42");
            let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
            assert!(v["error"].is_string());
        }
        let post = route(&Method::POST, &format!("/promotions/{ID}"), Some(&t), None);
        assert_eq!(post.response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.response.headers()[ALLOW], "GET, HEAD");
        assert_eq!(post.response.headers()[GENERATION_HEADER], "42");
    }

    #[test]
    fn a_batch_answers_found_missing_and_invalid_ids_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let absent = "00000000-0000-4000-8000-000000000000";
        let ask = serde_json::json!({"ids": [ID.to_uppercase(), absent, "nope", ID]}).to_string();
        let (r, counts) = batch(Ok(ask.as_bytes()), Some(&t));
        assert_eq!(r.route, "batch");
        assert_eq!(counts, [2, 1, 1, 0]);
        assert_eq!(r.response.status(), StatusCode::OK);
        assert_eq!(r.response.headers()[GENERATION_HEADER], "42");
        let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
        assert_eq!(v["generation"], 42);
        let one = serde_json::json!({
            "id": ID, "price": 60.683466, "expiration_date": "2018-08-04 05:32:31 +0200 CEST"
        });
        assert_eq!(v["promotions"], serde_json::json!([one.clone(), one]));
        assert_eq!(v["missing"], serde_json::json!([absent]));
        assert_eq!(v["invalid"], serde_json::json!(["nope"]));

        let (empty, _) = batch(Ok(br#"{"ids":[]}"#), Some(&t));
        assert_eq!(
            body(empty.response),
            r#"{"generation":42,"promotions":[],"missing":[],"invalid":[]}"#
        );
    }

    #[test]
    fn a_large_batch_answers_each_id_as_a_single_lookup_does() {
        // Many buckets and records, so the batch's prefetching runs ahead
        // of lookups in other buckets than the one it answers.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.promo");
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut keys: Vec<u128> = (0..20_000)
            .map(|_| (u128::from(next()) << 64) | u128::from(next()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut w = Writer::new(
            std::fs::File::create(&path).unwrap(),
            &path,
            keys.len() as u64,
        )
        .unwrap();
        for (i, &k) in keys.iter().enumerate() {
            let price = Price::new(i as u64, 2).unwrap();
            w.push_row(k, price, b"2030-01-01 00:00:00").unwrap();
        }
        w.finish().unwrap();
        let t = Table::open_verified(&path, 7).unwrap();
        // Every fourth id absent, every seventh not an id, in a random order.
        let ids: Vec<String> = (0..1000u64)
            .map(|i| match (i % 4, i % 7) {
                (_, 0) => format!("not-{i}"),
                (0, _) => uuid::Uuid::from_u128((u128::from(next()) << 64) | 1).to_string(),
                _ => uuid::Uuid::from_u128(keys[(next() % keys.len() as u64) as usize]).to_string(),
            })
            .collect();
        let ask = serde_json::json!({ "ids": ids }).to_string();
        let (r, _) = batch(Ok(ask.as_bytes()), Some(&t));
        let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
        let (mut found, mut missing, mut invalid) = (Vec::new(), Vec::new(), Vec::new());
        for id in &ids {
            match ingest::parse_id(id.as_bytes()) {
                None => invalid.push(serde_json::json!(id)),
                Some(key) => match t.get(key) {
                    Some(record) => {
                        let mut one = Vec::new();
                        record.write_json(&mut one);
                        found.push(serde_json::from_slice::<serde_json::Value>(&one).unwrap());
                    }
                    None => missing.push(serde_json::json!(id)),
                },
            }
        }
        assert!(found.len() > 500 && missing.len() > 100 && invalid.len() > 100);
        assert_eq!(v["promotions"], serde_json::Value::Array(found));
        assert_eq!(v["missing"], serde_json::Value::Array(missing));
        assert_eq!(v["invalid"], serde_json::Value::Array(invalid));
    }

    #[test]
    fn a_bad_batch_gets_a_clear_status() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let too_many = serde_json::json!({ "ids": vec![ID; MAX_BATCH_IDS + 1] }).to_string();
        let just_enough = serde_json::json!({ "ids": vec![ID; MAX_BATCH_IDS] }).to_string();
        for (body_in, status) in [
            (Ok(too_many.as_bytes()), StatusCode::PAYLOAD_TOO_LARGE),
            (Err(BadBody::TooLarge), StatusCode::PAYLOAD_TOO_LARGE),
            (Err(BadBody::Incomplete), StatusCode::BAD_REQUEST),
            (Ok(&b"{\"ids\": [1]}"[..]), StatusCode::BAD_REQUEST),
            (Ok(&b"{\"id\": []}"[..]), StatusCode::BAD_REQUEST),
            (Ok(&b"{\"ids\": "[..]), StatusCode::BAD_REQUEST),
            (Ok(&b"[]"[..]), StatusCode::BAD_REQUEST),
            (Ok(just_enough.as_bytes()), StatusCode::OK),
        ] {
            let (r, _) = batch(body_in, Some(&t));
            assert_eq!(r.response.status(), status, "{body_in:?}");
            let v: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
            assert!(status == StatusCode::OK || v["error"].is_string());
        }
        let (r, _) = batch(Ok(br#"{"ids":[]}"#), None);
        assert_eq!(r.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let get = route(&Method::GET, BATCH, Some(&t), None);
        assert_eq!(get.route, "batch");
        assert_eq!(get.response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get.response.headers()[ALLOW], "POST");
    }

    #[test]
    fn without_a_generation_lookups_are_unavailable_and_not_ready() {
        let r = route(&Method::GET, &format!("/promotions/{ID}"), None, None);
        assert_eq!(r.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.response.headers()[GENERATION_HEADER], "0");
        let ready = route(&Method::GET, "/readyz", None, None);
        assert_eq!(ready.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            route(&Method::GET, "/healthz", None, None)
                .response
                .status(),
            StatusCode::OK
        );
    }

    #[test]
    fn every_503_says_when_to_retry_and_other_answers_do_not() {
        let retry = RETRY_AFTER_SECONDS.to_string();
        let lookup = route(&Method::GET, &format!("/promotions/{ID}"), None, None);
        let ready = route(&Method::GET, "/readyz", None, None);
        let (batched, _) = batch(Ok(br#"{"ids":[]}"#), None);
        for r in [lookup.response, ready.response, batched.response] {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[RETRY_AFTER], retry.as_str());
        }
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        for target in [
            format!("/promotions/{ID}"),
            "/readyz".into(),
            "/nope".into(),
        ] {
            let r = route(&Method::GET, &target, Some(&t), None);
            assert!(!r.response.headers().contains_key(RETRY_AFTER), "{target}");
        }
    }

    /// `method` of `ID` in `t`, with one `If-None-Match` field per item of
    /// `fields`.
    fn conditional(t: &Table, method: &Method, fields: &[&str]) -> Response<Full<Bytes>> {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(IF_NONE_MATCH, HeaderValue::from_str(field).unwrap());
        }
        let target = format!("/promotions/{ID}");
        route_from(method, &target, &headers, Some(t), None, None).response
    }

    /// A table holding `ID` at `price` (and `others` rows before it), with
    /// a date in a zone the others do not use.
    fn priced_table(dir: &std::path::Path, name: &str, price: u64, others: u128) -> Table {
        let path = dir.join(name);
        let key = uuid::Uuid::parse_str(ID).unwrap().as_u128();
        let n = others as u64 + 1;
        let mut w = Writer::new(std::fs::File::create(&path).unwrap(), &path, n).unwrap();
        for i in 1..=others {
            w.push_row(i, Price::new(1, 0).unwrap(), b"2030-01-01T00:00:00Z")
                .unwrap();
        }
        w.push_row(
            key,
            Price::new(price, 2).unwrap(),
            b"2031-02-03 04:05:06 +0200 CEST",
        )
        .unwrap();
        w.finish().unwrap();
        Table::open_verified(&path, 5).unwrap()
    }

    #[test]
    fn a_hit_has_a_strong_etag_of_its_body_and_a_client_holding_it_gets_304() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let hit = conditional(&t, &Method::GET, &[]);
        assert_eq!(hit.status(), StatusCode::OK);
        let etag = hit.headers()[ETAG].to_str().unwrap().to_owned();
        let json = body(hit);
        assert_eq!(
            etag,
            format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(json.as_bytes()))
        );
        let weak = format!("W/{etag}");
        let listed = format!(r#""x", {etag}, "y""#);
        let holding: [&[&str]; 5] = [
            &[&etag],
            &[&weak],
            &["*"],
            &[&listed],
            // Two fields, the first of them not a list of tags.
            &["nonsense", &etag],
        ];
        for fields in holding {
            for method in [Method::GET, Method::HEAD] {
                let r = conditional(&t, &method, fields);
                assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{fields:?}");
                assert_eq!(r.headers()[ETAG], etag.as_str());
                assert_eq!(r.headers()[GENERATION_HEADER], "42");
                assert!(!r.headers().contains_key(CONTENT_TYPE));
                assert_eq!(body(r), "");
            }
        }
        let bare = etag.trim_matches('"').to_owned();
        let other: [&[&str]; 4] = [
            &[r#""0000000000000000""#],
            &[&bare],
            &[&format!("{etag} garbage")],
            &[r#""x""#, r#""y""#],
        ];
        for fields in other {
            let r = conditional(&t, &Method::GET, fields);
            assert_eq!(r.status(), StatusCode::OK, "{fields:?}");
            assert_eq!(r.headers()[ETAG], etag.as_str());
            assert_eq!(body(r), json);
        }
        // No promotion, no representation: `*` names nothing.
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        let miss = "/promotions/00000000-0000-4000-8000-000000000000";
        let r = route_from(&Method::GET, miss, &headers, Some(&t), None, None).response;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(!r.headers().contains_key(ETAG));
    }

    #[test]
    fn the_etag_follows_the_promotion_not_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let etag = |t: &Table| conditional(t, &Method::GET, &[]).headers()[ETAG].clone();
        let alone = priced_table(dir.path(), "a.promo", 1999, 0);
        // Another file (another checksum, and its zone at another index in
        // the zone table) holding the same promotion: the same tag.
        let among_others = priced_table(dir.path(), "b.promo", 1999, 3);
        assert_ne!(
            alone.header().body_checksum,
            among_others.header().body_checksum
        );
        let key = uuid::Uuid::parse_str(ID).unwrap().as_u128();
        let record = |t: &Table| t.get(key).unwrap().bytes().to_vec();
        assert_ne!(record(&alone), record(&among_others));
        assert_eq!(etag(&alone), etag(&among_others));
        // Another price: another tag.
        let repriced = priced_table(dir.path(), "c.promo", 2099, 3);
        assert_ne!(etag(&among_others), etag(&repriced));
    }

    #[test]
    fn if_none_match_compares_weakly_and_reads_lists_and_star() {
        let names = |field: &str| field_names(field.as_bytes(), br#""abc""#);
        for yes in [
            r#""abc""#,
            r#"W/"abc""#,
            "*",
            " * ",
            r#""x", "abc""#,
            r#""x",W/"abc""#,
            "\t\"abc\" ,\t\"y\"",
            r#", "abc",,"#,
            // A comma inside a tag is part of it.
            r#""a,b", "abc""#,
            "\"\u{80}\", \"abc\"",
        ] {
            assert!(names(yes), "{yes:?} should name it");
        }
        for no in [
            "",
            " , ",
            r#""ab""#,
            r#""abcd""#,
            r#""ABC""#,
            "abc",
            r#"w/"abc""#,
            r#"W/ "abc""#,
            r#"W/"abc"#,
            r#""abc" "x""#,
            r#""abc", x"#,
            r#""abc"x"#,
            r#""a b", "abc""#,
            r#""a\"", "abc""#,
            "**",
            r#"*, "abc""#,
        ] {
            assert!(!names(no), "{no:?} should not name it");
        }
    }

    #[test]
    fn other_routes() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        assert_eq!(
            route(&Method::GET, "/readyz", Some(&t), None)
                .response
                .status(),
            StatusCode::OK
        );
        let r = route(&Method::GET, "/promotions", Some(&t), None);
        assert_eq!(
            (r.route, r.response.status()),
            ("other", StatusCode::NOT_FOUND)
        );
        let r = route(&Method::DELETE, "/healthz", Some(&t), None);
        assert_eq!(r.response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn targets_are_matched_as_sent_with_the_query_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let status = |target: &str| {
            route(&Method::GET, target, Some(&t), None)
                .response
                .status()
        };
        assert_eq!(status(&format!("/promotions/{ID}?a=1&b")), StatusCode::OK);
        assert_eq!(status("/healthz?"), StatusCode::OK);
        let encoded = ID.replace('-', "%2d");
        assert_eq!(status(&format!("/promotions/{encoded}")), StatusCode::OK);
        for odd in [
            format!("/promotions/{ID}/"),
            format!("//promotions/{ID}"),
            format!("/promotions//{ID}"),
            format!("/promotions/./{ID}"),
            format!("/promotions/{ID}%"),
            format!("/promotions/{ID}%2"),
            "/promotions/%zz".to_owned(),
            format!("/promotions/{}", "%41".repeat(70)),
            "/".to_owned(),
            "*".to_owned(),
            String::new(),
        ] {
            assert_eq!(status(&odd), StatusCode::NOT_FOUND, "{odd:?}");
        }
        let longest = format!("/healthz?{}", "x".repeat(MAX_TARGET_LEN - 9));
        assert_eq!(status(&longest), StatusCode::OK);
        assert_eq!(status(&format!("{longest}x")), StatusCode::URI_TOO_LONG);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A table of `n` keys 0, 2^120, 2*2^120, ... (so none is 0 or 1).
        fn keys_table(dir: &std::path::Path, n: u128) -> Table {
            let path = dir.join("k.promo");
            let mut w =
                Writer::new(std::fs::File::create(&path).unwrap(), &path, n as u64).unwrap();
            for i in 1..=n {
                let price = Price::new(i as u64, 2).unwrap();
                w.push_row(i << 120, price, b"2030-01-01").unwrap();
            }
            w.finish().unwrap();
            Table::open_verified(&path, 7).unwrap()
        }

        proptest! {
            #[test]
            fn any_request_gets_a_defined_answer(
                method in "[A-Z]{1,8}",
                target in ".{0,80}|/promotions/.{0,60}",
                loaded in any::<bool>(),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let t = keys_table(dir.path(), 3);
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let r = route(&method, &target, loaded.then_some(&t), None);
                let status = r.response.status();
                let allowed = [200, 404, 405, 503];
                prop_assert!(allowed.contains(&status.as_u16()), "{} for {:?}", status, target);
                prop_assert!(status != StatusCode::SERVICE_UNAVAILABLE || !loaded);
                let retry = r.response.headers().contains_key(RETRY_AFTER);
                prop_assert_eq!(retry, status == StatusCode::SERVICE_UNAVAILABLE);
                prop_assert_eq!(r.lookup.is_some(), r.route == "promotions" && loaded && matches!(method, Method::GET | Method::HEAD));
            }

            #[test]
            fn every_spelling_of_a_stored_id_finds_it(
                i in 1u128..=16,
                spelling in 0..5,
                encode in proptest::collection::vec(any::<bool>(), 36),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let t = keys_table(dir.path(), 16);
                let u = uuid::Uuid::from_u128(i << 120);
                let id = match spelling {
                    0 => u.hyphenated().to_string(),
                    1 => u.simple().to_string(),
                    2 => u.hyphenated().to_string().to_uppercase(),
                    3 => u.braced().to_string(),
                    // Any characters percent-encoded.
                    _ => u
                        .hyphenated()
                        .to_string()
                        .chars()
                        .zip(&encode)
                        .map(|(c, &e)| if e { format!("%{:02X}", c as u32) } else { c.to_string() })
                        .collect(),
                };
                let r = route(&Method::GET, &format!("/promotions/{id}"), Some(&t), None);
                prop_assert_eq!(r.lookup, Some(Lookup::Hit));
                let json: serde_json::Value = serde_json::from_str(&body(r.response)).unwrap();
                prop_assert_eq!(json["id"].as_str().unwrap(), u.hyphenated().to_string());
                prop_assert_eq!(json["price"].as_f64().unwrap(), i as f64 / 100.0);
            }
        }
    }
}
