//! The OpenAPI document of both ports (docs/openapi.json), compiled in:
//! each port answers `GET /openapi.json` with its own part of it.
//!
//! The document is written by hand, for people and for client generators;
//! what keeps it true is the integration tests, which check every answer
//! they receive against it (status, content type, JSON body against its
//! schema). Each path item and server entry says which port answers it in
//! `x-promo-port`: a port's part keeps those, every component, and the
//! rest of the document as it is.

use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::Value;

/// The whole document.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `--listen`: lookups, health and metrics.
    Public,
    /// `--admin-listen`: uploads, generations and rollbacks.
    Admin,
}

impl Port {
    /// The name `x-promo-port` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Port::Public => "public",
            Port::Admin => "admin",
        }
    }
}

/// `port`'s part of the document, as JSON (made once).
pub fn part(port: Port) -> Bytes {
    static PUBLIC: LazyLock<Bytes> = LazyLock::new(|| render(Port::Public));
    static ADMIN: LazyLock<Bytes> = LazyLock::new(|| render(Port::Admin));
    match port {
        Port::Public => PUBLIC.clone(),
        Port::Admin => ADMIN.clone(),
    }
}

/// Whether `item` (a path item or a server entry) belongs to the port
/// named `port` ([`Port::name`]): its `x-promo-port` names it, alone or in
/// a list. (The tests' check of answers against the document uses it too.)
pub fn serves(item: &Value, port: &str) -> bool {
    match item.get("x-promo-port") {
        Some(Value::String(p)) => p == port,
        Some(Value::Array(ports)) => ports.iter().any(|p| p == port),
        _ => false,
    }
}

fn render(port: Port) -> Bytes {
    // The unit tests parse the document: a bad edit fails `make test`.
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.retain(|_, item| serves(item, port.name()));
    }
    if let Some(servers) = doc.get_mut("servers").and_then(Value::as_array_mut) {
        servers.retain(|s| serves(s, port.name()));
    }
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        tags.retain(|t| t["name"] == port.name());
    }
    if let Some(unmatched) = doc
        .get_mut("x-promo-unmatched")
        .and_then(Value::as_object_mut)
    {
        unmatched.retain(|name, _| name == port.name());
    }
    Bytes::from(serde_json::to_vec_pretty(&doc).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(port: Port) -> Value {
        serde_json::from_slice(&part(port)).unwrap()
    }

    /// Every `$ref` in `v`, as a JSON pointer into the document.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn each_port_has_its_own_paths_and_one_server() {
        let public = parsed(Port::Public);
        let admin = parsed(Port::Admin);
        let paths = |d: &Value| -> Vec<String> {
            d["paths"].as_object().unwrap().keys().cloned().collect()
        };
        let (p, a) = (paths(&public), paths(&admin));
        assert!(p.contains(&"/promotions/{id}".to_string()), "{p:?}");
        assert!(p.contains(&"/openapi.json".to_string()), "{p:?}");
        assert!(!p.contains(&"/upload".to_string()), "{p:?}");
        assert!(a.contains(&"/upload".to_string()), "{a:?}");
        assert!(a.contains(&"/openapi.json".to_string()), "{a:?}");
        assert!(!a.contains(&"/promotions/{id}".to_string()), "{a:?}");
        for doc in [&public, &admin] {
            assert_eq!(doc["openapi"], "3.1.0");
            assert_eq!(
                doc["servers"].as_array().unwrap().len(),
                1,
                "{}",
                doc["servers"]
            );
        }
        // Every path of the document is some port's.
        let whole: Value = serde_json::from_str(DOCUMENT).unwrap();
        let all = whole["paths"].as_object().unwrap().len();
        assert_eq!(p.len() + a.len(), all + 1, "only /openapi.json is on both");
    }

    #[test]
    fn every_reference_resolves_in_each_part() {
        for port in [Port::Public, Port::Admin] {
            let doc = parsed(port);
            let mut found = Vec::new();
            refs(&doc, &mut found);
            assert!(!found.is_empty());
            for r in found {
                let pointer = r
                    .strip_prefix('#')
                    .expect("a reference inside the document");
                assert!(
                    doc.pointer(pointer).is_some(),
                    "{port:?}: {r} resolves to nothing"
                );
            }
        }
    }
}
