//! Where a feed comes from, and how it is decoded: a file, standard input,
//! an upload, or an object in a store by URL; plain, gzip or zstd.
//!
//! Partners drop feeds into buckets, and a 77 GB feed should not need a
//! local copy before it is built. An object is read through `object_store`
//! as consecutive ranges, several in flight and handed on in order
//! ([`ObjectReader`]); the object's ETag (and version, where the store
//! keeps versions) is pinned when it is looked up and checked in every
//! answer, so a feed replaced during the read fails the build instead of
//! being stitched from two files. A range whose connection drops is asked for again from the byte
//! where it stopped, a bounded number of times.
//!
//! Compression is recognized by content, not by name, whatever the feed
//! came through ([`decode`]): gzip (several members, as `pigz` and
//! concatenated files write them) and zstd (several frames). The decoder
//! runs on the thread that reads chunks, while the rows of the chunks
//! before are parsed on the others, so decoding overlaps parsing. A
//! corrupt stream fails the build with the compressed byte where it was
//! found.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::generation::remote;

/// Where the CSV comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
    /// An object: `s3://`, `gs://`, `az://`, `file://`, `http(s)://`.
    Url(String),
}

impl Input {
    /// `-` is standard input, `scheme://...` a URL, anything else a path.
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else if arg.contains("://") {
            Input::Url(arg.to_string())
        } else {
            Input::File(PathBuf::from(arg))
        }
    }

    /// How messages name it: a URL without its query, which may hold a
    /// signature (see [`remote::redact_url`]).
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".to_string(),
            Input::File(p) => p.display().to_string(),
            Input::Url(u) => remote::redact_url(u),
        }
    }
}

/// An opened feed, not yet decoded: its bytes and their count, if known.
pub struct Feed {
    pub reader: Box<dyn Read + Send>,
    pub bytes: Option<u64>,
}

/// Opens `input`. An object is looked up (its length and ETag) before this
/// returns, so a missing one fails before anything else is done.
pub fn open(input: &Input) -> Result<Feed> {
    Ok(match input {
        Input::Stdin => {
            widen_pipe(&io::stdin());
            Feed {
                reader: Box::new(io::stdin()),
                bytes: None,
            }
        }
        Input::File(p) => {
            let f = File::open(p).map_err(Error::io(p))?;
            let meta = f.metadata().map_err(Error::io(p))?;
            // A directory opens; only its first read would fail.
            if meta.is_dir() {
                return Err(Error::io(p)(io::Error::from_raw_os_error(libc::EISDIR)));
            }
            Feed {
                reader: Box::new(DropBehind::new(f)),
                bytes: Some(meta.len()),
            }
        }
        Input::Url(url) => {
            let reader = ObjectReader::open(url, ObjectReader::RANGE, ObjectReader::IN_FLIGHT)?;
            Feed {
                bytes: Some(reader.len),
                reader: Box::new(reader),
            }
        }
    })
}

/// A compression format promo reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The format whose magic number `head` starts with, if any.
    fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// `reader`'s CSV: decompressed if it starts like gzip or zstd, else as it
/// is. Also says which compression it found.
pub fn decode(
    reader: impl Read + Send + 'static,
) -> io::Result<(Box<dyn Read + Send>, Option<Compression>)> {
    // The magic numbers are 4 bytes at most, and a first read (an upload's
    // first chunk, a pipe) may bring fewer: read until there are 4 or the
    // end, then hand them on in front of the rest.
    let mut reader = reader;
    let mut head = Vec::with_capacity(4);
    (&mut reader).take(4).read_to_end(&mut head)?;
    let compression = Compression::sniff(&head);
    let whole = io::Cursor::new(head).chain(reader);
    let Some(compression) = compression else {
        return Ok((Box::new(whole), None));
    };
    let buffered = BufReader::with_capacity(1 << 20, whole);
    let consumed = Arc::new(AtomicU64::new(0));
    let source_failed = Arc::new(AtomicBool::new(false));
    let counted = Counted {
        inner: buffered,
        consumed: consumed.clone(),
        failed: source_failed.clone(),
    };
    let decoder: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(counted)?),
    };
    Ok((
        Box::new(Decoding {
            decoder,
            compression,
            consumed,
            source_failed,
        }),
        Some(compression),
    ))
}

/// A buffered reader that counts the bytes its consumer used up (where in
/// the compressed stream the decoder is) and notes when it failed itself.
struct Counted<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .inspect_err(|_| self.failed.store(true, Ordering::Relaxed))?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let failed = &self.failed;
        self.inner
            .fill_buf()
            .inspect_err(|_| failed.store(true, Ordering::Relaxed))
    }

    fn consume(&mut self, n: usize) {
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.consume(n);
    }
}

/// A decoder whose errors say the format and the compressed byte where
/// they were found.
struct Decoding {
    decoder: Box<dyn Read + Send>,
    compression: Compression,
    consumed: Arc<AtomicU64>,
    /// Whether the error came from the compressed bytes' source.
    source_failed: Arc<AtomicBool>,
}

impl Read for Decoding {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).map_err(|e| {
            let at = self.consumed.load(Ordering::Relaxed);
            // The source's own errors (a dropped download) pass as they are.
            if !self.source_failed.load(Ordering::Relaxed) {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt {} stream near compressed byte {at}: {e}",
                        self.compression.name()
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// Asks for a 1 MiB pipe buffer when `input` is a pipe (`zcat feed.gz |
/// promo build -`): with the default 64 KiB, a billion-row feed is some
/// million reads and as many wake-ups of the writer. Only a hint: an
/// unprivileged process may be refused more than the system's maximum.
fn widen_pipe(input: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: F_SETPIPE_SZ only reads its arguments; on anything but a
        // pipe it fails with EBADF and changes nothing.
        let rc = unsafe { libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        if rc < 0 {
            tracing::debug!("F_SETPIPE_SZ: {}", io::Error::last_os_error());
        }
    }
}

/// Reads a file once, telling the kernel to drop what was read from the
/// page cache: a feed is read once, and caching it would push out the sorted
/// runs the merge is about to read back, and the generation servers map.
struct DropBehind {
    file: File,
    read: u64,
    dropped: u64,
}

impl DropBehind {
    const STEP: u64 = 64 << 20;

    fn new(file: File) -> DropBehind {
        DropBehind {
            file,
            read: 0,
            dropped: 0,
        }
    }
}

impl Read for DropBehind {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read - self.dropped >= Self::STEP {
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                // SAFETY: posix_fadvise only reads its arguments, and the
                // descriptor is open for as long as `self.file` lives. It is
                // advice: failure changes nothing but the page cache.
                unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        self.dropped as libc::off_t,
                        (self.read - self.dropped) as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
            }
            self.dropped = self.read;
        }
        Ok(n)
    }
}

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
