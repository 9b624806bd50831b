//! The container image and the compose stack, run for real with podman.
//!
//! `scripts/image.sh` builds the images from deploy/Dockerfile (making the
//! base images from the Debian mirror where no registry answers); then one
//! test starts promo's image as an operator would (read-only, no
//! capabilities, a data volume, a mounted feed) and the other brings
//! deploy/compose.yaml's store, builder, two replicas and nginx up with
//! podman-compose. Where podman cannot run a container on this machine,
//! both say why, naming the kernel feature podman's error points at, and
//! pass: they fail only where podman can run. podman, runc, mmdebstrap and
//! podman-compose come from `make tools`; their absence is a failure,
//! never a skip.
//!
//! Under `make test` the images hold the programs cargo has just built
//! (promo, and examples/s3s_fs.rs as the store): compiling them again in
//! containers takes longer than the rest of `make test` on a 2-core
//! machine. `make test-containers` sets PROMO_IMAGE_FROM_SOURCE=1 and
//! builds them as shipped, from source, with the 40 MB size target.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn podman_cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(root());
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", root().join("tests/containers.conf"));
    }
    c
}

pub fn podman(args: &[&str]) -> Output {
    podman_cmd("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("podman is needed ({e}); make test installs it: scripts/tools.sh")
        })
}

pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// True under `make test-containers`: the images compile promo and s3s-fs
/// from source, as shipped, rather than holding the test's own builds.
fn from_source() -> bool {
    std::env::var_os("PROMO_IMAGE_FROM_SOURCE").is_some_and(|v| v == "1")
}

/// scripts/image.sh with `args`, given the programs this test run built
/// unless the images are built from source.
fn image_sh(args: &[&str]) {
    let mut c = podman_cmd("bash");
    c.arg("scripts/image.sh");
    let programs = tempfile::tempdir().unwrap();
    if args != ["compose"] {
        // Base images only: no program goes in.
    } else if from_source() {
        // What the tests check does not depend on LTO or s3s-fs's
        // optimisation; the compiles take minutes less without them.
        // (`make image` builds the shipped profile.)
        c.env(
            "IMAGE_BUILD_ARGS",
            "--build-arg CARGO_PROFILE_RELEASE_LTO=false \
             --build-arg CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
             --build-arg CARGO_PROFILE_RELEASE_OPT_LEVEL=1",
        );
    } else {
        let promo = PathBuf::from(env!("CARGO_BIN_EXE_promo"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--example", "s3s_fs"])
            .status()
            .expect("running cargo build --example s3s_fs");
        assert!(built.success(), "cargo build --example s3s_fs failed");
        let store = promo.parent().unwrap().join("examples/s3s_fs");
        std::os::unix::fs::symlink(&promo, programs.path().join("promo")).unwrap();
        std::os::unix::fs::symlink(&store, programs.path().join("s3s-fs")).unwrap();
        c.arg("--prebuilt").arg(programs.path());
    }
    let out = c.args(args).output().expect("running scripts/image.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    assert!(
        out.status.success(),
        "scripts/image.sh {args:?} failed:\n{text}"
    );
}

/// Once per test binary: the base images, and whether a container runs
/// here. `Err` says why none can.
fn prepared() -> &'static Result<(), String> {
    static PREPARED: OnceLock<Result<(), String>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        image_sh(&["bases"]);
        let probe = podman(&[
            "run",
            "--rm",
            "--network",
            "none",
            "docker.io/library/debian:bookworm-slim",
            "true",
        ]);
        if !probe.status.success() {
            return Err(why_not(&String::from_utf8_lossy(&probe.stderr)));
        }
        Ok(())
    })
}

/// Once per test binary, the images `scripts/image.sh TARGET` makes.
fn images(target: &'static str) {
    static MADE: OnceLock<std::sync::Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    if !made.contains(&target) {
        image_sh(&[target]);
        made.push(target);
    }
}

/// Which kernel feature podman's error says is missing.
fn why_not(error: &str) -> String {
    let e = error.to_lowercase();
    let feature = if e.contains("hybrid mode") {
        "a single cgroup hierarchy: the kernel mounts cgroup v1 controllers and a cgroup2 \
         hierarchy beside them (hybrid), which this OCI runtime refuses"
    } else if e.contains("cgroup") {
        "cgroup delegation: podman could not create or join a cgroup for the container"
    } else if e.contains("newuidmap") || e.contains("user namespace") || e.contains("uid_map") {
        "user namespaces (CONFIG_USER_NS, kernel.unprivileged_userns_clone, \
         user.max_user_namespaces)"
    } else if e.contains("overlay") {
        "the overlay filesystem (CONFIG_OVERLAY_FS) for the container's root"
    } else if e.contains("setrlimit") {
        "raising resource limits (CAP_SYS_RESOURCE)"
    } else if e.contains("operation not permitted") || e.contains("permission denied") {
        "namespaces or mounts this process may not create (it lacks the capabilities, or a \
         seccomp or LSM policy forbids them)"
    } else {
        "unknown: see podman's error"
    };
    format!(
        "podman cannot run a container on this machine. Missing: {feature}.\npodman said: {error}"
    )
}

/// True where podman runs containers, once the images `scripts/image.sh
/// target` makes are there; else prints why and the test ends.
pub fn containers_run_here(test: &str, target: &'static str) -> bool {
    match prepared() {
        Ok(()) => {
            images(target);
            true
        }
        Err(why) => {
            eprintln!("{test}: not run: {why}");
            false
        }
    }
}

/// A GET on 127.0.0.1:port, retried until it answers 200 or `limit` passes.
fn get_until_200(port: u16, path: &str, limit: Duration) -> common::Response {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        // Nothing listening yet is no answer (common::request would panic).
        let answer = std::net::TcpStream::connect(addr)
            .ok()
            .and_then(|_| std::panic::catch_unwind(|| common::request(addr, "GET", path)).ok());
        match answer {
            Some(r) if r.status == 200 => return r,
            last if started.elapsed() > limit => {
                panic!(
                    "GET {path} on port {port} never answered 200 in {limit:?}; last: {:?}",
                    last.map(|r| (r.status, r.text()))
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The command that removes container `name` at once, running or not.
fn remove_container(name: &str) -> Vec<String> {
    ["podman", "rm", "-f", "-t", "0", name]
        .map(String::from)
        .to_vec()
}

/// Gives `path` `mode`: a directory or file the container's user (not
/// this test's) can read.
pub fn readable(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes what a test made, however it ends.
pub struct Cleanup(pub Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in self.0.iter().rev() {
            let _ = podman_cmd(&args[0]).args(&args[1..]).output();
        }
    }
}

#[test]
fn the_image_builds_serves_as_a_non_root_user_on_a_read_only_root_and_stops_on_sigterm() {
    if !containers_run_here("container image", "compose") {
        return;
    }
    // Its size, and what it adds to promo: under `make test` promo is a
    // debug build, far larger than the shipped one, so the 40 MB target is
    // checked where the image is built as shipped (make test-containers).
    let size: u64 = podman_ok(&["image", "inspect", "promo:latest", "--format", "{{.Size}}"])
        .trim()
        .parse()
        .unwrap();
    // busybox's `args` in the image, as it ships.
    let busybox = |args: &[&str]| {
        let mut all = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/busybox",
            "promo:latest",
        ];
        all.extend_from_slice(args);
        podman_ok(&all)
    };
    // The manual pages and the shell completions are where the system
    // looks for them.
    let installed = busybox(&[
        "ls",
        "/usr/share/man/man1",
        "/usr/share/bash-completion/completions",
        "/usr/share/zsh/vendor-completions",
        "/usr/share/fish/vendor_completions.d",
    ]);
    for file in ["promo.1", "promo-build.1", "promo", "_promo", "promo.fish"] {
        assert!(
            installed.lines().any(|l| l.trim() == file),
            "no {file}: {installed}"
        );
    }
    let promo: u64 = busybox(&["stat", "-c", "%s", "/usr/local/bin/promo"])
        .trim()
        .parse()
        .unwrap();
    let rest = size - promo;
    eprintln!(
        "container image: promo:latest is {size} bytes ({} MB): promo {promo}, the rest {rest}",
        size / 1_000_000
    );
    assert!(
        rest <= 10_000_000,
        "the image adds {rest} bytes to promo, over 10 MB"
    );
    if from_source() {
        assert!(size <= 40_000_000, "the image is {size} bytes, over 40 MB");
    }

    let feeds = tempfile::tempdir().unwrap();
    let rows: Vec<_> = (0..500)
        .map(|i| {
            (
                common::id(7, i),
                format!("{}.25", i + 1),
                "2027-01-01 00:00:00 +0000 UTC".to_string(),
            )
        })
        .collect();
    common::write_csv(&feeds.path().join("feed.csv"), &rows);
    // The container's user (10001) reads the mounted feed.
    readable(feeds.path(), 0o755);
    readable(&feeds.path().join("feed.csv"), 0o644);

    let name = format!("promo-test-{}", std::process::id());
    let volume = format!("{name}-data");
    let port = common::free_port();
    let _cleanup = Cleanup(vec![
        vec![
            "podman".into(),
            "volume".into(),
            "rm".into(),
            "-f".into(),
            volume.clone(),
        ],
        remove_container(&name),
    ]);
    podman_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/tmp",
        "-v",
        &format!("{volume}:/var/lib/promo"),
        "-v",
        &format!("{}:/feeds:ro", feeds.path().display()),
        "-p",
        &format!("127.0.0.1:{port}:1321"),
        "promo:latest",
    ]);

    // A generation built inside the container from the mounted feed; the
    // server, started with an empty data directory, takes it.
    let built = podman(&["exec", &name, "promo", "build", "/feeds/feed.csv"]);
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(
        built.status.success(),
        "promo build in the container: {log}"
    );
    eprintln!("container image: promo build: {}", log.trim());
    let r = get_until_200(
        port,
        &format!("/promotions/{}", rows[42].0),
        Duration::from_secs(60),
    );
    assert_eq!(r.json()["price"], serde_json::json!(43.25), "{}", r.text());
    assert_eq!(r.header("x-promo-generation"), Some("1"));

    // Not root, on a read-only root filesystem.
    let status = podman_ok(&["exec", &name, "cat", "/proc/1/status"]);
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("10001"), "{uid}");
    let mounts = podman_ok(&["exec", &name, "cat", "/proc/1/mounts"]);
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/"))
        .unwrap();
    let options = root_mount.split(' ').nth(3).unwrap();
    assert!(options.split(',').any(|o| o == "ro"), "{root_mount}");
    let write = podman(&["exec", &name, "sh", "-c", "echo x > /usr/local/bin/x"]);
    assert!(!write.status.success(), "the root filesystem took a write");
    // Each log line is one JSON object (the image's default log format).
    let logs = podman(&["logs", &name]);
    let logs =
        String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    assert!(logs.lines().count() > 0);
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // SIGTERM: it drains and exits 0, well within 5 s.
    podman_ok(&["kill", "--signal", "TERM", &name]);
    let started = Instant::now();
    let exit = loop {
        let state = podman_ok(&[
            "inspect",
            &name,
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
        ]);
        let mut parts = state.split_whitespace();
        if parts.next() == Some("exited") {
            break parts.next().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "container image: exited {exit} {:?} after SIGTERM",
        started.elapsed()
    );
    assert_eq!(exit, "0");
}

#[test]
fn the_compose_stack_serves_a_lookup_through_nginx() {
    if !containers_run_here("compose", "compose") {
        return;
    }
    // deploy/compose.yaml publishes nginx on port 1321, as shipped.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:1321").is_ok(),
        "port 1321 is taken: stop what listens there (make run?) and run the test again"
    );
    let project = format!("promo-test-{}", std::process::id());
    let compose = |args: &[&str]| -> Output {
        podman_cmd("podman-compose")
            .args(["-p", &project, "-f", "deploy/compose.yaml"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman-compose is needed ({e}); make test installs it"))
    };
    // Cleanup runs these last first: compose's own down, then whatever it
    // left (a container restarting as it went down, the network).
    let leftovers = format!(
        "podman rm -f -t 0 $(podman ps -aq --filter label=io.podman.compose.project={project}); \
         podman network rm -f {project}_default"
    );
    let down = [
        "podman-compose",
        "-p",
        &project,
        "-f",
        "deploy/compose.yaml",
        "down",
        "-v",
    ];
    let _down = Cleanup(vec![
        vec!["sh".into(), "-c".into(), leftovers],
        down.map(String::from).to_vec(),
    ]);
    let up = compose(&[
        "up",
        "-d",
        "s3",
        "builder",
        "replica-a",
        "replica-b",
        "nginx",
    ]);
    assert!(
        up.status.success(),
        "podman-compose up failed:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    // The builder publishes the demo feed to the store, both replicas fetch
    // it, and nginx answers from one of them.
    let demo = std::fs::read_to_string(root().join("fixtures/promotions.csv")).unwrap();
    let (id, price) = {
        let mut f = demo.lines().next().unwrap().split(',');
        (f.next().unwrap().to_string(), f.next().unwrap().to_string())
    };
    let r = get_until_200(1321, &format!("/promotions/{id}"), Duration::from_secs(180));
    assert_eq!(
        r.json()["price"].as_f64(),
        price.parse().ok(),
        "{}",
        r.text()
    );
    let generation: u64 = r.header("x-promo-generation").unwrap().parse().unwrap();
    assert!(generation >= 1);
    eprintln!(
        "compose: GET /promotions/{id} through nginx: {} from generation {generation}",
        r.text()
    );
    // Each replica fetched the generation into its own volume.
    let names = podman_ok(&[
        "ps",
        "--filter",
        &format!("label=io.podman.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    for replica in ["replica-a", "replica-b"] {
        let name = names
            .lines()
            .find(|n| n.contains(replica))
            .unwrap_or_else(|| panic!("{replica} is not running: {names}"));
        let got = podman_ok(&["exec", name, "promo", "get", &id]);
        assert!(got.contains(&id), "{replica}: {got}");
        eprintln!("compose: {name}: {}", got.trim());
    }
}

/// `podman exec NAME sh -c SCRIPT`, which must succeed; its output.
fn sh_in(name: &str, script: &str) -> String {
    podman_ok(&["exec", name, "sh", "-c", script])
}

#[test]
fn the_systemd_units_install_and_run_under_systemd() {
    if !containers_run_here("systemd", "systemd") {
        return;
    }
    // systemd as the container's init, promo where the install steps look
    // for it (target/release/promo in a checkout), and the checkout's
    // deploy/systemd and fixtures.
    let name = format!("promo-test-systemd-{}", std::process::id());
    let port = common::free_port();
    let _cleanup = Cleanup(vec![remove_container(&name)]);
    let mount = |from: PathBuf, to: &str| format!("{}:{to}:ro", from.display());
    podman_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--systemd",
        "always",
        "-p",
        &format!("127.0.0.1:{port}:1321"),
        "-v",
        &mount(
            PathBuf::from(env!("CARGO_BIN_EXE_promo")),
            "/src/target/release/promo",
        ),
        "-v",
        &mount(root().join("deploy/systemd"), "/src/deploy/systemd"),
        "-v",
        &mount(root().join("fixtures"), "/src/fixtures"),
        "localhost/promo-systemd:bookworm",
    ]);
    let started = Instant::now();
    loop {
        let state = podman(&["exec", &name, "systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            eprintln!(
                "systemd: the system is {state} after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "systemd did not finish booting in 60 s: {state}; {}",
            String::from_utf8_lossy(&podman(&["logs", &name]).stdout)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The install steps exactly as promo-serve.service's comment gives them.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/promo-serve.service")).unwrap();
    let steps: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .collect();
    assert!(steps.len() >= 5, "{steps:?}");
    for step in &steps {
        let out = podman(&["exec", "-w", "/src", &name, "sh", "-c", step]);
        assert!(
            out.status.success(),
            "{step}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The manual pages and the completions are where man and bash look.
    let installed = sh_in(
        &name,
        "ls /usr/local/share/man/man1 && test -s /usr/local/share/bash-completion/completions/promo \
         && grep -c _promo /usr/local/share/bash-completion/completions/promo",
    );
    assert!(
        installed.contains("promo.1") && installed.contains("promo-serve.1"),
        "{installed}"
    );

    // A build of the feed where the unit reads it, run as systemd runs it
    // (the timer's service, started by hand), then a lookup of its first id
    // from promo-serve.
    sh_in(
        &name,
        "cp /src/fixtures/promotions.csv /srv/promo/feeds/promotions.csv",
    );
    let build = podman(&["exec", &name, "systemctl", "start", "promo-build.service"]);
    let journal = |unit: &str| sh_in(&name, &format!("journalctl -u {unit} --no-pager"));
    assert!(
        build.status.success(),
        "promo-build.service failed:\n{}",
        journal("promo-build")
    );
    let outcome = sh_in(
        &name,
        "cat /var/lib/prometheus/node-exporter/promo_build.prom",
    );
    assert!(
        outcome.contains("promo_build_last_attempt_success{shard=\"0/1\"} 1"),
        "{outcome}"
    );
    let demo = std::fs::read_to_string(root().join("fixtures/promotions.csv")).unwrap();
    let mut first = demo.lines().next().unwrap().split(',');
    let (id, price) = (first.next().unwrap(), first.next().unwrap());
    let r = get_until_200(port, &format!("/promotions/{id}"), Duration::from_secs(30));
    assert_eq!(
        r.json()["price"].as_f64(),
        price.parse().ok(),
        "{}",
        r.text()
    );
    eprintln!("systemd: GET /promotions/{id}: {}", r.text());

    // The server runs as promo, with no new privileges and a system call
    // filter; the timer is waiting for its next half hour.
    let show = |unit: &str, property: &str| {
        sh_in(
            &name,
            &format!("systemctl show {unit} -p {property} --value"),
        )
        .trim()
        .to_string()
    };
    let pid = show("promo-serve", "MainPID");
    let status = sh_in(&name, &format!("cat /proc/{pid}/status"));
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let promo_uid = sh_in(&name, "id -u promo").trim().to_string();
    assert_eq!(field("Uid:"), promo_uid, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(show("promo-build.timer", "ActiveState"), "active");
    assert_ne!(show("promo-build.timer", "NextElapseUSecRealtime"), "");

    // reload sends SIGHUP: the same process goes on serving.
    let reload = podman(&["exec", &name, "systemctl", "reload", "promo-serve"]);
    assert!(
        reload.status.success(),
        "systemctl reload promo-serve failed:\n{}",
        journal("promo-serve")
    );
    let r = get_until_200(port, &format!("/promotions/{id}"), Duration::from_secs(10));
    assert_eq!(r.status, 200);
    assert_eq!(show("promo-serve", "MainPID"), pid);

    // stop: promo drains and exits 0 on SIGTERM, which systemd counts as
    // success.
    sh_in(&name, "systemctl stop promo-serve");
    assert_eq!(
        show("promo-serve", "Result"),
        "success",
        "{}",
        journal("promo-serve")
    );
    assert_eq!(show("promo-serve", "ExecMainStatus"), "0");
    let log = journal("promo-serve");
    assert!(!log.contains("status=31/SYS"), "{log}");
    eprintln!(
        "systemd: promo-serve stopped: {}",
        log.lines().last().unwrap_or("")
    );
}
