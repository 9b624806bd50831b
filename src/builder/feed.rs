//! Where a feed comes from, and how it is decoded: a file, standard input,
//! an upload, or an object in a store by URL; plain, gzip or zstd.
//!
//! An object is read through the store's ranged reader
//! ([`ObjectReader`]), so a 77 GB feed in a bucket needs no local copy.
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

use crate::error::{Error, Result};
use crate::store::ranged::ObjectReader;
use crate::store::remote;

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
                bytes: reader.len,
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
        crate::sys::widen_pipe(input, 1 << 20);
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
            let (from, len) = (self.dropped, self.read - self.dropped);
            crate::sys::fadvise(&self.file, from, len, crate::sys::Advice::DontNeed);
            self.dropped = self.read;
        }
        Ok(n)
    }
}
