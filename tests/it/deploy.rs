//! The deployment files under deploy/, each checked offline by the tool its
//! ecosystem uses: hadolint, a compose validator, the Kubernetes schemas,
//! `systemd-analyze verify` and promtool. `make test` installs them
//! (scripts/tools.sh); a test whose tool is missing fails and says which, it
//! never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

/// Runs a checker, failing the test with its output if it is missing or
/// finds something.
fn check(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed to check deploy/ ({e}); make test installs it: scripts/tools.sh")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_dockerfile_passes_hadolint() {
    check(
        "hadolint",
        &["--failure-threshold", "info", "deploy/Dockerfile"],
    );
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    // Multi-stage, the image on an empty base with no compiler, not root,
    // serving on 1321. (tests/container.rs builds and runs it.)
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "{stages:?}");
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.starts_with("scratch AS runtime"), "{runtime}");
    assert!(!runtime.contains("cargo") && !runtime.contains("rustc"));
    assert!(runtime.contains("USER 10001") && runtime.contains("EXPOSE 1321"));
    assert!(runtime.contains("CMD [\"serve\"]"));
}

#[test]
fn the_compose_file_is_valid() {
    let compose = deploy("compose.yaml");
    let compose = compose.to_str().unwrap();
    check("docker-compose", &["-f", compose, "config", "--quiet"]);
    let out = check("docker-compose", &["-f", compose, "config", "--services"]);
    let mut services: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "builder",
            "grafana",
            "nginx",
            "node-exporter",
            "prometheus",
            "replica-a",
            "replica-b",
            "s3"
        ]
    );
    // What the topology is made of: the shipped files, mounted as they are.
    let text = std::fs::read_to_string(deploy("compose.yaml")).unwrap();
    for needed in [
        "./nginx/promo.conf",
        "./prometheus/alerts.yml",
        "./grafana/promo.json",
        "--publish s3://promo/generations",
        "\"--source\", \"s3://promo/generations\"",
        "--metrics-file",
    ] {
        assert!(text.contains(needed), "compose.yaml lacks {needed}");
    }
}

#[test]
fn the_kubernetes_manifests_match_the_schemas() {
    let files: Vec<String> = std::fs::read_dir(deploy("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let out = check("kubernetes-validate", &args);
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for kind in [
        "deployment/promo",
        "configmap/promo",
        "persistentvolumeclaim/promo-store",
        "service/promo",
        "cronjob/promo-build",
        "poddisruptionbudget/promo",
        "horizontalpodautoscaler/promo",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{report}"
        );
    }
    let deployment = std::fs::read_to_string(deploy("k8s/deployment.yaml")).unwrap();
    for needed in [
        "path: /readyz",
        "path: /healthz",
        "preStop:",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "secretName: promo-tls",
        "--admin-token-file=",
        "sizeLimit:",
    ] {
        assert!(
            deployment.contains(needed),
            "deployment.yaml lacks {needed}"
        );
    }
}

#[test]
fn the_systemd_units_verify() {
    // `systemd-analyze verify` checks that ExecStart's program exists, so
    // the units are verified in a root of their own: the system's unit
    // directory, the units where they are installed, and promo where
    // ExecStart says.
    let sandbox = tempfile::tempdir().unwrap();
    let r = sandbox.path();
    let copy = |from: &Path, to: &str| {
        let to = r.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    };
    for unit in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd is needed") {
        let unit = unit.unwrap();
        if unit.file_type().unwrap().is_file() {
            copy(
                &unit.path(),
                &format!(
                    "usr/lib/systemd/system/{}",
                    unit.file_name().to_str().unwrap()
                ),
            );
        }
    }
    copy(
        Path::new(env!("CARGO_BIN_EXE_promo")),
        "usr/local/bin/promo",
    );
    copy(Path::new("/usr/bin/kill"), "usr/bin/kill");
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    let units = [
        "promo-serve.service",
        "promo-build.service",
        "promo-build.timer",
    ];
    for unit in units {
        copy(
            &deploy(&format!("systemd/{unit}")),
            &format!("etc/systemd/system/{unit}"),
        );
    }
    let mut args = vec![format!("--root={}", r.display()), "verify".to_string()];
    args.extend(units.iter().map(|u| format!("/etc/systemd/system/{u}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = check("systemd-analyze", &args);
    // It only warns of what it cannot parse: a warning is a failure here.
    assert!(
        out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let serve = std::fs::read_to_string(deploy("systemd/promo-serve.service")).unwrap();
    for needed in [
        "User=promo",
        "StateDirectory=promo",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(serve.contains(needed), "promo-serve.service lacks {needed}");
    }
    let timer = std::fs::read_to_string(deploy("systemd/promo-build.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*:00,30"));
}

/// Every alert the runbook names, by these names.
const ALERTS: [&str; 8] = [
    "PromoGenerationStale",
    "PromoGenerationRefused",
    "PromoNotReady",
    "PromoHighErrorRate",
    "PromoReplicasDisagree",
    "PromoSourceErrors",
    "PromoBuildStale",
    "PromoBuildRefused",
];

#[test]
fn the_prometheus_files_check_and_every_alert_is_tested_both_ways() {
    check(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    );
    check(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    check(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
    );
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    for alert in ALERTS {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
        // A case that fires it (alerts expected) and one that does not.
        let cases: Vec<&str> = tests
            .split(&format!("alertname: {alert}\n"))
            .skip(1)
            .map(|rest| rest.trim_start().lines().next().unwrap())
            .collect();
        assert!(
            cases.iter().any(|c| c.trim() == "exp_alerts:"),
            "{alert} never fires in alerts_test.yml"
        );
        assert!(
            cases.iter().any(|c| c.trim() == "exp_alerts: []"),
            "{alert} has no case where it stays quiet"
        );
    }
}

#[test]
fn the_dashboard_queries_the_provisioned_prometheus() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/promo.json")).unwrap())
            .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Requests/s by status",
        "Lookup latency",
        "Lookups: hits and misses",
        "Live generation per replica",
        "Live generation age per replica",
        "Swaps and refusals",
        "Fetch bytes/s",
        "Resident memory",
        "Open file descriptors and connections",
        "Builds: churn of the last success",
    ] {
        assert!(titles.contains(&needed), "no panel {needed}: {titles:?}");
    }
    let datasource =
        std::fs::read_to_string(deploy("grafana/provisioning/datasources/prometheus.yaml"))
            .unwrap();
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
    }
    assert!(datasource.contains("uid: prometheus"));
}

/// The feed guards, their environment variables and their defaults.
const GUARDS: [(&str, &str, f64); 3] = [
    ("--max-churn", "PROMO_MAX_CHURN", 50.0),
    ("--max-price-jumps", "PROMO_MAX_PRICE_JUMPS", 5.0),
    ("--max-shrink", "PROMO_MAX_SHRINK", 50.0),
];

/// Each deploy file that runs a build or a server (uploads pass the guards
/// too), or schedules one.
const RUNS_PROMO: [&str; 7] = [
    "compose.yaml",
    "Dockerfile",
    "k8s/cronjob.yaml",
    "k8s/deployment.yaml",
    "systemd/promo-build.service",
    "systemd/promo-build.timer",
    "systemd/promo-serve.service",
];

/// `text` without its comment lines: what a file sets, not what it says.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value given after each occurrence of `name` in `text`: `name=V`,
/// `name V`, `name: V` or `name: "V"`.
fn values_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.match_indices(name)
        .map(|(at, _)| {
            let rest = text[at + name.len()..].trim_start_matches(['=', ':', ' ', '\t', '"', '\'']);
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '%'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn every_shipped_way_to_run_promo_keeps_the_default_feed_guards() {
    // The guards are on by default: a deploy file leaves them so, or
    // tightens one. It never turns one off, loosens it or forces a build.
    for file in RUNS_PROMO {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let set = without_comments(&text);
        for (flag, env, default) in GUARDS {
            for name in [flag, env] {
                for value in values_of(&set, name) {
                    let percent = value.trim_end_matches('%').parse::<f64>();
                    assert!(
                        matches!(percent, Ok(p) if p <= default),
                        "{file} sets {name} to {value:?}: the guards stay at their defaults \
                         ({default}%) or tighter"
                    );
                }
            }
        }
        for forced in ["--force", "force=true", "force=1"] {
            assert!(!set.contains(forced), "{file} forces its builds: {forced}");
        }
    }
    // Where the guards used to be set, a comment says that the defaults
    // guard the feed and how to loosen them.
    for file in [
        "compose.yaml",
        "k8s/cronjob.yaml",
        "k8s/deployment.yaml",
        "systemd/promo-build.service",
        "systemd/promo-serve.service",
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let comments: String = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for needed in ["promo's default", "--max-churn 50%", "5%", "off", "force"] {
            assert!(
                comments.contains(needed),
                "{file}'s comments do not say {needed:?} (the default guards, and how to loosen them)"
            );
        }
    }
    // The defaults are those promo has, under the variables it reads, for
    // builds and for the uploads a server takes.
    for command in ["build", "serve"] {
        let help = Command::new(env!("CARGO_BIN_EXE_promo"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for (flag, env, default) in GUARDS {
            let option = option_help(&help, flag);
            for needed in [format!("[env: {env}=]"), format!("[default: {default}%]")] {
                assert!(
                    option.contains(&needed),
                    "promo {command} --help: {flag} lacks {needed}:\n{option}"
                );
            }
        }
    }
}

/// The help of `flag` in `help`: from its line to the next option's, so
/// that both the one-line (-h) and the long layout (--help) are read whole.
fn option_help(help: &str, flag: &str) -> String {
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{flag} ")));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {flag} in:\n{help}"));
    let rest = lines.take_while(|l| !l.trim_start().starts_with('-'));
    std::iter::once(first)
        .chain(rest)
        .collect::<Vec<_>>()
        .join(" ")
}
