//! Generations in a data directory: naming, publishing, retention, locking.
//!
//! A generation is `gen-<sequence>.promo`, sequence zero-padded and strictly
//! increasing; the newest valid one is live. Publishing follows cdb: write a
//! temporary file in the same directory, fsync it, make it read-only, rename
//! it into place, fsync the directory. The rename is the commit: a crash
//! leaves only a temporary file, which the next build removes.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".promo";
/// Temporary files start with this; only a build holding the lock makes them.
const TMP_PREFIX: &str = ".tmp-";
const LOCK_NAME: &str = ".build.lock";

/// The file name of generation `sequence`.
pub fn file_name(sequence: u64) -> String {
    format!("{PREFIX}{sequence:010}{SUFFIX}")
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

    /// Removes temporary files that crashed builds left in `dir`. Safe only
    /// under the lock, which is why it is a method of the lock.
    pub fn remove_leftovers(&self, dir: &Path) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
                fs::remove_file(entry.path()).map_err(Error::io(entry.path()))?;
                tracing::info!(path = %entry.path().display(), "removed a leftover temporary file");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Creates the temporary file a new generation is written to.
    pub fn temp_file(&self, dir: &Path) -> Result<(File, PathBuf)> {
        let path = dir.join(format!("{TMP_PREFIX}{}{SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        Ok((file, path))
    }

    /// Publishes the finished, synced temporary file `tmp` as the next
    /// generation and returns it. The rename is the commit point.
    pub fn publish(&self, dir: &Path, tmp: &Path) -> Result<Entry> {
        let sequence = list(dir)?.last().map_or(1, |e| e.sequence + 1);
        let path = dir.join(file_name(sequence));
        let mut perms = fs::metadata(tmp).map_err(Error::io(tmp))?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(tmp, perms).map_err(Error::io(tmp))?;
        fs::rename(tmp, &path).map_err(Error::io(&path))?;
        sync_dir(dir)?;
        Ok(Entry { sequence, path })
    }

    /// Publishes the generation at `source` again as the next generation,
    /// through a hard link: the bytes are shared, never copied or written.
    pub fn republish(&self, dir: &Path, source: &Path) -> Result<Entry> {
        let tmp = dir.join(format!("{TMP_PREFIX}{}{SUFFIX}", std::process::id()));
        fs::hard_link(source, &tmp).map_err(Error::io(&tmp))?;
        self.publish(dir, &tmp)
    }

    /// Deletes all but the newest `keep` generations (at least one is kept).
    /// Servers that still map a deleted file keep reading it safely.
    pub fn retain(&self, dir: &Path, keep: usize) -> Result<Vec<Entry>> {
        let all = list(dir)?;
        let excess = all.len().saturating_sub(keep.max(1));
        let old: Vec<Entry> = all.into_iter().take(excess).collect();
        for e in &old {
            fs::remove_file(&e.path).map_err(Error::io(&e.path))?;
        }
        if !old.is_empty() {
            sync_dir(dir)?;
        }
        Ok(old)
    }
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
            let e = lock.publish(dir.path(), &tmp).unwrap();
            assert_eq!(e.sequence, i);
            assert!(fs::metadata(&e.path).unwrap().permissions().readonly());
        }
        let removed = lock.retain(dir.path(), 3).unwrap();
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
        assert_eq!(lock.publish(dir.path(), &tmp).unwrap().sequence, 6);
    }

    #[test]
    fn a_second_build_is_refused_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = BuildLock::acquire(dir.path()).unwrap();
        let err = BuildLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(err.to_string().contains("another `promo build` is running"));
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
}
