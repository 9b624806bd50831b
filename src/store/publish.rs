//! Publishing a generation to an object store, and rolling a store back.
//!
//! `promo build --publish URL` first publishes in its data directory, as
//! always, then uploads that file as the store's next generation: the
//! object first, under a name no other upload uses, then its manifest with
//! a create-only write. The manifest is the commit point (see
//! [`crate::store::remote`]): a builder killed mid-upload leaves an
//! object no replica reads, which the next publish removes; of two builders
//! that chose the same sequence, one commits and the other fails and
//! deletes its upload.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generation::churn::Churn;
use crate::generation::delta;
use crate::generation::format::read_header;
use crate::generation::local;
use crate::generation::rollback::Rollback;
use crate::generation::table::Table;
use crate::store::layout::{new_delta_name, new_object_name, DeltaObject, Manifest};
use crate::store::remote::{block_on, Remote};

/// What [`publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The store's sequence for the generation.
    pub sequence: u64,
    pub object: String,
    /// Bytes uploaded: the generation's and its delta's; not the
    /// generation's when the store holds its bytes already (a rollback, a
    /// feed whose records are the store's newest).
    pub bytes: u64,
    /// The delta uploaded beside it, if any.
    pub delta: Option<DeltaObject>,
    pub seconds: f64,
}

/// Uploads the generation file at `path` to the store at `url` as its next
/// generation, then keeps the store's newest `keep` sound generations.
/// A failure before the manifest is written leaves the store as it was
/// (the upload is deleted, or left for the next publish to remove); a
/// failed retention afterwards is a warning, since the generation is out.
///
/// When the build compared the generation with the store's newest (the
/// same body checksum) and the data directory still holds that one, a
/// delta from it is uploaded too, unless it would be more than `max_delta`
/// percent of the generation's bytes (`None`: never). A delta that cannot
/// be made or uploaded is a warning: replicas then download the whole
/// generation, as without deltas.
pub fn publish(url: &str, path: &Path, keep: usize, max_delta: Option<f64>) -> Result<Published> {
    let started = Instant::now();
    let remote = Remote::open(url)?;
    let header = read_header(path)?;
    block_on(async {
        // A rollback on a server's data directory (the admin port's): when
        // the store holds that generation, the store rolls back to it too,
        // with nothing uploaded, and records what it undid in its terms.
        if local::rollback_of(path).is_some() {
            let manifests = remote.manifests().await?;
            let objects = remote.objects().await?;
            let held = manifests
                .iter()
                .rev()
                .find(|m| m.matches(&header) && objects.iter().any(|o| o.holds(m)));
            if let Some(previous) = held {
                let m = republish(&remote, &manifests, previous).await?;
                tracing::info!(
                    url,
                    sequence = m.sequence,
                    of = previous.sequence,
                    "rolled back"
                );
                return Ok(Published {
                    sequence: m.sequence,
                    object: m.object,
                    bytes: 0,
                    delta: None,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        let newest = remote.sequences().await?.last().copied();
        let sequence = next_sequence(&remote, newest)?;
        let store_newest = match newest {
            Some(s) => remote.manifest(s).await.ok().flatten(),
            None => None,
        };
        // A feed whose records are the store's newest is published as its
        // file (see the build): its object serves again, nothing uploaded.
        let held = match &store_newest {
            Some(m) if m.matches(&header) => {
                let objects = remote.objects().await?;
                objects.iter().any(|o| o.holds(m)).then(|| m.object.clone())
            }
            _ => None,
        };
        // The generation's bytes uploaded: none when the store held them.
        let (object, uploaded) = match held {
            Some(object) => {
                tracing::info!(
                    url,
                    sequence,
                    object,
                    "the store's newest holds these bytes"
                );
                (object, 0)
            }
            None => {
                let object = new_object_name(sequence);
                tracing::info!(
                    url,
                    sequence,
                    object,
                    bytes = header.file_len(),
                    "uploading"
                );
                remote.upload(path, &object).await?;
                (object, header.file_len())
            }
        };
        let churn = local::churn_of(path).map(|churn| in_store_terms(churn, store_newest.as_ref()));
        // A delta from the store's newest, when the build measured against
        // it: not for a first build, nor for a local rollback.
        let delta = match (&churn, &store_newest, max_delta) {
            (Some(c), Some(base), Some(percent)) if c.previous == base.sequence => {
                let limit = (header.file_len() as f64 * percent / 100.0) as u64;
                upload_delta(&remote, path, base, sequence, limit).await
            }
            _ => None,
        };
        let manifest = Manifest {
            churn,
            delta: delta.clone(),
            ..Manifest::new(sequence, object.clone(), &header)
        };
        if let Err(e) = remote.commit(&manifest).await {
            let ours = (uploaded > 0).then_some(&object);
            for name in ours.into_iter().chain(delta.as_ref().map(|d| &d.object)) {
                if let Err(d) = remote.delete_object(name).await {
                    tracing::warn!("{d} (the next publish removes it)");
                }
            }
            return Err(e);
        }
        match remote.retain(keep).await {
            Ok((manifests, objects)) => {
                for sequence in manifests {
                    tracing::info!(url, sequence, "removed an old generation's manifest");
                }
                for o in &objects {
                    tracing::info!(url, object = o, "removed an old generation object");
                }
            }
            Err(e) => tracing::warn!("{e} (generation {sequence} is published)"),
        }
        Ok(Published {
            sequence,
            object,
            bytes: uploaded + delta.as_ref().map_or(0, |d| d.bytes),
            delta,
            seconds: started.elapsed().as_secs_f64(),
        })
    })?
}

/// A build's churn as the store's manifest keeps it: `against` is the
/// builder's sequence, which means nothing to a replica, so it becomes the
/// store's sequence of that same generation (its newest, when the builder
/// compared with what it last published), or null when the store's newest
/// is another generation (a store rolled back, a builder that published
/// elsewhere); `against_checksum` names it either way.
fn in_store_terms(mut churn: Churn, store_newest: Option<&Manifest>) -> Churn {
    churn.previous = match store_newest {
        Some(m) if m.body_checksum == churn.previous_checksum => m.sequence,
        _ => 0,
    };
    churn
}

/// Writes the delta from `base`, the store's newest generation, to the
/// generation at `path` (the store's `sequence` to be), in a scratch
/// folder of the data directory, and uploads it; `None`, with a log line
/// saying why, when the data directory no longer holds the base, the delta
/// would be over `limit` bytes, or writing or uploading it failed.
async fn upload_delta(
    remote: &Remote,
    path: &Path,
    base: &Manifest,
    sequence: u64,
    limit: u64,
) -> Option<DeltaObject> {
    let started = Instant::now();
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(base_path) = local::list(dir).ok()?.into_iter().rev().find_map(|e| {
        let h = read_header(&e.path).ok()?;
        (h.body_checksum == base.body_checksum && h.count == base.rows).then_some(e.path)
    }) else {
        tracing::info!(
            base = base.sequence,
            "no delta: the data directory does not hold the store's newest generation"
        );
        return None;
    };
    let written = (|| -> Result<_> {
        // A folder of its own, locked: the next build removes it if this
        // process dies, and not while it is in use.
        let scratch = tempfile::Builder::new()
            .prefix(local::DIFF_PREFIX)
            .tempdir_in(dir)
            .map_err(Error::io(dir))?;
        let lock = local::BuildLock::acquire(scratch.path())?;
        let old = Table::open(&base_path, base.sequence)?;
        let new = Table::open(path, sequence)?;
        let at = scratch.path().join("delta");
        let out = std::fs::File::create(&at).map_err(Error::io(&at))?;
        let header = delta::write((&old, base.sequence), (&new, sequence), out, &at, limit)?;
        Ok((scratch, lock, at, header))
    })();
    let (scratch, lock, at, header) = match written {
        Ok((scratch, lock, at, Ok(header))) => (scratch, lock, at, header),
        Ok((.., Err(skipped))) => {
            tracing::info!(base = base.sequence, "no delta: {skipped}");
            return None;
        }
        Err(e) => {
            tracing::warn!("{e}: publishing without a delta");
            return None;
        }
    };
    let object = DeltaObject {
        object: new_delta_name(sequence),
        bytes: header.file_len(),
        checksum: header.body_checksum,
        base_sequence: base.sequence,
        base_checksum: base.body_checksum,
    };
    let uploaded = remote.upload(&at, &object.object).await;
    drop((lock, scratch));
    match uploaded {
        Ok(()) => {
            tracing::info!(
                base = base.sequence,
                bytes = object.bytes,
                records = header.records,
                removed = header.removed,
                seconds = started.elapsed().as_secs_f64(),
                "uploaded a delta"
            );
            Some(object)
        }
        Err(e) => {
            tracing::warn!("{e}: publishing without a delta");
            None
        }
    }
}

/// `promo rollback --publish URL [--to N]`: publishes an older generation
/// of the store again, under the next sequence, so that every replica
/// swaps to it as to any new generation: generation `to`, or by default
/// the newest sound one before the store's newest. Its new manifest names
/// the same object (nothing is copied) and records what it restored and
/// which generations it undid (see [`Rollback`]), so that a build refuses
/// their feeds again and `inspect --source` shows it. A second rollback
/// undoes the first. Returns the sequence rolled back to and the new
/// manifest.
pub fn rollback(url: &str, to: Option<u64>) -> Result<(u64, Manifest)> {
    let remote = Remote::open(url)?;
    block_on(async {
        let nothing = |reason: String| Error::NothingInStore {
            url: url.to_string(),
            reason,
        };
        let manifests = remote.manifests().await?;
        let newest = manifests
            .last()
            .ok_or_else(|| nothing("no generation: nothing to roll back".into()))?;
        let objects = remote.objects().await?;
        let sound = |m: &&Manifest| objects.iter().any(|o| o.holds(m));
        let previous = match to {
            None => manifests.iter().rev().skip(1).find(sound).ok_or_else(|| {
                nothing("no sound generation before the newest: nothing to roll back to".into())
            })?,
            Some(n) if n == newest.sequence => {
                return Err(nothing(format!(
                    "generation {n} is its newest already: nothing to roll back"
                )))
            }
            Some(n) => {
                let m = manifests.iter().find(|m| m.sequence == n).ok_or_else(|| {
                    nothing(format!(
                        "it holds no generation {n} (it holds {}: see promo inspect --source)",
                        list_sequences(&manifests)
                    ))
                })?;
                if !sound(&m) {
                    return Err(nothing(format!(
                        "generation {n}'s object is missing or of the wrong length"
                    )));
                }
                m
            }
        };
        let manifest = republish(&remote, &manifests, previous).await?;
        Ok((previous.sequence, manifest))
    })?
}

/// Commits `previous` again as the store's next generation, with the
/// record of a rollback to it: the generations after it in `manifests`
/// (every readable one, oldest first) are undone.
async fn republish(
    remote: &Remote,
    manifests: &[Manifest],
    previous: &Manifest,
) -> Result<Manifest> {
    let record = Rollback::to(
        previous.sequence,
        previous.body_checksum,
        manifests
            .iter()
            .rev()
            .map(|m| (m.sequence, m.body_checksum)),
    );
    // An unreadable manifest still holds its sequence.
    let taken = remote.sequences().await?.last().copied();
    let manifest = previous.republished(next_sequence(remote, taken)?, record);
    remote.commit(&manifest).await?;
    Ok(manifest)
}

/// `1, 2, 5` for the manifests of those sequences.
fn list_sequences(manifests: &[Manifest]) -> String {
    let all: Vec<String> = manifests.iter().map(|m| m.sequence.to_string()).collect();
    all.join(", ")
}

/// The sequence after `newest` (1 for an empty store).
fn next_sequence(remote: &Remote, newest: Option<u64>) -> Result<u64> {
    match newest {
        None => Ok(1),
        Some(n) => n.checked_add(1).ok_or_else(|| Error::NothingInStore {
            url: remote.url().to_string(),
            reason: format!("its newest sequence {n} has no successor: remove that manifest"),
        }),
    }
}
