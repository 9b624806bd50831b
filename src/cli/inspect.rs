//! `promo inspect`: the generations of a data directory or of a store, each
//! checked, as a table or JSON.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use promo::generation::churn::Churn;
use promo::generation::format::rfc3339_utc;
use promo::generation::local::{self, Description};
use promo::generation::rollback::Rollback;
use promo::generation::table::Table;
use promo::store::remote::{block_on, Remote};

use super::output::changes;
use super::{DataDir, Exit};

#[derive(Args)]
pub struct Inspect {
    #[command(flatten)]
    dir: DataDir,
    /// List this object store's generations instead of the data directory's.
    #[arg(long, value_name = "URL")]
    source: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One generation of a store, as `inspect --source --json` shows it.
#[derive(Serialize)]
struct Stored {
    sequence: u64,
    rows: u64,
    bytes: u64,
    created: String,
    published: String,
    object: String,
    /// `ok`, or what is wrong with the object.
    state: String,
    churn: Option<Churn>,
    rollback: Option<Rollback>,
}

impl Inspect {
    pub fn run(self) -> anyhow::Result<Exit> {
        match &self.source {
            Some(url) => self.print(&store(url)?, Stored::line, store_heading),
            None => self.print(&data_dir(&self.dir.data_dir)?, line, local_heading),
        }
    }

    fn print<R: Serialize>(
        &self,
        rows: &[R],
        line: fn(&R) -> String,
        heading: fn() -> String,
    ) -> anyhow::Result<Exit> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows)?);
        } else {
            println!("{}", heading());
            for r in rows {
                println!("{}", line(r));
            }
        }
        Ok(Exit::Success)
    }
}

/// Every generation in `dir`, each fully verified; the newest sound one is
/// the live one.
fn data_dir(dir: &Path) -> anyhow::Result<Vec<Description>> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such data directory (give --data-dir, or set PROMO_DATA_DIR)",
            dir.display()
        );
    }
    let mut rows = Vec::new();
    let mut live_found = false;
    for entry in local::list(dir)?.into_iter().rev() {
        let state = match Table::open_verified(&entry.path, entry.sequence) {
            Ok(_) => "ok".to_string(),
            Err(promo::Error::Format { cause, .. }) => cause.to_string(),
            Err(other) => other.to_string(),
        };
        let live = state == "ok" && !live_found;
        live_found |= live;
        rows.push(local::describe(&entry, &state, live));
    }
    rows.reverse();
    Ok(rows)
}

/// Every generation the store's manifests name, each object checked for
/// its length (not read).
fn store(url: &str) -> anyhow::Result<Vec<Stored>> {
    let remote = Remote::open(url)?;
    let inventory = block_on(remote.inventory())??;
    Ok(inventory
        .into_iter()
        .map(|(m, len)| Stored {
            state: match len {
                Some(len) if len == m.bytes => "ok".to_string(),
                Some(len) => format!("object is {len} bytes"),
                None => "object missing".to_string(),
            },
            sequence: m.sequence,
            rows: m.rows,
            bytes: m.bytes,
            created: rfc3339_utc(m.created_ms),
            published: rfc3339_utc(m.published_ms),
            object: m.object,
            churn: m.churn,
            rollback: m.rollback,
        })
        .collect())
}

fn local_heading() -> String {
    format!(
        "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  path",
        "sequence", "live", "rows", "bytes", "created", "version", "shard", "checksum", "churn"
    )
}

fn line(r: &Description) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "{:>10}  {:>4}  {:>12}  {:>14}  {:<24}  {:>7}  {:>5}  {:<8}  {:<34}  {}",
        r.sequence,
        if r.live { "*" } else { "" },
        or_dash(r.rows.map(|n| n.to_string())),
        r.bytes,
        r.created.as_deref().unwrap_or("-"),
        or_dash(r.version.map(|n| n.to_string())),
        r.shard.as_deref().unwrap_or("-"),
        r.checksum,
        changes(r.churn.as_ref(), r.rollback.as_ref()),
        r.path,
    )
}

fn store_heading() -> String {
    format!(
        "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  object",
        "sequence", "rows", "bytes", "created", "state", "churn"
    )
}

impl Stored {
    fn line(&self) -> String {
        format!(
            "{:>10}  {:>12}  {:>14}  {:<24}  {:<16}  {:<34}  {}",
            self.sequence,
            self.rows,
            self.bytes,
            self.created,
            self.state,
            changes(self.churn.as_ref(), self.rollback.as_ref()),
            self.object,
        )
    }
}
