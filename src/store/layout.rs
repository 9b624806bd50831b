//! The object store's layout, object by object: the one place it is defined.
//!
//! A builder publishes each generation to a store (`s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix` or `file:///dir`); every
//! replica polls it and fetches what is newer. The layout under the prefix:
//!
//! ```text
//! generations/<sequence:010>-<token:016x>.promo
//!     A generation file, byte for byte as `promo build` wrote it (see
//!     format). Immutable once written. The token (random, per upload)
//!     keeps two builders that chose the same sequence from writing the
//!     same object: only a manifest can make an upload visible.
//! manifests/<sequence:010>.json
//!     The commit point: written with a create-only put after its
//!     generation object is complete, so a sequence is taken once, by one
//!     builder, and a generation without a manifest is never read. One JSON
//!     object in UTF-8:
//!       "format"         "promo-manifest/1" (MANIFEST_FORMAT); a replica
//!                        skips a manifest of another format with a log
//!                        line
//!       "sequence"       the sequence, as in the name
//!       "object"         the generation object's path under the prefix;
//!                        a rollback's manifest names an older object
//!       "bytes"          the object's exact length
//!       "rows"           records in it (its header's count)
//!       "created"        its header's creation time, RFC 3339 UTC
//!       "created_ms"     the same, milliseconds since the Unix epoch
//!       "body_checksum"  its header's XXH3-64 body checksum, 16 lowercase
//!                        hex digits
//!       "published"      when the manifest was written, RFC 3339 UTC
//!       "published_ms"   the same, milliseconds since the Unix epoch
//!       "churn"          what the generation changed against the one live
//!                        in the builder's data directory (see churn:
//!                        `Churn`), or null: the first build, a rollback, a
//!                        builder older than churn. Its "against" is the
//!                        store's sequence of that generation when it was
//!                        the store's newest, else null (the store was
//!                        rolled back, or another builder published in
//!                        between); "against_checksum" names it either
//!                        way. A replica writes it beside the generation
//!                        it fetches, as a build does
//!       "rollback"       for a rollback, what it restored and undid, in
//!                        store sequences (see rollback: `Rollback`), else
//!                        null or absent (a manifest older than it)
//!       "delta"          the generation as a delta from the one before it
//!                        (see format: "Delta"), or null or absent (the
//!                        first generation, a rollback, a build compared
//!                        with another generation than the store's newest,
//!                        a delta over --max-delta, an older builder):
//!                          "object"         its path under the prefix
//!                          "bytes"          its exact length
//!                          "checksum"       its body checksum, 16 hex digits
//!                          "base"           the store's sequence of its base
//!                          "base_checksum"  the base's body checksum
//!                        Replicas older than deltas ignore it.
//! generations/<sequence:010>-<token:016x>.delta
//!     A delta, named by one manifest's "delta", immutable, written before
//!     that manifest; retention removes it with its manifest.
//! ```
//!
//! A range shard (`--shard K/N`, not `0/1`) has a store of its own: the
//! layout above under `<prefix>/shard-K-of-N` (see [`shard_url`]), so
//! each shard's sequences, retention and rollbacks are its own.
//!
//! The newest manifest whose generation verifies is the store's newest
//! generation. A replica checks the object's length against the manifest
//! before it downloads and the header's checksum and the whole file after,
//! before the file takes a `gen-*.promo` name in its data directory.
//! Sequences in the store are the sequences replicas serve them under.

use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::generation::churn::Churn;
use crate::generation::format::{rfc3339_utc, Header};
use crate::generation::local::Sidecar;
use crate::generation::rollback::Rollback;
use crate::generation::shard::Shard;

/// The `format` of every manifest this promo writes and reads. A manifest
/// of another format is skipped with a log line (a newer builder's; upgrade
/// the replicas).
pub const MANIFEST_FORMAT: &str = "promo-manifest/1";
pub(super) const GENERATIONS: &str = "generations";
pub(super) const MANIFESTS: &str = "manifests";

/// The store of `shard` in the store at `url`: `url` itself for every id
/// (`0/1`), else `url` with `/shard-K-of-N` appended.
pub fn shard_url(url: &str, shard: Shard) -> String {
    if shard.is_whole() {
        return url.to_string();
    }
    let name = format!("shard-{}-of-{}", shard.index(), shard.count());
    match url.strip_suffix('/') {
        Some(base) => format!("{base}/{name}"),
        None => format!("{url}/{name}"),
    }
}

/// A committed generation in the store: what its manifest says. As
/// stored, the fields of [`StoredManifest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub sequence: u64,
    /// The generation object, relative to the store's prefix.
    pub object: String,
    pub bytes: u64,
    pub rows: u64,
    pub created_ms: u64,
    pub body_checksum: u64,
    pub published_ms: u64,
    /// What the generation changed when it was built, as its sidecar says.
    pub churn: Option<Churn>,
    /// What it restored and undid, if it is a rollback (with store
    /// sequences).
    pub rollback: Option<Rollback>,
    /// The generation as a delta from an older one, if the builder wrote one.
    pub delta: Option<DeltaObject>,
}

/// A delta in the store: what a manifest's `"delta"` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaObject {
    /// The delta object, relative to the store's prefix.
    pub object: String,
    pub bytes: u64,
    /// The delta's body checksum.
    #[serde(with = "crate::generation::json::hex")]
    pub checksum: u64,
    /// The store's sequence of the generation it applies to, and that
    /// generation's body checksum.
    #[serde(rename = "base")]
    pub base_sequence: u64,
    #[serde(with = "crate::generation::json::hex")]
    pub base_checksum: u64,
}

impl Manifest {
    /// The manifest of `header`'s generation, uploaded as `object`.
    pub fn new(sequence: u64, object: String, header: &Header) -> Manifest {
        Manifest {
            sequence,
            object,
            bytes: header.file_len(),
            rows: header.count,
            created_ms: header.created_ms,
            body_checksum: header.body_checksum,
            published_ms: now_ms(),
            churn: None,
            rollback: None,
            delta: None,
        }
    }

    /// The same generation (the same object) under a new sequence, for a
    /// rollback, which `rollback` describes.
    pub fn republished(&self, sequence: u64, rollback: Rollback) -> Manifest {
        Manifest {
            sequence,
            published_ms: now_ms(),
            churn: None,
            rollback: Some(rollback),
            delta: None,
            ..self.clone()
        }
    }

    /// What a replica writes beside the generation it fetched.
    pub fn sidecar(&self) -> Sidecar<'_> {
        match (&self.rollback, &self.churn) {
            (Some(r), _) => Sidecar::Rollback(r),
            (None, Some(c)) => Sidecar::Churn(c),
            (None, None) => Sidecar::None,
        }
    }

    /// The manifest as stored: one JSON object and a newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            serde_json::to_vec_pretty(&StoredManifest::from(self)).expect("a manifest serializes");
        out.push(b'\n');
        out
    }

    /// Parses a stored manifest; `Err` says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Format {
            #[serde(default)]
            format: String,
        }
        let Format { format } =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if format != MANIFEST_FORMAT {
            return Err(format!(
                "format {format:?}, but this promo reads {MANIFEST_FORMAT:?}"
            ));
        }
        let s: StoredManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for object in std::iter::once(&s.object).chain(s.delta.as_ref().map(|d| &d.object)) {
            if !object.starts_with(GENERATIONS) || object.contains("..") {
                return Err(format!("\"object\" {object:?} is not under generations/"));
            }
        }
        Ok(Manifest {
            sequence: s.sequence,
            object: s.object,
            bytes: s.bytes,
            rows: s.rows,
            created_ms: s.created_ms,
            body_checksum: s.body_checksum,
            published_ms: s.published_ms,
            churn: s.churn,
            rollback: s.rollback,
            delta: s.delta,
        })
    }

    /// Whether `header` is the header this manifest describes.
    pub fn matches(&self, header: &Header) -> bool {
        header.file_len() == self.bytes
            && header.count == self.rows
            && header.body_checksum == self.body_checksum
            && header.created_ms == self.created_ms
    }
}

/// A manifest as stored: the fields of the table in the module's
/// documentation, in that order.
#[derive(Serialize, Deserialize)]
struct StoredManifest {
    format: String,
    sequence: u64,
    object: String,
    bytes: u64,
    rows: u64,
    /// Written for readers; `created_ms` is what is read.
    #[serde(default, skip_deserializing)]
    created: String,
    created_ms: u64,
    #[serde(with = "crate::generation::json::hex")]
    body_checksum: u64,
    /// Written for readers; `published_ms` is what is read.
    #[serde(default, skip_deserializing)]
    published: String,
    published_ms: u64,
    /// A churn this promo cannot read (another version's) is left out.
    #[serde(default, deserialize_with = "crate::generation::json::lenient")]
    churn: Option<Churn>,
    #[serde(default)]
    rollback: Option<Rollback>,
    /// A delta this promo cannot read (another version's) is left out.
    #[serde(default, deserialize_with = "crate::generation::json::lenient")]
    delta: Option<DeltaObject>,
}

impl From<&Manifest> for StoredManifest {
    fn from(m: &Manifest) -> StoredManifest {
        StoredManifest {
            format: MANIFEST_FORMAT.to_string(),
            sequence: m.sequence,
            object: m.object.clone(),
            bytes: m.bytes,
            rows: m.rows,
            created: rfc3339_utc(m.created_ms),
            created_ms: m.created_ms,
            body_checksum: m.body_checksum,
            published: rfc3339_utc(m.published_ms),
            published_ms: m.published_ms,
            churn: m.churn.clone(),
            rollback: m.rollback.clone(),
            delta: m.delta.clone(),
        }
    }
}

/// The path of manifest `sequence`.
pub(super) fn manifest_path(sequence: u64) -> ObjectPath {
    ObjectPath::from(format!("{MANIFESTS}/{sequence:010}.json"))
}

/// The sequence of a manifest's path, if it is one.
pub(super) fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A new generation object's path for `sequence`, unique to this upload.
pub fn new_object_name(sequence: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static UPLOADS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    seed[24..].copy_from_slice(&UPLOADS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let token = xxhash_rust::xxh3::xxh3_64(&seed);
    format!("{GENERATIONS}/{sequence:010}-{token:016x}.promo")
}

/// A new delta object's path for generation `sequence`, unique to this
/// upload (the generation's object name, with another suffix).
pub fn new_delta_name(sequence: u64) -> String {
    let name = new_object_name(sequence);
    format!("{}.delta", name.strip_suffix(".promo").unwrap_or(&name))
}

/// The sequence a generation object's name starts with.
pub(super) fn object_sequence(name: &str) -> Option<u64> {
    name.strip_prefix(GENERATIONS)?
        .strip_prefix('/')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An object in the store's `generations/`.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: String,
    pub bytes: u64,
}

impl Object {
    /// Whether this is the object `m` names, at the length it says: what
    /// makes a generation in the store sound without reading it.
    pub fn holds(&self, m: &Manifest) -> bool {
        self.name == m.object && self.bytes == m.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            created_ms: 1_700_000_000_123,
            body_checksum: 0x0123_4567_89ab_cdef,
            ..Header::new(3, 0)
        }
    }

    #[test]
    fn each_shard_has_its_own_prefix() {
        let s = Shard::new(1, 4).unwrap();
        assert_eq!(shard_url("s3://b/promo", s), "s3://b/promo/shard-1-of-4");
        assert_eq!(shard_url("s3://b/promo/", s), "s3://b/promo/shard-1-of-4");
        assert_eq!(shard_url("s3://b/promo", Shard::WHOLE), "s3://b/promo");
    }

    #[test]
    fn manifests_round_trip_and_bad_ones_say_why() {
        let m = Manifest::new(7, new_object_name(7), &header());
        assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        assert!(m.matches(&header()));
        assert!(!m.matches(&Header {
            body_checksum: 1,
            ..header()
        }));
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains("\"body_checksum\": \"0123456789abcdef\""),
            "{text}"
        );

        let other = text.replace(MANIFEST_FORMAT, "promo-manifest/2");
        assert!(Manifest::decode(other.as_bytes())
            .unwrap_err()
            .contains("promo-manifest/2"));
        let escape = text.replace("generations/", "../");
        assert!(Manifest::decode(escape.as_bytes()).is_err());
        assert!(Manifest::decode(b"{").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn a_manifest_names_its_delta_and_one_without_reads_as_none() {
        let delta = DeltaObject {
            object: new_delta_name(8),
            bytes: 300,
            checksum: 0xfeed,
            base_sequence: 7,
            base_checksum: 0x0123_4567_89ab_cdef,
        };
        let m = Manifest {
            delta: Some(delta),
            ..Manifest::new(8, new_object_name(8), &header())
        };
        assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("\"base\": 7"), "{text}");
        assert!(
            text.contains("\"base_checksum\": \"0123456789abcdef\""),
            "{text}"
        );
        // A manifest older than deltas, and one whose delta this promo
        // cannot read, are manifests without a delta.
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["delta"] = serde_json::json!({"object": "generations/x.delta", "version": 9});
        let odd = Manifest::decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(odd.delta, None);
        json.as_object_mut().unwrap().remove("delta");
        let old = Manifest::decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(
            old,
            Manifest {
                delta: None,
                ..m.clone()
            }
        );
        // A delta outside generations/ is refused like an object there.
        let named = m.delta.as_ref().unwrap().object.clone();
        let escape = text.replace(&named, "../x.delta");
        assert_ne!(escape, text);
        assert!(Manifest::decode(escape.as_bytes()).is_err());
        assert!(new_delta_name(8).ends_with(".delta"));
        assert_eq!(object_sequence(&new_delta_name(8)), Some(8));
    }

    #[test]
    fn names_carry_their_sequence() {
        assert_eq!(manifest_path(42).as_ref(), "manifests/0000000042.json");
        assert_eq!(parse_manifest_name("0000000042.json"), Some(42));
        for bad in ["42.json.tmp", ".json", "x42.json", "42"] {
            assert_eq!(parse_manifest_name(bad), None, "{bad}");
        }
        let a = new_object_name(42);
        assert_ne!(a, new_object_name(42), "two uploads never share an object");
        assert_eq!(object_sequence(&a), Some(42));
    }
}
