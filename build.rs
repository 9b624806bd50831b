//! Names the commit the binary is built from, for `promo_build_info`.
//!
//! Sets `PROMO_COMMIT` for the crate: the variable of that name when the
//! build is given one (an image build, which copies the sources without
//! `.git`), else `git rev-parse --short=12 HEAD` when the sources are a
//! git checkout, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = commit().unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PROMO_COMMIT={commit}");
}

/// The commit, if the build names one or the sources are a checkout.
fn commit() -> Option<String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROMO_COMMIT");
    if let Some(commit) = std::env::var("PROMO_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return Some(commit.trim().to_owned());
    }
    // Only the package's own checkout: sources copied into some other
    // repository's tree must not take that repository's commit.
    if !Path::new(".git").exists() {
        return None;
    }
    // Rebuilt when HEAD moves: a new commit on the branch (the file of the
    // ref HEAD names, or packed-refs), or a checkout of another one. Only
    // files that exist are named, since cargo reruns a build script at
    // every build for a file that does not.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// What `git args` prints, trimmed; `None` if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
