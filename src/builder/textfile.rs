//! `promo build --metrics-file`: the build's outcome in the Prometheus text
//! format, for node_exporter's textfile collector.
//!
//! A build from cron has no port to scrape: it runs for seconds every half
//! hour. The usual answer is a file that node_exporter reads on each scrape
//! and serves beside the machine's metrics. So each attempt rewrites it,
//! atomically (a temporary file renamed over it, so a scrape never reads half
//! a file): when the attempt ended and whether it published a generation,
//! and the figures of the last build that did. A failed attempt carries the
//! last success over from the file it replaces, so "no successful build for
//! two hours" (`PromoBuildStale`) stays true across any number of failures.
//! A guard's refusal (a feed that shrinks, churns or jumps too much) is
//! told apart from other failures (`PromoBuildRefused`), and the last
//! success's churn is carried over like its other figures.
//!
//! Samples carry the build's shard (`shard="K/N"`), so the builds of several
//! shards on one machine, each with its own file, stay apart.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::builder::pipeline::BuildSummary;
use crate::generation::shard::Shard;
use crate::metrics as m;
use crate::{Error, Result};

/// How a build attempt ended.
#[derive(Clone, Copy)]
pub enum Attempt<'a> {
    /// It published this generation.
    Published(&'a BuildSummary),
    /// A guard refused the feed.
    Refused,
    /// It failed otherwise.
    Failed,
}
/// Checks, before a build starts, that the file can be written: its
/// directory exists and takes new files. (A build of an hour should not
/// publish and then fail to say so.)
pub fn check(path: &Path) -> Result<()> {
    crate::builder::pipeline::usable_dir("--metrics-file", dir_of(path), false)
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes the outcome of the attempt that ended at `ended`.
pub fn write(path: &Path, shard: Shard, ended: SystemTime, attempt: Attempt<'_>) -> Result<()> {
    let summary = match attempt {
        Attempt::Published(s) => Some(s),
        _ => None,
    };
    let label = format!("{{shard=\"{shard}\"}}");
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let mut out = String::new();
    let mut sample = |(name, help): m::Help, value: &str| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {value}\n"
        ));
    };
    sample(m::BUILD_LAST_ATTEMPT, &format!("{:.3}", secs(ended)));
    sample(
        m::BUILD_LAST_ATTEMPT_SUCCESS,
        if summary.is_some() { "1" } else { "0" },
    );
    let refused = matches!(attempt, Attempt::Refused);
    sample(
        m::BUILD_LAST_ATTEMPT_REFUSED,
        if refused { "1" } else { "0" },
    );
    let old = match summary {
        Some(_) => String::new(),
        None => fs::read_to_string(path).unwrap_or_default(),
    };
    let values: Vec<Option<String>> = match summary {
        Some(s) => vec![
            Some(format!("{:.3}", secs(ended))),
            Some(s.rows.to_string()),
            Some(s.invalid.to_string()),
            Some(s.duplicates.to_string()),
            Some(format!("{:.3}", s.seconds)),
            Some(s.generation.sequence.to_string()),
        ],
        // Whatever the file it replaces said of the last success; nothing
        // if there was none (or no readable file).
        None => m::BUILD_LAST_SUCCESS
            .iter()
            .map(|(name, _)| previous(&old, name, &label))
            .collect(),
    };
    for (&metric, value) in m::BUILD_LAST_SUCCESS.iter().zip(values) {
        if let Some(value) = value {
            sample(metric, &value);
        }
    }
    // The last success's churn: ids by kind against the generation that
    // was live, absent when there was none.
    let (churn_name, churn_help) = m::BUILD_CHURN;
    let churn: Vec<(String, String)> = match summary {
        Some(s) => s
            .churn
            .iter()
            .flat_map(|c| c.kinds())
            .map(|(kind, n)| (kind.to_string(), n.to_string()))
            .collect(),
        None => crate::generation::churn::KINDS
            .iter()
            .filter_map(|kind| {
                let label = format!("{{shard=\"{shard}\",kind=\"{kind}\"}}");
                previous(&old, churn_name, &label).map(|v| (kind.to_string(), v))
            })
            .collect(),
    };
    if !churn.is_empty() {
        out.push_str(&format!(
            "# HELP {churn_name} {churn_help}\n# TYPE {churn_name} gauge\n"
        ));
        for (kind, n) in churn {
            out.push_str(&format!(
                "{churn_name}{{shard=\"{shard}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
    }
    replace(path, out.as_bytes())
}

/// The value of `name{label}` in a file this module wrote.
fn previous(text: &str, name: &str, label: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(label)?.trim();
        value.parse::<f64>().ok().map(|_| value.to_string())
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (whose name does not end in `.prom`, so the collector skips it), synced
/// and renamed over `path`.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dir_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".promo-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(Error::io(tmp.path()))?;
    // Readable by the collector, which often runs as another user.
    let mut perms = tmp
        .as_file()
        .metadata()
        .map_err(Error::io(tmp.path()))?
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(tmp.path(), perms).map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::io(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::local::Entry;
    use std::time::Duration;

    fn summary(sequence: u64) -> BuildSummary {
        BuildSummary {
            rows: 1000,
            valid: 990,
            invalid: 10,
            duplicates: 3,
            other_shards: 0,
            records: 987,
            first_invalid: Vec::new(),
            generation: Entry {
                sequence,
                path: format!("gen-{sequence:010}.promo").into(),
            },
            churn: Some(crate::generation::churn::Churn {
                previous: sequence - 1,
                previous_records: 990,
                previous_checksum: 0x1234,
                added: 3,
                removed: 6,
                price: 20,
                expiry: 2,
                changed: 21,
                unchanged: 963,
                price_jumps: 1,
                median_price_change: Some(0.1),
                examples: Vec::new(),
                jump_examples: Vec::new(),
            }),
            seconds: 1.25,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_a_success_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promo_build.prom");
        let shard = Shard::WHOLE;

        write(&path, shard, at(100), Attempt::Failed).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("promo_build_last_attempt_timestamp_seconds{shard=\"0/1\"} 100.000\n")
        );
        assert!(text.contains("promo_build_last_attempt_success{shard=\"0/1\"} 0\n"));
        assert!(!text.contains("promo_build_last_success"), "{text}");

        write(&path, shard, at(200), Attempt::Published(&summary(7))).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        for line in [
            "promo_build_last_attempt_success{shard=\"0/1\"} 1",
            "promo_build_last_success_timestamp_seconds{shard=\"0/1\"} 200.000",
            "promo_build_rows{shard=\"0/1\"} 1000",
            "promo_build_invalid_rows{shard=\"0/1\"} 10",
            "promo_build_duplicate_rows{shard=\"0/1\"} 3",
            "promo_build_duration_seconds{shard=\"0/1\"} 1.250",
            "promo_build_generation{shard=\"0/1\"} 7",
            "promo_build_last_attempt_refused{shard=\"0/1\"} 0",
            "promo_build_churn_ids{shard=\"0/1\",kind=\"added\"} 3",
            "promo_build_churn_ids{shard=\"0/1\",kind=\"removed\"} 6",
            "promo_build_churn_ids{shard=\"0/1\",kind=\"price\"} 20",
            "promo_build_churn_ids{shard=\"0/1\",kind=\"expiry\"} 2",
            "promo_build_churn_ids{shard=\"0/1\",kind=\"unchanged\"} 963",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }

        write(&path, shard, at(300), Attempt::Refused).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("promo_build_last_attempt_timestamp_seconds{shard=\"0/1\"} 300.000\n")
        );
        assert!(text.contains("promo_build_last_attempt_success{shard=\"0/1\"} 0\n"));
        assert!(
            text.contains("promo_build_last_success_timestamp_seconds{shard=\"0/1\"} 200.000\n")
        );
        assert!(text.contains("promo_build_generation{shard=\"0/1\"} 7\n"));
        // A refusal says so, and the last success's churn stays.
        assert!(text.contains("promo_build_last_attempt_refused{shard=\"0/1\"} 1\n"));
        assert!(text.contains("promo_build_churn_ids{shard=\"0/1\",kind=\"removed\"} 6\n"));
        // Only the file itself is left: the temporary one was renamed.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_shard_reads_back_only_its_own_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("promo_build.prom");
        let one: Shard = "1/4".parse().unwrap();
        write(&path, one, at(100), Attempt::Published(&summary(2))).unwrap();
        // Another shard's failure does not take this shard's success.
        let two: Shard = "2/4".parse().unwrap();
        write(&path, two, at(150), Attempt::Failed).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("promo_build_generation"), "{text}");
        assert!(text.contains("{shard=\"2/4\"}"));
    }
}
