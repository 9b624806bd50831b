//! External sort of records by key, with "the later row wins" for duplicates.
//!
//! promo sorts its fixed-width records itself rather than with the extsort
//! crate: extsort 0.5 silently drops every item when, after a spill, the
//! item count is a multiple of `segment_size + 1`, counts its buffer in
//! items rather than bytes, and would need a serialiser for what is already
//! a fixed 72-byte item. This sorter fills a buffer up to a byte budget,
//! sorts it with rayon, drops duplicates, spills it as a run to an unnamed
//! temporary file (gone even if the process is killed), and merges the
//! runs with a heap.
//!
//! Each item carries its row's ordinal, so duplicates resolve by input
//! order whatever the sort does: among equal keys the highest ordinal wins.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::slice::ParallelSliceMut;

use crate::error::{Error, Result};
use crate::record::{Record, RECORD_LEN};

/// A record and the ordinal of the row it came from.
#[derive(Clone, Copy)]
struct Item {
    record: Record,
    ordinal: u64,
}

/// Bytes an item takes in memory and in a run file.
pub const ITEM_LEN: usize = RECORD_LEN + 8;

impl Item {
    fn sort_key(&self) -> (u128, u64) {
        (self.record.key(), self.ordinal)
    }

    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(self.record.as_bytes())?;
        out.write_all(&self.ordinal.to_le_bytes())
    }

    fn read_from(input: &mut impl Read) -> std::io::Result<Option<Item>> {
        let mut buf = [0u8; ITEM_LEN];
        match input.read_exact(&mut buf) {
            Ok(()) => Ok(Some(Item {
                record: Record::from_bytes(buf[..RECORD_LEN].try_into().unwrap()),
                ordinal: u64::from_le_bytes(buf[RECORD_LEN..].try_into().unwrap()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Collects records and hands them back sorted by key, one per key.
pub struct Sorter {
    buffer: Vec<Item>,
    /// Items the buffer may hold before it spills.
    capacity: usize,
    /// Bytes for the readers' buffers while merging.
    memory_limit: usize,
    runs: Vec<File>,
    tmp_dir: PathBuf,
    /// Most runs merged at once; more are first merged in groups.
    max_fan_in: usize,
    duplicates: u64,
    pushed: u64,
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
    /// A sorter that keeps about `memory_limit` bytes of items in memory and
    /// spills runs to unnamed temporary files in `tmp_dir`.
    pub fn new(memory_limit: usize, tmp_dir: &Path) -> Sorter {
        let capacity = (memory_limit / ITEM_LEN).max(2);
        Sorter {
            buffer: Vec::new(),
            capacity,
            memory_limit,
            runs: Vec::new(),
            tmp_dir: tmp_dir.to_path_buf(),
            max_fan_in: 64,
            duplicates: 0,
            pushed: 0,
        }
    }

    /// Sets the most runs merged at once (at least 2).
    pub fn with_max_fan_in(mut self, n: usize) -> Sorter {
        self.max_fan_in = n.max(2);
        self
    }

    /// Adds a record; among records with the same key, the one pushed last wins.
    pub fn push(&mut self, record: Record) -> Result<()> {
        if self.buffer.len() == self.capacity {
            self.spill()?;
        }
        if self.buffer.capacity() == 0 {
            // Grow in steps, so a small input does not reserve the whole budget.
            self.buffer.reserve(self.capacity.min(1 << 16));
        }
        self.buffer.push(Item {
            record,
            ordinal: self.pushed,
        });
        self.pushed += 1;
        Ok(())
    }

    /// Sorts the buffer and drops its duplicates, counting them.
    fn sort_buffer(&mut self) {
        self.buffer.par_sort_unstable_by_key(Item::sort_key);
        let before = self.buffer.len();
        // Keep the last of each run of equal keys: the highest ordinal.
        self.buffer.reverse();
        self.buffer.dedup_by_key(|i| i.record.key());
        self.buffer.reverse();
        self.duplicates += (before - self.buffer.len()) as u64;
    }

    fn spill(&mut self) -> Result<()> {
        self.sort_buffer();
        let mut run = self.new_run()?;
        {
            let mut out = BufWriter::with_capacity(1 << 20, &mut run);
            for item in &self.buffer {
                item.write_to(&mut out).map_err(Error::io(&self.tmp_dir))?;
            }
            out.flush().map_err(Error::io(&self.tmp_dir))?;
        }
        self.runs.push(run);
        self.buffer.clear();
        Ok(())
    }

    fn new_run(&self) -> Result<File> {
        tempfile::tempfile_in(&self.tmp_dir).map_err(Error::io(&self.tmp_dir))
    }

    /// Hands every distinct key's winning record to `sink`, in key order.
    pub fn finish(mut self, mut sink: impl FnMut(&Record) -> Result<()>) -> Result<SortStats> {
        if self.runs.is_empty() {
            self.sort_buffer();
            for item in &self.buffer {
                sink(&item.record)?;
            }
            return Ok(SortStats {
                unique: self.buffer.len() as u64,
                duplicates: self.duplicates,
                runs: 0,
            });
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        self.buffer = Vec::new(); // give the memory back to the merge
        let runs = std::mem::take(&mut self.runs);
        let spilled = runs.len();
        let mut runs = runs;
        // Merge groups into bigger runs until one pass can merge them all.
        while runs.len() > self.max_fan_in {
            let group: Vec<File> = runs.drain(..self.max_fan_in).collect();
            let mut merged = self.new_run()?;
            {
                let mut out = BufWriter::with_capacity(1 << 20, &mut merged);
                let tmp = self.tmp_dir.clone();
                self.merge(group, |item| {
                    item.write_to(&mut out).map_err(Error::io(&tmp))
                })?;
                out.flush().map_err(Error::io(&self.tmp_dir))?;
            }
            runs.push(merged);
        }
        let mut unique = 0;
        self.merge(runs, |item| {
            unique += 1;
            sink(&item.record)
        })?;
        Ok(SortStats {
            unique,
            duplicates: self.duplicates,
            runs: spilled,
        })
    }

    /// Merges sorted, duplicate-free runs into `sink`, dropping keys that
    /// repeat across runs (the item with the highest ordinal wins).
    fn merge(&mut self, runs: Vec<File>, mut sink: impl FnMut(&Item) -> Result<()>) -> Result<()> {
        let buf_len = (self.memory_limit / 2 / runs.len()).clamp(8 * ITEM_LEN, 4 << 20);
        let mut readers = Vec::with_capacity(runs.len());
        for mut run in runs {
            run.seek(SeekFrom::Start(0))
                .map_err(Error::io(&self.tmp_dir))?;
            readers.push(BufReader::with_capacity(buf_len, run));
        }
        let mut heads: Vec<Option<Item>> = Vec::with_capacity(readers.len());
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            let head = Item::read_from(r).map_err(Error::io(&self.tmp_dir))?;
            if let Some(item) = &head {
                heap.push(Reverse((item.sort_key(), i)));
            }
            heads.push(head);
        }
        let mut pending: Option<Item> = None;
        while let Some(Reverse((_, i))) = heap.pop() {
            let item = heads[i].take().expect("a run in the heap has a head");
            let next = Item::read_from(&mut readers[i]).map_err(Error::io(&self.tmp_dir))?;
            if let Some(n) = &next {
                heap.push(Reverse((n.sort_key(), i)));
            }
            heads[i] = next;
            // Equal keys pop in ordinal order, so the last one seen wins.
            match pending {
                Some(p) if p.record.key() == item.record.key() => self.duplicates += 1,
                Some(p) => sink(&p)?,
                None => {}
            }
            pending = Some(item);
        }
        if let Some(p) = pending {
            sink(&p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Price;

    fn rec(key: u128, tag: u64) -> Record {
        Record::new(key, Price::new(tag, 0).unwrap(), b"2020-01-01 00:00:00")
    }

    /// Sorts `keys` (tagging each record with its input position) and checks
    /// the output against a plain in-memory model.
    fn check(keys: &[u128], memory_limit: usize, fan_in: usize) -> SortStats {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(memory_limit, dir.path()).with_max_fan_in(fan_in);
        for (i, &k) in keys.iter().enumerate() {
            s.push(rec(k, i as u64)).unwrap();
        }
        let mut out = Vec::new();
        let stats = s
            .finish(|r| {
                out.push((r.key(), r.price().unwrap().units()));
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
        let stats = check(&[7, 7, 7, 7, 7], 2 * ITEM_LEN, 64);
        assert_eq!((stats.unique, stats.duplicates), (1, 4));
    }

    #[test]
    fn many_runs_merge_in_several_passes() {
        let stats = check(&scrambled(3000, 1000), 10 * ITEM_LEN, 3);
        assert_eq!(stats.runs, 300);
    }
}
