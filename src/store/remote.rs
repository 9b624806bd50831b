//! A store of generations opened from its URL, with its retry settings:
//! every read, write, list and delete promo makes in a store goes through
//! [`Remote`] (or, for one object read front to back, [`object_at`]). What
//! the store holds, object by object, is [`layout`](super::layout).

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::layout::{
    manifest_path, object_sequence, parse_manifest_name, Manifest, Object, GENERATIONS, MANIFESTS,
};
use crate::error::{Error, Result};

/// A store of generations at a URL.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// A `file://` store's directory: listing a missing one finds nothing
    /// rather than failing, and an unmounted share must not look empty.
    dir: Option<std::path::PathBuf>,
}

/// `builder` with those `options` whose keys it knows; the others are for
/// another cloud's builder.
fn configure<B, K: std::str::FromStr>(
    builder: B,
    options: &[(String, String)],
    set: impl Fn(B, K, &str) -> B,
) -> B {
    options
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str())))
        .fold(builder, |b, (k, v)| set(b, k, v))
}

/// Runs `f`, a store operation, to completion on a runtime of its own: for
/// the commands (`build --publish`, `fetch`, `rollback`, `inspect`) that
/// talk to a store once and exit.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io_op("starting a runtime", "tokio"))?;
    Ok(runtime.block_on(f))
}

/// What a URL names: a store of generations (a prefix), or one object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Store,
    Object,
}

/// The object at `url` (a feed: `s3://bucket/feeds/today.csv`, `gs://`,
/// `az://`, `file:///path`, `http(s)://host/path`), and the store that
/// holds it, configured from the environment as [`Remote::open`] is.
///
/// An http(s) URL with a query ([`is_presigned`]) is one opaque object: the
/// store is the whole URL, requested as written, and the path is empty.
pub fn object_at(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let (store, path, _) = store_at(url, &[], Kind::Object)?;
    if path.as_ref().is_empty() && !is_presigned(url) {
        return Err(Error::Url {
            url: url.to_string(),
            reason: "no object named after the bucket or host".into(),
        });
    }
    Ok((store, path))
}

/// Whether `url` is an http(s) URL with a query, as a presigned URL is
/// (`https://host/bucket/feed.csv?X-Amz-Signature=...`), the way partners
/// share one object: a feed read from the URL exactly as written, query
/// included, and looked up with a GET, since its signature allows no other
/// method.
pub fn is_presigned(url: &str) -> bool {
    url::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_some())
}

/// `url` as messages show it: a query, which may hold a signature or a
/// token, shown as `?…`.
pub fn redact_url(url: &str) -> String {
    // A `?` after a `#` is the fragment's.
    let (head, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    match head.split_once('?') {
        Some((path, _)) => format!("{path}?…{fragment}"),
        None => url.to_string(),
    }
}

/// Times a request to a store is retried, a dropped answer included: the
/// store client asks again from the byte where the answer stopped, as long
/// as the object's ETag is still the one it started with. The one retry
/// policy of every read, a feed's or a generation's (see
/// [`ranged`](super::ranged)).
pub const RETRIES: usize = 5;

/// Longest a request waits for the next bytes of an answer before it is
/// dropped and retried (the store client's `read_timeout`): a store that
/// accepts connections and answers nothing (a blackhole) fails a request
/// in seconds rather than at the end of its whole timeout, and the retry
/// goes out on a new connection. Not much shorter: a store busy writing
/// (an S3-compatible one on a loaded disk) took over 10 s to answer the
/// part of a 3.2 GB upload. `AWS_READ_TIMEOUT` (`GOOGLE_`, `AZURE_`)
/// in the environment changes it, as the store client reads it there.
pub const READ_TIMEOUT: &str = "20s";

/// [`READ_TIMEOUT`] as an option for the cloud whose environment variables
/// start with `prefix`, unless the environment sets its own.
fn read_timeout(prefix: &str) -> Vec<(String, String)> {
    match std::env::var_os(format!("{prefix}_READ_TIMEOUT")) {
        Some(_) => Vec::new(),
        None => vec![("read_timeout".to_string(), READ_TIMEOUT.to_string())],
    }
}

/// `builder` with the retries of every request: [`RETRIES`], backing off
/// from 100 ms to 5 s, within 3 minutes.
fn retried<B>(builder: B, with: impl FnOnce(B, object_store::RetryConfig) -> B) -> B {
    with(
        builder,
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: RETRIES,
            retry_timeout: std::time::Duration::from_secs(180),
        },
    )
}

/// The URL parsed and checked, the object path it names (empty for a
/// presigned URL, which is used whole), and whether it is presigned.
fn parse(url: &str, kind: Kind) -> Result<(url::Url, ObjectPath, bool)> {
    let bad = |reason: &str| Error::Url {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| match e {
        // A plain path: say what a store is, and the URL of that path.
        url::ParseError::RelativeUrlWithoutBase => {
            let dir = std::path::absolute(url).unwrap_or_else(|_| url.into());
            bad(&format!(
                "not a URL: a store is s3://bucket/prefix, gs://, az:// or file:///dir (for this \
                 directory, file://{})",
                dir.display()
            ))
        }
        e => bad(&e.to_string()),
    })?;
    let http = matches!(parsed.scheme(), "http" | "https");
    let presigned = kind == Kind::Object && http && parsed.query().is_some();
    if kind == Kind::Object && http && parsed.fragment().is_some() {
        return Err(bad(
            "a fragment (#...) is never sent to the server: leave it out",
        ));
    }
    if (parsed.query().is_some() && !presigned) || parsed.fragment().is_some() {
        return Err(bad(
            "a query or a fragment (?..., #...) cannot be read: name the object by its path",
        ));
    }
    if presigned && parsed.path().trim_matches('/').is_empty() {
        return Err(bad("no object named after the host"));
    }
    // The URL's path is percent-encoded; the object's name is not. A
    // presigned URL is not taken apart: its signature covers the path as
    // it is encoded there.
    let path = match presigned {
        true => ObjectPath::default(),
        false => ObjectPath::from_url_path(parsed.path().trim_matches('/'))
            .map_err(|e| bad(&e.to_string()))?,
    };
    Ok((parsed, path, presigned))
}

/// The store a URL is in, the path the URL names inside it, and for
/// `file://` the directory or file on disk.
fn store_at(
    url: &str,
    options: &[(String, String)],
    kind: Kind,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath, Option<std::path::PathBuf>)> {
    let bad = |reason: &str| Error::Url {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    let (parsed, path, presigned) = parse(url, kind)?;
    // The three clouds' builders: from the environment, the URL, the
    // retries, the read timeout unless the environment has one, then
    // `options` over them.
    macro_rules! cloud {
        ($builder:ty, $env:literal) => {
            Arc::new(
                configure(
                    retried(<$builder>::from_env().with_url(url), |b, r| b.with_retry(r)),
                    &[&read_timeout($env)[..], options].concat(),
                    |b, k, v| b.with_config(k, v),
                )
                .build()
                .map_err(|e| bad(&e.to_string()))?,
            )
        };
    }
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "gs" | "az" if parsed.host_str().is_none_or(str::is_empty) => {
            return Err(bad("no bucket or container after the scheme"));
        }
        "s3" => cloud!(object_store::aws::AmazonS3Builder, "AWS"),
        "gs" => cloud!(object_store::gcp::GoogleCloudStorageBuilder, "GOOGLE"),
        "az" => cloud!(object_store::azure::MicrosoftAzureBuilder, "AZURE"),
        "http" | "https" if kind == Kind::Object => {
            // The store's requests go to its URL with the object's path
            // appended: the origin and the path, or a presigned URL whole
            // (with the empty path, the URL as written, query and all).
            let origin = match presigned {
                true => parsed.as_str().to_string(),
                false => parsed.origin().ascii_serialization(),
            };
            let client = object_store::ClientOptions::new()
                .with_allow_http(parsed.scheme() == "http")
                .with_config(object_store::ClientConfigKey::ReadTimeout, READ_TIMEOUT);
            Arc::new(
                retried(object_store::http::HttpBuilder::new(), |b, r| {
                    b.with_retry(r)
                })
                .with_url(origin)
                .with_client_options(client)
                .build()
                .map_err(|e| bad(&e.to_string()))?,
            )
        }
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(bad("a file URL names no host: file:///absolute/path"));
            }
            let on_disk = parsed
                .to_file_path()
                .map_err(|()| bad("not an absolute path: file:///absolute/path"))?;
            // Not checked here: a share that is not mounted yet must not
            // stop a server from starting; listing says it is missing.
            let path = ObjectPath::from_absolute_path(&on_disk).map_err(|e| bad(&e.to_string()))?;
            // Synced writes: a manifest that survives a crash names an
            // object that survived it too.
            let files = object_store::local::LocalFileSystem::new().with_fsync(true);
            return Ok((Arc::new(files), path, Some(on_disk)));
        }
        other => {
            return Err(bad(&match kind {
                Kind::Store => {
                    format!("unknown scheme {other:?}: use s3://, gs://, az:// or file:///")
                }
                Kind::Object => format!(
                "unknown scheme {other:?}: use s3://, gs://, az://, file:///, http:// or https://"
            ),
            }))
        }
    };
    Ok((store, path, None))
}

impl Remote {
    /// The store at `url`. Credentials, region and endpoint come from the
    /// environment as the cloud's own tools read them (`AWS_*`, including
    /// `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP`; `GOOGLE_*`; `AZURE_*`).
    /// Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote> {
        Remote::open_with(url, std::iter::empty::<(String, String)>())
    }

    /// [`Remote::open`], with `options` over the environment's: the cloud
    /// builders' configuration keys (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`...). For a program that talks to two stores.
    pub fn open_with(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Remote> {
        let options: Vec<(String, String)> = options.into_iter().collect();
        let (inner, prefix, dir) = store_at(url, &options, Kind::Store)?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            inner
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(inner, prefix))
        };
        Ok(Remote {
            store,
            url: url.to_string(),
            dir,
        })
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An error about this store while doing `op`, from its cause: the
    /// store client's error, an I/O error, or what promo found wrong.
    pub fn error<E: std::fmt::Display>(&self, op: &'static str) -> impl FnOnce(E) -> Error + '_ {
        move |cause| Error::Remote {
            url: self.url.clone(),
            op,
            cause: cause.to_string(),
        }
    }

    /// The committed sequences, oldest first.
    pub async fn sequences(&self) -> Result<Vec<u64>> {
        if let Some(dir) = self.dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(self.error("listing manifests")(format!(
                "{} does not exist (create it, or check that the share is mounted)",
                dir.display()
            )));
        }
        let list: Vec<_> = self
            .store
            .list(Some(&ObjectPath::from(MANIFESTS)))
            .try_collect()
            .await
            .map_err(self.error("listing manifests"))?;
        let mut out: Vec<u64> = list
            .iter()
            .filter_map(|m| m.location.filename().and_then(parse_manifest_name))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Manifest `sequence`, checked; `None` if it is gone (retention
    /// removed it after it was listed). [`Error::Manifest`] if it cannot be
    /// used; another error if the store failed.
    pub async fn manifest(&self, sequence: u64) -> Result<Option<Manifest>> {
        let path = manifest_path(sequence);
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("reading a manifest")(e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(self.error("reading a manifest"))?;
        match Manifest::decode(&bytes) {
            Ok(m) if m.sequence == sequence => Ok(Some(m)),
            Ok(m) => Err(self.bad_manifest(sequence, format!("it says sequence {}", m.sequence))),
            Err(reason) => Err(self.bad_manifest(sequence, reason)),
        }
    }

    fn bad_manifest(&self, sequence: u64, reason: String) -> Error {
        Error::Manifest {
            url: self.url.clone(),
            sequence,
            reason: format!("its manifest cannot be used: {reason}"),
        }
    }

    /// Every readable manifest, oldest first; unreadable ones are logged
    /// and skipped.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for sequence in self.sequences().await? {
            match self.manifest(sequence).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e @ Error::Manifest { .. }) => tracing::warn!("{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every readable manifest, oldest first, with the lengths of the
    /// object and the delta it names (`None`: missing, or no delta): what
    /// `promo inspect --source` shows.
    pub async fn inventory(&self) -> Result<Vec<(Manifest, Option<u64>, Option<u64>)>> {
        let objects = self.objects().await?;
        let len = |name: &str| objects.iter().find(|o| o.name == name).map(|o| o.bytes);
        Ok(self
            .manifests()
            .await?
            .into_iter()
            .map(|m| {
                let delta = m.delta.as_ref().and_then(|d| len(&d.object));
                (len(&m.object), delta, m)
            })
            .map(|(object, delta, m)| (m, object, delta))
            .collect())
    }

    /// The generation objects, committed or not.
    pub async fn objects(&self) -> Result<Vec<Object>> {
        let list: Vec<_> = self
            .store
            .list(Some(&ObjectPath::from(GENERATIONS)))
            .try_collect()
            .await
            .map_err(self.error("listing generation objects"))?;
        Ok(list
            .into_iter()
            .map(|m| Object {
                name: m.location.to_string(),
                bytes: m.size,
            })
            .collect())
    }

    /// The store client, for a read of one object (see
    /// [`ranged`](super::ranged)).
    pub(crate) fn client(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Uploads the local generation file at `path` as object `name`, in
    /// parts of several MiB with a few in flight, so a file of any size
    /// goes up without being held in memory.
    pub async fn upload(&self, path: &std::path::Path, name: &str) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const PART: usize = 16 << 20;
        let mut file = tokio::fs::File::open(path).await.map_err(Error::io(path))?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            ObjectPath::from(name),
            PART,
        )
        .with_max_concurrency(4);
        let mut buf = vec![0u8; 1 << 20];
        const UPLOADING: &str = "uploading a generation";
        // Every way out but success aborts the multipart upload, so that
        // its parts do not linger in the store; but a writer whose shutdown
        // failed cannot be aborted (it panics), and what it left is for the
        // bucket's rule on incomplete multipart uploads.
        let written = async {
            loop {
                let n = file.read(&mut buf).await.map_err(Error::io(path))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .write_all(&buf[..n])
                    .await
                    .map_err(self.error(UPLOADING))?;
            }
        }
        .await;
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.shutdown().await.map_err(self.error(UPLOADING))
    }

    /// Makes `manifest` visible: a create-only write, so that of two
    /// builders committing the same sequence exactly one succeeds and the
    /// other gets [`Error::SequenceTaken`].
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let path = manifest_path(manifest.sequence);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(manifest.encode());
        match self.store.put_opts(&path, payload.clone(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(Error::SequenceTaken {
                url: self.url.clone(),
                sequence: manifest.sequence,
            }),
            // A store without create-only writes: check, then write. Two
            // builders can then race; run one builder per store.
            Err(object_store::Error::NotImplemented { .. }) => {
                tracing::warn!(
                    "{}: the store does not support create-only writes; \
                     publishing with a check first (run one builder per store)",
                    self.url
                );
                match self.store.head(&path).await {
                    Err(object_store::Error::NotFound { .. }) => {}
                    Ok(_) => {
                        return Err(Error::SequenceTaken {
                            url: self.url.clone(),
                            sequence: manifest.sequence,
                        })
                    }
                    Err(e) => return Err(self.error("checking for a manifest")(e)),
                }
                self.store
                    .put(&path, payload)
                    .await
                    .map(|_| ())
                    .map_err(self.error("writing a manifest"))
            }
            Err(e) => Err(self.error("writing a manifest")(e)),
        }
    }

    /// Deletes manifest `sequence`.
    pub async fn delete_manifest(&self, sequence: u64) -> Result<()> {
        self.delete(&manifest_path(sequence)).await
    }

    /// Deletes object `name`.
    pub async fn delete_object(&self, name: &str) -> Result<()> {
        self.delete(&ObjectPath::from(name)).await
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting")(e)),
        }
    }

    /// Keeps the newest `keep` sound generations (manifest readable, object
    /// present at the manifest's length) and deletes the manifests older
    /// than the oldest of them (none while fewer are sound), then every
    /// generation object no remaining manifest names and no builder can
    /// still be committing (those at or below the newest committed
    /// sequence: leftovers of killed or beaten builders). Manifests go
    /// first, so a replica never reads a manifest whose object is gone.
    /// Returns the sequences and objects deleted.
    pub async fn retain(&self, keep: usize) -> Result<(Vec<u64>, Vec<String>)> {
        let keep = keep.max(1);
        let sequences = self.sequences().await?;
        let Some(&newest) = sequences.last() else {
            return Ok(Default::default());
        };
        let objects = self.objects().await?;
        let (mut sound, mut cut) = (0, 0);
        let mut named = Vec::new();
        // A manifest that cannot be read names an object nobody knows:
        // then no object is deleted this time.
        let mut unknown = false;
        for &sequence in sequences.iter().rev() {
            match self.manifest(sequence).await {
                Ok(Some(m)) => {
                    if sound < keep && objects.iter().any(|o| o.holds(&m)) {
                        sound += 1;
                        cut = sequence;
                    }
                    if let Some(delta) = m.delta {
                        named.push((sequence, delta.object));
                    }
                    named.push((sequence, m.object));
                }
                Ok(None) => {}
                Err(Error::Manifest { .. }) => unknown = true,
                Err(e) => return Err(e),
            }
        }
        // With fewer sound generations than asked for, no manifest goes.
        let mut removed = Vec::new();
        if sound == keep {
            for &sequence in sequences.iter().filter(|&&s| s < cut) {
                self.delete_manifest(sequence).await?;
                removed.push(sequence);
            }
            named.retain(|(s, _)| *s >= cut);
        }
        let mut deleted = Vec::new();
        if unknown {
            return Ok((removed, deleted));
        }
        for o in objects {
            let settled = object_sequence(&o.name).is_none_or(|s| s <= newest);
            if settled && !named.iter().any(|(_, n)| *n == o.name) {
                self.delete_object(&o.name).await?;
                deleted.push(o.name);
            }
        }
        Ok((removed, deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_anything_is_contacted() {
        for (url, says) in [
            ("ftp://host/x", "unknown scheme"),
            ("s3:///prefix", "no bucket"),
            ("file://host/dir", "names no host"),
            ("not a url", "not a URL: a store is s3://"),
        ] {
            let e = Remote::open(url).unwrap_err().to_string();
            assert!(e.contains(url) && e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn an_http_url_with_a_query_is_one_object_and_other_queries_are_refused() {
        let signed = "https://host/bucket/feed.csv?X-Amz-Signature=abc&X-Amz-Expires=60";
        assert!(is_presigned(signed));
        let (_, path) = object_at(signed).unwrap();
        assert_eq!(path.as_ref(), "", "the URL is requested whole");
        let (_, path) = object_at("https://host/bucket/feed%20a.csv").unwrap();
        assert_eq!(path.as_ref(), "bucket/feed a.csv");
        for (url, says) in [
            (
                "s3://bucket/feed.csv?versionId=3",
                "s3://bucket/feed.csv?…: a query or a fragment",
            ),
            ("file:///feed.csv?x=1", "a query or a fragment"),
            ("https://host/feed.csv#x", "a fragment (#...) is never sent"),
            ("https://host/feed.csv?sig=1#x", "is never sent"),
            ("https://host/?sig=1", "https://host/?…: no object named"),
        ] {
            let e = object_at(url).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(
                !e.contains("sig=1") && !e.contains("versionId"),
                "{url}: {e}"
            );
        }
        // A store is never an http URL, query or not; nor has one a query.
        for url in [signed, "s3://bucket/prefix?x=1"] {
            assert!(Remote::open(url).is_err(), "{url}");
        }
        for (url, shown) in [
            (signed, "https://host/bucket/feed.csv?…"),
            ("s3://b/x?v=1#7", "s3://b/x?…#7"),
            ("s3://b/x#7?v", "s3://b/x#7?v"),
            ("/tmp/feed.csv", "/tmp/feed.csv"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
