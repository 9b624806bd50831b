//! External sort of records by key, with "the later row wins" for duplicates.
//!
//! promo sorts its fixed-width records itself rather than with the extsort
//! crate: extsort 0.5 silently drops every item when, after a spill, the
//! item count is a multiple of `segment_size + 1`, counts its buffer in
//! items rather than bytes, and would need a serialiser for what is already
//! a fixed 32-byte record.
//!
//! Records are buffered in arrival order up to a byte budget. Beside them,
//! one 16-byte sort entry per record holds the key's top 64 bits and the
//! record's index; sorting those entries (a parallel radix sort) moves a
//! quarter of the bytes that sorting the records would, and equal entries
//! fall in arrival order because the index is the tie-breaker. UUIDs that
//! share their top 64 bits (duplicates, almost always) are then ordered by
//! their whole key. The sorted, deduplicated buffer is either handed out
//! directly or spilled as a run to an unnamed temporary file (gone even if
//! the process is killed), written past the page cache (O_DIRECT) where
//! the file system allows; the last buffer of a sort that spilled stays in
//! memory as the newest run. Runs are merged key range by key range, ranges in
//! parallel, each with a heap (past 64 runs, groups of runs are first merged
//! into bigger ones).
//!
//! Duplicates resolve by input order whatever the sort does: inside a
//! buffer the highest index wins, across runs the latest run wins.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use voracious_radix_sort::RadixSort;

use crate::error::{Error, Result};
use crate::generation::direct::DirectWriter;
use crate::generation::record::{key_of, prefetch, Record, RECORD_LEN};

/// Bytes of memory one buffered record costs: the record and its sort entry.
pub const ITEM_LEN: usize = RECORD_LEN + 16;

/// Collects records and hands them back sorted by key, one per key.
pub struct Sorter {
    /// Buffered records, in arrival order.
    records: RecordBuf,
    /// One entry per buffered record: `key >> 64 << 64 | index`.
    order: Vec<u128>,
    /// Records the buffer may hold before it spills.
    capacity: usize,
    /// Spilled runs, oldest first: a later run's record wins a tie.
    runs: Vec<Run>,
    tmp_dir: PathBuf,
    /// Most runs merged at once; more are first merged in groups.
    max_fan_in: usize,
    /// Records of all runs together in one range of the final merge.
    range_records: usize,
    duplicates: u64,
    spilled: usize,
    /// Bytes of a run freed at once, at least, as the merge reads it.
    free_step: u64,
    /// Bytes read from a run at a time in the merge.
    read_len: usize,
    /// Whether runs are written with O_DIRECT where the file system takes
    /// it (see [`RunWriter`]).
    direct: bool,
}

/// What a finished sort saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SortStats {
    /// Records handed out: one per distinct key.
    pub unique: u64,
    /// Records dropped because a later row had the same key.
    pub duplicates: u64,
    /// Sorted runs spilled to disk (0 when everything fit in memory).
    pub runs: usize,
}

impl Sorter {
    /// A sorter that keeps about `memory_limit` bytes of records in memory
    /// and spills runs to unnamed temporary files in `tmp_dir`.
    pub fn new(memory_limit: usize, tmp_dir: &Path) -> Result<Sorter> {
        let capacity = (memory_limit / ITEM_LEN).clamp(2, u32::MAX as usize);
        let records = RecordBuf::new(capacity).map_err(|e| {
            Error::Usage(format!(
                "cannot reserve {memory_limit} bytes of memory for sorting: {e}"
            ))
        })?;
        Ok(Sorter {
            // Reserved, not touched: memory is only resident once written.
            records,
            order: Vec::with_capacity(capacity),
            capacity,
            runs: Vec::new(),
            tmp_dir: tmp_dir.to_path_buf(),
            max_fan_in: 64,
            range_records: 4 * BLOCK_RECORDS,
            duplicates: 0,
            spilled: 0,
            free_step: FREE_STEP,
            read_len: READ_LEN,
            direct: true,
        })
    }

    /// Sets the most runs merged at once (at least 2).
    pub fn with_max_fan_in(mut self, n: usize) -> Sorter {
        self.max_fan_in = n.max(2);
        self
    }

    /// Sets how many records (of all runs together) one range of the final
    /// merge holds, at least one per run.
    pub fn with_range_records(mut self, n: usize) -> Sorter {
        self.range_records = n.max(1);
        self
    }

    /// Sets how many bytes of a run are freed at once as the merge reads it.
    pub fn with_free_step(mut self, bytes: u64) -> Sorter {
        self.free_step = bytes.max(1);
        self
    }

    /// Sets how many records the merge reads from a run at a time.
    pub fn with_read_records(mut self, n: usize) -> Sorter {
        self.read_len = n.max(1) * RECORD_LEN;
        self
    }

    /// Writes runs through the page cache even where O_DIRECT would work
    /// (tests cover both ways with it).
    pub fn with_page_cache(mut self) -> Sorter {
        self.direct = false;
        self
    }

    /// Adds a record; among records with the same key, the one pushed last wins.
    #[inline]
    pub fn push(&mut self, record: Record) -> Result<()> {
        if self.records.len() == self.capacity {
            self.spill()?;
        }
        let index = self.records.len() as u128;
        self.order.push((record.key() >> 64 << 64) | index);
        self.records.push(record);
        Ok(())
    }

    /// Sorts the buffer: afterwards `order[..n]` holds, in key order, the
    /// index of each key's winning record, and `n` is returned.
    fn sort_buffer(&mut self) -> usize {
        // An in-place MSD radix sort: the keys are uniform 128-bit ids, on
        // which a few byte-wide passes beat comparison sorting.
        self.order.voracious_mt_sort(rayon::current_num_threads());
        let (records, order) = (self.records.as_slice(), &mut self.order);
        let mut kept = 0;
        let mut i = 0;
        let mut group: Vec<(u128, u32)> = Vec::new();
        while i < order.len() {
            let prefix = order[i] >> 64;
            let mut j = i + 1;
            while j < order.len() && order[j] >> 64 == prefix {
                j += 1;
            }
            if j == i + 1 {
                order[kept] = order[i] & u128::from(u32::MAX);
                kept += 1;
            } else {
                // Same top 64 bits: order by whole key, then by arrival, and
                // keep the last arrival of each key.
                group.clear();
                group.extend(order[i..j].iter().map(|&e| {
                    let index = (e & u128::from(u32::MAX)) as u32;
                    (records[index as usize].key(), index)
                }));
                group.sort_unstable();
                for (g, &(key, index)) in group.iter().enumerate() {
                    if group.get(g + 1).is_some_and(|next| next.0 == key) {
                        self.duplicates += 1;
                    } else {
                        order[kept] = u128::from(index);
                        kept += 1;
                    }
                }
            }
            i = j;
        }
        kept
    }

    /// Hands the buffer's winning records to `sink` in key order, in blocks
    /// of whole records, and empties the buffer.
    ///
    /// The records are scattered in the buffer, so gathering them is a
    /// random read each: blocks are gathered in parallel, the next batch
    /// while `sink` writes the last one.
    fn drain_sorted(&mut self, sink: &mut (impl FnMut(&[u8]) -> Result<()> + Send)) -> Result<u64> {
        let started = std::time::Instant::now();
        let kept = self.sort_buffer();
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            records = kept,
            "sorted a buffer"
        );
        let winners = &self.order[..kept];
        let records = self.records.as_slice();
        let gather = |batch: &[u128]| -> Vec<Vec<u8>> {
            batch
                .par_chunks(BLOCK_RECORDS)
                .map(|indices| gather(records, indices))
                .collect()
        };
        let mut batches = winners.chunks(BLOCK_RECORDS * 2 * rayon::current_num_threads());
        let mut current = batches.next().map(gather);
        while let Some(blocks) = current {
            let (next, written) = rayon::join(
                || batches.next().map(gather),
                || blocks.iter().try_for_each(|b| sink(b)),
            );
            written?;
            current = next;
        }
        self.records.clear();
        self.order.clear();
        Ok(kept as u64)
    }

    fn spill(&mut self) -> Result<()> {
        let mut run = self.new_run()?;
        self.drain_sorted(&mut |block: &[u8]| run.write(block))?;
        self.runs.push(run.finish()?);
        self.spilled += 1;
        Ok(())
    }

    fn new_run(&self) -> Result<RunWriter> {
        let file = tempfile::tempfile_in(&self.tmp_dir)
            .map_err(Error::io_op("creating a sorted run", &self.tmp_dir))?;
        let out = match self.direct {
            true => DirectWriter::new(file),
            false => DirectWriter::through_page_cache(file),
        }
        .map_err(Error::io(&self.tmp_dir))?;
        Ok(RunWriter {
            out,
            records: 0,
            samples: Vec::new(),
            every: self.sample_every(),
            tmp_dir: self.tmp_dir.clone(),
        })
    }

    /// Sorts the buffer and keeps it, as the newest run of the final merge:
    /// spilled, its records would be written only to be read back, on the
    /// disk that the merge's reads and the generation's writes share. The
    /// sort entries' memory, all but the winners' indices, is given back.
    fn keep_resident(&mut self) -> Result<Resident> {
        let kept = self.sort_buffer();
        let records = std::mem::replace(
            &mut self.records,
            RecordBuf::new(0).map_err(Error::io(&self.tmp_dir))?,
        );
        let winners = Winners::pack(std::mem::take(&mut self.order), kept);
        let every = self.sample_every() as usize;
        let samples = winners.as_slice()[every.min(kept + 1) - 1..]
            .iter()
            .step_by(every)
            .map(|&i| records.as_slice()[i as usize].key())
            .collect();
        Ok(Resident {
            records,
            winners,
            samples,
        })
    }

    /// Every how many records of a run a key is sampled: a sixteenth of a
    /// merge range, at most 4,096 (4 MiB of samples at 10^9 records).
    fn sample_every(&self) -> u64 {
        (self.range_records as u64 / 16).clamp(1, 4096)
    }

    /// Hands every distinct key's winning record to `sink`, in key order,
    /// in blocks of whole records.
    pub fn finish(mut self, mut sink: impl FnMut(&[u8]) -> Result<()> + Send) -> Result<SortStats> {
        if self.runs.is_empty() {
            let unique = self.drain_sorted(&mut sink)?;
            return Ok(SortStats {
                unique,
                duplicates: self.duplicates,
                runs: 0,
            });
        }
        let resident = self.keep_resident()?;
        let mut runs = std::mem::take(&mut self.runs);
        // Merge groups of neighbouring runs, keeping their order, until one
        // pass can merge them all and the resident buffer.
        while runs.len() + 1 > self.max_fan_in {
            let mut merged_runs = Vec::new();
            let mut rest = runs.into_iter().peekable();
            while rest.peek().is_some() {
                let group: Vec<Run> = rest.by_ref().take(self.max_fan_in).collect();
                let mut merged = self.new_run()?;
                self.merge_parallel(&group, None, &mut |block: &[u8]| merged.write(block))?;
                merged_runs.push(merged.finish()?);
            }
            runs = merged_runs;
        }
        let unique = self.merge_parallel(&runs, Some(&resident), &mut sink)?;
        Ok(SortStats {
            unique,
            duplicates: self.duplicates,
            runs: self.spilled,
        })
    }

    /// Merges sorted, duplicate-free runs (oldest first) into `sink`, key
    /// range by key range, ranges in parallel; of records with the same key,
    /// the one from the latest run wins. Returns the records handed out.
    ///
    /// The split points between ranges come from the keys every run
    /// sampled as it was written (see [`RunWriter`]), so finding them reads
    /// nothing. Each run is then read front to back in large reads, one
    /// range after the other, while the ranges read before are merged in
    /// parallel: the disk sees sequential reads, however many runs there
    /// are. The runs are never mapped, so they do not count in the
    /// process's memory.
    fn merge_parallel(
        &mut self,
        runs: &[Run],
        resident: Option<&Resident>,
        sink: &mut (impl FnMut(&[u8]) -> Result<()> + Send),
    ) -> Result<u64> {
        // Between two neighbouring samples of all runs together there are
        // at most `every` records of any one run, and on average `every`
        // records in all. So every `per_range`-th sample is a split: a range
        // then holds about `range_records` records, and at most
        // `per_range * every` of any one run whatever the keys.
        let mut all: Vec<u128> = runs
            .iter()
            .map(|r| &r.samples)
            .chain(resident.map(|r| &r.samples))
            .flat_map(|samples| samples.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        let per_range = (self.range_records as u64 / self.sample_every()).max(1) as usize;
        let bounds: Vec<Option<u128>> = all
            .into_iter()
            .skip(per_range - 1)
            .step_by(per_range)
            .map(Some)
            .chain([None])
            .collect();
        let mut readers: Vec<MergeInput> = runs
            .iter()
            .map(|run| {
                MergeInput::Run(RunReader::new(
                    run,
                    &self.tmp_dir,
                    self.free_step,
                    self.read_len,
                ))
            })
            .chain(resident.map(|r| MergeInput::Resident(r, 0)))
            .collect();
        // The parts of each range of `bounds`, run by run.
        let read = |readers: &mut Vec<MergeInput>, bounds: &[Option<u128>]| {
            bounds
                .iter()
                .map(|&bound| {
                    readers
                        .iter_mut()
                        .map(|r| r.take_below(bound))
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()
        };
        // Three stages at once, each a batch behind the one before: read
        // the runs' parts of a batch of ranges, merge the ranges read
        // before (in parallel), hand the ranges merged before to `sink`.
        // The reading and the writing share the disk; one after the other
        // (merge, then write, while the next batch is read) the merge of
        // 10^8 records in 5 runs took 5.25 s, this way 4.86 s (medians of
        // 3 alternating builds).
        let mut batches = bounds.chunks(2 * rayon::current_num_threads());
        let mut read_batch: Option<Vec<Vec<Vec<u8>>>> = None;
        let mut merged_batch: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut unique = 0;
        loop {
            let ((next, merged), written) = rayon::join(
                || {
                    rayon::join(
                        || batches.next().map(|b| read(&mut readers, b)).transpose(),
                        || match read_batch.take() {
                            Some(ranges) => ranges.par_iter().map(|p| merge_slices(p)).collect(),
                            None => Vec::new(),
                        },
                    )
                },
                || -> Result<()> {
                    for (block, duplicates) in merged_batch.drain(..) {
                        unique += (block.len() / RECORD_LEN) as u64;
                        self.duplicates += duplicates;
                        sink(&block)?;
                    }
                    Ok(())
                },
            );
            written?;
            read_batch = next?;
            if read_batch.is_none() && merged.is_empty() {
                break;
            }
            merged_batch = merged;
        }
        Ok(unique)
    }
}

/// A sorted run on disk, and the keys sampled as it was written.
struct Run {
    file: File,
    /// Records in the file, as written.
    records: u64,
    /// Key `i` is that of record `(i + 1) * every - 1`.
    samples: Vec<u128>,
}

/// Writes a run and samples every `every`-th key, the last of each group.
/// A run is written once and read once, in order: past the page cache
/// (see [`direct`](crate::generation::direct)).
struct RunWriter {
    out: DirectWriter,
    records: u64,
    samples: Vec<u128>,
    every: u64,
    tmp_dir: PathBuf,
}

impl RunWriter {
    fn write(&mut self, block: &[u8]) -> Result<()> {
        let n = (block.len() / RECORD_LEN) as u64;
        let mut i = self.every - 1 - self.records % self.every;
        while i < n {
            self.samples.push(key_of(&block[i as usize * RECORD_LEN..]));
            i += self.every;
        }
        self.records += n;
        self.out
            .write(block)
            .map_err(Error::io_op("writing a sorted run", &self.tmp_dir))
    }

    /// The run, to be read through the page cache: the kernel's read-ahead
    /// then reads the disk while the merge works. (Tried: direct reads of
    /// 1 MiB, each waiting for its block; builds of 10^8 rows in 1 GiB took
    /// 21.5 and 20.7 s, against 20.2 and 20.6 s this way.)
    fn finish(self) -> Result<Run> {
        let file = self
            .out
            .into_file()
            .map_err(Error::io_op("writing a sorted run", &self.tmp_dir))?;
        crate::sys::fadvise(&file, 0, 0, crate::sys::Advice::Sequential);
        Ok(Run {
            file,
            records: self.records,
            samples: self.samples,
        })
    }
}

/// The last buffer of a sort that spilled, sorted and kept in memory.
struct Resident {
    records: RecordBuf,
    winners: Winners,
    /// Sampled as a run's keys are (see [`RunWriter`]).
    samples: Vec<u128>,
}

/// Where the final merge takes a run's records from.
enum MergeInput<'a> {
    Run(RunReader<'a>),
    /// The resident buffer, and how many of its winners are taken.
    Resident(&'a Resident, usize),
}

impl MergeInput<'_> {
    /// The run's next records whose keys are below `bound` (all the rest
    /// for `None`).
    fn take_below(&mut self, bound: Option<u128>) -> Result<Vec<u8>> {
        match self {
            MergeInput::Run(reader) => reader.take_below(bound),
            MergeInput::Resident(resident, at) => {
                let records = resident.records.as_slice();
                let rest = &resident.winners.as_slice()[*at..];
                let n = match bound {
                    None => rest.len(),
                    Some(b) => rest.partition_point(|&i| records[i as usize].key() < b),
                };
                *at += n;
                Ok(gather(records, &rest[..n]))
            }
        }
    }
}

/// The records at `indices`, one after the other: a random read each, with
/// the reads a few records ahead started early.
fn gather<I: Copy + TryInto<usize>>(records: &[Record], indices: &[I]) -> Vec<u8> {
    let at = |index: I| match index.try_into() {
        Ok(at) => at,
        Err(_) => unreachable!("a buffer's index fits in usize"),
    };
    let mut block = Vec::with_capacity(indices.len() * RECORD_LEN);
    for (n, &index) in indices.iter().enumerate() {
        if let Some(&ahead) = indices.get(n + 16) {
            prefetch(&records[at(ahead)]);
        }
        block.extend_from_slice(records[at(index)].as_bytes());
    }
    block
}

/// The indices of a sorted buffer's winning records, in key order, packed
/// four to a sort entry in the entries' own allocation, the rest of which
/// is given back: a full buffer's entries take a third of the sort's memory,
/// its indices a twelfth.
struct Winners {
    entries: Vec<u128>,
    len: usize,
}

impl Winners {
    /// `order[..kept]` holds indices below 2^32 (see `Sorter::sort_buffer`).
    fn pack(mut order: Vec<u128>, kept: usize) -> Winners {
        assert!(kept <= order.len());
        let entries = order.as_mut_ptr();
        let indices = entries.cast::<u32>();
        for k in 0..kept {
            // SAFETY: both pointers come from the one allocation, which holds
            // `kept` entries (16 bytes each), so index k (bytes 4k..4k+4) is in
            // it. Entry k is read before index k is written, and an index
            // written (bytes below 4k+4) never lies in an entry not yet read
            // (bytes from 16(k+1) on). u32's alignment divides u128's.
            unsafe { indices.add(k).write(entries.add(k).read() as u32) };
        }
        order.truncate(kept.div_ceil(4));
        order.shrink_to_fit();
        Winners {
            entries: order,
            len: kept,
        }
    }

    fn as_slice(&self) -> &[u32] {
        // SAFETY: `entries` holds at least `len.div_ceil(4)` entries, so
        // `len` u32s, all written by `pack`, in an allocation aligned for
        // u128 and so for u32; every bit pattern is a valid u32.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr().cast::<u32>(), self.len) }
    }
}

/// Bytes read from a run at a time: a few per run are in memory at once.
const READ_LEN: usize = 1 << 20;

/// Reads of a run asked for ahead of the one being made.
const READ_AHEAD: usize = 8;

/// Reads a run front to back, range by range, and frees what it has read.
struct RunReader<'a> {
    file: &'a File,
    tmp_dir: &'a Path,
    /// Bytes in the file, and where the next read starts.
    len: u64,
    next: u64,
    /// What the last read brought, of which `at` bytes are taken.
    buf: Vec<u8>,
    at: usize,
    freed: u64,
    step: u64,
    read_len: usize,
}

impl<'a> RunReader<'a> {
    fn new(run: &'a Run, tmp_dir: &'a Path, step: u64, read_len: usize) -> RunReader<'a> {
        RunReader {
            file: &run.file,
            tmp_dir,
            len: run.records * RECORD_LEN as u64,
            next: 0,
            buf: Vec::new(),
            at: 0,
            freed: 0,
            step,
            read_len,
        }
    }

    /// The run's next records whose keys are below `bound` (all the rest
    /// for `None`).
    fn take_below(&mut self, bound: Option<u128>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        loop {
            let avail = &self.buf[self.at..];
            let count = avail.len() / RECORD_LEN;
            let n = match bound {
                None => count,
                Some(b) => {
                    let (mut lo, mut hi) = (0, count);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        if key_of(&avail[mid * RECORD_LEN..]) < b {
                            lo = mid + 1;
                        } else {
                            hi = mid;
                        }
                    }
                    lo
                }
            };
            out.extend_from_slice(&avail[..n * RECORD_LEN]);
            self.at += n * RECORD_LEN;
            if self.at < self.buf.len() || self.next >= self.len {
                break;
            }
            let want = (self.read_len as u64).min(self.len - self.next) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, self.next)
                .map_err(Error::io_op("reading a sorted run", self.tmp_dir))?;
            self.next += want as u64;
            self.at = 0;
            // Reading several runs in turn, one read at a time, leaves the
            // kernel's read-ahead too shallow to keep the disk busy (the
            // merge of 10^8 records read 0.35 GB/s): ask for the next
            // reads of this run now, and they arrive while the merge works.
            let ahead = (READ_AHEAD * self.read_len) as u64;
            crate::sys::fadvise(self.file, self.next, ahead, crate::sys::Advice::WillNeed);
        }
        let consumed = self.next - (self.buf.len() - self.at) as u64;
        free_prefix(self.file, consumed, self.step, &mut self.freed);
        Ok(out)
    }
}

/// Bytes of a run freed at once, at least.
const FREE_STEP: u64 = 64 << 20;

/// Frees the disk blocks of `run` before `read` (rounded down to whole
/// `step`s), of which those before `freed` already are: a merge reads each
/// run front to back, once, so the runs shrink as the output grows and the
/// build's peak disk use is about one copy of the data rather than two.
/// Only an economy: where the filesystem cannot punch holes, nothing is
/// freed until the run is closed.
fn free_prefix(run: &File, read: u64, step: u64, freed: &mut u64) {
    let to = read / step * step;
    if to <= *freed {
        return;
    }
    crate::sys::punch_hole(run, *freed, to - *freed);
    *freed = to;
}

/// Records in a block handed to a sink: 1 MiB.
const BLOCK_RECORDS: usize = 1 << 14;

/// Records in arrival order, in anonymous memory that asks for huge pages:
/// gathering them in key order is a random read each, and huge pages spare
/// most of those reads a TLB miss.
struct RecordBuf {
    map: memmap2::MmapMut,
    len: usize,
}

impl RecordBuf {
    /// Room for `capacity` records, reserved but not yet resident.
    fn new(capacity: usize) -> std::io::Result<RecordBuf> {
        let map = memmap2::MmapOptions::new()
            .len((capacity * RECORD_LEN).max(1))
            .map_anon()?;
        // Only a hint: without transparent huge pages this is a no-op.
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(RecordBuf { map, len: 0 })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, record: Record) {
        let at = self.len * RECORD_LEN;
        self.map[at..at + RECORD_LEN].copy_from_slice(record.as_bytes());
        self.len += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_slice(&self) -> &[Record] {
        let bytes = &self.map[..self.len * RECORD_LEN];
        // SAFETY: `Record` is `repr(transparent)` over `[u8; RECORD_LEN]`:
        // same size, alignment 1, and every byte pattern is a valid value.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<Record>(), self.len) }
    }
}

/// Merges sorted, duplicate-free slices of records (oldest first): the
/// records in key order, the latest slice winning a tie, and the number of
/// records dropped for a tie.
///
/// (Tried: merging neighbouring slices two at a time, one comparison a
/// record and no unpredictable branch, but a pass per level: 33 ns a record
/// against the heap's 21 ns, five slices of 13,000 records.)
fn merge_slices(parts: &[Vec<u8>]) -> (Vec<u8>, u64) {
    let total = parts.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut at = vec![0usize; parts.len()];
    let mut heap = BinaryHeap::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        if !p.is_empty() {
            heap.push(Reverse((key_of(p), i)));
        }
    }
    let mut duplicates = 0;
    let mut last: Option<u128> = None;
    // The smallest key is replaced in place by the next of its slice: one
    // sift down, where a pop and a push would sift twice.
    while let Some(mut top) = heap.peek_mut() {
        let Reverse((key, i)) = *top;
        let record = &parts[i][at[i]..at[i] + RECORD_LEN];
        at[i] += RECORD_LEN;
        if at[i] < parts[i].len() {
            *top = Reverse((key_of(&parts[i][at[i]..]), i));
        } else {
            std::collections::binary_heap::PeekMut::pop(top);
        }
        // Equal keys pop in slice order: the later one replaces the earlier.
        if last == Some(key) {
            let len = out.len();
            out[len - RECORD_LEN..].copy_from_slice(record);
            duplicates += 1;
        } else {
            out.extend_from_slice(record);
            last = Some(key);
        }
    }
    (out, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::date::DateWord;
    use crate::generation::record::Price;
    use std::io::Write;

    fn rec(key: u128, tag: u64) -> Record {
        Record::new(
            key,
            Price::new(tag, 0).unwrap(),
            DateWord::overflow(tag, 19),
        )
    }

    /// Sorts `keys` (tagging each record with its input position) and checks
    /// the output against a plain in-memory model.
    fn check(keys: &[u128], memory_limit: usize, fan_in: usize) -> SortStats {
        // Ranges of a few records, so that the final merge splits its work.
        let small = check_ranges(keys, memory_limit, fan_in, 7);
        assert_eq!(small, check_ranges(keys, memory_limit, fan_in, 1 << 20));
        small
    }

    fn check_ranges(keys: &[u128], memory_limit: usize, fan_in: usize, range: usize) -> SortStats {
        let direct = check_io(keys, memory_limit, fan_in, range, true);
        assert_eq!(direct, check_io(keys, memory_limit, fan_in, range, false));
        direct
    }

    fn check_io(
        keys: &[u128],
        memory_limit: usize,
        fan_in: usize,
        range: usize,
        direct: bool,
    ) -> SortStats {
        let dir = tempfile::tempdir().unwrap();
        // Runs are read three records at a time and freed a record at a
        // time as they are read: a record freed before it was read would
        // come out as zeros.
        let mut s = Sorter::new(memory_limit, dir.path())
            .unwrap()
            .with_max_fan_in(fan_in)
            .with_range_records(range)
            .with_read_records(3)
            .with_free_step(RECORD_LEN as u64);
        if !direct {
            s = s.with_page_cache();
        }
        for (i, &k) in keys.iter().enumerate() {
            s.push(rec(k, i as u64)).unwrap();
        }
        let mut out = Vec::new();
        let stats = s
            .finish(|block| {
                assert_eq!(block.len() % RECORD_LEN, 0);
                for r in block.chunks_exact(RECORD_LEN) {
                    let r = Record::from_bytes(r.try_into().unwrap());
                    out.push((r.key(), r.price().unwrap().units()));
                }
                Ok(())
            })
            .unwrap();
        let mut model = std::collections::BTreeMap::new();
        for (i, &k) in keys.iter().enumerate() {
            model.insert(k, i as u64); // later rows overwrite: the later row wins
        }
        let expected: Vec<(u128, u64)> = model.into_iter().collect();
        assert_eq!(out, expected, "{} keys, limit {memory_limit}", keys.len());
        assert_eq!(stats.unique as usize, expected.len());
        assert_eq!(stats.duplicates as usize, keys.len() - expected.len());
        // Nothing is left behind in the temporary directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        stats
    }

    fn scrambled(n: usize, modulo: u128) -> Vec<u128> {
        (0..n as u128)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)) % modulo)
            .collect()
    }

    #[test]
    fn sorts_in_memory_without_spilling() {
        let stats = check(&scrambled(1000, u128::MAX), 1 << 20, 64);
        assert_eq!(stats.runs, 0);
        check(&[], 1 << 20, 64);
        check(&[42], 1 << 20, 64);
    }

    #[test]
    fn every_count_around_spill_boundaries_is_exact() {
        // 10 items a run; extsort 0.5 lost everything at multiples of
        // segment + 1, so cover multiples of 9, 10 and 11 and their neighbours.
        let limit = 10 * ITEM_LEN;
        for n in (0..=250).chain([999, 1000, 1001, 1099, 1100, 1101]) {
            let stats = check(&scrambled(n, u128::MAX), limit, 64);
            // The last buffer stays in memory for the merge.
            let expected_runs = if n > 10 { n.div_ceil(10) - 1 } else { 0 };
            assert_eq!(stats.runs, expected_runs, "{n} items");
        }
    }

    #[test]
    fn later_rows_win_within_and_across_runs() {
        // Few distinct keys, so duplicates land in the same run and in different runs.
        for n in [5, 50, 500, 5000] {
            check(&scrambled(n, 37), 16 * ITEM_LEN, 64);
        }
        // Full-width keys that repeat, and keys that share their top 64 bits only.
        let wide = scrambled(500, u128::MAX);
        let repeated: Vec<u128> = (0..3000).map(|i| wide[(i * 7) % 500]).collect();
        check(&repeated, 1 << 20, 64);
        check(&repeated, 64 * ITEM_LEN, 64);
        let twins: Vec<u128> = (0..2000u128).map(|i| (5 << 64) | (i * 31 % 700)).collect();
        check(&twins, 1 << 20, 64);
        check(&twins, 50 * ITEM_LEN, 4);
        let stats = check(&[7, 7, 7, 7, 7], 2 * ITEM_LEN, 64);
        assert_eq!((stats.unique, stats.duplicates), (1, 4));
    }

    #[test]
    fn a_read_run_gives_its_disk_space_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut run = tempfile::tempfile_in(dir.path()).unwrap();
        run.write_all(&vec![7u8; 8 << 20]).unwrap();
        run.sync_all().unwrap();
        let allocated = |f: &File| f.metadata().unwrap().blocks() * 512;
        assert!(allocated(&run) >= 8 << 20);
        let mut freed = 0;
        free_prefix(&run, (6 << 20) + 5, 1 << 20, &mut freed);
        assert_eq!(freed, 6 << 20);
        assert!(allocated(&run) <= 3 << 20, "{} bytes", allocated(&run));
        // What is left reads back whole; the size is unchanged.
        use std::os::unix::fs::FileExt;
        let mut tail = vec![0u8; 2 << 20];
        run.read_exact_at(&mut tail, 6 << 20).unwrap();
        assert!(tail.iter().all(|&b| b == 7));
        assert_eq!(run.metadata().unwrap().len(), 8 << 20);
    }

    #[test]
    fn a_run_holds_its_records_only_and_is_read_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(2 * ITEM_LEN, dir.path()).unwrap();
        for i in 0..3 {
            s.push(rec(i, i as u64)).unwrap();
        }
        assert_eq!(s.runs.len(), 1);
        let run = &s.runs[0];
        assert_eq!(run.records, 2);
        assert_eq!(run.file.metadata().unwrap().len(), 2 * RECORD_LEN as u64);
        // Either way it reads back through the page cache: O_DIRECT is off.
        assert_eq!(
            crate::generation::direct::tests::flags(&run.file) & libc::O_DIRECT,
            0
        );
        let mut out = Vec::new();
        s.finish(|b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(out.len(), 3 * RECORD_LEN);
    }

    #[test]
    fn many_runs_merge_in_several_passes() {
        let stats = check(&scrambled(3000, 1000), 10 * ITEM_LEN, 3);
        assert_eq!(stats.runs, 299);
    }
}
