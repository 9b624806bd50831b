//! Writing a large file once, past the page cache.
//!
//! A build writes every byte of a generation once (and, when it spills,
//! every record once more as a sorted run, read back once, in order).
//! Written through the page cache, each byte is first copied into a freshly
//! allocated page: building 10^8 rows in 1 GiB, those copies took 28% of
//! the build's CPU time, the most of anything but parsing. Written with
//! O_DIRECT, a block goes from an aligned buffer to the disk: the disk's
//! time, not the CPU's, and the callers gather their next block meanwhile.
//!
//! The price: a new generation is not in the page cache. The next build's
//! comparison reads it from the disk (0.21 s against 0.05 s for 10M rows),
//! and so does the server's verification. Tried the other way (through the
//! page cache unless too large for it), the same 10M builds finished their
//! comparison at 1.60-2.24 s against 1.50-1.56 s: on this disk, buffered
//! writes with their fsync ran at 0.3 GB/s, direct ones at 1.5-2.0 GB/s.
//!
//! O_DIRECT asks for aligned buffers, offsets and lengths, so a
//! [`DirectWriter`] fills an aligned block and writes it whole; what is left
//! at the end (less than a block), and any write after it, goes through
//! the page cache. Where the file system refuses O_DIRECT (tmpfs before
//! Linux 6.6, some network file systems), everything does, with writeback
//! started early so that the final fsync has little left to do.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

/// The alignment O_DIRECT asks of buffers, offsets and lengths: the
/// largest logical block size of common disks.
const ALIGN: usize = 4096;

/// Bytes written at a time. On the machine of BENCHMARKS.md, synchronous
/// direct writes ran at 1.5 GB/s in 1 MiB blocks and 2.0 GB/s in 4 MiB
/// ones; through the page cache, with a final fsync, 0.3 GB/s.
const BLOCK_LEN: usize = 4 << 20;

/// Bytes between two early writeback requests, when writing through the
/// page cache.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Writes a new file front to back in aligned blocks, with O_DIRECT where
/// the file system takes it, on a thread of its own: the caller fills the
/// next block while the last one is written, so a direct write's wait for
/// the disk overlaps the caller's work.
pub struct DirectWriter {
    /// The block being filled.
    block: Aligned,
    /// Full blocks to the writing thread, and empty ones back.
    full: Option<SyncSender<Aligned>>,
    empty: Receiver<Aligned>,
    /// Blocks allocated so far (at most [`BLOCKS`]).
    blocks: usize,
    thread: Option<JoinHandle<io::Result<File>>>,
    direct: bool,
}

/// Blocks in memory at once: one filled while the others are written.
const BLOCKS: usize = 3;

impl DirectWriter {
    /// Writes `file` (new and empty, or positioned at a multiple of
    /// [`ALIGN`]) from its current position on.
    pub fn new(file: File) -> io::Result<DirectWriter> {
        DirectWriter::with(file, true)
    }

    /// Writes `file` as [`DirectWriter::new`] does, but through the page
    /// cache whatever the file system (tests cover both ways with it).
    pub fn through_page_cache(file: File) -> io::Result<DirectWriter> {
        DirectWriter::with(file, false)
    }

    fn with(file: File, direct: bool) -> io::Result<DirectWriter> {
        let direct = direct && crate::sys::set_direct(&file, true);
        let (full, blocks) = std::sync::mpsc::sync_channel::<Aligned>(BLOCKS);
        let (done, empty) = std::sync::mpsc::channel();
        let mut sink = Sink {
            file,
            direct,
            written: 0,
            flushed: 0,
        };
        let thread = std::thread::Builder::new()
            .name("promo-write".into())
            .spawn(move || {
                for mut block in blocks {
                    sink.write(&block)?;
                    block.len = 0;
                    // The writer may be gone (it failed): the block is freed.
                    let _ = done.send(block);
                }
                Ok(sink.file)
            })?;
        Ok(DirectWriter {
            block: Aligned::new(BLOCK_LEN)?,
            full: Some(full),
            empty,
            blocks: 1,
            thread: Some(thread),
            direct,
        })
    }

    /// Whether blocks go past the page cache (as the writer started).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `bytes`.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            bytes = &bytes[self.block.fill(bytes)..];
            if self.block.is_full() {
                self.send_block()?;
            }
        }
        Ok(())
    }

    /// Hands the full block to the writing thread and takes an empty one.
    fn send_block(&mut self) -> io::Result<()> {
        let next = match self.empty.try_recv() {
            Ok(block) => block,
            Err(_) if self.blocks < BLOCKS => {
                self.blocks += 1;
                Aligned::new(BLOCK_LEN)?
            }
            Err(_) => match self.empty.recv() {
                Ok(block) => block,
                Err(_) => return Err(self.stop().err().unwrap_or_else(gone)),
            },
        };
        let full = std::mem::replace(&mut self.block, next);
        let sent = self.full.as_ref().map(|f| f.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stop().err().unwrap_or_else(gone)),
        }
    }

    /// Waits for the writing thread to write every block sent; the file,
    /// or the first write's error.
    fn stop(&mut self) -> io::Result<File> {
        self.full = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the writing thread panicked")),
            None => Err(gone()),
        }
    }

    /// Writes what is left through the page cache and hands the file back,
    /// with O_DIRECT off again: reads and small writes need no alignment.
    pub fn into_file(mut self) -> io::Result<File> {
        let mut file = self.stop()?;
        if !crate::sys::set_direct(&file, false) {
            return Err(io::Error::last_os_error());
        }
        file.write_all(&self.block.map[..self.block.len])?;
        Ok(file)
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // A writer dropped on an error path lets its thread finish.
        let _ = self.stop();
    }
}

fn gone() -> io::Error {
    io::Error::other("the writing thread stopped")
}

/// The writing thread's end: the file, and what was written to it.
struct Sink {
    file: File,
    direct: bool,
    /// Bytes written so far, and how many of them writeback was started
    /// for (through the page cache only).
    written: u64,
    flushed: u64,
}

impl Sink {
    /// Writes a full block. Should the file refuse a direct write after
    /// all (EINVAL), this and every later block go through the page cache.
    fn write(&mut self, block: &Aligned) -> io::Result<()> {
        let block = &block.map[..block.len];
        match self.file.write_all(block) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("O_DIRECT refused: {e}");
                self.direct = false;
                if !crate::sys::set_direct(&self.file, false) {
                    return Err(io::Error::last_os_error());
                }
                self.file.write_all(block)?;
            }
            other => other?,
        }
        self.written += block.len() as u64;
        if !self.direct && self.written - self.flushed >= WRITEBACK_STEP {
            crate::sys::start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }
}

/// Page-aligned memory of a fixed capacity, of which `len` bytes are used.
struct Aligned {
    map: memmap2::MmapMut,
    len: usize,
}

impl Aligned {
    fn new(capacity: usize) -> io::Result<Aligned> {
        let map = memmap2::MmapOptions::new()
            .len(capacity.next_multiple_of(ALIGN))
            .map_anon()?;
        Ok(Aligned { map, len: 0 })
    }

    /// Appends what fits of `bytes`; returns how much did.
    fn fill(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.map.len() - self.len);
        self.map[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == self.map.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// Whether this file system takes O_DIRECT, asked without the writer.
    fn takes_direct(dir: &std::path::Path) -> bool {
        let probe = tempfile::tempfile_in(dir).unwrap();
        let mut block = Aligned::new(ALIGN).unwrap();
        block.fill(&[1; ALIGN]);
        crate::sys::set_direct(&probe, true) && (&probe).write_all(&block.map).is_ok()
    }

    pub(crate) fn flags(file: &File) -> i32 {
        crate::sys::file_flags(file).expect("F_GETFL")
    }

    #[test]
    fn what_is_written_reads_back_whatever_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let direct = takes_direct(dir.path());
        // Pieces that straddle blocks, one larger than a block, and a tail.
        let bytes: Vec<u8> = (0..2 * BLOCK_LEN + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let pieces = [
            vec![bytes.len()],
            vec![1, 4095, 4096, BLOCK_LEN + 3, 100, 77],
        ];
        for (pieces, past_the_cache) in pieces.iter().flat_map(|p| [(p, true), (p, false)]) {
            let file = tempfile::tempfile_in(dir.path()).unwrap();
            let mut w = match past_the_cache {
                true => DirectWriter::new(file).unwrap(),
                false => DirectWriter::through_page_cache(file).unwrap(),
            };
            assert_eq!(w.is_direct(), direct && past_the_cache);
            let mut at = 0usize;
            for n in pieces.iter().copied().chain([usize::MAX]) {
                let end = at.saturating_add(n).min(bytes.len());
                w.write(&bytes[at..end]).unwrap();
                at = end;
            }
            let mut file = w.into_file().unwrap();
            assert_eq!(flags(&file) & libc::O_DIRECT, 0, "O_DIRECT is off again");
            // Unaligned writes after it go through the page cache.
            file.write_all(b"tail").unwrap();
            let mut back = Vec::new();
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(0)).unwrap();
            file.read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), bytes.len() + 4);
            assert!(back[..bytes.len()] == bytes[..] && back.ends_with(b"tail"));
        }
    }
}
