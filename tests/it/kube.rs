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
use crate::container::{containers_run_here, podman, podman_ok, readable, root, Cleanup};

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

type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// One run of the test: its directory, names of its own (so that it shares
/// nothing with another run, or a real install), and what it made,
/// removed however it ends, the last made first.
struct Run {
    // Before `dir`: dropped first, while the files it names still exist.
    cleanup: Cleanup,
    dir: tempfile::TempDir,
    id: u32,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        readable(dir.path(), 0o755);
        Run {
            cleanup: Cleanup(vec![]),
            dir,
            id: std::process::id(),
        }
    }

    fn name(&self, name: &str) -> String {
        format!("{name}-test-{}", self.id)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `args` when the test ends.
    fn undo(&mut self, args: &[&str]) {
        self.cleanup
            .0
            .push(args.iter().map(|a| a.to_string()).collect());
    }
}

/// The Secrets as an operator makes them (secrets.yaml's comment): promo-tls
/// as `kubectl create secret tls` makes it, from `cert` and `key`;
/// secrets.yaml's others with their placeholders, the admin token replaced
/// by `token`.
fn operator_secrets(cert: &str, key: &str, token: &str) -> Secrets {
    let mut secrets = Secrets::new();
    let tls = [("tls.crt", cert), ("tls.key", key)];
    secrets.insert(
        "promo-tls".into(),
        tls.map(|(k, v)| (k.to_string(), v.to_string())).into(),
    );
    for secret in manifests("secrets.yaml") {
        let mut data: BTreeMap<String, String> =
            serde_json::from_value(secret["stringData"].clone()).unwrap();
        if secret["metadata"]["name"] == "promo-admin" {
            let placeholder = data.insert("token".into(), token.to_string());
            assert!(
                placeholder.is_some(),
                "promo-admin has no token key: {secret}"
            );
        }
        secrets.insert(secret["metadata"]["name"].as_str().unwrap().into(), data);
    }
    secrets
}

/// The Deployment as the test plays it, and what it took out to check
/// another way.
struct ForPodman {
    deployment: Value,
    /// Each container port's name, and the host port publishing it.
    ports: BTreeMap<String, u16>,
    /// (kind, probe) for the readiness, liveness and startup probes.
    probes: Vec<(String, Value)>,
    /// The Secrets made podman secrets; the others are directories.
    podman_secrets: Vec<String>,
}

/// The test's copy of `shipped`, changed where podman 4.3 needs it.
fn for_podman(run: &mut Run, shipped: &Value, secrets: &Secrets) -> ForPodman {
    let mut deployment = shipped.clone();
    deployment["metadata"]["name"] = json!(run.name("promo"));
    // One host: one replica, whose ports the host publishes (a real
    // cluster reaches them through the Services).
    deployment["spec"]["replicas"] = json!(1);
    let pod = &mut deployment["spec"]["template"]["spec"];
    let container = &mut pod["containers"][0];
    let mut ports = BTreeMap::new();
    for port in container["ports"].as_array_mut().unwrap() {
        let host = common::free_port();
        ports.insert(port["name"].as_str().unwrap().to_string(), host);
        port["hostPort"] = json!(host);
        port["hostIP"] = json!("127.0.0.1");
    }
    // podman runs an httpGet probe as curl inside the container, and the
    // image has no curl: the probes are checked from outside.
    let probes: Vec<(String, Value)> = ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|p| Some((p.to_string(), container.as_object_mut()?.remove(*p)?)))
        .collect();
    assert_eq!(probes.len(), 3, "{container}");
    // envFrom's secretRef names podman's own secrets, which 4.3 reads as
    // a JSON map of base64 values.
    let mut podman_secrets = vec![];
    for from in container["envFrom"].as_array_mut().unwrap() {
        let Some(name) = from["secretRef"]["name"].as_str().map(str::to_string) else {
            assert_eq!(from["configMapRef"]["name"], "promo");
            continue;
        };
        let encoded: BTreeMap<_, _> = secrets[&name]
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        let file = run.path(&format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec(&encoded).unwrap()).unwrap();
        let podman_name = run.name(&name);
        podman_ok(&["secret", "create", &podman_name, file.to_str().unwrap()]);
        run.undo(&["podman", "secret", "rm", &podman_name]);
        from["secretRef"]["name"] = json!(podman_name);
        podman_secrets.push(name);
    }
    // 4.3 has no secret volumes: each Secret's keys are files in a
    // directory, as the kubelet writes them.
    let mut claims = vec![];
    for volume in pod["volumes"].as_array_mut().unwrap() {
        if let Some(name) = volume["secret"]["secretName"].as_str().map(str::to_string) {
            let files = run.path(&name);
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
            volume["persistentVolumeClaim"]["claimName"] = json!(run.name(claim));
        }
    }
    assert_eq!(claims, ["promo-store"], "the Deployment's claims");
    ForPodman {
        deployment,
        ports,
        probes,
        podman_secrets,
    }
}

/// The store's claim as the test plays it: a podman volume of the test's
/// own. podman 4.3 applies no fsGroup, so the volume is given the pod's
/// user and group instead.
fn store_claim(run: &mut Run, pod_security: &Value) -> Value {
    let mut store = manifest("pvc.yaml", "PersistentVolumeClaim", "promo-store");
    store["metadata"]["name"] = json!(run.name("promo-store"));
    store["metadata"]["annotations"] = json!({
        "volume.podman.io/uid": pod_security["runAsUser"].to_string(),
        "volume.podman.io/gid": pod_security["fsGroup"].to_string(),
    });
    run.undo(&["podman", "volume", "rm", "-f", &run.name("promo-store")]);
    store
}

/// Runs the CronJob's build as its pod would run it: its image, args,
/// user, read-only root, capabilities, environment and volumes (the feeds'
/// claim is a directory holding the partner's file, with the 1,000 rows
/// it returns; the builder's a volume of its own; the store the played
/// one). Returns the rows and the build's log lines that say what it
/// published.
fn run_cronjob(run: &mut Run, secrets: &Secrets) -> (Vec<(String, String, String)>, String) {
    let configmap = manifest("configmap.yaml", "ConfigMap", "promo");
    let cronjob = manifest("cronjob.yaml", "CronJob", "promo-build");
    assert_eq!(cronjob["spec"]["schedule"], "*/30 * * * *");
    let job = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let build = &job["containers"][0];
    let feeds = run.path("feeds");
    std::fs::create_dir(&feeds).unwrap();
    readable(&feeds, 0o755);
    let args: Vec<&str> = items(&build["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = Path::new(args[1]).file_name().unwrap();
    // 10 of the 1,000 prices changed since the upload.
    let rows = feed(&feeds.join(file), 1000, |i| i % 100 == 7);

    let security = &build["securityContext"];
    let user = &job["securityContext"];
    let mut cmd: Vec<String> = ["run", "--rm", "--network", "none", "--user"]
        .map(String::from)
        .into();
    cmd.push(format!("{}:{}", user["runAsUser"], user["runAsGroup"]));
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
        let values: BTreeMap<String, String> = match from["configMapRef"]["name"].as_str() {
            Some(name) => {
                assert_eq!(name, "promo");
                serde_json::from_value(configmap["data"].clone()).unwrap()
            }
            None => secrets[from["secretRef"]["name"].as_str().unwrap()].clone(),
        };
        for (k, v) in values {
            cmd.extend(["--env".into(), format!("{k}={v}")]);
        }
    }
    let builder = run.name("promo-builder");
    run.undo(&["podman", "volume", "rm", "-f", &builder]);
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
            "promo-store" => run.name("promo-store"),
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
    let out = podman(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the CronJob's build: {log}");
    let published: Vec<&str> = log.lines().filter(|l| l.contains("published")).collect();
    (rows, format!("{}: {}", args.join(" "), published.join(" ")))
}

/// The kinds podman does not play, checked against the Deployment it
/// played: the Services select its pods and target ports it published,
/// the autoscaler scales it, the disruption budget selects its pods.
fn check_unplayed(shipped: &Value, ports: &BTreeMap<String, u16>) {
    let labels = &shipped["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&shipped["spec"]["selector"]["matchLabels"], labels));
    for service in manifests("service.yaml") {
        let name = &service["metadata"]["name"];
        assert!(
            selects(&service["spec"]["selector"], labels),
            "Service {name} selects no replica"
        );
        for port in items(&service["spec"]["ports"]) {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                ports.contains_key(target),
                "Service {name}: no container port {target}"
            );
            eprintln!(
                "kube play: Service {name} port {} -> the container's {target} port, answered above",
                port["port"]
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
}

#[test]
fn the_kubernetes_files_play_under_podman_and_what_it_does_not_play_checks_against_them() {
    if !containers_run_here("kube play", "compose") {
        return;
    }
    let mut run = Run::new();
    let shipped = manifest("deployment.yaml", "Deployment", "promo");
    let configmap = manifest("configmap.yaml", "ConfigMap", "promo");
    let container = &shipped["spec"]["template"]["spec"]["containers"][0];
    let pod_security = &shipped["spec"]["template"]["spec"]["securityContext"];

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap().pem();
    let token = format!("kube-test-{}", common::id(41, u64::from(run.id)));
    let secrets = operator_secrets(&cert, &key.serialize_pem(), &token);
    let copy = for_podman(&mut run, &shipped, &secrets);
    let store = store_claim(&mut run, pod_security);
    let write = |name: &str, docs: &[&Value]| -> PathBuf {
        let path = run.path(name);
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        std::fs::write(&path, text.join("\n---\n")).unwrap();
        path
    };
    let play = write("play.yaml", &[&configmap, &store, &copy.deployment]);
    // podman 4.3 refuses to play a claim whose volume exists: played
    // again, the Deployment mounts the volume the first play made.
    let replay = write("replay.yaml", &[&configmap, &copy.deployment]);
    let (play, replay) = (play.to_str().unwrap(), replay.to_str().unwrap());
    run.undo(&["podman", "kube", "down", play]);
    let name = format!(
        "{}-pod-0-{}",
        run.name("promo"),
        container["name"].as_str().unwrap()
    );

    let played = podman_ok(&["kube", "play", play]);
    eprintln!(
        "kube play: {}",
        played.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let ca = run.path("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let promo = Played {
        ca,
        ports: copy.ports.clone(),
    };

    // The probes, from outside: alive and started, not ready without a
    // generation (the store is empty).
    for (kind, probe) in &copy.probes {
        let get = &probe["httpGet"];
        assert_eq!(get["scheme"], "HTTPS", "{kind}");
        let (port, path) = (get["port"].as_str().unwrap(), get["path"].as_str().unwrap());
        let expected = if kind == "readinessProbe" { 503 } else { 200 };
        let answer = promo.wait(port, path, expected, Duration::from_secs(120));
        eprintln!(
            "kube play: {kind} GET {path} on the {port} port: {} {}",
            answer.status,
            answer.body.trim()
        );
    }

    // An upload with another token is refused; with the Secret's, it is
    // built, published to the store and served.
    let csv = run.path("upload.csv");
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
            logs(&name)
        );
        eprintln!(
            "kube play: POST /upload with {auth:?}: {} {}",
            answer.status,
            answer.body.trim()
        );
    }
    let first = promo.lookup(&rows[7].0, &rows[7].1);
    eprintln!(
        "kube play: GET /promotions/{} through host port {}: price {}, generation {first}",
        rows[7].0, promo.ports["https"], rows[7].1
    );
    // The replica runs as the pod's user, on a read-only root.
    let status = podman_ok(&["exec", &name, "cat", "/proc/1/status"]);
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    let user = pod_security["runAsUser"].to_string();
    assert_eq!(uid.split_whitespace().next(), Some(user.as_str()));
    let write_root = podman(&["exec", &name, "sh", "-c", "echo x > /x"]);
    assert!(!write_root.status.success());

    // The CronJob's build publishes to the store; the replica serves it.
    let (changed, log) = run_cronjob(&mut run, &secrets);
    eprintln!("kube play: the CronJob's build ({log})");
    let second = promo.lookup(&changed[7].0, &changed[7].1);
    assert!(second > first, "generation {second} after {first}");
    eprintln!(
        "kube play: the replica serves it: price {} from generation {second}",
        changed[7].1
    );

    // preStop's command, in the played container.
    let pre_stop: Vec<&str> = items(&container["lifecycle"]["preStop"]["exec"]["command"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!pre_stop.is_empty());
    podman_ok(&[&["exec", name.as_str()][..], &pre_stop].concat());
    eprintln!("kube play: preStop {pre_stop:?} ran in the container");

    // Down, and played again: the pod and its emptyDir are gone, the
    // store's volume is not, and the new replica serves the newest
    // generation from it.
    podman_ok(&["kube", "down", play]);
    assert!(!podman(&["container", "exists", &name]).status.success());
    let volume = run.name("promo-store");
    assert!(podman(&["volume", "exists", &volume]).status.success());
    podman_ok(&["kube", "play", replay]);
    let again = promo.lookup(&changed[7].0, &changed[7].1);
    assert_eq!(again, second);
    eprintln!("kube play: down and played again: generation {again} from the store's volume");

    check_unplayed(&shipped, &copy.ports);
    let files: Vec<&String> = secrets
        .keys()
        .filter(|s| !copy.podman_secrets.contains(s))
        .collect();
    eprintln!(
        "kube play: not played by podman, checked here instead: Service (2), CronJob (its build \
         run in the image), readiness, liveness and startup probes (GET from outside), preStop \
         (run in the container), HorizontalPodAutoscaler and PodDisruptionBudget (their targets \
         and selectors); Secrets made podman secrets ({}) and files ({files:?})",
        copy.podman_secrets.join(", ")
    );
}
