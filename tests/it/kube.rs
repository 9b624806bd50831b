//! deploy/k8s run for real. `podman kube play` plays the Deployment with
//! the ConfigMap, the Secrets and the store's PersistentVolumeClaim, as
//! shipped; the CronJob's build runs in the same image, on the same
//! volumes; and what podman does not play (Services, the CronJob's
//! schedule, readiness and startup probes, preStop, the autoscaler, the
//! disruption budget) is checked against what it played.
//!
//! deploy/k8s stays what a real cluster takes. Where podman (Debian's 4.3)
//! needs something different, this test changes its own copy, and says why
//! where it does: one replica with host ports, the Secrets as podman
//! secrets and directories, the claim's owner, names of its own.

use crate::common;
use crate::container::{containers_run_here, podman, podman_ok, root, Cleanup};

use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The documents of deploy/k8s/`file`, as JSON (read with PyYAML from the
/// tools' environment, where kubernetes-validate runs).
fn manifests(file: &str) -> Vec<Value> {
    let python = common::on_path("kubernetes-validate")
        .parent()
        .unwrap()
        .join("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(root().join("deploy/k8s").join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading deploy/k8s/{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `kind` named `name` in deploy/k8s/`file`.
fn manifest(file: &str, kind: &str, name: &str) -> Value {
    manifests(file)
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s/{file}"))
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// True if every label `selector` asks for is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

/// A directory or file the container's user (not this test's) can read.
fn readable(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A feed of `n` ids of set 40, priced `i + 1` unless `bumped(i)`.
fn feed(path: &Path, n: u64, bumped: impl Fn(u64) -> bool) -> Vec<(String, String, String)> {
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let price = if bumped(i) { i + 2 } else { i + 1 };
            (
                common::id(40, i),
                format!("{price}.5"),
                "2030-01-01 00:00:00 +0000 UTC".to_string(),
            )
        })
        .collect();
    common::write_csv(path, &rows);
    readable(path, 0o644);
    rows
}

/// What container `name` has written.
fn logs(name: &str) -> String {
    let out = podman(&["logs", name]);
    String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
}

/// The promo server a played pod runs, over HTTPS with the test's
/// certificate, on its host ports.
struct Played {
    ca: PathBuf,
    ports: BTreeMap<String, u16>,
}

impl Played {
    /// curl `args` then https://localhost:PORT`path`, PORT the host port of
    /// the container port named `port`. The answer is checked against
    /// docs/openapi.json.
    fn curl(&self, port: &str, path: &str, args: &[&str]) -> common::CurlAnswer {
        let url = format!("https://localhost:{}{path}", self.ports[port]);
        let ca = self.ca.to_str().unwrap();
        let mut all = vec!["--cacert", ca];
        all.extend_from_slice(args);
        all.push(&url);
        common::curl_answer(&all)
    }

    /// Waits until `port` answers `path` with `status`, at most `limit`.
    fn wait(&self, port: &str, path: &str, status: u16, limit: Duration) -> common::CurlAnswer {
        let started = Instant::now();
        loop {
            let answer = self.curl(port, path, &[]);
            if answer.status == status {
                return answer;
            }
            assert!(
                started.elapsed() < limit,
                "GET {path} on {port} never answered {status} in {limit:?}; last: {} {}",
                answer.status,
                answer.body
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The live generation, once a lookup of `id` answers `price` (the
    /// replica polls the store every 10 s).
    fn lookup(&self, id: &str, price: &str) -> u64 {
        let path = format!("/promotions/{id}");
        let price: f64 = price.parse().unwrap();
        let started = Instant::now();
        loop {
            let answer = self.curl("https", &path, &[]);
            let json = serde_json::from_str::<Value>(&answer.body).ok();
            if answer.status == 200 && json.is_some_and(|j| j["price"] == price) {
                let ready = self.curl("https", "/readyz", &[]).body;
                return ready
                    .trim()
                    .strip_prefix("ready: generation ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("/readyz: {ready}"));
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "GET {path} never answered price {price}: {} {}",
                answer.status,
                answer.body
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn the_kubernetes_files_play_under_podman_and_what_it_does_not_play_checks_against_them() {
    if !containers_run_here("kube play", "compose") {
        return;
    }
    let run = std::process::id();
    // Names of the test's own, so that a run beside another (or beside a
    // real install) shares nothing with it.
    let unique = |name: &str| format!("{name}-test-{run}");
    let dir = tempfile::tempdir().unwrap();
    readable(dir.path(), 0o755);
    // What the test made, removed however it ends (the last made first).
    let mut cleanup = Cleanup(vec![]);

    let shipped = manifest("deployment.yaml", "Deployment", "promo");
    let configmap = manifest("configmap.yaml", "ConfigMap", "promo");
    let template = &shipped["spec"]["template"];
    let pod_security = &template["spec"]["securityContext"];
    let container = &template["spec"]["containers"][0];
    let port_of = |name: &str| -> u64 {
        items(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the Deployment's container has no port named {name}"))
            ["containerPort"]
            .as_u64()
            .unwrap()
    };

    // The Secrets, made as the operator would (secrets.yaml's comment):
    // promo-tls as `kubectl create secret tls` makes it, from a new
    // certificate; secrets.yaml's others with their placeholders, the admin
    // token replaced by a new one.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let token = format!("kube-test-{run}-{}", common::id(41, u64::from(run)));
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    secrets.insert(
        "promo-tls".into(),
        BTreeMap::from([
            ("tls.crt".to_string(), cert.pem()),
            ("tls.key".to_string(), key.serialize_pem()),
        ]),
    );
    for secret in manifests("secrets.yaml") {
        let mut data: BTreeMap<String, String> =
            serde_json::from_value(secret["stringData"].clone()).unwrap();
        if secret["metadata"]["name"] == "promo-admin" {
            let placeholder = data.insert("token".into(), token.clone());
            assert!(
                placeholder.is_some(),
                "promo-admin has no token key: {secret}"
            );
        }
        secrets.insert(secret["metadata"]["name"].as_str().unwrap().into(), data);
    }

    // The test's copy of the Deployment.
    let mut deployment = shipped.clone();
    deployment["metadata"]["name"] = json!(unique("promo"));
    // One host: one replica, whose ports the host publishes (a real
    // cluster reaches them through the Services).
    deployment["spec"]["replicas"] = json!(1);
    let pod = &mut deployment["spec"]["template"]["spec"];
    let mut ports = BTreeMap::new();
    for port in pod["containers"][0]["ports"].as_array_mut().unwrap() {
        let host = common::free_port();
        ports.insert(port["name"].as_str().unwrap().to_string(), host);
        port["hostPort"] = json!(host);
        port["hostIP"] = json!("127.0.0.1");
    }
    // podman runs an httpGet probe as curl inside the container, and the
    // image has no curl: the probes are checked from outside below.
    let probes: Vec<(String, Value)> = ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|p| {
            let probe = pod["containers"][0].as_object_mut().unwrap().remove(*p)?;
            Some((p.to_string(), probe))
        })
        .collect();
    assert_eq!(probes.len(), 3, "{container}");
    // podman 4.3 reads envFrom's secretRef from podman's own secrets, a
    // JSON map of base64 values.
    let mut podman_secrets = vec![];
    for from in pod["containers"][0]["envFrom"].as_array_mut().unwrap() {
        if let Some(name) = from["secretRef"]["name"].as_str().map(str::to_string) {
            let data: BTreeMap<_, _> = secrets[&name]
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect();
            let file = dir.path().join(format!("{name}.json"));
            std::fs::write(&file, serde_json::to_vec(&data).unwrap()).unwrap();
            podman_ok(&["secret", "create", &unique(&name), file.to_str().unwrap()]);
            cleanup.0.push(
                ["podman", "secret", "rm", &unique(&name)]
                    .map(String::from)
                    .to_vec(),
            );
            from["secretRef"]["name"] = json!(unique(&name));
            podman_secrets.push(name);
        } else {
            assert_eq!(from["configMapRef"]["name"], configmap["metadata"]["name"]);
        }
    }
    // podman 4.3 has no secret volumes: each Secret's keys become files
    // in a directory, as the kubelet writes them.
    let mut claims = vec![];
    for volume in pod["volumes"].as_array_mut().unwrap() {
        if let Some(name) = volume["secret"]["secretName"].as_str().map(str::to_string) {
            let files = dir.path().join(&name);
            std::fs::create_dir(&files).unwrap();
            readable(&files, 0o755);
            for (key, value) in &secrets[&name] {
                std::fs::write(files.join(key), value).unwrap();
                readable(&files.join(key), 0o644);
            }
            *volume =
                json!({"name": volume["name"], "hostPath": {"path": files, "type": "Directory"}});
        } else if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            claims.push(claim.to_string());
            volume["persistentVolumeClaim"]["claimName"] = json!(unique(claim));
        }
    }
    assert_eq!(claims, ["promo-store"], "the Deployment's claims");
    // A claim is a podman volume. podman 4.3 does not apply fsGroup: the
    // volume is given the pod's user and group instead.
    let mut store = manifest("pvc.yaml", "PersistentVolumeClaim", "promo-store");
    store["metadata"]["name"] = json!(unique("promo-store"));
    store["metadata"]["annotations"] = json!({
        "volume.podman.io/uid": pod_security["runAsUser"].to_string(),
        "volume.podman.io/gid": pod_security["fsGroup"].to_string(),
    });
    cleanup.0.push(
        ["podman", "volume", "rm", "-f", &unique("promo-store")]
            .map(String::from)
            .to_vec(),
    );

    let write = |name: &str, docs: &[&Value]| -> PathBuf {
        let path = dir.path().join(name);
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        std::fs::write(&path, text.join("\n---\n")).unwrap();
        path
    };
    let play = write("play.yaml", &[&configmap, &store, &deployment]);
    // podman 4.3 refuses to play a claim whose volume exists: played
    // again, the Deployment mounts the volume the first play made.
    let replay = write("replay.yaml", &[&configmap, &deployment]);
    let down = ["podman", "kube", "down", play.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    cleanup.0.push(down.clone());
    let container_name = format!(
        "{}-pod-0-{}",
        unique("promo"),
        container["name"].as_str().unwrap()
    );

    let played = podman_ok(&["kube", "play", play.to_str().unwrap()]);
    eprintln!(
        "kube play: {}",
        played.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let promo = Played { ca, ports };

    // The probes, from outside: alive and started, not ready without a
    // generation (the store is empty).
    for (kind, probe) in &probes {
        let get = &probe["httpGet"];
        assert_eq!(get["scheme"], "HTTPS", "{kind}");
        let port = get["port"].as_str().unwrap();
        let path = get["path"].as_str().unwrap();
        let expected = if kind == "readinessProbe" { 503 } else { 200 };
        let answer = promo.wait(port, path, expected, Duration::from_secs(120));
        eprintln!(
            "kube play: {kind} GET {path} on {port} ({}): {} {}",
            port_of(port),
            answer.status,
            answer.body.trim()
        );
    }

    // An upload with another token is refused; with the Secret's, it is
    // built, published to the store, and served.
    let csv = dir.path().join("upload.csv");
    let rows = feed(&csv, 1000, |_| false);
    let data = format!("@{}", csv.display());
    for (auth, status) in [("another-token", 401), (token.as_str(), 200)] {
        let header = format!("Authorization: Bearer {auth}");
        let answer = promo.curl("admin", "/upload", &["-H", &header, "--data-binary", &data]);
        assert_eq!(
            answer.status,
            status,
            "{}\npromo's log:\n{}",
            answer.body,
            logs(&container_name)
        );
        eprintln!(
            "kube play: POST /upload with {auth:?}: {} {}",
            answer.status,
            answer.body.trim()
        );
    }
    let first = promo.lookup(&rows[7].0, &rows[7].1);
    let (kind, probe) = &probes[0];
    let ready = promo.curl(
        probe["httpGet"]["port"].as_str().unwrap(),
        probe["httpGet"]["path"].as_str().unwrap(),
        &[],
    );
    assert_eq!(ready.status, 200, "{kind}: {}", ready.body);
    eprintln!("kube play: GET /promotions/{} through host port {}: price {}, generation {first}; {kind}: {}", rows[7].0, promo.ports["https"], rows[7].1, ready.body.trim());
    // The replica runs as the pod's user, on a read-only root.
    let status = podman_ok(&["exec", &container_name, "cat", "/proc/1/status"]);
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().next(),
        Some(pod_security["runAsUser"].to_string().as_str())
    );
    assert!(
        !podman(&["exec", &container_name, "sh", "-c", "echo x > /x"])
            .status
            .success()
    );

    // The CronJob's build, run as its pod would run it: its image, args,
    // user, read-only root, environment and volumes (the feeds' claim is
    // the directory with the partner's file, the builder's a volume of
    // its own, the store the played one).
    let cronjob = manifest("cronjob.yaml", "CronJob", "promo-build");
    let job = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let build = &job["containers"][0];
    let feeds = dir.path().join("feeds");
    std::fs::create_dir(&feeds).unwrap();
    readable(&feeds, 0o755);
    let args: Vec<&str> = items(&build["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let feed_path = Path::new(args[1]);
    let changed = feed(&feeds.join(feed_path.file_name().unwrap()), 1000, |i| {
        i % 100 == 7
    });
    let mut cmd: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--network".into(),
        "none".into(),
    ];
    let security = &build["securityContext"];
    let user = format!(
        "{}:{}",
        job["securityContext"]["runAsUser"], job["securityContext"]["runAsGroup"]
    );
    cmd.extend(["--user".into(), user]);
    if security["readOnlyRootFilesystem"] == true {
        cmd.push("--read-only".into());
    }
    for cap in items(&security["capabilities"]["drop"]) {
        cmd.extend(["--cap-drop".into(), cap.as_str().unwrap().into()]);
    }
    if security["allowPrivilegeEscalation"] == false {
        cmd.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for from in items(&build["envFrom"]) {
        let values: BTreeMap<String, String> =
            if let Some(name) = from["configMapRef"]["name"].as_str() {
                assert_eq!(name, "promo");
                serde_json::from_value(configmap["data"].clone()).unwrap()
            } else {
                secrets[from["secretRef"]["name"].as_str().unwrap()].clone()
            };
        for (k, v) in values {
            cmd.extend(["--env".into(), format!("{k}={v}")]);
        }
    }
    let builder = unique("promo-builder");
    cleanup.0.push(
        ["podman", "volume", "rm", "-f", &builder]
            .map(String::from)
            .to_vec(),
    );
    for mount in items(&build["volumeMounts"]) {
        let volume = items(&job["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let source = match volume["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap()
        {
            "promo-feeds" => feeds.to_str().unwrap().to_string(),
            "promo-builder" => builder.clone(),
            "promo-store" => unique("promo-store"),
            other => panic!("the CronJob mounts a claim this test does not know: {other}"),
        };
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        cmd.extend([
            "--volume".into(),
            format!("{source}:{}{ro}", mount["mountPath"].as_str().unwrap()),
        ]);
    }
    cmd.push(build["image"].as_str().unwrap().into());
    cmd.extend(args.iter().map(|a| a.to_string()));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = podman(&cmd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the CronJob's build: {log}");
    eprintln!(
        "kube play: the CronJob's build ({}): {}",
        args.join(" "),
        log.lines()
            .filter(|l| l.contains("published"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // The played replica fetches it from the store.
    let second = promo.lookup(&changed[7].0, &changed[7].1);
    assert!(second > first, "generation {second} after {first}");
    eprintln!(
        "kube play: the replica serves the build: price {} from generation {second}",
        changed[7].1
    );

    // preStop's command, in the played container.
    let pre_stop: Vec<&str> = items(&container["lifecycle"]["preStop"]["exec"]["command"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!pre_stop.is_empty());
    let mut exec = vec!["exec", &container_name];
    exec.extend(&pre_stop);
    podman_ok(&exec);
    eprintln!("kube play: preStop {pre_stop:?} ran in the container");

    // Down, and played again: the pod and its emptyDir are gone, the
    // store's volume is not, and the new replica serves the newest
    // generation from it.
    podman_ok(&down.iter().skip(1).map(String::as_str).collect::<Vec<_>>());
    assert!(!podman(&["container", "exists", &container_name])
        .status
        .success());
    assert!(podman(&["volume", "exists", &unique("promo-store")])
        .status
        .success());
    podman_ok(&["kube", "play", replay.to_str().unwrap()]);
    let again = promo.lookup(&changed[7].0, &changed[7].1);
    assert_eq!(again, second);
    eprintln!("kube play: down and played again: generation {again} from the store's volume");

    // The kinds podman does not play, checked against what it played.
    let labels = &template["metadata"]["labels"];
    for service in manifests("service.yaml") {
        let name = &service["metadata"]["name"];
        assert!(
            selects(&service["spec"]["selector"], labels),
            "Service {name} selects no replica"
        );
        for port in items(&service["spec"]["ports"]) {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                promo.ports.contains_key(target),
                "Service {name}: no container port {target}"
            );
            eprintln!(
                "kube play: Service {name} port {} -> {target} ({}), answered above",
                port["port"],
                port_of(target)
            );
        }
    }
    let hpa = manifest("hpa.yaml", "HorizontalPodAutoscaler", "promo");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (&target["apiVersion"], &target["kind"], &target["name"]),
        (
            &shipped["apiVersion"],
            &shipped["kind"],
            &shipped["metadata"]["name"]
        )
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() <= shipped["spec"]["replicas"].as_u64());
    let pdb = manifest("pdb.yaml", "PodDisruptionBudget", "promo");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    assert!(selects(&shipped["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(cronjob["spec"]["schedule"], "*/30 * * * *");
    eprintln!(
        "kube play: not played by podman, checked here instead: Service (2), CronJob (its build run \
         in the image), readiness, liveness and startup probes (GET from outside), preStop (run in \
         the container), HorizontalPodAutoscaler and PodDisruptionBudget (their targets and \
         selectors); Secrets made podman secrets ({}) and files ({})",
        podman_secrets.join(", "),
        secrets.keys().filter(|s| !podman_secrets.contains(s)).cloned().collect::<Vec<_>>().join(", ")
    );
}
