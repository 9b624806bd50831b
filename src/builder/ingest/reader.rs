//! The general path: the CSV reader, configured for the dialect, streaming
//! rows with the lines they start on.

use std::collections::VecDeque;
use std::io::{self, Read};

use super::chunk::FirstRow;
use super::{parse_fields, Row, RowError};

/// Bytes the CSV reader asks for at a time. [`Rows`] relies on it to bound
/// how far the reader runs ahead of the parsed position.
const READ_BUF: usize = 64 * 1024;

/// The one place that configures the CSV reader for the dialect.
///
/// Headers are off because the header row is optional and recognised by
/// [`Rows`]; rows are flexible so a wrong field count is a row error rather
/// than a stream error. Fields are not trimmed here: csv 1.4 rebuilds the
/// whole record to trim it, an allocation per row, so [`parse_fields`] trims
/// instead (to the same effect, quoted fields included). csv-core drops a
/// UTF-8 BOM only when its first read sees all three bytes; [`Rows`] strips
/// it itself so that short reads cannot leak it into the first id.
pub fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::None)
        .delimiter(b',')
        .quote(b'"')
        .double_quote(true)
        .escape(None)
        .comment(None)
        .terminator(csv::Terminator::CRLF)
        .buffer_capacity(READ_BUF)
        .from_reader(input)
}

/// Streams rows: yields `(line number, verdict)` for each data row; the
/// header and blank (or all-whitespace) lines are not yielded.
///
/// Line numbers are 1-based physical lines (counted by `\n`) where the row
/// starts. csv's own `position().line()` is where it started *looking*, which
/// is before any blank lines it skipped, so the start is worked out from the
/// end of the row instead.
///
/// The outer `Err` is an I/O error; after one, the stream ends. Unbalanced
/// quotes are not a stream error: csv reads to the end of the input as one
/// field, and that row is reported with the wrong field count.
pub struct Rows<R: Read> {
    csv: csv::Reader<CsvInput<R>>,
    /// Reused for every row, so reading allocates only for unusually long rows.
    record: csv::ByteRecord,
    /// Whether a non-blank row was seen, after which no row is a header.
    past_first: bool,
}

impl<R: Read> Rows<R> {
    /// Starts reading `input`, which is read lazily as rows are pulled.
    pub fn new(input: R) -> Self {
        Rows {
            csv: csv_reader(CsvInput::new(input)),
            record: csv::ByteRecord::new(),
            past_first: false,
        }
    }

    /// Reads a piece of input that starts right after a row of a larger
    /// input: no BOM is stripped and no header is recognised.
    pub fn continuation(input: R) -> Self {
        let mut rows = Rows::new(input);
        rows.csv.get_mut().head_checked = true;
        rows.past_first = true;
        rows
    }

    /// The physical line the row just read starts on.
    ///
    /// csv counts every `\n` it consumes, so the row starts at the line after
    /// reading, less the newlines inside its fields, less one if the last byte
    /// consumed was a `\n` that ended the row. That `\n` ended the row unless
    /// the row only ended at end of input (an unbalanced quote), in which case
    /// it belongs to the field and was counted there.
    fn start_line(&self) -> u64 {
        let end = self.csv.position();
        let src = self.csv.get_ref();
        let inside = self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let ended_by_eof = src.at_eof && end.byte() == src.served;
        let ended_by_lf = !ended_by_eof
            && end.byte().checked_sub(1).and_then(|last| src.byte_at(last)) == Some(b'\n');
        let before = u64::try_from(inside)
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(ended_by_lf));
        end.line().saturating_sub(before).max(1)
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<(u64, Result<Row, RowError>), csv::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.csv.read_byte_record(&mut self.record) {
                Err(e) => return Some(Err(e)),
                Ok(false) => return None,
                Ok(true) => {}
            }
            let r = &self.record;
            // csv skips only empty lines; a line of spaces is blank too.
            if r.len() == 1 && r.get(0).is_some_and(|f| f.trim_ascii().is_empty()) {
                continue;
            }
            let verdict = || match (r.len(), r.get(0), r.get(1), r.get(2)) {
                (3, Some(id), Some(price), Some(date)) => parse_fields(id, price, date),
                (n, first, ..) => Err(RowError::field_count(n, first.unwrap_or_default())),
            };
            let verdict = if std::mem::replace(&mut self.past_first, true) {
                verdict()
            } else {
                let fields: Vec<&[u8]> = r.iter().collect();
                match FirstRow::judge(&fields, verdict) {
                    Some(verdict) => verdict,
                    None => continue,
                }
            };
            return Some(Ok((self.start_line(), verdict)));
        }
    }
}

/// The UTF-8 byte order mark, dropped from the start of the input.
pub const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// The input as csv sees it: without a leading UTF-8 BOM, and remembering
/// the bytes most recently handed over so `Rows::start_line` can look at
/// the byte that ended a row.
struct CsvInput<R> {
    inner: R,
    /// The first bytes, held back until we know whether they are a BOM.
    head: VecDeque<u8>,
    head_checked: bool,
    /// Bytes handed to csv (after the BOM); csv's byte offsets count the same.
    served: u64,
    /// The last `tail.len()` bytes served, at `offset % tail.len()`. csv's
    /// buffered reader holds at most `READ_BUF` unparsed bytes, so the byte
    /// just before its position is always in here.
    tail: Box<[u8]>,
    at_eof: bool,
    /// Whether csv has had its first read (see `read`).
    started: bool,
}

impl<R: Read> CsvInput<R> {
    fn new(inner: R) -> Self {
        CsvInput {
            inner,
            head: VecDeque::with_capacity(BOM.len()),
            head_checked: false,
            served: 0,
            tail: vec![0; 2 * READ_BUF].into_boxed_slice(),
            at_eof: false,
            started: false,
        }
    }

    /// Reads until three bytes are in hand (or the input ends), however
    /// short the reads, and drops them if they are a BOM.
    fn check_head(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 3];
        while self.head.len() < BOM.len() {
            let want = BOM.len() - self.head.len();
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => self.head.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.head_checked = true;
        if self.head.iter().eq(BOM.iter()) {
            self.head.clear();
        }
        Ok(())
    }

    /// The byte at `offset` if it is still remembered.
    fn byte_at(&self, offset: u64) -> Option<u8> {
        let len = self.tail.len() as u64;
        if offset < self.served && self.served - offset <= len {
            self.tail.get(usize::try_from(offset % len).ok()?).copied()
        } else {
            None
        }
    }

    fn remember(&mut self, bytes: &[u8]) {
        let len = self.tail.len();
        // Only the last `len` bytes can ever be asked for.
        let keep = &bytes[bytes.len().saturating_sub(len)..];
        let start = self.served + (bytes.len() - keep.len()) as u64;
        let at = (start % len as u64) as usize;
        let first = keep.len().min(len - at);
        self.tail[at..at + first].copy_from_slice(&keep[..first]);
        self.tail[..keep.len() - first].copy_from_slice(&keep[first..]);
        self.served += bytes.len() as u64;
    }
}

impl<R: Read> Read for CsvInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.head_checked {
            self.check_head()?;
        }
        // csv-core drops a BOM at the start of its first buffer if that
        // buffer holds all of it. One byte first means it never does, so a
        // second BOM is data however the input happens to be chunked.
        let buf = if self.started { buf } else { &mut buf[..1] };
        let n = if self.head.is_empty() {
            self.inner.read(buf)?
        } else {
            let n = self.head.len().min(buf.len());
            for (slot, b) in buf.iter_mut().zip(self.head.drain(..n)) {
                *slot = b;
            }
            n
        };
        if n == 0 {
            self.at_eof = true;
        }
        self.started = true;
        self.remember(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ingest::testing::{price, rows, rows_of, uuid, verdicts, DATE, ID};

    const REAL: &str = "\
d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST
e2649ca5-7e05-4d53-a8ff-919917a4922e,66.640497,2018-08-22 18:34:11 +0200 CEST
78bfd79d-53c4-421d-b054-013ad294deab,42.780199,2018-10-07 00:55:20 +0200 CEST
";

    fn lines(input: &[u8]) -> Vec<u64> {
        rows(input).into_iter().map(|(line, _)| line).collect()
    }

    /// Hands over one byte per read, the worst case for BOM detection.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn real_lines_parse() {
        let got = rows(REAL.as_bytes());
        let want = [
            (ID, price(60683466, 6), DATE),
            (
                "e2649ca5-7e05-4d53-a8ff-919917a4922e",
                price(66640497, 6),
                "2018-08-22 18:34:11 +0200 CEST",
            ),
            (
                "78bfd79d-53c4-421d-b054-013ad294deab",
                price(42780199, 6),
                "2018-10-07 00:55:20 +0200 CEST",
            ),
        ];
        assert_eq!(got.len(), 3);
        for (i, ((line, verdict), (id, p, date))) in got.into_iter().zip(want).enumerate() {
            assert_eq!(line, i as u64 + 1);
            let r = verdict.unwrap();
            assert_eq!(r.key(), uuid(id));
            assert_eq!(r.price(), p);
            assert_eq!(r.date(), date.as_bytes());
        }
    }

    #[test]
    fn wrong_field_counts_are_row_errors() {
        let input = format!("{ID},1\n{ID},1,{DATE},extra\nlonely\n{ID},1,{DATE}\n,,\n,,,\n");
        let got: Vec<_> = rows(input.as_bytes())
            .into_iter()
            .map(|(line, v)| (line, v.err()))
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(RowError::FieldCount(2))),
                (2, Some(RowError::FieldCount(4))),
                (3, Some(RowError::FieldCount(1))),
                (4, None),
                (5, Some(RowError::BadId(String::new()))),
                (6, Some(RowError::FieldCount(4))),
            ]
        );
    }

    #[test]
    fn utf8_bom_is_stripped() {
        let plain = format!("{ID},1,{DATE}\n");
        let with_bom = format!("\u{feff}{plain}");
        for got in [
            rows(with_bom.as_bytes()),
            rows_of(Trickle(with_bom.as_bytes())),
        ] {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, 1);
            assert_eq!(got[0].1.as_ref().unwrap().key(), uuid(ID));
        }
        // A second BOM is data, however the input is chunked.
        let double = format!("\u{feff}{with_bom}");
        for got in [rows(double.as_bytes()), rows_of(Trickle(double.as_bytes()))] {
            assert!(matches!(&got[0].1, Err(RowError::BadId(_))), "{got:?}");
        }
        // A BOM before a header still lets the header be recognised.
        let header = format!("\u{feff}id,price,expiration_date\n{plain}");
        assert_eq!(verdicts(header.as_bytes()), [(2, true)]);
        assert_eq!(rows_of(Trickle(header.as_bytes())).len(), 1);
        // Only at the very start, and input shorter than a BOM is not lost.
        let later = format!("{plain}\u{feff}{plain}");
        assert_eq!(verdicts(later.as_bytes()), [(1, true), (2, false)]);
        assert!(rows(b"\xEF\xBB\xBF").is_empty());
        assert_eq!(
            rows_of(Trickle(b"12")).pop().map(|(l, v)| (l, v.err())),
            Some((1, Some(RowError::FieldCount(1))))
        );
    }

    #[test]
    fn crlf_line_endings() {
        let input = REAL.replace('\n', "\r\n");
        let got = rows(input.as_bytes());
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(got[0].1.as_ref().unwrap().date(), DATE.as_bytes());
        // Mixed endings and CRLF blank lines.
        let mixed = format!("{ID},1,{DATE}\r\n\r\n{ID},2,{DATE}\n\r\n{ID},3,{DATE}");
        assert_eq!(
            verdicts(mixed.as_bytes()),
            [(1, true), (3, true), (5, true)]
        );
    }

    #[test]
    fn blank_lines_are_skipped_and_counted() {
        let row = format!("{ID},1,{DATE}");
        let input = format!("\n\n{row}\n\n   \n\t\n{row}\n\n\n{row}\n\n");
        assert_eq!(
            verdicts(input.as_bytes()),
            [(3, true), (7, true), (10, true)]
        );
        assert!(rows(b"").is_empty());
        assert!(rows(b"\n\r\n  \n").is_empty());
    }

    #[test]
    fn quoted_fields() {
        let input = format!(
            "\"{ID}\",\"60.683466\",\"{DATE}\"\n\
             {ID},\"1\",\"2018-08-04 05:32:31 +0200 \"\"CEST\"\"\"\n\
             {ID},\"1,5\",{DATE}\n\
             {ID},1,\"{DATE},x\"\n\
             \" {ID} \",\" 1 \",\" {DATE} \"\n"
        );
        let got = rows(input.as_bytes());
        assert_eq!(got.len(), 5);
        let first = got[0].1.as_ref().unwrap();
        assert_eq!(
            (first.key(), first.price(), first.date()),
            (uuid(ID), price(60683466, 6), DATE.as_bytes())
        );
        assert!(matches!(&got[1].1, Err(RowError::DateFormat(d)) if d.contains("\"CEST\"")));
        assert!(matches!(&got[2].1, Err(RowError::BadPrice(p)) if p == "1,5"));
        assert!(matches!(&got[3].1, Err(RowError::DateFormat(_))));
        // Spaces inside quotes are padding too.
        assert_eq!(got[4].1.as_ref().unwrap().date(), DATE.as_bytes());
    }

    #[test]
    fn spaces_around_fields_are_ignored() {
        let input = format!("  {ID} ,\t60.683466 ,  {DATE}  \t\n");
        let got = rows(input.as_bytes());
        let r = got[0].1.as_ref().unwrap();
        assert_eq!(r.key(), uuid(ID));
        assert_eq!(r.price(), price(60683466, 6));
        assert_eq!(r.date(), DATE.as_bytes());
        // But not inside a field.
        let inside = format!("{ID},60. 68,{DATE}\n");
        assert!(matches!(
            &rows(inside.as_bytes())[0].1,
            Err(RowError::BadPrice(_))
        ));
    }

    #[test]
    fn line_numbers_across_quoted_newlines() {
        let row = format!("{ID},1,{DATE}");
        let input = format!(
            "{row}\n\
             {ID},1,\"2018-08-04\n05:32:31\"\n\
             \n\
             {row}\n\
             {ID},\"1\r\n\r\n2\",{DATE}\r\n\
             {row}\n\
             \"{ID}\n\",1\n\
             {row}"
        );
        assert_eq!(
            verdicts(input.as_bytes()),
            [
                (1, true),
                (2, false),
                (5, true),
                (6, false),
                (9, true),
                (10, false),
                (12, true)
            ]
        );
    }

    #[test]
    fn unbalanced_quote_runs_to_the_end_and_keeps_its_line() {
        let row = format!("{ID},1,{DATE}");
        for tail in ["", "\n", "\n\n", "\r\n"] {
            let input = format!("{row}\n\n{ID},\"1,{DATE}\n{row}{tail}");
            let got: Vec<_> = rows(input.as_bytes())
                .into_iter()
                .map(|(l, v)| (l, v.err()))
                .collect();
            assert_eq!(
                got,
                [(1, None), (3, Some(RowError::FieldCount(2)))],
                "{tail:?}"
            );
        }
    }

    #[test]
    fn line_numbers_survive_long_rows_and_long_gaps() {
        let row = format!("{ID},1,{DATE}");
        // A quoted field and a run of blank lines both far longer than the
        // reader's buffer.
        let field = "x\n".repeat(3 * READ_BUF);
        let blanks = "\n".repeat(3 * READ_BUF);
        let input = format!("{row}\n{ID},\"{field}\",{DATE}\n{blanks}{row}\n");
        let long_lines = 3 * READ_BUF as u64;
        assert_eq!(
            verdicts(input.as_bytes()),
            [(1, true), (2, false), (3 + long_lines + long_lines, true)]
        );
        assert_eq!(lines(input.as_bytes()), lines_trickled(input.as_bytes()));
    }

    fn lines_trickled(input: &[u8]) -> Vec<u64> {
        rows_of(Trickle(input))
            .into_iter()
            .map(|(l, _)| l)
            .collect()
    }

    #[test]
    fn io_errors_end_the_stream() {
        /// One good row, then a failing disk.
        struct Broken<'a>(&'a [u8]);
        impl Read for Broken<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = self.0.read(buf)?;
                Ok(n)
            }
        }
        let row = format!("{ID},1,{DATE}\n");
        let mut rows = Rows::new(Broken(row.as_bytes()));
        assert!(rows.next().unwrap().unwrap().1.is_ok());
        let err = rows.next().unwrap().unwrap_err();
        assert!(err.is_io_error(), "{err}");
        assert!(rows.next().is_none());
    }

    /// One expected row: `(line, Ok(json))` or `(line, Err(reason))`.
    fn expected_rows(text: &str) -> Vec<(u64, Result<String, String>)> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut parts = l.splitn(3, '\t');
                let line = parts.next().unwrap().parse().unwrap();
                let verdict = parts.next().unwrap();
                let detail = parts.next().unwrap_or_default().to_string();
                match verdict {
                    "valid" => (line, Ok(detail)),
                    "invalid" => (line, Err(detail)),
                    other => panic!("bad verdict {other:?} in {l:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn odd_rows_fixture() {
        let csv = include_str!("../../../fixtures/odd-rows.csv");
        let want = expected_rows(include_str!("../../../fixtures/odd-rows.expected"));
        let got = rows(csv.as_bytes());
        assert!(csv.contains("\r\n"), "the fixture must keep its CRLF line");
        assert!(want.len() >= 30);
        for (i, ((line, verdict), (want_line, want_verdict))) in got.iter().zip(&want).enumerate() {
            assert_eq!(line, want_line, "row {i}");
            match (verdict, want_verdict) {
                (Ok(r), Ok(json)) => {
                    let mut out = Vec::new();
                    r.write_json(&mut out);
                    assert_eq!(std::str::from_utf8(&out).unwrap(), json, "line {line}");
                }
                (Err(_), Err(_)) => {}
                (got, want) => panic!("line {line}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(got.len(), want.len());
        // Both the valid and the invalid sides are exercised.
        assert!(want.iter().filter(|w| w.1.is_ok()).count() >= 10);
        assert!(want.iter().filter(|w| w.1.is_err()).count() >= 15);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn csv_shaped_input_never_panics_and_reads_alike_in_any_chunks(
                tokens in proptest::collection::vec(
                    prop::sample::select(vec![
                        "a", "id", ",", "\"", "\n", "\r", "\r\n", " ", "\u{feff}", "1.5", "-1",
                        "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118", "2018-08-04 05:32:31",
                    ]),
                    0..60,
                )
            ) {
                let input = tokens.concat();
                let whole = rows(input.as_bytes());
                let trickled = rows_of(Trickle(input.as_bytes()));
                prop_assert_eq!(whole, trickled);
            }

            #[test]
            fn line_numbers_match_physical_lines(
                tokens in proptest::collection::vec(
                    prop::sample::select(vec!["a", ",", " ", "\n", "\r\n"]),
                    0..80,
                )
            ) {
                let input = tokens.concat();
                // Without quotes, a row is a physical line that is not blank.
                let mut want: Vec<(u64, &str)> = input
                    .split('\n')
                    .zip(1..)
                    .filter(|(l, _)| !l.trim().is_empty())
                    .map(|(l, n)| (n, l))
                    .collect();
                // Except a first row of three words (`a a,aaa,a`): a header.
                let names = |l: &str| {
                    let fields: Vec<&str> = l.split(',').map(str::trim).collect();
                    fields.len() == 3 && fields.iter().all(|f| (1..=32).contains(&f.len()))
                };
                if want.first().is_some_and(|&(_, l)| names(l)) {
                    want.remove(0);
                }
                let want: Vec<u64> = want.into_iter().map(|(n, _)| n).collect();
                prop_assert_eq!(lines(input.as_bytes()), want);
            }
        }
    }
}
