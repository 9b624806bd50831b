//! The monitoring, against a real Prometheus: `python3 -m scripts.fleet`
//! (what `make fleet` runs) starts the compose topology as plain processes (a
//! file store, a builder with `--metrics-file`, two replicas, nginx,
//! node_exporter and Debian's Prometheus with the shipped configuration and
//! alerts.yml); through Prometheus's HTTP API this checks that every target
//! is up, that `promo_generation_sequence` is each replica's live
//! generation, that the rules loaded without errors, that the build's
//! metrics arrive, and that every query of the Grafana dashboard evaluates.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fleet script (`python3 -m scripts.fleet`, run from the repository's
/// root), stopped (SIGTERM, as Ctrl-C) when dropped.
struct Fleet {
    child: Child,
    urls: Value,
    _work: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let work = tempfile::tempdir().unwrap();
        let urls_file = work.path().join("urls.json");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .args(["-m", "scripts.fleet"])
            .current_dir(root)
            .args([
                "--store",
                "file",
                "--scrape-interval",
                "1s",
                "--interval",
                "3600",
            ])
            .arg("--promo")
            .arg(env!("CARGO_BIN_EXE_promo"))
            .arg("--work")
            .arg(work.path())
            .arg("--urls-file")
            .arg(&urls_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs scripts.fleet");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !urls_file.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("scripts.fleet exited before the fleet was up: {status}");
            }
            assert!(Instant::now() < deadline, "the fleet never came up");
            std::thread::sleep(Duration::from_millis(200));
        }
        let urls = serde_json::from_str(&std::fs::read_to_string(&urls_file).unwrap()).unwrap();
        Fleet {
            child,
            urls,
            _work: work,
        }
    }

    fn url(&self, name: &str) -> &str {
        self.urls[name].as_str().unwrap()
    }

    /// A Prometheus API call: its `data`, after checking `status`.
    fn api(&self, path: &str, query: Option<&str>) -> Value {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--get", "--max-time", "10"]);
        if let Some(q) = query {
            curl.arg("--data-urlencode").arg(format!("query={q}"));
        }
        let out = curl
            .arg(format!("{}{path}", self.url("prometheus")))
            .output()
            .expect("curl is needed");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    fn query(&self, q: &str) -> Vec<Value> {
        self.api("/api/v1/query", Some(q))["result"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `check` holds of Prometheus's answers.
    fn wait_until(&self, what: &str, mut check: impl FnMut(&Fleet) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check(self) {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The generation a replica says it serves on /readyz.
fn readyz_generation(url: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("{url}/readyz"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("/readyz said {text:?}"))
}

fn sample(result: &Value) -> f64 {
    result["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_the_fleet_loads_the_alerts_and_evaluates_the_dashboard() {
    let fleet = Fleet::start();
    let replicas: Vec<String> = fleet.urls["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();

    // Every target up: both replicas and the build's node_exporter.
    fleet.wait_until("every target is up", |f| {
        let targets = f.api("/api/v1/targets", None)["activeTargets"].clone();
        let targets = targets.as_array().unwrap();
        targets.len() == 3 && targets.iter().all(|t| t["health"] == "up")
    });

    // The replicas fetch the builder's generation; Prometheus sees the
    // generation each serves.
    fleet.wait_until("both replicas serve a generation", |f| {
        let r = f.query("promo_generation_sequence{job=\"promo\"} > 0");
        r.len() == 2
    });
    for url in &replicas {
        let live = readyz_generation(url);
        let instance = url.trim_start_matches("http://");
        fleet.wait_until("Prometheus has the replica's live generation", |f| {
            let r = f.query(&format!(
                "promo_generation_sequence{{instance=\"{instance}\"}}"
            ));
            r.len() == 1 && sample(&r[0]) == live as f64
        });
    }

    // A lookup through nginx, answered by a replica.
    let fixture = std::fs::read_to_string(common::fixture("promotions.csv")).unwrap();
    let id = fixture.lines().nth(1).unwrap().split(',').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/promotions/{id}", fleet.url("lookups")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // The build's --metrics-file, through node_exporter.
    fleet.wait_until("the build's metrics arrive", |f| {
        let r = f.query("promo_build_last_attempt_success");
        r.len() == 1 && sample(&r[0]) == 1.0
    });
    let generation = fleet.query("promo_build_generation");
    assert_eq!(generation.len(), 1);
    assert!(sample(&generation[0]) >= 1.0);

    // The shipped rules loaded and evaluate without errors.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    let expected = shipped.matches("- alert: ").count();
    // Nothing is wrong with this fleet, so once the rules have evaluated
    // against its data every alert is inactive: PromoBuildStale's "no build
    // metrics" branch too, since they arrived.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let groups = fleet.api("/api/v1/rules", None)["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        for r in &rules {
            assert_ne!(
                r["health"], "err",
                "rule {} fails: {}",
                r["name"], r["lastError"]
            );
        }
        assert_eq!(rules.len(), expected, "{rules:?}");
        if rules
            .iter()
            .all(|r| r["health"] == "ok" && r["state"] == "inactive")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated and inactive: {:?}",
            rules
                .iter()
                .map(|r| format!("{} {} {}", r["name"], r["health"], r["state"]))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every dashboard query evaluates, with Grafana's variables as Grafana
    // would fill them in.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let mut evaluated = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            fleet.query(&expr);
            evaluated += 1;
        }
    }
    assert!(evaluated >= 15, "{evaluated} queries");
    // And the ones that should have data do.
    for expr in [
        "sum by (status) (rate(promo_http_requests_total{job=\"promo\"}[1m]))",
        "promo_generation_age_seconds{job=\"promo\"}",
        "process_resident_memory_bytes{job=\"promo\"}",
        "process_open_fds{job=\"promo\"}",
    ] {
        fleet.wait_until(&format!("data for {expr}"), |f| !f.query(expr).is_empty());
    }
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/promo.json")
}
