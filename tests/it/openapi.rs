//! docs/openapi.json against a real server: each port serves its own part
//! of it, the check every test's answers go through (common::openapi)
//! fails on a schema broken on purpose, and a client generated from the
//! document with openapi-python-client looks promotions up, sends a batch
//! and uploads a feed.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::openapi::{check_against, Answer, DOCUMENT};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "openapi-test-token";

/// A server with a generation of 100 ids of set 1, and an admin port.
struct Ports {
    server: Server,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Ports {
    fn start() -> Ports {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        build_ok(&data, &feed(dir.path(), 1), &[]);
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let (server, admin) = Server::start_with_admin(&data, &token, &[]);
        Ports { server, admin, dir }
    }

    fn public_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

/// A feed of 100 rows of id set `set`.
fn feed(dir: &Path, set: u64) -> PathBuf {
    let path = dir.join(format!("feed-{set}.csv"));
    let rows: Vec<_> = (0..100)
        .map(|i| (id(set, i), format!("{i}.25"), "2030-01-01 00:00:00".into()))
        .collect();
    write_csv(&path, &rows);
    path
}

fn paths(doc: &Value) -> Vec<String> {
    let mut p: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    p.sort();
    p
}

#[test]
fn each_port_serves_its_part_of_the_document() {
    let ports = Ports::start();
    // Every answer below is also checked against the document itself.
    let public = ports.server.get("/openapi.json");
    assert_eq!(public.status, 200);
    let public = public.json();
    let (code, _) = curl(&[&format!("{}/openapi.json", ports.admin_url())]);
    assert_eq!(code, 401, "the admin port's part asks for the token too");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (code, admin) = curl(&["-H", &auth, &format!("{}/openapi.json", ports.admin_url())]);
    assert_eq!(code, 200);
    let admin: Value = serde_json::from_str(&admin).unwrap();

    let (p, a) = (paths(&public), paths(&admin));
    assert!(
        p.contains(&"/promotions/{id}".into()) && p.contains(&"/promotions/batch".into()),
        "{p:?}"
    );
    assert!(!p.contains(&"/upload".into()), "{p:?}");
    assert!(
        a.contains(&"/upload".into()) && a.contains(&"/rollback".into()),
        "{a:?}"
    );
    assert!(!a.contains(&"/promotions/{id}".into()), "{a:?}");
    let mut both: Vec<String> = p.iter().chain(&a).cloned().collect();
    both.sort();
    both.dedup();
    assert_eq!(
        both,
        paths(&DOCUMENT),
        "the two parts make the whole document"
    );
    for part in [&public, &admin] {
        assert_eq!(part["openapi"], "3.1.0");
        assert_eq!(part["components"], DOCUMENT["components"]);
    }
}

#[test]
fn a_schema_broken_on_purpose_fails_the_check() {
    let ports = Ports::start();
    let target = format!("/promotions/{}", id(1, 7));
    let hit = ports.server.get(&target);
    assert_eq!(hit.status, 200);
    let answer = Answer {
        status: hit.status,
        content_type: hit.header("content-type"),
        body: &hit.body,
        head: false,
    };
    assert_eq!(check_against(&DOCUMENT, "GET", &target, &answer), Ok(()));

    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut doc = DOCUMENT.clone();
        edit(&mut doc);
        check_against(&doc, "GET", &target, &answer).expect_err("the broken document passed")
    };
    let promotion = "/components/schemas/Promotion";
    let why = broken(&|d| {
        *d.pointer_mut(&format!("{promotion}/properties/price"))
            .unwrap() = json!({"type": "string"});
    });
    assert!(
        why.contains("does not match its schema") && why.contains("/price"),
        "{why}"
    );
    let why = broken(&|d| {
        let required = d.pointer_mut(&format!("{promotion}/required")).unwrap();
        required.as_array_mut().unwrap().push(json!("currency"));
    });
    assert!(why.contains("currency"), "{why}");
    let why = broken(&|d| {
        let ok = d
            .pointer_mut("/paths/~1promotions~1{id}/get/responses/200/content")
            .unwrap();
        let json = ok
            .as_object_mut()
            .unwrap()
            .remove("application/json")
            .unwrap();
        ok.as_object_mut()
            .unwrap()
            .insert("text/plain".into(), json);
    });
    assert!(why.contains("content type"), "{why}");
    let why = broken(&|d| {
        let responses = d
            .pointer_mut("/paths/~1promotions~1{id}/get/responses")
            .unwrap();
        responses.as_object_mut().unwrap().remove("200");
    });
    assert!(why.contains("status 200"), "{why}");
}

#[test]
fn a_client_generated_from_the_document_looks_up_batches_and_uploads() {
    let ports = Ports::start();
    let generator = on_path("openapi-python-client");
    // The generator's own environment has what the client imports.
    let python = generator.parent().unwrap().join("python");
    let config = ports.dir.path().join("generator.yaml");
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let client = ports.dir.path().join("promo_client");
    let out = Command::new(&generator)
        .args(["generate", "--meta", "none", "--config"])
        .arg(&config)
        .arg("--path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
        .arg("--output-path")
        .arg(&client)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("Warning"), "the generator warned: {said}");

    let next_feed = feed(ports.dir.path(), 2);
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/openapi_client.py"))
        .args([
            ports.public_url(),
            ports.admin_url(),
            TOKEN.into(),
            id(1, 3),
            id(9, 0),
        ])
        .arg(&next_feed)
        .env("PYTHONPATH", ports.dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("the generated client saw: {said}");
    let seen: Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(seen["hit"]["id"], id(1, 3));
    assert_eq!(seen["miss"], "promotion not found");
    assert_eq!(seen["batch"]["missing"], json!([id(9, 0)]));
    assert_eq!(
        seen["uploads"],
        json!([2, 3]),
        "two uploads, two new generations"
    );
    assert_eq!(seen["wrong_token"], 401);
    // And the server serves what the client uploaded.
    assert_eq!(ports.server.live_generation(), 3);
    assert_eq!(
        ports
            .server
            .get(&format!("/promotions/{}", id(2, 5)))
            .status,
        200
    );
}
