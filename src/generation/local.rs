//! Generations in a data directory: naming, publishing, retention, locking.
//!
//! A generation is `gen-<sequence>.promo`, sequence zero-padded and strictly
//! increasing; the newest valid one is live. Publishing follows cdb: write a
//! temporary file in the same directory, fsync it, make it read-only, rename
//! it into place, fsync the directory. The rename is the commit: a crash
//! leaves only a temporary file, which the next build removes.
//!
//! Retention ([`BuildLock::retain`]) keeps the `--keep` newest *sound*
//! generations and deletes only files older than the oldest of them. A
//! corrupt file (a truncated or damaged copy) does not count, so a run of
//! them can never push the last good generations out and leave `promo
//! rollback` nothing to go back to; corrupt files newer than the cut are
//! left alone (servers refuse them, `promo inspect` shows them) and age out
//! like any other once enough sound generations follow. Sound means: what
//! the build already knows ([`Known`]: the generation it wrote, and what the
//! shrink guard verified in full on its way from the newest file to the
//! first valid one), else a header that checks (magic, version, header
//! checksum, length). Old generations can be tens of gigabytes, so they are
//! never read in full just to decide what to delete.
//!
//! ## The data directory, file by file
//!
//! ```text
//! gen-<sequence:010>.promo        a generation (see format), read-only
//! gen-<sequence:010>.churn.json   what it changed against the generation
//!                                 that was live when it was built (see
//!                                 churn: `Churn::to_json`), one JSON object;
//!                                 renamed into place just after its
//!                                 generation (a crash between leaves the
//!                                 churn unknown), removed with it, absent
//!                                 for the first generation and rollbacks
//! gen-<sequence:010>.rollback.json
//!                                 a rollback's record: which generation
//!                                 it made live again and which it undid
//!                                 (see rollback: `Rollback`), written and
//!                                 removed like the churn sidecar
//! .tmp-<pid>.promo, .tmp-<pid>.churn.json
//!                                 a build's or a fetch's files before their
//!                                 rename; removed by the next build
//! .diff-<random>/                 `promo diff`'s downloads from a store,
//!                                 while it runs; removed by the next build
//! .build.lock                     the build lock (flock), empty
//! ```

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generation::churn::Churn;
use crate::generation::rollback::Rollback;

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".promo";
/// A generation's churn sidecar ends with this instead of [`SUFFIX`].
const CHURN_SUFFIX: &str = ".churn.json";
/// A rollback's sidecar ends with this instead of [`SUFFIX`].
const ROLLBACK_SUFFIX: &str = ".rollback.json";
/// Every sidecar a generation may have.
const SIDECARS: [&str; 2] = [CHURN_SUFFIX, ROLLBACK_SUFFIX];
/// `promo diff`'s scratch folders for generations it downloads start with
/// this; the next build removes one a killed diff left.
pub const DIFF_PREFIX: &str = ".diff-";
/// Temporary files start with this; only a build holding the lock makes them.
const TMP_PREFIX: &str = ".tmp-";
/// The build lock's file in the data directory (see [`BuildLock`]).
pub const LOCK_NAME: &str = ".build.lock";

/// The file name of generation `sequence`.
pub fn file_name(sequence: u64) -> String {
    format!("{PREFIX}{sequence:010}{SUFFIX}")
}

/// The file name of generation `sequence`'s churn sidecar.
pub fn churn_file_name(sequence: u64) -> String {
    sidecar_name(sequence, CHURN_SUFFIX)
}

/// The file name of generation `sequence`'s sidecar ending with `suffix`.
fn sidecar_name(sequence: u64, suffix: &str) -> String {
    format!("{PREFIX}{sequence:010}{suffix}")
}

/// What the generation at `path` restored and undid, if it is a rollback.
pub fn rollback_of(path: &Path) -> Option<Rollback> {
    let text = fs::read(path.with_extension(&ROLLBACK_SUFFIX[1..])).ok()?;
    serde_json::from_slice(&text).ok()
}

/// What the generation at `path` changed when it was built (its churn
/// sidecar's JSON), if that is known.
pub fn churn_of(path: &Path) -> Option<Churn> {
    let text = fs::read(path.with_extension(&CHURN_SUFFIX[1..])).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The sequence of a generation file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A generation file found in a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sequence: u64,
    pub path: PathBuf,
}

/// What a build already knows of some generations in its data directory,
/// so that retention need not read them again.
///
/// A verdict is about the file as it was when it was checked: a file copied
/// over it since is judged by that verdict all the same. At worst that
/// keeps a file too many (a bad one replaced by a good copy) or counts a
/// replaced good one as sound; servers verify every file anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Sequences that verified in full, or that the build just wrote.
    pub good: Vec<u64>,
    /// Sequences that failed a full verification.
    pub bad: Vec<u64>,
}

impl Known {
    /// Whether `entry` counts towards `--keep`: the known verdict, else
    /// whether its header checks ([`crate::generation::format::read_header`]: magic,
    /// version, header checksum, the length it describes).
    pub fn sound(&self, entry: &Entry) -> bool {
        if self.bad.contains(&entry.sequence) {
            false
        } else if self.good.contains(&entry.sequence) {
            true
        } else {
            crate::generation::format::read_header(&entry.path).is_ok()
        }
    }
}

/// The generations in `dir`, oldest first. A missing directory holds none.
pub fn list(dir: &Path) -> Result<Vec<Entry>> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(Error::io(dir))?;
        if let Some(sequence) = entry.file_name().to_str().and_then(parse_name) {
            out.push(Entry {
                sequence,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|e| e.sequence);
    Ok(out)
}

/// One generation as `promo inspect --json` and the admin port's
/// `GET /generations` list it: the header's figures (no whole-file read),
/// and `checksum` as the caller checked it ("ok", why it failed, or "not
/// checked").
pub fn describe(entry: &Entry, checksum: &str, live: bool) -> Description {
    let header = crate::generation::format::read_header(&entry.path).ok();
    Description {
        sequence: entry.sequence,
        path: entry.path.display().to_string(),
        rows: header.map(|h| h.count),
        bytes: fs::metadata(&entry.path).map_or(0, |m| m.len()),
        created: header.map(|h| crate::generation::format::rfc3339_utc(h.created_ms)),
        version: header.map(|h| h.version),
        shard: header.map(|h| h.shard.to_string()),
        checksum: checksum.to_string(),
        live,
        churn: churn_of(&entry.path),
        rollback: rollback_of(&entry.path),
    }
}

/// One generation of a data directory as `inspect --json` and the admin
/// port's `GET /generations` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    pub sequence: u64,
    pub path: String,
    /// Its header's figures: `None` where the header cannot be read.
    pub rows: Option<u64>,
    pub bytes: u64,
    pub created: Option<String>,
    pub version: Option<u32>,
    pub shard: Option<String>,
    /// `ok`, `not checked`, or why the file is not sound.
    pub checksum: String,
    pub live: bool,
    /// What it changed when it was built, if known (its churn sidecar).
    pub churn: Option<Churn>,
    /// What it restored and undid, if it is a rollback.
    pub rollback: Option<Rollback>,
}

/// The data directory's build lock, held until dropped.
///
/// An advisory `flock`, so it is released when the process dies however it
/// dies; the lock file itself stays and is harmless.
#[derive(Debug)]
pub struct BuildLock {
    _file: File,
}

impl BuildLock {
    /// Takes the lock of `dir` (creating the directory), or fails at once
    /// with [`Error::Locked`] if another build holds it.
    pub fn acquire(dir: &Path) -> Result<BuildLock> {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join(LOCK_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(BuildLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&path)(e)),
        }
    }

    /// Removes temporary files that crashed builds left in `dir`, and churn
    /// sidecars whose generation is not there (a crash between the two
    /// renames). Safe only under the lock, which is why it is a method of
    /// the lock.
    pub fn remove_leftovers(&self, dir: &Path) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name();
            // Only a sidecar named for a generation is ours to remove.
            let orphan = |n: &str| {
                let generation = SIDECARS
                    .iter()
                    .find_map(|suffix| n.strip_suffix(suffix))
                    .map(|stem| format!("{stem}{SUFFIX}"))
                    .filter(|g| parse_name(g).is_some());
                generation.is_some_and(|g| !dir.join(g).exists())
            };
            let name = name.to_str().unwrap_or_default();
            // A killed `promo diff` leaves its downloads in a scratch folder.
            // One whose lock is held is downloading now: left alone. (Once
            // downloaded, a generation is mapped, and removing it is safe.)
            if name.starts_with(DIFF_PREFIX) && entry.path().is_dir() {
                if let Ok(diffing) = BuildLock::acquire(&entry.path()) {
                    drop(diffing);
                    fs::remove_dir_all(entry.path()).map_err(Error::io(entry.path()))?;
                    tracing::info!(path = %entry.path().display(), "removed a leftover diff folder");
                    removed += 1;
                }
            } else if name.starts_with(TMP_PREFIX) || orphan(name) {
                fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
                tracing::info!(path = %entry.path().display(), "removed a leftover temporary file");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Creates the temporary file a new generation is written to.
    pub fn temp_file(&self, dir: &Path) -> Result<(File, PathBuf)> {
        self.temp_file_named(dir, "")
    }

    /// Another temporary file beside [`BuildLock::temp_file`]'s, told
    /// apart by `what` (`-delta-7`), removed with the leftovers too.
    pub fn temp_file_named(&self, dir: &Path, what: &str) -> Result<(File, PathBuf)> {
        let path = dir.join(format!("{TMP_PREFIX}{}{what}{SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        Ok((file, path))
    }

    /// Publishes the finished, synced temporary file `tmp` as the next
    /// generation, with `sidecar` beside it, and returns it. The rename
    /// of the generation is the commit point: an error before it means
    /// nothing was published, and nothing after it is one.
    pub fn publish(&self, dir: &Path, tmp: &Path, sidecar: Sidecar) -> Result<Entry> {
        let sequence = list(dir)?.last().map_or(1, |e| e.sequence + 1);
        self.publish_as(dir, tmp, sequence, sidecar)
    }

    /// Publishes `tmp` as generation `sequence`, as [`BuildLock::publish`]
    /// does: for a generation fetched from a store, whose sequence the
    /// store gave it. A file of that name already there is replaced, and
    /// so are its sidecars.
    pub fn publish_as(
        &self,
        dir: &Path,
        tmp: &Path,
        sequence: u64,
        sidecar: Sidecar,
    ) -> Result<Entry> {
        let path = dir.join(file_name(sequence));
        // Sidecars already there belong to the file being replaced: gone
        // first, so that they never describe another generation.
        for suffix in SIDECARS {
            let old = dir.join(sidecar_name(sequence, suffix));
            match fs::remove_file(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&old)(e))
                }
                _ => {}
            }
        }
        let mut perms = fs::metadata(tmp).map_err(Error::io(tmp))?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(tmp, perms).map_err(Error::io(tmp))?;
        fs::rename(tmp, &path).map_err(Error::io(&path))?;
        // Published: servers may be serving it already, so reporting a
        // failed build now would be false. If the directory's fsync fails,
        // the rename may not survive a crash; then the previous generation
        // is the newest again after a reboot, the state before this build,
        // which is consistent. So a warning and success, as most systems
        // that publish by rename do.
        // The sidecar after its generation: a crash or a full disk between
        // the two leaves a generation whose churn is unknown, never a
        // sidecar that describes another file. A warning, like the sync.
        let written = match sidecar {
            Sidecar::None => None,
            Sidecar::Churn(churn) => Some((CHURN_SUFFIX, serde_json::to_vec_pretty(churn))),
            Sidecar::Rollback(r) => Some((ROLLBACK_SUFFIX, serde_json::to_vec_pretty(r))),
        };
        if let Some((suffix, bytes)) = written {
            let bytes = bytes.expect("JSON values serialize");
            let to = dir.join(sidecar_name(sequence, suffix));
            if let Err(e) = write_sidecar(dir, &to, bytes) {
                tracing::warn!("published, but its {suffix} sidecar could not be written: {e}");
            }
        }
        if let Err(e) = sync_dir(dir) {
            tracing::warn!(
                path = %path.display(),
                "published, but the directory could not be synced, so the \
                 rename may not survive a crash: {e}"
            );
        }
        Ok(Entry { sequence, path })
    }

    /// Publishes the generation at `source` again as the next generation,
    /// through a hard link: the bytes are shared, never copied or written.
    /// For a rollback (`sidecar` says what it restores and undoes), and for
    /// a feed whose records are the live generation's (its churn).
    pub fn republish(&self, dir: &Path, source: &Path, sidecar: Sidecar) -> Result<Entry> {
        let sequence = list(dir)?.last().map_or(1, |e| e.sequence + 1);
        self.republish_as(dir, source, sequence, sidecar)
    }

    /// [`BuildLock::republish`] as generation `sequence`: a fetched
    /// generation the data directory already holds under another sequence.
    pub fn republish_as(
        &self,
        dir: &Path,
        source: &Path,
        sequence: u64,
        sidecar: Sidecar,
    ) -> Result<Entry> {
        let tmp = dir.join(format!("{TMP_PREFIX}{}-link{SUFFIX}", std::process::id()));
        fs::hard_link(source, &tmp).map_err(Error::io(&tmp))?;
        self.publish_as(dir, &tmp, sequence, sidecar)
    }

    /// Keeps the newest `keep` sound generations (at least one; see
    /// [`Known::sound`]) and deletes every generation older than the oldest
    /// of them; with fewer than `keep` sound ones, deletes nothing. Corrupt
    /// files newer than that stay. Only the headers of the files from the
    /// newest down to the cut are read, and only those `known` does not
    /// judge. Servers that still map a deleted file keep reading it safely.
    ///
    /// It runs after a generation is published, when nothing can fail the
    /// build any more, so it returns what went wrong rather than stopping
    /// at it: a generation that cannot be removed does not keep the others.
    pub fn retain(&self, dir: &Path, keep: usize, known: &Known) -> Retention {
        let mut done = Retention::default();
        let all = match list(dir) {
            Ok(all) => all,
            Err(e) => {
                done.failed.push(e);
                return done;
            }
        };
        let cut = all
            .iter()
            .rev()
            .filter(|e| known.sound(e))
            .nth(keep.max(1) - 1)
            .map(|e| e.sequence);
        let old = all
            .into_iter()
            .take_while(|e| cut.is_some_and(|cut| e.sequence < cut));
        for e in old {
            match fs::remove_file(&e.path) {
                Ok(()) => {
                    for suffix in SIDECARS {
                        let name = sidecar_name(e.sequence, suffix);
                        let _ = fs::remove_file(e.path.with_file_name(name));
                    }
                    done.removed.push(e)
                }
                Err(err) => done
                    .failed
                    .push(Error::io_op("removing an old generation", &e.path)(err)),
            }
        }
        if !done.removed.is_empty() {
            // Unsynced, a removal may be undone by a crash: the file comes
            // back, and the next build removes it.
            if let Err(e) = sync_dir(dir) {
                done.failed.push(e);
            }
        }
        done
    }
}

/// What [`BuildLock::retain`] did.
#[derive(Debug, Default)]
pub struct Retention {
    /// The generations deleted.
    pub removed: Vec<Entry>,
    /// What failed (listing the directory, removing a generation, syncing
    /// the directory), each naming its file.
    pub failed: Vec<Error>,
}

/// A temporary file that is removed unless it was published: every way
/// out of a build or a fetch that did not publish leaves no litter.
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub fn new(path: &Path) -> RemoveOnDrop {
        RemoveOnDrop(Some(path.to_path_buf()))
    }

    /// The file was published (renamed): leave it alone.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// What is written beside a new generation.
#[derive(Debug, Clone, Copy)]
pub enum Sidecar<'a> {
    None,
    /// What a build changed.
    Churn(&'a Churn),
    /// What a rollback restored and undid.
    Rollback(&'a Rollback),
}

/// Writes `bytes` (JSON) and a newline to `sidecar` through a temporary
/// file, synced and renamed.
fn write_sidecar(dir: &Path, sidecar: &Path, mut bytes: Vec<u8>) -> Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{}{CHURN_SUFFIX}", std::process::id()));
    bytes.push(b'\n');
    let written = File::create(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp)(e));
    }
    fs::rename(&tmp, sidecar).map_err(Error::io(sidecar))
}

/// Makes a directory's entries (a rename, an unlink) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        assert_eq!(file_name(7), "gen-0000000007.promo");
        assert_eq!(parse_name(&file_name(7)), Some(7));
        assert_eq!(parse_name(&file_name(12_345_678_901)), Some(12_345_678_901));
        for bad in [
            "gen-.promo",
            "gen-12.promo.tmp",
            ".tmp-1.promo",
            "gen-1a.promo",
            "gen--1.promo",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn publish_numbers_generations_and_retain_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let lock = BuildLock::acquire(dir.path()).unwrap();
        for i in 1..=5u64 {
            let (_, tmp) = lock.temp_file(dir.path()).unwrap();
            let e = lock.publish(dir.path(), &tmp, Sidecar::None).unwrap();
            assert_eq!(e.sequence, i);
            assert!(fs::metadata(&e.path).unwrap().permissions().readonly());
        }
        // Empty files: sound only because the build "knows" them.
        let known = Known {
            good: (1..=5).collect(),
            bad: Vec::new(),
        };
        let removed = lock.retain(dir.path(), 3, &known).removed;
        assert_eq!(
            removed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        let left: Vec<u64> = list(dir.path())
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(left, [3, 4, 5]);
        // Sequences keep rising after deletions.
        let (_, tmp) = lock.temp_file(dir.path()).unwrap();
        assert_eq!(
            lock.publish(dir.path(), &tmp, Sidecar::None)
                .unwrap()
                .sequence,
            6
        );
    }

    /// Writes a valid generation `sequence` of three records into `dir`.
    fn put_generation(dir: &Path, sequence: u64) -> PathBuf {
        use crate::generation::record::Price;
        let path = dir.join(file_name(sequence));
        let file = File::create(&path).unwrap();
        let mut w = crate::generation::format::Writer::new(file, &path, 3).unwrap();
        for k in 1..=3u128 {
            let price = Price::new(k as u64, 2).unwrap();
            w.push_row(k << 100, price, b"2020-01-01 00:00:00").unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn sequences(dir: &Path) -> Vec<u64> {
        list(dir).unwrap().iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn retain_counts_only_sound_generations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lock = BuildLock::acquire(d).unwrap();
        // 1 truncated, 2 and 3 good, 4 truncated, 5 with a flipped body
        // byte (its header sound), 6 good.
        let good = fs::read(put_generation(d, 1)).unwrap();
        fs::write(d.join(file_name(1)), &good[..good.len() / 2]).unwrap();
        put_generation(d, 2);
        put_generation(d, 3);
        fs::write(d.join(file_name(4)), &good[..good.len() - 1]).unwrap();
        let mut flipped = good.clone();
        flipped[crate::generation::format::HEADER_LEN + 20] ^= 1;
        fs::write(d.join(file_name(5)), &flipped).unwrap();
        put_generation(d, 6);

        // Fewer sound generations than asked for: nothing goes.
        assert_eq!(lock.retain(d, 5, &Known::default()).removed, []);
        assert_eq!(sequences(d), [1, 2, 3, 4, 5, 6]);

        // What the build verified: 5 is bad (whatever its header says), 6 is
        // good. Kept: 6, 3, 2; the corrupt 4 and 5 between them stay, the
        // corrupt 1 before them goes.
        let known = Known {
            good: vec![6],
            bad: vec![5],
        };
        let removed = lock.retain(d, 3, &known).removed;
        assert_eq!(removed.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1]);
        assert_eq!(sequences(d), [2, 3, 4, 5, 6]);

        // Headers only (a build with --force): 5 counts, 4 does not.
        let removed = lock.retain(d, 3, &Known::default()).removed;
        assert_eq!(removed.iter().map(|e| e.sequence).collect::<Vec<_>>(), [2]);
        assert_eq!(sequences(d), [3, 4, 5, 6]);

        // --keep 1 keeps the newest sound generation only.
        assert!(lock.retain(d, 1, &known).failed.is_empty());
        assert_eq!(sequences(d), [6]);
    }

    #[test]
    fn retain_removes_what_it_can_and_reports_what_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lock = BuildLock::acquire(d).unwrap();
        // A directory where generation 1 should be: remove_file fails on it
        // (EISDIR), whoever runs the test.
        fs::create_dir(d.join(file_name(1))).unwrap();
        fs::write(d.join(file_name(1)).join("x"), b"x").unwrap();
        put_generation(d, 2);
        put_generation(d, 3);
        let done = lock.retain(d, 1, &Known::default());
        assert_eq!(
            done.removed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(done.failed.len(), 1);
        let message = done.failed[0].to_string();
        assert!(
            message.contains(&format!("{}: removing an old generation", file_name(1))),
            "{message}"
        );
        assert_eq!(sequences(d), [1, 3]);
    }

    #[test]
    fn a_second_build_is_refused_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = BuildLock::acquire(dir.path()).unwrap();
        let err = BuildLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(err.to_string().contains("is using this data directory"));
        drop(first);
        BuildLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn leftovers_are_removed_and_generations_are_not() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-999.promo"), b"half").unwrap();
        fs::write(dir.path().join(file_name(1)), b"gen").unwrap();
        let lock = BuildLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.remove_leftovers(dir.path()).unwrap(), 1);
        assert!(!dir.path().join(".tmp-999.promo").exists());
        assert!(dir.path().join(file_name(1)).exists());
    }

    #[test]
    fn orphan_sidecars_and_idle_diff_folders_go_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join(file_name(1)), b"gen").unwrap();
        fs::write(d.join(churn_file_name(1)), b"{}").unwrap();
        fs::write(d.join(churn_file_name(2)), b"{}").unwrap(); // no gen 2
        fs::write(d.join("notes.churn.json"), b"mine").unwrap(); // not ours
        fs::create_dir(d.join(".diff-idle")).unwrap();
        fs::write(d.join(".diff-idle/.tmp-5.promo"), b"half").unwrap();
        let busy = d.join(".diff-busy");
        let downloading = BuildLock::acquire(&busy).unwrap();
        let lock = BuildLock::acquire(d).unwrap();
        assert_eq!(lock.remove_leftovers(d).unwrap(), 2);
        assert!(d.join(churn_file_name(1)).exists());
        assert!(!d.join(churn_file_name(2)).exists());
        assert!(d.join("notes.churn.json").exists());
        assert!(!d.join(".diff-idle").exists());
        assert!(busy.exists(), "a diff downloading keeps its folder");
        drop(downloading);
        assert_eq!(lock.remove_leftovers(d).unwrap(), 1);
        assert!(!busy.exists());
    }

    #[test]
    fn a_replaced_generation_never_keeps_the_old_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lock = BuildLock::acquire(d).unwrap();
        let put = |sidecar: Sidecar| {
            let (mut f, tmp) = lock.temp_file(d).unwrap();
            std::io::Write::write_all(&mut f, b"gen").unwrap();
            lock.publish_as(d, &tmp, 3, sidecar).unwrap()
        };
        let churn = Churn {
            previous: 2,
            previous_records: 10,
            previous_checksum: 0xabc,
            added: 1,
            removed: 0,
            price: 0,
            expiry: 0,
            changed: 0,
            unchanged: 10,
            price_jumps: 0,
            median_price_change: None,
            examples: Vec::new(),
            jump_examples: Vec::new(),
        };
        let entry = put(Sidecar::Churn(&churn));
        assert_eq!(churn_of(&entry.path), Some(churn));
        // Fetched again as a rollback: its record, not the old churn.
        let rollback = Rollback {
            of: 1,
            of_checksum: 7,
            undone: Vec::new(),
        };
        let entry = put(Sidecar::Rollback(&rollback));
        assert_eq!(churn_of(&entry.path), None);
        assert_eq!(rollback_of(&entry.path), Some(rollback));
        // Fetched again, from a manifest with neither: none, not the old.
        let entry = put(Sidecar::None);
        assert_eq!(rollback_of(&entry.path), None);
        assert!(!d.join(churn_file_name(3)).exists());
        assert!(list(d).unwrap().len() == 1);
    }
}
