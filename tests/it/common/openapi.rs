//! Every answer the tests receive, checked against docs/openapi.json: its
//! status must be one the document gives for the method and path, its
//! content type the one the document names for that status, and a JSON
//! body must validate against the document's schema (JSON Schema 2020-12).
//! The tests' HTTP client ([`super::read_response`]'s callers) and curl
//! helpers call [`check`], so the document cannot drift from what the
//! server does without a test failing.
//!
//! Each checked answer adds a line to `target/tmp/openapi-checked.log`
//! (`make test` counts them).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use promo::server::openapi::serves;
use serde_json::{json, Value};

/// The document, as the server compiles it in.
pub static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let text = include_str!("../../../docs/openapi.json");
    serde_json::from_str(text).expect("docs/openapi.json is JSON")
});

/// One answer as a client saw it.
pub struct Answer<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// A HEAD request's answer has no body to check.
    pub head: bool,
}

/// Panics, naming the request, unless `answer` is one the document allows
/// for `method` on `target` (a path, with or without a query).
pub fn check(method: &str, target: &str, answer: &Answer) {
    if let Err(why) = check_against(&DOCUMENT, method, target, answer) {
        panic!(
            "{method} {target} answered {} ({:?}): not as docs/openapi.json says: {why}\nbody: {}",
            answer.status,
            answer.content_type,
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(500)])
        );
    }
    record(method, target, answer.status);
}

/// [`check`] against `doc`: what is wrong, if anything.
pub fn check_against(
    doc: &Value,
    method: &str,
    target: &str,
    answer: &Answer,
) -> Result<(), String> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let method = method.to_ascii_lowercase();
    let item = find_path(doc, path);
    let documented = match item {
        Some(item) => match item.get(&method) {
            Some(op) => {
                let responses = &op["responses"];
                responses
                    .get(answer.status.to_string())
                    .or_else(|| responses.get("default"))
                    .ok_or_else(|| {
                        let listed: Vec<_> = responses
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k)
                            .collect();
                        format!("status {} is not among {listed:?}", answer.status)
                    })
            }
            // Methods the path does not take: the document says what they get.
            None => item
                .get("x-promo-other-methods")
                .filter(|o| o["status"] == answer.status)
                .map(|o| &o["response"])
                .ok_or_else(|| {
                    format!(
                        "no {method} on {path}, and status {} is not what other methods get",
                        answer.status
                    )
                }),
        },
        None => Err(format!("no path matches {path}")),
    };
    // On a port that does not serve the path, it is a path like any other
    // it does not know.
    let response = match documented {
        Ok(response) => response,
        Err(why) => {
            let elsewhere = |port: &str| item.is_none_or(|item| !serves(item, port));
            unmatched(doc, &method, answer.status, elsewhere).ok_or_else(|| {
                format!(
                    "{why}; nor is {} what a port without the path answers",
                    answer.status
                )
            })?
        }
    };
    let response = resolve(doc, response)?;
    let content = response.get("content").and_then(Value::as_object);
    let Some(content) = content.filter(|c| !c.is_empty()) else {
        return match answer.body.is_empty() || answer.head {
            true => Ok(()),
            false => Err("the document gives this answer no body".into()),
        };
    };
    let got = answer
        .content_type
        .ok_or("the answer has no content type, and the document gives it one")?;
    let media = content
        .iter()
        .find(|(k, _)| same_media_type(k, got))
        .map(|(_, v)| v)
        .ok_or_else(|| {
            let listed: Vec<_> = content.keys().collect();
            format!("content type {got:?} is not among {listed:?}")
        })?;
    if answer.head || !essence(got).ends_with("json") {
        return Ok(());
    }
    let Some(schema) = media.get("schema") else {
        return Ok(());
    };
    let body: Value =
        serde_json::from_slice(answer.body).map_err(|e| format!("the body is not JSON: {e}"))?;
    validate(doc, schema, &body)
}

/// Validates `instance` against `schema`, whose `$ref`s point into `doc`.
/// The schemas of [`DOCUMENT`] are compiled once each.
pub fn validate(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    type Compiled = HashMap<String, Arc<jsonschema::Validator>>;
    static COMPILED: LazyLock<Mutex<Compiled>> = LazyLock::new(Default::default);
    let validator = if std::ptr::eq(doc, &*DOCUMENT) {
        let key = schema.to_string();
        let cached = COMPILED.lock().unwrap().get(&key).cloned();
        match cached {
            Some(v) => v,
            None => {
                let v = Arc::new(compile(doc, schema)?);
                COMPILED.lock().unwrap().insert(key, v.clone());
                v
            }
        }
    } else {
        Arc::new(compile(doc, schema)?)
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the body does not match its schema: {}",
            errors.join("; ")
        )),
    }
}

/// `schema` as a JSON Schema 2020-12 validator, with `doc`'s components
/// beside it for its references to resolve in.
fn compile(doc: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
    });
    let map = root.as_object_mut().unwrap();
    match schema {
        Value::Object(s) => map.extend(s.clone()),
        other => return Err(format!("a schema that is not an object: {other}")),
    }
    jsonschema::validator_for(&root).map_err(|e| format!("the schema does not compile: {e}"))
}

/// The path item for `path`: the one written as it is, else the first
/// template (`/promotions/{id}`) whose fixed segments match.
fn find_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let paths = doc["paths"].as_object()?;
    if let Some(item) = paths.get(path) {
        return Some(item);
    }
    let segments: Vec<&str> = path.split('/').collect();
    paths.iter().find_map(|(template, item)| {
        let parts: Vec<&str> = template.split('/').collect();
        let fits = parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s);
        fits.then_some(item)
    })
}

/// What a path a port does not serve gets there (`x-promo-unmatched`), if
/// it is `status` on one of the ports `on` accepts.
fn unmatched<'a>(
    doc: &'a Value,
    method: &str,
    status: u16,
    on: impl Fn(&str) -> bool,
) -> Option<&'a Value> {
    let ports = doc.get("x-promo-unmatched")?.as_object()?;
    let get = matches!(method, "get" | "head");
    ports
        .iter()
        .filter(|(port, _)| on(port))
        .flat_map(|(_, p)| p.as_object().into_iter().flatten())
        .find_map(|(methods, what)| {
            let applies = match methods.as_str() {
                "GET, HEAD" => get,
                "other methods" => !get,
                _ => true,
            };
            (applies && what["status"] == status).then(|| &what["response"])
        })
}

/// `v`, or what its `$ref` points to (and so on).
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..8 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| format!("{r}: not in the document"))?;
                v = doc
                    .pointer(pointer)
                    .ok_or_else(|| format!("{r}: resolves to nothing"))?;
            }
            None => return Ok(v),
        }
    }
    Err("references nest too deep".into())
}

/// The media type without its parameters, lowercased.
fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether the document's media type `listed` is the answer's `got`: the
/// same type, and every parameter the document names, with its value.
fn same_media_type(listed: &str, got: &str) -> bool {
    let params = |m: &str| -> Vec<String> {
        m.split(';')
            .skip(1)
            .map(|p| p.trim().to_ascii_lowercase().replace(' ', ""))
            .filter(|p| !p.is_empty())
            .collect()
    };
    let (want, have) = (params(listed), params(got));
    essence(listed) == essence(got)
        && want.iter().all(|p| have.contains(p))
        && want.len() == have.len()
}

fn record(method: &str, target: &str, status: u16) {
    let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/openapi-checked.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let _ = writeln!(f, "{method} {path} {status}");
    }
}
