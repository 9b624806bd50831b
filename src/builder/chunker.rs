//! Cutting the feed into chunks of whole rows, which the build parses
//! apart, in parallel ([`ingest::parse_chunk`]).

use std::io::{self, Read};

use crate::builder::ingest;

/// A piece of the input that holds whole rows.
pub struct Chunk {
    /// The chunk's bytes, ending after a row (or at the end of the input).
    pub bytes: Vec<u8>,
    /// The first chunk, where a BOM and a header may be.
    pub first: bool,
}

/// Cuts the input into chunks of whole rows, so they can be parsed apart.
/// Public so that the fuzz targets (tests/fuzz) can check it against [`ingest::Rows`].
pub struct Chunker<R> {
    input: R,
    /// Bytes read past the end of the last chunk.
    carry: Vec<u8>,
    /// Buffers of chunks already parsed, to read the next ones into.
    spare: Vec<Vec<u8>>,
    eof: bool,
    first: bool,
    chunk_len: usize,
}

impl<R: Read> Chunker<R> {
    /// Reads `input` in chunks of about `chunk_len` bytes, longer where a row is.
    pub fn new(input: R, chunk_len: usize) -> Self {
        Chunker {
            input,
            carry: Vec::new(),
            spare: Vec::new(),
            eof: false,
            first: true,
            chunk_len,
        }
    }

    /// Takes back the buffers of parsed chunks, to read later chunks into.
    /// A fresh 4 MiB buffer for every chunk cost the build a page fault for
    /// every 4 KiB it read (100,000 of them for 10M rows, about a tenth of
    /// its CPU time, zeroing pages included); reused, they are resident.
    pub fn recycle(&mut self, chunks: Vec<Chunk>) {
        self.spare.extend(chunks.into_iter().map(|c| c.bytes));
    }

    /// Up to `n` next chunks; none at the end of the input.
    pub(super) fn batch(&mut self, n: usize) -> io::Result<Vec<Chunk>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_chunk()? {
                Some(c) => out.push(c),
                None => break,
            }
        }
        Ok(out)
    }

    /// The next chunk; none at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&self.carry);
        self.carry.clear();
        let mut want = self.chunk_len.max(buf.len());
        loop {
            if buf.len() < want && !self.eof {
                // read_to_end zeroes the spare capacity before reading into
                // it (the readers here have no read_buf): on a recycled,
                // resident buffer that is a memset, not a fault every 4 KiB.
                buf.reserve_exact(want - buf.len());
                let asked = (want - buf.len()) as u64;
                let n = (&mut self.input).take(asked).read_to_end(&mut buf)?;
                self.eof = (n as u64) < asked;
            }
            if buf.is_empty() {
                return Ok(None);
            }
            // A BOM is not part of the first field (the CSV reader drops it).
            let bom = if self.first && buf.starts_with(ingest::BOM) {
                ingest::BOM.len()
            } else {
                0
            };
            let end = if self.eof {
                Some(buf.len())
            } else {
                ingest::chunk_end(&buf[bom..]).map(|end| end + bom)
            };
            // The first chunk must hold the first row that is not blank:
            // only there is a header recognised.
            let blank = |b: &[u8]| b.iter().all(|c| c.is_ascii_whitespace());
            let end = end.filter(|&end| !(self.first && !self.eof && blank(&buf[bom..end])));
            match end {
                Some(end) => {
                    self.carry.extend_from_slice(&buf[end..]);
                    buf.truncate(end);
                    let first = std::mem::replace(&mut self.first, false);
                    return Ok(Some(Chunk { bytes: buf, first }));
                }
                // A row longer than the chunk: read more of it.
                None => want = buf.len().max(1) * 2,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every row verdict (global line, verdict) of `input`, chunk by chunk,
    /// each chunk read into the buffer of the one before.
    fn chunked(
        input: &[u8],
        chunk_len: usize,
    ) -> Vec<(u64, Result<ingest::Row, ingest::RowError>)> {
        let mut chunks = Chunker::new(input, chunk_len);
        let mut out = Vec::new();
        let mut lines_before = 0;
        while let Some(c) = chunks.next_chunk().unwrap() {
            let parsed = ingest::parse_chunk(&c.bytes, c.first);
            // Valid rows come back as records; pair them with their lines
            // through a second, sequential pass over the same chunk.
            let lines: Vec<_> = if c.first {
                ingest::Rows::new(&c.bytes[..])
                    .map(|r| r.unwrap())
                    .collect()
            } else {
                ingest::Rows::continuation(&c.bytes[..])
                    .map(|r| r.unwrap())
                    .collect()
            };
            assert_eq!(parsed.rows as usize, lines.len());
            let mut records = parsed.records.iter();
            let mut invalid = parsed.first_invalid.iter();
            for (line, verdict) in lines {
                match &verdict {
                    Ok(r) => {
                        let got = records.next().unwrap();
                        assert_eq!((got.key(), got.price()), (r.key(), Some(r.price())));
                        assert_eq!(parsed.date(got), r.date());
                    }
                    Err(e) => {
                        if let Some((l, why)) = invalid.next() {
                            assert_eq!((*l, why), (line, e));
                        }
                    }
                }
                out.push((lines_before + line, verdict));
            }
            assert!(records.next().is_none());
            lines_before += parsed.newlines;
            // The next chunk is read into this one's buffer, as in a build:
            // nothing of what it held may show through.
            chunks.recycle(vec![c]);
        }
        out
    }

    const PIECES: &[&str] = &[
        "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST\n",
        "e2649ca5-7e05-4d53-a8ff-919917a4922e,1,2018-08-22 18:34:11\r\n",
        "\"78bfd79d-53c4-421d-b054-013ad294deab\",\"4\n2\",2018-10-07 00:55:20\n",
        "\"78bfd79d-53c4-421d-b054-013ad294deab\",\"4\"\"2\",x\n",
        "not-an-id,1,2018-08-04 05:32:31\n",
        "a,b\"c,d\n",
        "\n",
        "   \n",
        "id,price,expiration_date\n",
        "x\ry\n",
        "1,2,3,4\n",
        "\"unterminated,1,2\n",
        "\u{feff}",
    ];

    proptest! {
        /// Cutting the input into chunks and parsing them apart finds the
        /// same rows, verdicts and line numbers as reading it whole.
        #[test]
        fn chunks_parse_like_the_whole_input(
            pieces in proptest::collection::vec(0..PIECES.len(), 0..40),
            chunk_len in 1usize..300,
        ) {
            let input: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let whole: Vec<_> = ingest::Rows::new(input.as_bytes()).map(|r| r.unwrap()).collect();
            prop_assert_eq!(chunked(input.as_bytes(), chunk_len), whole);
        }
    }
}
