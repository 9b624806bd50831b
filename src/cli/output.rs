//! Where a command says what it did, and how its answers are laid out:
//! the one place output is rendered.

use promo::generation::churn::Churn;
use promo::generation::local::Description;
use promo::generation::rollback::Rollback;

/// A line on standard output, or with `--log-format json` an info event,
/// so that every line a container writes is one JSON object.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// What a command did.
    pub fn say(self, line: &str) {
        if self.json {
            tracing::info!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// Why a command failed.
    pub fn error(self, e: &anyhow::Error) {
        if self.json {
            tracing::error!("{e:#}");
        } else {
            eprintln!("promo: error: {e:#}");
        }
    }
}

impl Output {
    /// A build's summary line: on standard output in either format, since
    /// scripts parse it; with JSON logs, also as an event with its fields.
    pub fn summary(self, s: &promo::builder::pipeline::BuildSummary) {
        println!("{s}");
        if self.json {
            s.log();
        }
    }
}

/// What a generation changed, in `inspect`'s tables: for a rollback
/// `rollback to N, undid M, L`, else its churn `+added -removed ~changed
/// (percent)`, or `-` when it is not known.
pub fn changes(churn: Option<&Churn>, rollback: Option<&Rollback>) -> String {
    if let Some(r) = rollback {
        let undone: Vec<String> = r.undone.iter().map(|u| u.sequence.to_string()).collect();
        return match undone.is_empty() {
            true => format!("rollback to {}", r.of),
            false => format!("rollback to {}, undid {}", r.of, undone.join(", ")),
        };
    }
    match churn {
        Some(c) => format!(
            "+{} -{} ~{} ({:.2}%)",
            c.added,
            c.removed,
            c.changed,
            c.churn_percent()
        ),
        None => "-".to_string(),
    }
}

/// A row of `inspect`'s answer: a line of its table, or an object of its
/// JSON.
pub trait Row: serde::Serialize {
    fn heading() -> String;
    fn line(&self) -> String;
}

/// `rows` as `inspect` prints them: a table under its heading, or a JSON
/// array.
pub fn table<R: Row>(rows: &[R], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        println!("{}", R::heading());
        for r in rows {
            println!("{}", r.line());
        }
    }
    Ok(())
}

/// One generation of a store, as `inspect --source --json` shows it.
#[derive(serde::Serialize)]
pub struct StoreGeneration {
    pub sequence: u64,
    pub rows: u64,
    pub bytes: u64,
    pub created: String,
    pub published: String,
    pub object: String,
    /// `ok`, or what is wrong with the object.
    pub state: String,
    pub churn: Option<Churn>,
    pub rollback: Option<Rollback>,
    /// The delta published with it, if any.
    pub delta: Option<StoreDelta>,
}

/// A store generation's delta, as `promo inspect --source` shows it.
#[derive(serde::Serialize)]
pub struct StoreDelta {
    /// The store's sequence of the generation it applies to.
    pub base: u64,
    pub bytes: u64,
    pub object: String,
    /// `ok`, or what is wrong with the object.
    pub state: String,
}

impl Row for Description {
    fn heading() -> String {
        format!(
            "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  path",
            "sequence", "live", "rows", "bytes", "created", "version", "shard", "checksum", "churn"
        )
    }

    fn line(&self) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  {}",
            self.sequence,
            if self.live { "*" } else { "" },
            or_dash(self.rows.map(|n| n.to_string())),
            self.bytes,
            self.created.as_deref().unwrap_or("-"),
            or_dash(self.version.map(|n| n.to_string())),
            self.shard.as_deref().unwrap_or("-"),
            self.checksum,
            changes(self.churn.as_ref(), self.rollback.as_ref()),
            self.path,
        )
    }
}

impl Row for StoreGeneration {
    fn heading() -> String {
        format!(
            "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  {:<24}  object",
            "sequence", "rows", "bytes", "created", "state", "churn", "delta"
        )
    }

    fn line(&self) -> String {
        let delta = match &self.delta {
            None => "-".to_string(),
            Some(d) if d.state == "ok" => format!("from {}: {} bytes", d.base, d.bytes),
            Some(d) => format!("from {}: {}", d.base, d.state),
        };
        format!(
            "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  {:<24}  {}",
            self.sequence,
            self.rows,
            self.bytes,
            self.created,
            self.state,
            changes(self.churn.as_ref(), self.rollback.as_ref()),
            delta,
            self.object,
        )
    }
}
