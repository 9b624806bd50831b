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
//! record's index; sorting those entries (in parallel, with rayon) moves a
//! quarter of the bytes that sorting the records would, and equal entries
//! fall in arrival order because the index is the tie-breaker. UUIDs that
//! share their top 64 bits (duplicates, almost always) are then ordered by
//! their whole key. The sorted, deduplicated buffer is either handed out
//! directly or spilled as a run to an unnamed temporary file (gone even if
//! the process is killed). Runs are merged key range by key range, ranges in
//! parallel, each with a heap (past 64 runs, groups of runs are first merged
//! into bigger ones).
//!
//! Duplicates resolve by input order whatever the sort does: inside a
//! buffer the highest index wins, across runs the latest run wins.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::generation::record::{prefetch, Record, RECORD_LEN};

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
    runs: Vec<File>,
    tmp_dir: PathBuf,
    /// Most runs merged at once; more are first merged in groups.
    max_fan_in: usize,
    /// Records of all runs together in one range of the final merge.
    range_records: usize,
    duplicates: u64,
    spilled: usize,
    /// Bytes of a run freed at once, at least, as the merge reads it.
    free_step: u64,
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
        self.order.par_sort_unstable();
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
                .map(|indices| {
                    let mut block = Vec::with_capacity(indices.len() * RECORD_LEN);
                    for (n, &index) in indices.iter().enumerate() {
                        if let Some(&ahead) = indices.get(n + 16) {
                            prefetch(&records[ahead as usize]);
                        }
                        block.extend_from_slice(records[index as usize].as_bytes());
                    }
                    block
                })
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
        let tmp = self.tmp_dir.clone();
        self.drain_sorted(&mut |block: &[u8]| {
            run.write_all(block)
                .map_err(Error::io_op("writing a sorted run", &tmp))
        })?;
        self.runs.push(run);
        self.spilled += 1;
        Ok(())
    }

    fn new_run(&self) -> Result<File> {
        tempfile::tempfile_in(&self.tmp_dir)
            .map_err(Error::io_op("creating a sorted run", &self.tmp_dir))
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
        if !self.records.is_empty() {
            self.spill()?;
        }
        // Give the buffer's memory back to the merge.
        self.records = RecordBuf::new(0).map_err(Error::io(&self.tmp_dir))?;
        self.order = Vec::new();
        let mut runs = std::mem::take(&mut self.runs);
        // Merge groups of neighbouring runs, keeping their order, until one
        // pass can merge them all.
        while runs.len() > self.max_fan_in {
            let mut merged_runs = Vec::new();
            let mut rest = runs.into_iter().peekable();
            while rest.peek().is_some() {
                let group: Vec<File> = rest.by_ref().take(self.max_fan_in).collect();
                let mut merged = self.new_run()?;
                let tmp = self.tmp_dir.clone();
                self.merge_parallel(&group, &mut |block: &[u8]| {
                    merged
                        .write_all(block)
                        .map_err(Error::io_op("writing a merged run", &tmp))
                })?;
                merged_runs.push(merged);
            }
            runs = merged_runs;
        }
        let unique = self.merge_parallel(&runs, &mut sink)?;
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
    /// Split points come from a sample of every run's keys (see below), so
    /// a range holds a bounded number of records of each run whatever the
    /// key distribution, and finding the ranges costs a few reads of
    /// single keys per range and run. Ranges are read with positioned reads: the runs are never mapped, so
    /// they do not count in the process's memory.
    fn merge_parallel(
        &mut self,
        runs: &[File],
        sink: &mut (impl FnMut(&[u8]) -> Result<()> + Send),
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let tmp = self.tmp_dir.clone();
        let io = |e| Error::io_op("reading a sorted run", &tmp)(e);
        let key_at = |run: &File, i: u64| -> Result<u128> {
            let mut key = [0u8; 16];
            run.read_exact_at(&mut key, i * RECORD_LEN as u64)
                .map_err(io)?;
            Ok(u128::from_be_bytes(key))
        };
        let mut lens = Vec::with_capacity(runs.len());
        for run in runs {
            lens.push(run.metadata().map_err(io)?.len() / RECORD_LEN as u64);
        }
        // Every `stride`-th key of each run is sampled; between two
        // neighbouring samples of all runs together there are at most
        // `stride` records of any run.
        let stride = (self.range_records / runs.len()).max(1) as u64;
        let mut samples = Vec::with_capacity(runs.len());
        for (run, &len) in runs.iter().zip(&lens) {
            let mut keys = Vec::with_capacity((len / stride) as usize);
            for i in (stride..len).step_by(stride as usize) {
                keys.push(key_at(run, i)?);
            }
            samples.push(keys);
        }
        // Every `runs`-th sample of them all is a split: a range then holds
        // about `range_records` records, and at most `runs * stride` of any
        // one run whatever the key distribution.
        let mut all: Vec<u128> = samples.concat();
        all.sort_unstable();
        all.dedup();
        let splits: Vec<u128> = all
            .into_iter()
            .skip(runs.len() - 1)
            .step_by(runs.len())
            .collect();
        // bounds[r][j]: the first record of run r whose key is >= splits[j].
        // The run's samples narrow it to one stride in memory; positioned
        // reads of single keys find it there.
        let mut bounds = Vec::with_capacity(runs.len());
        for ((run, &len), keys) in runs.iter().zip(&lens).zip(&samples) {
            let mut b = Vec::with_capacity(splits.len() + 2);
            b.push(0);
            for &split in &splits {
                // keys[i] is the key at (i + 1) * stride; c of them are < split.
                let c = keys.partition_point(|&k| k < split) as u64;
                let mut lo = if c == 0 { 0 } else { c * stride + 1 };
                let mut hi = ((c + 1) * stride).min(len);
                lo = lo.max(*b.last().unwrap());
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if key_at(run, mid)? < split {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                b.push(lo);
            }
            b.push(len);
            bounds.push(b);
        }
        let merge_range = |j: usize| -> Result<(Vec<u8>, u64)> {
            let mut parts = Vec::with_capacity(runs.len());
            for (run, b) in runs.iter().zip(&bounds) {
                let mut part = vec![0u8; ((b[j + 1] - b[j]) as usize) * RECORD_LEN];
                run.read_exact_at(&mut part, b[j] * RECORD_LEN as u64)
                    .map_err(io)?;
                parts.push(part);
            }
            Ok(merge_slices(&parts))
        };
        let ranges: Vec<usize> = (0..=splits.len()).collect();
        let batch = 2 * rayon::current_num_threads();
        let mut batches = ranges.chunks(batch);
        let gather = |js: &[usize]| {
            let merged = js.par_iter().map(|&j| merge_range(j)).collect::<Vec<_>>();
            (merged, js.last().map_or(0, |&j| j + 1))
        };
        let mut current = batches.next().map(gather);
        let mut unique = 0;
        let mut freed = vec![0u64; runs.len()];
        let step = self.free_step;
        while let Some((merged, read_to)) = current {
            let (next, written) = rayon::join(
                || batches.next().map(gather),
                || -> Result<(u64, u64)> {
                    let (mut records, mut duplicates) = (0, 0);
                    for m in merged {
                        let (block, dups) = m?;
                        records += (block.len() / RECORD_LEN) as u64;
                        duplicates += dups;
                        sink(&block)?;
                    }
                    // What has been read of each run is not read again:
                    // give its disk space back while the output grows.
                    for ((run, b), freed) in runs.iter().zip(&bounds).zip(&mut freed) {
                        free_prefix(run, b[read_to] * RECORD_LEN as u64, step, freed);
                    }
                    Ok((records, duplicates))
                },
            );
            let (records, duplicates) = written?;
            unique += records;
            self.duplicates += duplicates;
            current = next;
        }
        Ok(unique)
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
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate only reads its arguments; the descriptor is
        // open for as long as `run` is borrowed.
        let rc = unsafe {
            libc::fallocate(
                run.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                *freed as libc::off_t,
                (to - *freed) as libc::off_t,
            )
        };
        if rc != 0 {
            tracing::debug!(
                "freeing a merged run's start: {}",
                std::io::Error::last_os_error()
            );
        }
    }
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

    fn is_empty(&self) -> bool {
        self.len == 0
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
fn merge_slices(parts: &[Vec<u8>]) -> (Vec<u8>, u64) {
    let total = parts.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut at = vec![0usize; parts.len()];
    let mut heap = BinaryHeap::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        if !p.is_empty() {
            heap.push(Reverse((crate::generation::record::key_of(p), i)));
        }
    }
    let mut duplicates = 0;
    let mut last: Option<u128> = None;
    while let Some(Reverse((key, i))) = heap.pop() {
        let record = &parts[i][at[i]..at[i] + RECORD_LEN];
        at[i] += RECORD_LEN;
        if at[i] < parts[i].len() {
            heap.push(Reverse((
                crate::generation::record::key_of(&parts[i][at[i]..]),
                i,
            )));
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
        let dir = tempfile::tempdir().unwrap();
        // Runs are freed a record at a time as they are read: a record
        // freed before it was merged would come out as zeros.
        let mut s = Sorter::new(memory_limit, dir.path())
            .unwrap()
            .with_max_fan_in(fan_in)
            .with_range_records(range)
            .with_free_step(RECORD_LEN as u64);
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
            let expected_runs = if n > 10 { n.div_ceil(10) } else { 0 };
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
    fn many_runs_merge_in_several_passes() {
        let stats = check(&scrambled(3000, 1000), 10 * ITEM_LEN, 3);
        assert_eq!(stats.runs, 300);
    }
}
