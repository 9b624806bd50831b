//! `promo inspect`: the generations of a data directory or of a store, each
//! checked, as a table or JSON.

use std::path::Path;

use clap::Args;

use promo::generation::format::rfc3339_utc;
use promo::generation::local::{self, Description};
use promo::generation::table::Table;
use promo::store::remote::{block_on, Remote};

use super::output::{self, StoreDelta, StoreGeneration};
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

impl Inspect {
    pub fn run(self) -> anyhow::Result<Exit> {
        match &self.source {
            Some(url) => output::table(&store(url)?, self.json)?,
            None => output::table(&data_dir(&self.dir.data_dir)?, self.json)?,
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
fn store(url: &str) -> anyhow::Result<Vec<StoreGeneration>> {
    let remote = Remote::open(url)?;
    let inventory = block_on(remote.inventory())??;
    Ok(inventory
        .into_iter()
        .map(|(m, len, delta_len)| StoreGeneration {
            state: object_state(len, m.bytes),
            delta: m.delta.map(|d| StoreDelta {
                state: object_state(delta_len, d.bytes),
                base: d.base_sequence,
                bytes: d.bytes,
                object: d.object,
            }),
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

/// `ok` when an object of `expected` bytes is there, else what is wrong.
fn object_state(len: Option<u64>, expected: u64) -> String {
    match len {
        Some(len) if len == expected => "ok".to_string(),
        Some(len) => format!("object is {len} bytes"),
        None => "object missing".to_string(),
    }
}
