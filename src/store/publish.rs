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
use crate::generation::format::read_header;
use crate::generation::rollback::Rollback;
use crate::store::layout::{new_object_name, Manifest};
use crate::store::remote::{block_on, Remote};

/// What [`publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The store's sequence for the generation.
    pub sequence: u64,
    pub object: String,
    /// Bytes uploaded: 0 for a rollback to a generation the store holds.
    pub bytes: u64,
    pub seconds: f64,
}

/// Uploads the generation file at `path` to the store at `url` as its next
/// generation, then keeps the store's newest `keep` sound generations.
/// A failure before the manifest is written leaves the store as it was
/// (the upload is deleted, or left for the next publish to remove); a
/// failed retention afterwards is a warning, since the generation is out.
pub fn publish(url: &str, path: &Path, keep: usize) -> Result<Published> {
    let started = Instant::now();
    let remote = Remote::open(url)?;
    let header = read_header(path)?;
    block_on(async {
        // A rollback on a server's data directory (the admin port's): when
        // the store holds that generation, the store rolls back to it too,
        // with nothing uploaded, and records what it undid in its terms.
        if crate::generation::local::rollback_of(path).is_some() {
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
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        let newest = remote.sequences().await?.last().copied();
        let sequence = next_sequence(&remote, newest)?;
        let object = new_object_name(sequence);
        tracing::info!(
            url,
            sequence,
            object,
            bytes = header.file_len(),
            "uploading"
        );
        remote.upload(path, &object).await?;
        let churn = match crate::generation::local::churn_of(path) {
            Some(churn) => Some(in_store_terms(&remote, churn, newest).await),
            None => None,
        };
        let manifest = Manifest {
            churn,
            ..Manifest::new(sequence, object.clone(), &header)
        };
        if let Err(e) = remote.commit(&manifest).await {
            if let Err(d) = remote.delete_object(&object).await {
                tracing::warn!("{d} (the next publish removes it)");
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
            bytes: header.file_len(),
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
async fn in_store_terms(remote: &Remote, mut churn: Churn, newest: Option<u64>) -> Churn {
    let store_newest = match newest {
        Some(s) => remote.manifest(s).await.ok().flatten(),
        None => None,
    };
    churn.previous = match store_newest {
        Some(m) if m.body_checksum == churn.previous_checksum => m.sequence,
        _ => 0,
    };
    churn
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
