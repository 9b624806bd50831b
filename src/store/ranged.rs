//! One object in a store, read in ranges: the one reader of a feed read
//! from a bucket ([`ObjectReader`], front to back) and of a generation
//! fetched into a data directory ([`PinnedObject::read_range`], ranges
//! written where they belong).
//!
//! Partners drop feeds into buckets, and a 77 GB feed should not need a
//! local copy before it is built; replicas fetch generations of tens of
//! GB. Both read consecutive ranges with several in flight, and one policy
//! holds for both:
//!
//! - The object is pinned when it is looked up: its ETag (and version,
//!   where the store keeps versions) is checked in every answer, so an
//!   object replaced during the read fails it instead of being stitched
//!   from two objects.
//! - An answer whose connection drops is asked for again from the byte
//!   where it stopped, by the store client, a bounded number of times
//!   ([`remote::RETRIES`]); then the read fails with the byte it reached.
//! - A server that does not take ranges (an HTTP server that ignores
//!   `Range`, or a partner's export generated on the fly with no length)
//!   is read as one streaming GET instead, and the log says so. Such a
//!   stream cannot resume: if it drops, the read fails and says why.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::store::remote::{self, Remote};

/// An object of a store, pinned at its look-up.
#[derive(Clone)]
pub struct PinnedObject {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    e_tag: Option<String>,
    version: Option<String>,
    /// Looked up with a GET rather than a HEAD: a presigned URL.
    by_get: bool,
    /// The object's length.
    pub len: u64,
}

/// Why a range was not read.
#[derive(Debug)]
pub enum RangeError<E> {
    /// The server answered a range request with the whole object (it does
    /// not take ranges).
    NotTaken,
    /// The store failed, or the object changed: the message says which.
    Store(String),
    /// What was done with the bytes failed.
    Sink(E),
}

impl PinnedObject {
    /// Looks up `path` in `store` (with a HEAD, or `by_get` with a GET of
    /// its first byte: a presigned URL is signed for GET alone) and pins
    /// it as it is now.
    pub async fn look_up(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        by_get: bool,
    ) -> object_store::Result<PinnedObject> {
        let meta = look_up(store.as_ref(), &path, by_get).await?;
        Ok(PinnedObject {
            store,
            path,
            e_tag: meta.e_tag,
            version: meta.version,
            by_get,
            len: meta.size,
        })
    }

    /// Object `name` of the store `remote`, pinned for a read, or `None`
    /// if there is no such object.
    pub async fn in_store(remote: &Remote, name: &str) -> Result<Option<PinnedObject>> {
        match PinnedObject::look_up(remote.client(), ObjectPath::from(name), false).await {
            Ok(object) => Ok(Some(object)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote.error("looking up a generation object")(e)),
        }
    }

    /// Reads bytes `range` of the object, handing each chunk to `sink` as
    /// it arrives, with the policy of the module's documentation.
    pub async fn read_range<E, F, Fut>(
        &self,
        range: Range<u64>,
        mut sink: F,
    ) -> std::result::Result<(), RangeError<E>>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
    {
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
                return Err(RangeError::Store(
                    "the object was deleted during the read".into(),
                ))
            }
            Err(object_store::Error::NotSupported { .. }) => return Err(RangeError::NotTaken),
            Err(e) => return Err(RangeError::Store(format!("at byte {}: {e}", range.start))),
        };
        if let Some(now) = got
            .meta
            .e_tag
            .as_deref()
            .filter(|&t| Some(t) != self.e_tag.as_deref())
        {
            return Err(RangeError::Store(self.changed(now)));
        }
        let mut at = range.start;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    if at + chunk.len() as u64 > range.end {
                        return Err(RangeError::Store(format!(
                            "more bytes than the range {range:?} asked for"
                        )));
                    }
                    at += chunk.len() as u64;
                    sink(chunk).await.map_err(RangeError::Sink)?;
                }
                // The client gives up resuming when the object it finds is
                // another one, and reports the dropped connection: say
                // which of the two happened.
                Err(e) => return Err(RangeError::Store(self.dropped(at, e).await)),
            }
        }
        if at != range.end {
            return Err(RangeError::Store(format!(
                "the answer for bytes {}..{} held {} bytes",
                range.start,
                range.end,
                at - range.start
            )));
        }
        Ok(())
    }

    /// Bytes `range`, whole.
    async fn fetch(&self, range: Range<u64>) -> std::result::Result<Bytes, RangeError<Infallible>> {
        let mut buf = BytesMut::with_capacity((range.end - range.start) as usize);
        self.read_range(range, |chunk| {
            buf.extend_from_slice(&chunk);
            std::future::ready(Ok::<(), Infallible>(()))
        })
        .await?;
        Ok(buf.freeze())
    }

    /// Why an answer stopped at byte `at` with `e`: the object changed, or
    /// the connection dropped.
    async fn dropped(&self, at: u64, e: object_store::Error) -> String {
        let now = look_up(self.store.as_ref(), &self.path, self.by_get)
            .await
            .ok()
            .and_then(|m| m.e_tag);
        match now {
            Some(now) if Some(&now) != self.e_tag.as_ref() => self.changed(&now),
            _ => format!("at byte {at}: {e}"),
        }
    }

    fn changed(&self, now: &str) -> String {
        format!(
            "the object changed during the read (it was ETag {}, now {now}): read again from \
             the new object",
            self.e_tag.as_deref().unwrap_or("unknown"),
        )
    }
}

/// The object's length, ETag and version: from a HEAD, or `by_get` from a
/// GET of its first byte (the answer's Content-Range gives the whole
/// length).
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

/// An object in a store, read front to back as ranges fetched ahead on a
/// thread of its own, or as one stream where the server takes no ranges.
pub struct ObjectReader {
    /// The object's length, where the server says it.
    pub len: Option<u64>,
    /// Ranges in order; an error is the last item.
    ranges: tokio::sync::mpsc::Receiver<std::result::Result<Bytes, String>>,
    current: Bytes,
    /// The error that ended the read, returned by every later read too: a
    /// failed read must never look like the end of the feed.
    failed: Option<String>,
    /// The fetching thread; it ends when the receiver is dropped.
    _thread: std::thread::JoinHandle<()>,
}

type Ranges = tokio::sync::mpsc::Sender<std::result::Result<Bytes, String>>;

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
        let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
        // The object is looked up on the thread that reads it, on its one
        // runtime: the store client's pooled connections belong to the
        // runtime that opened them.
        let (looked_up, lookup) = std::sync::mpsc::channel();
        let (url_owned, hide_thread) = (url.to_string(), hide.clone());
        let thread = std::thread::Builder::new()
            .name("promo-feed".into())
            .spawn(move || {
                let sender = tx.clone();
                let read = remote::block_on(async move {
                    let reading = Reading {
                        url: url_owned,
                        range,
                        in_flight,
                        tx: sender,
                        hide: Box::new(hide_thread),
                    };
                    reading.run(store, path, by_get, looked_up).await
                });
                if let Err(e) = read {
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

/// The reading thread's side of an [`ObjectReader`].
struct Reading {
    url: String,
    range: u64,
    in_flight: usize,
    tx: Ranges,
    hide: Box<dyn Fn(String) -> String + Send>,
}

impl Reading {
    /// Looks the object up, says its length on `looked_up`, then reads it.
    async fn run(
        self,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        by_get: bool,
        looked_up: std::sync::mpsc::Sender<std::result::Result<Option<u64>, String>>,
    ) {
        let object = match PinnedObject::look_up(store, path, by_get).await {
            Ok(object) => object,
            // A server that answers no HEAD (object_store takes its 405 for
            // a 404), or gives no length: one GET, if it answers that.
            Err(e) if self.streamable() && no_head(&e) => {
                tracing::debug!("looking up {}: {e}", remote::redact_url(&self.url));
                match self.get_whole().await {
                    Ok(answer) => {
                        let _ = looked_up.send(Ok(answer.content_length()));
                        return self.stream(answer).await;
                    }
                    Err(why) => {
                        let _ = looked_up.send(Err(why));
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = looked_up.send(Err(e.to_string()));
                return;
            }
        };
        let len = object.len;
        let _ = looked_up.send(Ok(Some(len)));
        // The first range alone: its answer says whether ranges are taken.
        let first = 0..self.range.min(len);
        match object.fetch(first.clone()).await {
            Err(RangeError::NotTaken) if self.streamable() => {
                return match self.get_whole().await {
                    Ok(answer) => self.stream(answer).await,
                    Err(why) => drop(self.tx.send(Err((self.hide)(why))).await),
                };
            }
            got => {
                let failed = got.is_err();
                if self.tx.send(got.map_err(|e| self.say(e))).await.is_err() || failed {
                    return;
                }
            }
        }
        let ranges = (first.end..len)
            .step_by(self.range as usize)
            .map(|s| s..(s + self.range).min(len));
        // Each range is a task of its own, so that the requests behind the
        // one being handed on keep receiving.
        let mut ahead = futures_util::stream::iter(ranges)
            .map(|r| {
                let object = object.clone();
                tokio::spawn(async move { object.fetch(r).await })
            })
            .buffered(self.in_flight);
        while let Some(got) = ahead.next().await {
            let got = match got {
                Ok(got) => got.map_err(|e| self.say(e)),
                Err(e) => Err(format!("a range's fetch stopped: {e}")),
            };
            let failed = got.is_err();
            // The reader is gone (the build failed elsewhere), or this range
            // failed: nothing more to fetch.
            if self.tx.send(got).await.is_err() || failed {
                break;
            }
        }
    }

    /// Whether the object can be read with one plain GET: an HTTP URL.
    fn streamable(&self) -> bool {
        self.url.starts_with("http://") || self.url.starts_with("https://")
    }

    fn say(&self, e: RangeError<Infallible>) -> String {
        (self.hide)(match e {
            RangeError::NotTaken => "the server does not take ranges".into(),
            RangeError::Store(why) => why,
            RangeError::Sink(never) => match never {},
        })
    }

    /// The object as one plain GET, whose body is still to be read.
    async fn get_whole(&self) -> std::result::Result<reqwest::Response, String> {
        let answer = reqwest::Client::new()
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| (self.hide)(e.to_string()))?;
        tracing::warn!(
            "{}: the server does not take range requests: reading it as one stream, which \
             cannot resume if the connection drops",
            remote::redact_url(&self.url)
        );
        Ok(answer)
    }

    /// Hands on the body of `answer` chunk by chunk, to its length if the
    /// server said it.
    async fn stream(self, mut answer: reqwest::Response) {
        let len = answer.content_length();
        let failed = |why: String| Err((self.hide)(why));
        let mut at = 0u64;
        loop {
            let item = match answer.chunk().await {
                Ok(Some(chunk)) => {
                    at += chunk.len() as u64;
                    Ok(chunk)
                }
                Ok(None) => match len {
                    Some(len) if at != len => {
                        failed(format!("the stream ended at byte {at} of {len}"))
                    }
                    _ => return,
                },
                Err(e) => failed(format!(
                    "the stream dropped at byte {at} ({e}); the server does not take range \
                     requests, so the read cannot resume where it stopped: read it again"
                )),
            };
            let stop = item.is_err();
            if self.tx.send(item).await.is_err() || stop {
                return;
            }
        }
    }
}

/// Whether a failed look-up means the server answers no HEAD or gives no
/// length, rather than that the object is missing or forbidden. The store
/// client's header errors are not public: their message is what tells.
fn no_head(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) || e.to_string().contains("Header missing")
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
