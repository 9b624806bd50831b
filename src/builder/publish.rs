//! Publishing a generation to an object store, and rolling a store back.
//!
//! `promo build --publish URL` first publishes in its data directory, as
//! always, then uploads that file as the store's next generation: the
//! object first, under a name no other upload uses, then its manifest with
//! a create-only write. The manifest is the commit point (see
//! [`crate::generation::remote`]): a builder killed mid-upload leaves an
//! object no replica reads, which the next publish removes; of two builders
//! that chose the same sequence, one commits and the other fails and
//! deletes its upload.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generation::format::read_header;
use crate::generation::remote::{block_on, new_object_name, Manifest, Remote};

/// What [`publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The store's sequence for the generation.
    pub sequence: u64,
    pub object: String,
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
async fn in_store_terms(
    remote: &Remote,
    mut churn: serde_json::Value,
    newest: Option<u64>,
) -> serde_json::Value {
    let compared = churn["against_checksum"].as_str().map(str::to_owned);
    let store_newest = match newest {
        Some(s) => remote.manifest(s).await.ok().flatten(),
        None => None,
    };
    churn["against"] = match store_newest {
        Some(m) if compared == Some(format!("{:016x}", m.body_checksum)) => m.sequence.into(),
        _ => serde_json::Value::Null,
    };
    churn
}

/// `promo rollback --publish URL`: publishes the generation before the
/// store's newest again, under the next sequence, so that every replica
/// swaps to it as to any new generation. Its new manifest names the same
/// object: nothing is copied. A second rollback undoes the first. Returns
/// the sequence rolled back to and the new manifest.
pub fn rollback(url: &str) -> Result<(u64, Manifest)> {
    let remote = Remote::open(url)?;
    block_on(async {
        let sequences = remote.sequences().await?;
        let nothing = |reason: &str| Error::NothingInStore {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let &newest = sequences
            .last()
            .ok_or_else(|| nothing("no generation: nothing to roll back"))?;
        let objects = remote.objects().await?;
        let mut previous = None;
        for &sequence in sequences.iter().rev().skip(1) {
            match remote.manifest(sequence).await {
                Ok(Some(m)) if objects.iter().any(|o| o.holds(&m)) => {
                    previous = Some(m);
                    break;
                }
                // Gone, unusable or its object missing: not one to go back to.
                Ok(_) | Err(Error::Manifest { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let previous = previous.ok_or_else(|| {
            nothing("no sound generation before the newest: nothing to roll back to")
        })?;
        let manifest = previous.republished(next_sequence(&remote, Some(newest))?);
        remote.commit(&manifest).await?;
        Ok((previous.sequence, manifest))
    })?
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
