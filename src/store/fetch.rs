//! Fetching generations from an object store into the data directory.
//!
//! What the fleets before promo learned (Voldemort, Venice, Pinot): pull
//! immutable versions, newest first; check free disk before a download;
//! download under a temporary name, in ranges with a few in flight, each
//! retried; throttle bytes per second on the receiver; verify against what
//! the builder recorded before the file is renamed into place; never
//! download a refused version again; jitter the polling so that a fleet does
//! not poll in step (the polling is `server::poll`'s).
//!
//! A fetched generation keeps the store's sequence. It is fully verified
//! (body checksum, order, fanout, and the manifest's header figures) while
//! it still has its temporary name; only then does it become
//! `gen-<sequence>.promo`, and the verified table goes live at once, so the
//! bytes are read once, not twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::generation::local::{self, BuildLock, Entry, RemoveOnDrop};
use crate::generation::table::Table;
use crate::metrics as m;
use crate::store::layout::Manifest;
use crate::store::ranged::{PinnedObject, RangeError};
use crate::store::remote::Remote;

/// Generations a server with `--source` keeps in its data directory: the
/// live one and one to roll back to.
pub const KEEP: usize = 2;
/// Bytes per ranged GET: small enough to retry cheaply and to stay well
/// inside a store client's request timeout, large enough to amortise it.
const RANGE: u64 = 8 << 20;
/// Ranged GETs in flight at once.
const IN_FLIGHT: usize = 4;
/// Free disk kept beyond the download itself.
const DISK_MARGIN: u64 = 64 << 20;

/// What [`Fetcher::fetch_newer`] did.
pub enum Fetched {
    /// Nothing newer and valid in the store. `store` is its newest
    /// committed sequence, if it has any.
    UpToDate { store: Option<u64> },
    /// A generation was downloaded, verified and published locally.
    Generation {
        entry: Entry,
        /// The verified table, mapped from its final name.
        table: Box<Table>,
        bytes: u64,
        seconds: f64,
    },
}

/// Downloads generations from one store into one data directory.
pub struct Fetcher {
    remote: Remote,
    dir: PathBuf,
    throttle: Option<Throttle>,
    progress: bool,
    /// Generations (sequence, object) refused: not downloaded again.
    refused: Mutex<HashSet<(u64, String)>>,
}

impl Fetcher {
    /// A fetcher from `remote` into `dir`, at most `rate` bytes a second,
    /// with a progress bar on standard error if `progress`.
    pub fn new(
        remote: Remote,
        dir: impl Into<PathBuf>,
        rate: Option<u64>,
        progress: bool,
    ) -> Fetcher {
        Fetcher {
            remote,
            dir: dir.into(),
            throttle: rate.map(Throttle::new),
            progress,
            refused: Mutex::new(HashSet::new()),
        }
    }

    /// Fetches the store's newest generation that is newer than `local`
    /// and verifies. Newer ones that fail (a truncated or damaged object, a
    /// manifest that does not match its object) are refused with a log
    /// line and a metric, remembered, and the next older one is tried.
    /// An error means the store or the disk failed; try again later.
    pub async fn fetch_newer(&self, local: u64) -> Result<Fetched> {
        let sequences = self.remote.sequences().await?;
        let newest = sequences.last().copied();
        metrics::gauge!(m::SOURCE_NEWEST_SEQUENCE).set(newest.unwrap_or(0) as f64);
        for &sequence in sequences.iter().rev().take_while(|&&s| s > local) {
            let manifest = match self.remote.manifest(sequence).await {
                Ok(Some(manifest)) => manifest,
                // Removed by retention since the listing: a newer one exists.
                Ok(None) => continue,
                Err(e @ Error::Manifest { .. }) => {
                    self.refuse(sequence, String::new(), &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.is_refused(sequence, &manifest.object) {
                continue;
            }
            let lock = BuildLock::acquire(&self.dir)?;
            lock.remove_leftovers(&self.dir)?;
            match self.fetch(lock, &manifest).await? {
                Ok((entry, table, seconds)) => {
                    return Ok(Fetched::Generation {
                        entry,
                        table: Box::new(table),
                        bytes: manifest.bytes,
                        seconds,
                    })
                }
                Err(e) => self.refuse(sequence, manifest.object.clone(), &e),
            }
        }
        Ok(Fetched::UpToDate { store: newest })
    }

    fn is_refused(&self, sequence: u64, object: &str) -> bool {
        self.refused
            .lock()
            .unwrap()
            .contains(&(sequence, object.to_string()))
    }

    fn refuse(&self, sequence: u64, object: String, why: &Error) {
        if self.refused.lock().unwrap().insert((sequence, object)) {
            // `why` names the store and the generation.
            tracing::error!("refused generation {sequence}: {why}");
            metrics::counter!(m::GENERATION_LOAD_FAILURES).increment(1);
        }
    }

    /// Downloads and verifies one generation under the lock. The outer
    /// error is the store's or the disk's (try again); the inner one is
    /// the generation's (refuse it).
    async fn fetch(
        &self,
        lock: BuildLock,
        manifest: &Manifest,
    ) -> Result<std::result::Result<(Entry, Table, f64), Error>> {
        let started = Instant::now();
        let sequence = manifest.sequence;
        let refused = |reason: String| {
            Ok(Err(Error::Manifest {
                url: self.remote.url().to_string(),
                sequence,
                reason,
            }))
        };
        let object = match PinnedObject::in_store(&self.remote, &manifest.object).await? {
            Some(object) => object,
            None => return refused(format!("its object {} is missing", manifest.object)),
        };
        let len = object.len;
        if len != manifest.bytes {
            return refused(format!(
                "its object {} is {len} bytes, but the manifest says {} (truncated or replaced?)",
                manifest.object, manifest.bytes
            ));
        }
        check_free_disk(&self.dir, sequence, len)?;
        let (file, tmp) = lock.temp_file(&self.dir)?;
        let cleanup = RemoveOnDrop::new(&tmp);
        // Reserve the blocks now: a full disk fails here, not halfway.
        crate::sys::allocate(&file, len)
            .map_err(Error::io_op("reserving space for a download", &tmp))?;
        tracing::info!(
            sequence,
            bytes = len,
            object = %manifest.object,
            "downloading a generation"
        );
        self.download(&object, &file, &tmp).await?;
        // Syncing, verifying (every byte) and renaming block: off the
        // runtime's thread, which the watcher and the metrics share.
        let (dir, expected, url) = (
            self.dir.clone(),
            manifest.clone(),
            self.remote.url().to_string(),
        );
        let checked = tokio::task::spawn_blocking(move || -> Result<Result<(Entry, Table), Error>> {
            file.sync_all()
                .map_err(Error::io_op("syncing a download", &tmp))?;
            drop(file);
            let table = match Table::open_verified(&tmp, sequence) {
                Ok(table) => table,
                Err(e @ Error::Format { .. }) => return Ok(Err(e)),
                Err(e) => return Err(e),
            };
            if !expected.matches(table.header()) {
                return Ok(Err(Error::Manifest {
                    url,
                    sequence,
                    reason: "the object's header does not match the manifest (another build's file?)"
                        .into(),
                }));
            }
            let entry = lock.publish_as(&dir, &tmp, sequence, expected.sidecar())?;
            cleanup.disarm();
            let table = table.moved_to(entry.path.clone());
            Ok(Ok((entry, table)))
        })
        .await
        .map_err(|e| Error::Usage(format!("verifying generation {sequence}: {e}")))??;
        let (entry, table) = match checked {
            Ok(done) => done,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            sequence,
            bytes = len,
            seconds,
            "fetched and verified a generation"
        );
        Ok(Ok((entry, table, seconds)))
    }

    /// Downloads `object` into `file` in ranges, a few in flight (see
    /// [`ranged`](super::ranged) for how each is read and retried).
    async fn download(
        &self,
        object: &PinnedObject,
        file: &std::fs::File,
        tmp: &Path,
    ) -> Result<()> {
        let len = object.len;
        let bar = self.progress.then(|| {
            indicatif::ProgressBar::new(len).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} fetching [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            )
        });
        let ranges = (0..len)
            .step_by(RANGE as usize)
            .map(|s| s..(s + RANGE).min(len));
        let result = futures_util::stream::iter(ranges)
            .map(|range| self.download_range(object, range, file, tmp, bar.as_ref()))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result
    }

    /// Writes bytes `range` of `object` where they belong in `file`, each
    /// chunk as it arrives, at the rate the throttle allows.
    async fn download_range(
        &self,
        object: &PinnedObject,
        range: std::ops::Range<u64>,
        file: &std::fs::File,
        tmp: &Path,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut offset = range.start;
        let read = object.read_range(range, |chunk| {
            let at = offset;
            offset += chunk.len() as u64;
            async move {
                if let Some(t) = &self.throttle {
                    t.take(chunk.len() as u64).await;
                }
                file.write_all_at(&chunk, at)
                    .map_err(Error::io_op("writing a download", tmp))?;
                metrics::counter!(m::FETCH_BYTES).increment(chunk.len() as u64);
                if let Some(bar) = bar {
                    bar.inc(chunk.len() as u64);
                }
                Ok(())
            }
        });
        match read.await {
            Ok(()) => Ok(()),
            Err(RangeError::Sink(e)) => Err(e),
            Err(RangeError::NotTaken) => Err(self.remote.error("downloading a generation")(
                "the store does not take range requests",
            )),
            Err(RangeError::Store(why)) => Err(self.remote.error("downloading a generation")(why)),
        }
    }
}

/// A token bucket over bytes: each download waits until its bytes are due.
/// Shared by the ranges in flight, so the rate holds for the whole download,
/// and bursts are at most one chunk of one range.
struct Throttle {
    rate: u64,
    /// When the bytes taken so far are all paid for.
    due: Mutex<tokio::time::Instant>,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate.max(1),
            due: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        let wait = {
            let mut due = self.due.lock().unwrap();
            let now = tokio::time::Instant::now();
            // Idle time earns no credit beyond a tenth of a second.
            let credit = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
            let start = (*due).max(credit);
            *due = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Fails with [`Error::DiskSpace`] unless `dir`'s filesystem has room for
/// `len` bytes and a margin.
fn check_free_disk(dir: &Path, sequence: u64, len: u64) -> Result<()> {
    let free = crate::sys::free_disk(dir).map_err(Error::io_op("checking free disk", dir))?;
    let needed = len + DISK_MARGIN;
    if free < needed {
        return Err(Error::DiskSpace {
            path: dir.to_path_buf(),
            sequence,
            needed,
            free,
        });
    }
    Ok(())
}

/// `promo fetch`: once, the store's newest valid generation if it is newer
/// than the newest sound one in `dir`, keeping the newest [`KEEP`] there as
/// `serve --source` does. Returns what was done. Refusals are remembered by
/// a running server only: each `promo fetch` checks a bad generation anew.
pub fn fetch_once(url: &str, dir: &Path, rate: Option<u64>, progress: bool) -> Result<Fetched> {
    let fetcher = Fetcher::new(Remote::open(url)?, dir, rate, progress);
    let local = local::list(dir)?
        .into_iter()
        .rev()
        .find(|e| local::Known::default().sound(e))
        .map_or(0, |e| e.sequence);
    let outcome = crate::store::remote::block_on(fetcher.fetch_newer(local))??;
    if let Fetched::Generation { .. } = outcome {
        retain(dir);
    }
    Ok(outcome)
}

/// Downloads generation `sequence` of the store at `url` into `dir`, a
/// scratch directory, and verifies it as a fetch does: the old or new side
/// of `promo diff s3://bucket/prefix#7`.
pub fn fetch_sequence(url: &str, sequence: u64, dir: &Path, progress: bool) -> Result<Table> {
    let fetcher = Fetcher::new(Remote::open(url)?, dir, None, progress);
    crate::store::remote::block_on(async {
        let manifest =
            fetcher
                .remote
                .manifest(sequence)
                .await?
                .ok_or_else(|| Error::NothingInStore {
                    url: url.to_string(),
                    reason: format!("it holds no generation {sequence}"),
                })?;
        let lock = BuildLock::acquire(dir)?;
        fetcher
            .fetch(lock, &manifest)
            .await?
            .map(|(_, table, _)| table)
    })?
}

/// Keeps the newest [`KEEP`] sound generations in `dir`. The live one is
/// the newest, so it is never among those removed.
pub fn retain(dir: &Path) {
    let Ok(lock) = BuildLock::acquire(dir) else {
        return;
    };
    let done = lock.retain(dir, KEEP, &local::Known::default());
    for old in &done.removed {
        tracing::info!(path = %old.path.display(), "removed an old generation");
    }
    for e in &done.failed {
        tracing::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_holds_the_rate_over_many_takes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let t = Throttle::new(1 << 20);
            let started = tokio::time::Instant::now();
            for _ in 0..40 {
                t.take(256 << 10).await;
            }
            // 10 MiB at 1 MiB/s: 10 s of (paused, virtual) time, less the
            // last chunk (a take waits until its bytes are due to start)
            // and at most a tenth of a second of credit.
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(9_650), "{took:?}");
            assert!(took <= Duration::from_millis(10_100), "{took:?}");
        });
    }
}
