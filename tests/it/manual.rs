//! The command line describing itself: `promo --version` names its commit,
//! `promo completions` loads in bash, zsh and fish and completes a
//! command, and `promo man` renders without a warning, with every command
//! and the exit status table.

use crate::common;

use std::process::{Command, Output};

use common::*;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn promo_says(args: &[&str]) -> String {
    ok(promo().args(args).output().unwrap())
}

/// `shell -c script` with the completions of `shell` in `$1`.
fn shell(shell: &str, script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("promo.{shell}"));
    std::fs::write(&file, promo_says(&["completions", shell])).unwrap();
    let out = Command::new(shell)
        .args(["-c", script, shell])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{shell} is needed ({e}); make test installs it: scripts/tools.sh")
        });
    ok(out)
}

#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let version = promo_says(&["--version"]);
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    let commit = std::env::var("PROMO_COMMIT")
        .ok()
        .or(commit)
        .unwrap_or("unknown".into());
    assert_eq!(
        version.trim(),
        format!("promo {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bash_completes_commands_and_their_flags() {
    let script = r#"source "$1"
        COMP_WORDS=(promo bu); COMP_CWORD=1; _promo promo bu promo; echo "${COMPREPLY[@]}"
        COMP_WORDS=(promo build --max-ch); COMP_CWORD=2; _promo promo --max-ch build; echo "${COMPREPLY[@]}""#;
    let said = shell("bash", script);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["build"],
        "{said}"
    );
    assert!(
        lines[1].split_whitespace().any(|w| w == "--max-churn"),
        "{said}"
    );
}

#[test]
fn fish_completes_commands() {
    let said = shell("fish", r#"source $argv[-1]; complete -C "promo bu""#);
    assert!(said.lines().any(|l| l.starts_with("build")), "{said}");
}

#[test]
fn zsh_loads_the_completions() {
    // zsh completes only at a prompt: this checks that the function loads
    // and defines the completion of promo.
    let said = shell(
        "zsh",
        r#"autoload -U compinit && compinit -u -D && source "$1" && print -r -- ${_comps[promo]}"#,
    );
    assert_eq!(said.trim(), "_promo");
}

#[test]
fn the_manual_page_renders_with_every_command_and_the_exit_codes() {
    let page = promo_says(&["man"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("promo.1");
    std::fs::write(&file, &page).unwrap();
    let out = Command::new("groff")
        .args(["-man", "-Tascii", "-ww", "-P-bcou"])
        .arg(&file)
        .env("GROFF_NO_SGR", "1")
        .output()
        .expect("groff is needed; make test installs it: scripts/tools.sh");
    assert!(
        out.stderr.is_empty(),
        "groff warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = ok(out);
    for heading in ["NAME", "SYNOPSIS", "SUBCOMMANDS", "EXIT STATUS", "VERSION"] {
        assert!(text.contains(heading), "no {heading} in:\n{text}");
    }
    for command in [
        "promo-build(1)",
        "promo-serve(1)",
        "promo-completions(1)",
        "promo-man(1)",
    ] {
        assert!(text.contains(command), "no {command} in:\n{text}");
    }
    // groff justifies lines: compare words.
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in [
        "2 an error, with a message",
        "3 a refused feed (build, build",
    ] {
        assert!(words.contains(line), "no {line:?} in:\n{text}");
    }

    // A page for each command, for a package to install.
    promo_says(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for page in [
        "promo.1",
        "promo-build.1",
        "promo-serve.1",
        "promo-rollback.1",
    ] {
        assert!(pages.contains(&page.to_string()), "{pages:?}");
    }
    let build = std::fs::read_to_string(dir.path().join("promo-build.1")).unwrap();
    assert!(build.contains("max\\-churn"), "{build}");
}
