//! What the benches share: a feed made by the project's generator.

use std::path::Path;

/// Writes `rows` rows of `gen-promotions --seed 1` to `out`. The generator
/// is the workspace's `tools/gen-promotions`, not a binary of this package,
/// so cargo runs it (building it first if it must, in the bench's profile).
pub fn generate(rows: u64, out: &Path) {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--release", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .args(["--package", "gen-promotions", "--", "--rows"])
        .arg(rows.to_string())
        .arg("--out")
        .arg(out)
        .status()
        .expect("running gen-promotions through cargo");
    assert!(status.success(), "gen-promotions exited {status}");
}
