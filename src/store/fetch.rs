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
//! bytes are read once, not twice. A generation rebuilt from deltas is
//! verified the same way as it is written (see `delta::Delta::apply`), so
//! its bytes are not read back at all: at 10^8 records, that is 3.2 GB a
//! replica does not read from its disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::generation::delta::Delta;
use crate::generation::local::{self, BuildLock, Entry, RemoveOnDrop};
use crate::generation::table::Table;
use crate::metrics as m;
use crate::store::layout::{DeltaObject, Manifest};
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

/// The kinds of bytes a fetch downloads: `promo_fetch_bytes_total`'s
/// `kind` label.
pub const KINDS: [&str; 2] = [FULL, DELTA];
const FULL: &str = "full";
const DELTA: &str = "delta";

/// Why a fetch that tried deltas downloaded the whole generation instead:
/// `promo_fetch_delta_fallbacks_total`'s `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No chain of deltas leads from the live generation to the new one
    /// (a manifest between them without one, a base of another checksum).
    Base,
    /// A delta object is missing, or not of its manifest's length.
    Missing,
    /// A delta does not verify, or is not the one its manifest names.
    Corrupt,
    /// The rebuilt file is not the generation: its count, body checksum or
    /// header differ, or it does not verify.
    Checksum,
    /// The store failed while the deltas were read.
    Store,
    /// The data directory failed (a full disk, an I/O error).
    Disk,
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::Base,
        Fallback::Missing,
        Fallback::Corrupt,
        Fallback::Checksum,
        Fallback::Store,
        Fallback::Disk,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fallback::Base => "base",
            Fallback::Missing => "missing",
            Fallback::Corrupt => "corrupt",
            Fallback::Checksum => "checksum",
            Fallback::Store => "store",
            Fallback::Disk => "disk",
        }
    }
}

/// A failed delta fetch: why, in the metric's terms and in words.
type Failed = (Fallback, Error);

/// One delta of a chain: the manifest of the generation it rebuilds, and
/// the delta itself.
struct Link {
    manifest: Manifest,
    delta: DeltaObject,
}

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
        /// Bytes downloaded: the deltas', or the whole generation's.
        bytes: u64,
        how: How,
        seconds: f64,
    },
}

/// How a generation was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The whole object downloaded.
    Whole,
    /// This many deltas downloaded and applied in turn.
    Deltas(usize),
    /// Linked: the data directory held its bytes, as this generation.
    Held(u64),
}

/// A fetched generation: what [`Fetcher::fetch`] gives [`Fetched`].
struct Done {
    entry: Entry,
    table: Table,
    bytes: u64,
    how: How,
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
            let started = Instant::now();
            match self.fetch(lock, &manifest, local).await? {
                Ok(done) => {
                    return Ok(Fetched::Generation {
                        entry: done.entry,
                        table: Box::new(done.table),
                        bytes: done.bytes,
                        how: done.how,
                        seconds: started.elapsed().as_secs_f64(),
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

    /// Fetches and verifies one generation under the lock: as deltas from
    /// the live generation `local` when the manifests offer a chain of
    /// them smaller than the generation, else (or when that fails, counted
    /// by reason) the whole object. The outer error is the store's or the
    /// disk's (try again); the inner one is the generation's (refuse it).
    async fn fetch(
        &self,
        lock: BuildLock,
        manifest: &Manifest,
        local: u64,
    ) -> Result<std::result::Result<Done, Error>> {
        if let Some(done) = self.held(&lock, manifest) {
            return Ok(Ok(done));
        }
        let lock = Arc::new(lock);
        match self.by_deltas(&lock, manifest, local).await {
            Ok(Some(done)) => return Ok(Ok(done)),
            Ok(None) => {}
            Err((why, e)) => {
                metrics::counter!(m::DELTA_FALLBACKS, "reason" => why.label()).increment(1);
                tracing::warn!(
                    sequence = manifest.sequence,
                    reason = why.label(),
                    "{e}: fetching the whole generation instead of its deltas"
                );
            }
        }
        self.fetch_whole(lock, manifest).await
    }

    /// The generation `manifest` names, when the data directory holds its
    /// bytes under another sequence (a feed whose records did not change,
    /// which the builder publishes as the same file; a rollback to a
    /// generation still here): published again as a hard link, nothing
    /// downloaded or written. The file was verified when it came (a fetch
    /// verifies what it publishes) and is the same inode, so it is not
    /// read again. `None` when it is not here, or linking it failed (then
    /// it is fetched).
    fn held(&self, lock: &BuildLock, manifest: &Manifest) -> Option<Done> {
        let entries = local::list(&self.dir).ok()?;
        let here = entries.iter().rev().find(|e| {
            e.sequence != manifest.sequence
                && crate::generation::format::read_header(&e.path)
                    .is_ok_and(|h| manifest.matches(&h))
        })?;
        let linked = lock
            .republish_as(&self.dir, &here.path, manifest.sequence, manifest.sidecar())
            .and_then(|entry| Ok((Table::open(&entry.path, manifest.sequence)?, entry)));
        match linked {
            Ok((table, entry)) => {
                tracing::info!(
                    sequence = manifest.sequence,
                    of = here.sequence,
                    "the data directory holds this generation's bytes: linked, nothing fetched"
                );
                Some(Done {
                    entry,
                    table,
                    bytes: 0,
                    how: How::Held(here.sequence),
                })
            }
            Err(e) => {
                tracing::warn!("{e}: fetching generation {} instead", manifest.sequence);
                None
            }
        }
    }

    /// Downloads the whole generation `manifest` names and verifies it.
    async fn fetch_whole(
        &self,
        lock: Arc<BuildLock>,
        manifest: &Manifest,
    ) -> Result<std::result::Result<Done, Error>> {
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
        self.download(&object, &file, &tmp, FULL).await?;
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
        tracing::info!(
            sequence,
            bytes = len,
            seconds = started.elapsed().as_secs_f64(),
            "fetched and verified a generation"
        );
        Ok(Ok(Done {
            entry,
            table,
            bytes: len,
            how: How::Whole,
        }))
    }

    /// The deltas from the live generation `local` to `target`, oldest
    /// first: `None` when there is nothing to try (no live generation, a
    /// target without a delta, a chain whose sum is not smaller than the
    /// whole object).
    async fn chain(
        &self,
        target: &Manifest,
        local: u64,
    ) -> std::result::Result<Option<Vec<Link>>, Failed> {
        if local == 0 || target.delta.is_none() {
            return Ok(None);
        }
        let no_chain = |why: String| {
            let e = Error::Manifest {
                url: self.remote.url().to_string(),
                sequence: target.sequence,
                reason: why,
            };
            Err((Fallback::Base, e))
        };
        let mut chain = Vec::new();
        let mut bytes = 0;
        let mut at = target.clone();
        loop {
            let Some(delta) = at.delta.clone() else {
                return no_chain(format!(
                    "generation {} has no delta, and deltas lead to it from generation {local}",
                    at.sequence
                ));
            };
            bytes += delta.bytes;
            if bytes >= target.bytes {
                tracing::info!(
                    sequence = target.sequence,
                    "the deltas from generation {local} add up to more than the generation"
                );
                return Ok(None);
            }
            let base = delta.base_sequence;
            chain.push(Link {
                manifest: at,
                delta,
            });
            if base <= local {
                if base < local {
                    return no_chain(format!(
                        "its deltas lead to generation {base}, not to generation {local}"
                    ));
                }
                chain.reverse();
                return Ok(Some(chain));
            }
            at = match self.remote.manifest(base).await {
                Ok(Some(m)) => m,
                Ok(None) => return no_chain(format!("generation {base}'s manifest is gone")),
                Err(e @ Error::Manifest { .. }) => return Err((Fallback::Base, e)),
                Err(e) => return Err((Fallback::Store, e)),
            };
        }
    }

    /// Fetches `target` as the chain of deltas from the live generation
    /// `local`: each downloaded and verified, then applied in turn to the
    /// live file (and to what the one before rebuilt), verified as it is
    /// written, and checked against the manifest before it is published.
    async fn by_deltas(
        &self,
        lock: &Arc<BuildLock>,
        target: &Manifest,
        local: u64,
    ) -> std::result::Result<Option<Done>, Failed> {
        let Some(chain) = self.chain(target, local).await? else {
            return Ok(None);
        };
        let started = Instant::now();
        let disk = |e: Error| (Fallback::Disk, e);
        let base = local::list(&self.dir)
            .map_err(disk)?
            .into_iter()
            .find(|e| e.sequence == local)
            .ok_or_else(|| {
                let why = format!("generation {local} is not in the data directory");
                (Fallback::Base, Error::Usage(why))
            })?;
        let mut downloaded = Vec::new();
        for link in &chain {
            downloaded.push(self.download_delta(lock, link).await?);
        }
        let bytes = chain.iter().map(|l| l.delta.bytes).sum();
        let (lock, dir, target) = (lock.clone(), self.dir.clone(), target.clone());
        let url = self.remote.url().to_string();
        let sequence = target.sequence;
        let deltas = chain.len();
        let done = tokio::task::spawn_blocking(move || {
            rebuild(&url, &lock, &dir, base.path, &chain, downloaded, &target)
        })
        .await
        .map_err(|e| {
            disk(Error::Usage(format!(
                "rebuilding generation {sequence}: {e}"
            )))
        })??;
        tracing::info!(
            sequence,
            deltas,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "fetched a generation as deltas, rebuilt and verified it"
        );
        Ok(Some(Done {
            entry: done.0,
            table: done.1,
            bytes,
            how: How::Deltas(deltas),
        }))
    }

    /// Downloads one delta of a chain into a temporary file and checks it
    /// is the delta its manifest names.
    async fn download_delta(
        &self,
        lock: &BuildLock,
        link: &Link,
    ) -> std::result::Result<(Delta, RemoveOnDrop), Failed> {
        let (sequence, d) = (link.manifest.sequence, &link.delta);
        let refused = |kind, why: String| {
            let e = Error::Manifest {
                url: self.remote.url().to_string(),
                sequence,
                reason: why,
            };
            (kind, e)
        };
        let object = match PinnedObject::in_store(&self.remote, &d.object).await {
            Ok(Some(object)) if object.len == d.bytes => object,
            Ok(Some(object)) => {
                return Err(refused(
                    Fallback::Missing,
                    format!(
                        "its delta {} is {} bytes, but the manifest says {}",
                        d.object, object.len, d.bytes
                    ),
                ))
            }
            Ok(None) => {
                let why = format!("its delta {} is missing", d.object);
                return Err(refused(Fallback::Missing, why));
            }
            Err(e) => return Err((Fallback::Store, e)),
        };
        let disk = |e: Error| (Fallback::Disk, e);
        check_free_disk(&self.dir, sequence, d.bytes).map_err(disk)?;
        let (file, tmp) = lock
            .temp_file_named(&self.dir, &format!("-delta-{sequence}"))
            .map_err(disk)?;
        let cleanup = RemoveOnDrop::new(&tmp);
        tracing::info!(sequence, bytes = d.bytes, object = %d.object, "downloading a delta");
        self.download(&object, &file, &tmp, DELTA)
            .await
            .map_err(|e| match e {
                Error::Remote { .. } => (Fallback::Store, e),
                e => (Fallback::Disk, e),
            })?;
        drop(file);
        let delta = Delta::open(&tmp).map_err(|e| (Fallback::Corrupt, e))?;
        let h = delta.header();
        let named = h.body_checksum == d.checksum
            && h.base_checksum == d.base_checksum
            && h.base_sequence == d.base_sequence
            && h.target_sequence == sequence
            && link.manifest.matches(&h.target);
        if !named {
            let why = format!("its delta {} is not the one the manifest names", d.object);
            return Err(refused(Fallback::Corrupt, why));
        }
        Ok((delta, cleanup))
    }

    /// Downloads `object` into `file` in ranges, a few in flight (see
    /// [`ranged`](super::ranged) for how each is read and retried).
    async fn download(
        &self,
        object: &PinnedObject,
        file: &std::fs::File,
        tmp: &Path,
        kind: &'static str,
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
            .map(|range| self.download_range(object, range, file, tmp, kind, bar.as_ref()))
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
        kind: &'static str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut offset = range.start;
        loop {
            let start = offset;
            let read = object.read_range(start..range.end, |chunk| {
                let at = offset;
                offset += chunk.len() as u64;
                async move {
                    if let Some(t) = &self.throttle {
                        t.take(chunk.len() as u64).await;
                    }
                    file.write_all_at(&chunk, at)
                        .map_err(Error::io_op("writing a download", tmp))?;
                    metrics::counter!(m::FETCH_BYTES, "kind" => kind).increment(chunk.len() as u64);
                    if let Some(bar) = bar {
                        bar.inc(chunk.len() as u64);
                    }
                    Ok(())
                }
            });
            let error = self.remote.error("downloading a generation");
            match read.await {
                Ok(()) => return Ok(()),
                // The client's retries ran out, but they got further: on a
                // link that drops connections often, each try resumes from
                // the byte the last one reached, for as long as it gets on.
                Err(RangeError::Store(why)) if offset > start => {
                    tracing::debug!("{why}: resuming at byte {offset}");
                }
                Err(RangeError::Store(why)) => return Err(error(why)),
                Err(RangeError::Sink(e)) => return Err(e),
                Err(RangeError::NotTaken) => {
                    return Err(error("the store does not take range requests".into()))
                }
            }
        }
    }
}

/// Applies the downloaded deltas of `chain` in turn, the first to the
/// generation at `base`, each to what the one before rebuilt (each result
/// verified as it is written: its checksum, order, shard, prices and
/// dates), checks the last one's header against the manifest, reads it
/// back (verifying it again, and warming it), and publishes it as
/// `target`'s generation. Blocking: it reads and writes
/// whole generations.
fn rebuild(
    url: &str,
    lock: &BuildLock,
    dir: &Path,
    base: PathBuf,
    chain: &[Link],
    deltas: Vec<(Delta, RemoveOnDrop)>,
    target: &Manifest,
) -> std::result::Result<(Entry, Table), Failed> {
    let disk = |e: Error| (Fallback::Disk, e);
    // A rebuild that is not its target is the rebuild's failure; one
    // that cannot be written is the disk's.
    let rebuilt = |e: Error| match e {
        e @ Error::Format { .. } => (Fallback::Checksum, e),
        e => (Fallback::Disk, e),
    };
    let mut from: (PathBuf, Option<RemoveOnDrop>) = (base, None);
    for (link, (delta, _downloaded)) in chain.iter().zip(deltas) {
        let sequence = link.manifest.sequence;
        let old = Table::open(&from.0, 0).map_err(|e| (Fallback::Base, e))?;
        check_free_disk(dir, sequence, link.manifest.bytes).map_err(disk)?;
        let (file, tmp) = lock
            .temp_file_named(dir, &format!("-rebuilt-{sequence}"))
            .map_err(disk)?;
        let cleanup = RemoveOnDrop::new(&tmp);
        delta.apply(&old, file, &tmp).map_err(|e| match e {
            // The live file is not the delta's base after all.
            e @ Error::Format { .. }
                if delta.header().base_checksum != old.header().body_checksum =>
            {
                (Fallback::Base, e)
            }
            e => rebuilt(e),
        })?;
        // The one before is no longer needed (the live file stays).
        from = (tmp, Some(cleanup));
    }
    let (tmp, cleanup) = from;
    let table = Table::open(&tmp, target.sequence).map_err(rebuilt)?;
    if !target.matches(table.header()) {
        let e = Error::Manifest {
            url: url.to_string(),
            sequence: target.sequence,
            reason: "the rebuilt file's header does not match the manifest".into(),
        };
        return Err((Fallback::Checksum, e));
    }
    // Read back whole, as a download is verified. The rebuild was written
    // past the page cache; a generation that fits in memory is served from
    // it, and without this read the first lookups after the swap would
    // each stall a serving thread on a disk read (BENCHMARKS.md, "Deltas
    // at 10^8 rows"). `verify` leaves the file in the page cache when it
    // fits there twice over, as it does a download.
    table.verify().map_err(rebuilt)?;
    let entry = lock
        .publish_as(dir, &tmp, target.sequence, target.sidecar())
        .map_err(disk)?;
    if let Some(cleanup) = cleanup {
        cleanup.disarm();
    }
    let table = table.moved_to(entry.path.clone());
    Ok((entry, table))
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
            .fetch(lock, &manifest, 0)
            .await?
            .map(|done| done.table)
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
