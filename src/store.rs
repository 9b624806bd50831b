//! The live generation: an atomically swappable table and its watcher.
//!
//! Requests `load()` the current table once and keep that `Arc` for the
//! whole request; a swap publishes a new `Arc` and never touches the old
//! one, which is unmapped when its last request drops it. So a request sees
//! exactly one generation, and a swap fails no request.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwapOption, Guard};

use crate::error::Result;
use crate::generation;
use crate::metrics as m;
use crate::table::Table;

/// The data directory and the generation that is live from it.
pub struct Store {
    dir: PathBuf,
    live: ArcSwapOption<Table>,
    /// Sequences that failed validation. Published files never change, so
    /// they are not retried (nor counted as failures again) on every scan.
    refused: Mutex<HashSet<u64>>,
}

impl Store {
    /// A store for `dir` with nothing live yet; call [`Store::refresh`].
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            live: ArcSwapOption::empty(),
            refused: Mutex::new(HashSet::new()),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live table, for the length of one request. Cheap; do not hold it
    /// across an `.await`.
    pub fn current(&self) -> Guard<Option<Arc<Table>>> {
        self.live.load()
    }

    /// Makes the newest generation that validates live, if it is newer than
    /// the live one. Newer generations that fail validation are refused with
    /// a log line and a metric, and the live one stays. Returns the sequence
    /// that went live, if any. Blocking: reads whole files.
    pub fn refresh(&self) -> Result<Option<u64>> {
        let live = self.live.load().as_ref().map_or(0, |t| t.sequence());
        for entry in generation::list(&self.dir)?.into_iter().rev() {
            if entry.sequence <= live {
                break;
            }
            if self.refused.lock().unwrap().contains(&entry.sequence) {
                continue;
            }
            match Table::open_verified(&entry.path, entry.sequence) {
                Ok(table) => {
                    self.go_live(table);
                    return Ok(Some(entry.sequence));
                }
                Err(e) => {
                    tracing::error!("refused generation {}: {e}", entry.sequence);
                    metrics::counter!(m::GENERATION_LOAD_FAILURES).increment(1);
                    self.refused.lock().unwrap().insert(entry.sequence);
                }
            }
        }
        Ok(None)
    }

    fn go_live(&self, table: Table) {
        let (sequence, rows) = (table.sequence(), table.len());
        let path = table.path().display().to_string();
        let old = self.live.swap(Some(Arc::new(table)));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(m::GENERATION_SEQUENCE).set(sequence as f64);
        metrics::gauge!(m::GENERATION_ROWS).set(rows as f64);
        metrics::gauge!(m::GENERATION_LOADED).set(now);
        metrics::counter!(m::GENERATION_SWAPS).increment(1);
        tracing::info!(
            sequence,
            rows,
            path,
            previous = old.as_ref().map(|t| t.sequence()),
            "generation is live"
        );
    }
}

/// How often the watcher looks for a new generation.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Rescans the data directory every `interval` and on SIGHUP, until
/// `shutdown` completes.
///
/// Polling a directory listing costs microseconds, works on every
/// filesystem (network mounts included) and cannot miss an event, which is
/// why it is used instead of inotify.
pub async fn watch(store: Arc<Store>, interval: Duration, shutdown: impl Future<Output = ()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: {e}");
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                tracing::info!("SIGHUP: rescanning the data directory");
            }
            () = &mut shutdown => return,
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.refresh()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("scanning for generations: {e}"),
            Err(e) => tracing::error!("generation scan panicked: {e}"),
        }
    }
}
