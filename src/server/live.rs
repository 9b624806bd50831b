//! The live generation: an atomically swappable table and its watcher.
//!
//! Requests `load()` the current table once and keep that `Arc` for the
//! whole request; a swap publishes a new `Arc` and never touches the old
//! one, which is unmapped when its last request drops it. So a request sees
//! exactly one generation, and a swap fails no request.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwapOption, Guard};

use crate::error::Result;
use crate::generation::local;
use crate::generation::shard::Shard;
use crate::generation::table::Table;
use crate::metrics as m;
use crate::server::{every_tick_and_hangup, Wake};

/// The data directory and the generation that is live from it.
pub struct Live {
    dir: PathBuf,
    live: ArcSwapOption<Table>,
    /// Generations that failed validation, and the file each one was then.
    /// A published file never changes, so the same file is not read (nor
    /// counted as a failure) again on every scan; but a file put in its
    /// place, say a whole copy renamed over a partial one, is checked.
    refused: Mutex<HashMap<u64, FileId>>,
    /// Held while a table is compared with the live one and swapped in:
    /// the watcher and the fetcher may both offer the same generation, and
    /// only a newer one may replace the live one.
    swapping: Mutex<()>,
    /// The shard this server serves (`serve --shard`), if it was told one:
    /// a generation of another shard, or of every id, is refused.
    shard: Option<Shard>,
}

/// What tells one file from another under the same name: its inode, and
/// its length and modification time, should it be rewritten in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

impl Live {
    /// A store for `dir` with nothing live yet; call [`Live::refresh`].
    pub fn new(dir: impl Into<PathBuf>) -> Live {
        Live {
            dir: dir.into(),
            live: ArcSwapOption::empty(),
            refused: Mutex::new(HashMap::new()),
            swapping: Mutex::new(()),
            shard: None,
        }
    }

    /// The same, serving only generations built for `shard`.
    pub fn for_shard(dir: impl Into<PathBuf>, shard: Option<Shard>) -> Live {
        Live {
            shard,
            ..Live::new(dir)
        }
    }

    /// Why `table` must not be served here, if it must not: it was built
    /// for another shard than this server's, or for every id. Serving it
    /// would answer 421 for ids this shard owns, or 200 for ids it does not.
    fn wrong_shard(&self, table: &Table) -> Option<String> {
        let want = self.shard?;
        let got = table.header().shard;
        (got != want).then(|| {
            let built = if got.is_whole() {
                "every id (no --shard)".to_string()
            } else {
                format!("shard {got}")
            };
            format!(
                "{}: it was built for {built}, and this server serves shard {want} (--shard)",
                table.path().display()
            )
        })
    }

    /// Logs and counts a refused generation, and remembers its file so
    /// that later scans skip it.
    fn refuse(&self, sequence: u64, id: Option<FileId>, why: &dyn std::fmt::Display) {
        // Counted before it is logged: whoever reads the line finds it counted.
        metrics::counter!(m::GENERATION_LOAD_FAILURES).increment(1);
        tracing::error!("refused generation {sequence}: {why}");
        if let Some(id) = id {
            self.refused.lock().unwrap().insert(sequence, id);
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
        for entry in local::list(&self.dir)?.into_iter().rev() {
            if entry.sequence <= live {
                break;
            }
            // Taken before the file is read: should it be replaced
            // meanwhile, the next scan sees another file and reads it.
            let id = FileId::of(&entry.path);
            if id.is_some() && self.refused.lock().unwrap().get(&entry.sequence) == id.as_ref() {
                continue;
            }
            match Table::open_verified(&entry.path, entry.sequence) {
                Ok(table) if let Some(why) = self.wrong_shard(&table) => {
                    self.refuse(entry.sequence, id, &why);
                }
                Ok(table) => {
                    self.refused.lock().unwrap().remove(&entry.sequence);
                    // Another swap (a fetch) may have won meanwhile.
                    return Ok(self.go_live(table).then_some(entry.sequence));
                }
                Err(e) => self.refuse(entry.sequence, id, &e),
            }
        }
        Ok(None)
    }

    /// Makes `table`, verified by the caller, live if it is newer than the
    /// live one: a generation the fetcher downloaded and verified before
    /// renaming it into the data directory. Returns whether it went live;
    /// a generation of another shard is refused (and not read again).
    pub fn install(&self, table: Table) -> bool {
        let sequence = table.sequence();
        if let Some(why) = self.wrong_shard(&table) {
            self.refuse(sequence, FileId::of(table.path()), &why);
            return false;
        }
        let swapped = self.go_live(table);
        if swapped {
            self.refused.lock().unwrap().remove(&sequence);
        }
        swapped
    }

    /// Swaps `table` in if it is newer than the live one; returns whether
    /// it did.
    fn go_live(&self, table: Table) -> bool {
        let _swapping = self.swapping.lock().unwrap();
        let (sequence, rows) = (table.sequence(), table.len());
        if self
            .live
            .load()
            .as_ref()
            .is_some_and(|t| t.sequence() >= sequence)
        {
            return false;
        }
        let path = table.path().display().to_string();
        let shard = table.header().shard;
        let old = self.live.swap(Some(Arc::new(table)));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(m::GENERATION_SEQUENCE).set(sequence as f64);
        metrics::gauge!(m::GENERATION_ROWS).set(rows as f64);
        metrics::gauge!(m::GENERATION_SHARD_INDEX).set(f64::from(shard.index()));
        metrics::gauge!(m::GENERATION_SHARD_COUNT).set(f64::from(shard.count()));
        metrics::gauge!(m::GENERATION_LOADED).set(now);
        metrics::counter!(m::GENERATION_SWAPS).increment(1);
        tracing::info!(
            sequence,
            rows,
            %shard,
            path,
            previous = old.as_ref().map(|t| t.sequence()),
            "generation is live"
        );
        true
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
pub async fn watch(live: Arc<Live>, interval: Duration, shutdown: impl Future<Output = ()>) {
    let rescan = |wake| {
        let live = live.clone();
        async move {
            if wake == Wake::Hangup {
                tracing::info!("SIGHUP: rescanning the data directory");
            }
            let s = live.clone();
            match tokio::task::spawn_blocking(move || s.refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("scanning for generations: {e}"),
                Err(e) => tracing::error!("generation scan panicked: {e}"),
            }
            if let Some(table) = live.current().as_ref() {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let age_ms = now_ms.saturating_sub(table.header().created_ms);
                metrics::gauge!(m::GENERATION_AGE).set(age_ms as f64 / 1000.0);
            }
        }
    };
    every_tick_and_hangup("the generation watcher", interval, shutdown, rescan).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::format::Writer;
    use crate::generation::record::Price;

    /// Writes a valid generation of `n` records at `path`, whole, through a
    /// rename (as a copy should arrive).
    fn put_generation(path: &Path, n: u128) {
        let tmp = path.with_extension("part");
        let file = std::fs::File::create(&tmp).unwrap();
        let mut w = Writer::new(file, &tmp, n as u64).unwrap();
        for k in 1..=n {
            let price = Price::new(k as u64, 2).unwrap();
            w.push_row(k << 100, price, b"2020-01-01 00:00:00").unwrap();
        }
        w.finish().unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn put_bytes(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_refused_file_is_not_read_again_but_one_put_in_its_place_is() {
        let dir = tempfile::tempdir().unwrap();
        let gen = |s| dir.path().join(local::file_name(s));
        put_generation(&gen(1), 3);
        let store = Live::new(dir.path());
        assert_eq!(store.refresh().unwrap(), Some(1));

        put_bytes(&gen(2), b"half a generation");
        assert_eq!(store.refresh().unwrap(), None);
        let refused = *store.refused.lock().unwrap().get(&2).unwrap();
        assert_eq!(Some(refused), FileId::of(&gen(2)));
        // The same file: skipped, and remembered as it was.
        assert_eq!(store.refresh().unwrap(), None);
        assert_eq!(store.refused.lock().unwrap().get(&2), Some(&refused));
        assert_eq!(store.current().as_ref().unwrap().sequence(), 1);

        // Another bad file in its place is refused in turn, a good one goes live.
        put_bytes(&gen(2), b"another half");
        assert_eq!(store.refresh().unwrap(), None);
        assert_ne!(store.refused.lock().unwrap().get(&2), Some(&refused));
        put_generation(&gen(2), 5);
        assert_eq!(store.refresh().unwrap(), Some(2));
        assert_eq!(store.current().as_ref().unwrap().len(), 5);
        assert!(store.refused.lock().unwrap().is_empty());
    }

    #[test]
    fn a_fetched_generation_of_another_shard_is_refused_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let gen = |s| dir.path().join(local::file_name(s));
        // Keys 1 << 100 and up are all in shard 0 of 4, and in the whole.
        put_generation(&gen(1), 3);
        let quarter = Shard::new(0, 4).unwrap();
        let store = Live::for_shard(dir.path(), Some(quarter));
        assert_eq!(
            store.refresh().unwrap(),
            None,
            "a whole generation is refused"
        );
        assert!(store.current().is_none());
        assert!(store.refused.lock().unwrap().contains_key(&1));

        // As the fetcher hands one over: refused, not live, remembered.
        put_generation(&gen(2), 4);
        let table = Table::open_verified(&gen(2), 2).unwrap();
        assert!(!store.install(table));
        assert!(store.current().is_none());
        assert_eq!(
            store.refused.lock().unwrap().get(&2).copied(),
            FileId::of(&gen(2))
        );
        // Without --shard, the same files are served.
        let any = Live::new(dir.path());
        assert_eq!(any.refresh().unwrap(), Some(2));
    }
}
