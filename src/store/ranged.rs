//! An object in a store read front to back, as consecutive ranges with
//! several in flight and handed on in order ([`ObjectReader`]).
//!
//! Partners drop feeds into buckets, and a 77 GB feed should not need a
//! local copy before it is built. The object's ETag (and version, where the
//! store keeps versions) is pinned when it is looked up and checked in every
//! answer, so an object replaced during the read fails it instead of being
//! stitched from two files. A range whose connection drops is asked for
//! again from the byte where it stopped, a bounded number of times.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::store::remote;

/// An object in a store, read front to back as ranges fetched ahead on a
/// thread of its own.
pub struct ObjectReader {
    /// The object's length.
    pub len: u64,
    /// Ranges in order; an error is the last item.
    ranges: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
    /// The error that ended the read, returned by every later read too: a
    /// failed read must never look like the end of the feed.
    failed: Option<String>,
    /// The fetching thread; it ends when the receiver is dropped.
    _thread: std::thread::JoinHandle<()>,
}

/// What pins an object for the length of a read.
#[derive(Clone)]
struct Pinned {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    e_tag: Option<String>,
    version: Option<String>,
    /// Looked up with a GET rather than a HEAD: a presigned URL.
    by_get: bool,
}

impl ObjectReader {
    /// Bytes a request asks for.
    pub const RANGE: u64 = 8 << 20;
    /// Requests in flight at once.
    pub const IN_FLIGHT: usize = 4;

    /// Looks up the object at `url` and starts reading it, `range` bytes a
    /// request with `in_flight` requests at once.
    pub fn open(url: &str, range: u64, in_flight: usize) -> Result<ObjectReader> {
        let (store, path) = remote::object_at(url)?;
        let by_get = remote::is_presigned(url);
        // What a message shows of an error, whose text may hold the URL
        // (the store client names the request it made): not its query.
        let query = url::Url::parse(url)
            .ok()
            .and_then(|u| u.query().map(str::to_owned))
            .filter(|q| !q.is_empty());
        let hide = move |text: String| match &query {
            Some(q) => text.replace(q.as_str(), "…"),
            None => text,
        };
        let hide_range = hide.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
        // The object is looked up on the thread that reads it, on its one
        // runtime: the store client's pooled connections belong to the
        // runtime that opened them.
        let (looked_up, lookup) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("promo-feed".into())
            .spawn(move || {
                let sender = tx.clone();
                let fetched = remote::block_on(async move {
                    let tx = sender;
                    let meta = match look_up(store.as_ref(), &path, by_get).await {
                        Ok(meta) => meta,
                        Err(e) => {
                            let _ = looked_up.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let len = meta.size;
                    let _ = looked_up.send(Ok(len));
                    let pinned = Pinned {
                        store,
                        path,
                        e_tag: meta.e_tag,
                        version: meta.version,
                        by_get,
                    };
                    let ranges = (0..len)
                        .step_by(range as usize)
                        .map(|s| s..(s + range).min(len));
                    // Each range is a task of its own, so that the requests
                    // behind the one being handed on keep receiving.
                    let mut ahead = futures_util::stream::iter(ranges)
                        .map(|r| tokio::spawn(pinned.clone().fetch(r)))
                        .buffered(in_flight);
                    while let Some(got) = ahead.next().await {
                        let got = match got {
                            Ok(got) => got.map_err(&hide_range),
                            Err(e) => Err(format!("a range's fetch stopped: {e}")),
                        };
                        let failed = got.is_err();
                        // The reader is gone (the build failed elsewhere),
                        // or this range failed: nothing more to fetch.
                        if tx.send(got).await.is_err() || failed {
                            break;
                        }
                    }
                });
                if let Err(e) = fetched {
                    let _ = tx.blocking_send(Err(e.to_string()));
                }
            })
            .map_err(Error::io_op(
                "starting the feed's reader",
                remote::redact_url(url),
            ))?;
        let failed = |cause: String| Error::Remote {
            url: remote::redact_url(url),
            op: "looking up a feed",
            cause: hide(cause),
        };
        let len = lookup
            .recv()
            .map_err(|_| failed("the reader stopped".into()))?
            .map_err(failed)?;
        Ok(ObjectReader {
            len,
            ranges: rx,
            current: Bytes::new(),
            failed: None,
            _thread: thread,
        })
    }
}

impl Pinned {
    /// Fetches `range` whole. A dropped answer is resumed by the store
    /// client at the byte where it stopped (see [`remote::FEED_RETRIES`]);
    /// an answer from another object than the one pinned fails at once.
    async fn fetch(self, range: std::ops::Range<u64>) -> std::result::Result<Bytes, String> {
        let len = range.end - range.start;
        // The ETag is compared with each answer's rather than sent as
        // If-Match: not every store maps a 412 to a precondition error
        // (plain HTTP does not), and each answer says which object it is.
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            version: self.version.clone(),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&self.path, opts).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err("the object was deleted during the read".into())
            }
            Err(e) => return Err(format!("at byte {}: {e}", range.start)),
        };
        if let Some(now) = got
            .meta
            .e_tag
            .as_deref()
            .filter(|&t| Some(t) != self.e_tag.as_deref())
        {
            return Err(self.changed(now));
        }
        let mut buf = BytesMut::with_capacity(len as usize);
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => buf.extend_from_slice(&chunk),
                Err(e) => {
                    // The client gives up resuming when the object it finds
                    // is another one, and reports the dropped connection:
                    // say which of the two happened.
                    let at = range.start + buf.len() as u64;
                    let now = look_up(self.store.as_ref(), &self.path, self.by_get)
                        .await
                        .ok()
                        .and_then(|m| m.e_tag);
                    return Err(match now {
                        Some(now) if Some(&now) != self.e_tag.as_ref() => self.changed(&now),
                        _ => format!("at byte {at}: {e}"),
                    });
                }
            }
        }
        if buf.len() as u64 != len {
            return Err(format!(
                "the answer for bytes {}..{} held {} bytes",
                range.start,
                range.end,
                buf.len()
            ));
        }
        Ok(buf.freeze())
    }
}

/// The object's length, ETag and version: from a HEAD, or `by_get` from a
/// GET of its first byte (a presigned URL is signed for GET alone; the
/// answer's Content-Range gives the whole length).
async fn look_up(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    by_get: bool,
) -> object_store::Result<ObjectMeta> {
    if !by_get {
        return store.head(path).await;
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(0..1)),
        ..GetOptions::default()
    };
    Ok(store.get_opts(path, opts).await?.meta)
}

impl Pinned {
    fn changed(&self, now: &str) -> String {
        format!(
            "the object changed during the read (it was ETag {}, now {now}): build again from \
             the new object",
            self.e_tag.as_deref().unwrap_or("unknown"),
        )
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some(e) = &self.failed {
                return Err(io::Error::other(e.clone()));
            }
            match self.ranges.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => self.failed = Some(e),
                // Every range was handed on: the end.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
