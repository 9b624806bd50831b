//! Partner CSV is checked here, once, so that everything downstream (the
//! sort, the generation file, the API) can trust every [`Row`] it gets.
//!
//! Partner feeds are hand-edited and exported by many tools, so the dialect is
//! lenient about layout (BOM, CRLF, quotes, blank lines, padding, an optional
//! header) and strict about content: every accepted row has a real UUID, an
//! exact non-negative decimal price that fits a [`Price`], and a date in one
//! of a few known, calendar-checked formats that fits [`DATE_MAX`] bytes.
//! Rejected rows come back with a short reason and their line number, so
//! the caller can report them and decide whether to publish.
//!
//! The files, one concern each. `id.rs` reads the id: any UUID text, and
//! the hyphenated one the fast path reads in place. `price.rs` reads the
//! price, an exact decimal kept digit for digit. `date.rs` checks the date
//! against the accepted formats and the calendar. `chunk.rs` parses a chunk
//! of the input, rows of the usual shape in one pass, and tells a header
//! from a first row of data. `reader.rs` is the general path: the CSV
//! reader, configured for the dialect, streaming rows with their line
//! numbers. This file holds what they share: the [`Row`], the [`RowError`]
//! and [`parse_fields`], which checks a row's three fields.

mod chunk;
mod date;
mod id;
mod price;
mod reader;
#[cfg(test)]
mod testing;

pub use chunk::{chunk_end, parse_chunk, ChunkRows, CHUNK_INVALID_KEPT};
pub use date::check_date;
pub use id::parse_id;
pub use price::parse_price;
pub use reader::{csv_reader, Rows, BOM};

use crate::generation::record::{Price, DATE_MAX};

/// A valid row: its id, its price and its date as written (trimmed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Row {
    key: u128,
    price: Price,
    date: [u8; DATE_MAX],
    date_len: u8,
}

impl Row {
    fn new(key: u128, price: Price, date: &[u8]) -> Row {
        let mut d = [0; DATE_MAX];
        d[..date.len()].copy_from_slice(date);
        Row {
            key,
            price,
            date: d,
            date_len: date.len() as u8,
        }
    }

    /// The date exactly as written (trimmed).
    pub fn date(&self) -> &[u8] {
        &self.date[..usize::from(self.date_len)]
    }

    pub fn key(&self) -> u128 {
        self.key
    }

    pub fn price(&self) -> Price {
        self.price
    }

    /// Appends the API's JSON body for this row to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::generation::record::write_json(self.key, Some(self.price), out, |o| {
            o.extend_from_slice(self.date());
        });
    }
}

/// Why a row was rejected. `Display` is a short reason for a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The row does not have exactly `id,price,expiration_date`.
    #[error("expected 3 fields, found {0}")]
    FieldCount(usize),
    /// One field holding another common delimiter (`;`, a tab, `|`): the
    /// row of a feed that is not comma-separated.
    #[error("expected 3 fields separated by commas, found 1 field holding {}", delimiter_name(*.0))]
    OtherDelimiter(u8),
    /// The id is not a UUID.
    #[error("bad id {0:?}")]
    BadId(String),
    /// The price is not a plain decimal number (empty, `NaN`, `1,5`, ...).
    #[error("bad price {0:?}")]
    BadPrice(String),
    /// The price starts with a minus sign (even `-0`).
    #[error("price is negative: {0:?}")]
    NegativePrice(String),
    /// The price is well formed but does not fit a [`Price`].
    #[error("price has too many digits: {0:?}")]
    PriceTooLong(String),
    /// The date matches none of the accepted layouts.
    #[error("date does not match any accepted format: {0:?}")]
    DateFormat(String),
    /// The date has the right layout but names a moment that does not exist
    /// (month 13, 2019-02-29, 24:00, offset +2400, ...).
    #[error("date is not a real date and time: {0:?}")]
    DateOutOfRange(String),
    /// The date does not fit the record.
    #[error("date is longer than {max} bytes: {0:?}", max = DATE_MAX)]
    DateTooLong(String),
    /// The first row, rejected for the error it holds, looks partly like
    /// a header (see [`FirstRow::HeaderLike`]): said, so that a partner
    /// whose header was not recognised sees why line 1 counts as invalid.
    ///
    /// [`FirstRow::HeaderLike`]: chunk::FirstRow::HeaderLike
    #[error(
        "{0} (the first line looks like a header, but is not read as one: a header's first \
         field is `id`, or it has 3 fields that are all column names: a letter, then \
         letters, digits, `_`, `-` or spaces)"
    )]
    HeaderLike(Box<RowError>),
}

impl RowError {
    /// The error of a row of `n` fields, `row` its text (or its one field):
    /// [`RowError::OtherDelimiter`] when it is one field holding `;`, tabs
    /// or `|` (the most frequent of them), else [`RowError::FieldCount`].
    pub fn field_count(n: usize, row: &[u8]) -> RowError {
        if n == 1 {
            let most = OTHER_DELIMITERS
                .iter()
                .map(|&d| (memchr::memchr_iter(d, row).count(), d))
                .max();
            if let Some((_, d)) = most.filter(|&(count, _)| count > 0) {
                return RowError::OtherDelimiter(d);
            }
        }
        RowError::FieldCount(n)
    }

    /// The delimiter the row seems to use, when it is not a comma.
    pub fn delimiter(&self) -> Option<u8> {
        match self {
            RowError::OtherDelimiter(d) => Some(*d),
            RowError::HeaderLike(why) => why.delimiter(),
            _ => None,
        }
    }
}

/// Delimiters feeds use instead of commas, recognised in bad rows.
const OTHER_DELIMITERS: [u8; 3] = [b';', b'\t', b'|'];

/// How a delimiter is named in messages.
pub fn delimiter_name(d: u8) -> String {
    match d {
        b'\t' => "tabs".to_string(),
        d => format!("'{}'", d as char),
    }
}

/// Longest excerpt of offending input kept in a [`RowError`], in characters;
/// enough to recognise the value without flooding the log.
const SNIPPET_CHARS: usize = 60;

/// The offending text for an error message: lossy UTF-8, cut to
/// [`SNIPPET_CHARS`] characters with `…` marking the cut.
fn snippet(bytes: &[u8]) -> String {
    // A char is at most 4 bytes, so this prefix holds every char we keep and
    // spares converting a huge field just to throw most of it away.
    let head = &bytes[..bytes.len().min(4 * SNIPPET_CHARS + 4)];
    let text = String::from_utf8_lossy(head);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(SNIPPET_CHARS).collect();
    if chars.next().is_some() || head.len() < bytes.len() {
        out.push('…');
    }
    out
}

/// Validates one row's three fields (trimming each first) into a [`Row`].
/// The first bad field, in column order, is the one reported.
pub fn parse_fields(id: &[u8], price: &[u8], date: &[u8]) -> Result<Row, RowError> {
    let id = id.trim_ascii();
    let key = parse_id(id).ok_or_else(|| RowError::BadId(snippet(id)))?;
    parse_after_id(key, price, date)
}

/// The rest of [`parse_fields`], once the id is known good.
fn parse_after_id(key: u128, price: &[u8], date: &[u8]) -> Result<Row, RowError> {
    let price = parse_price(price.trim_ascii())?;
    let date = date.trim_ascii();
    check_date(date)?;
    Ok(Row::new(key, price, date))
}

#[cfg(test)]
mod tests {
    use super::testing::{rows, DATE, ID};
    use super::*;

    #[test]
    fn real_line_json_is_digit_for_digit() {
        let r = parse_fields(ID.as_bytes(), b"60.683466", DATE.as_bytes()).unwrap();
        let mut json = Vec::new();
        r.write_json(&mut json);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            format!(r#"{{"id":"{ID}","price":60.683466,"expiration_date":"{DATE}"}}"#)
        );
    }

    #[test]
    fn parse_fields_reports_the_first_bad_field() {
        assert!(matches!(
            parse_fields(b"x", b"-1", b"nope"),
            Err(RowError::BadId(_))
        ));
        assert!(matches!(
            parse_fields(ID.as_bytes(), b"-1", b"nope"),
            Err(RowError::NegativePrice(_))
        ));
        assert!(matches!(
            parse_fields(ID.as_bytes(), b"1", b"nope"),
            Err(RowError::DateFormat(_))
        ));
        assert!(matches!(
            parse_fields(ID.as_bytes(), b"1", b""),
            Err(RowError::DateFormat(_))
        ));
    }

    #[test]
    fn error_messages_are_short_and_safe_to_log() {
        assert_eq!(
            RowError::FieldCount(2).to_string(),
            "expected 3 fields, found 2"
        );
        assert_eq!(
            parse_fields(b"xyz", b"1", DATE.as_bytes())
                .unwrap_err()
                .to_string(),
            "bad id \"xyz\""
        );
        let long = parse_fields(ID.as_bytes(), b"1", &[b'x'; 100]).unwrap_err();
        assert_eq!(
            long.to_string(),
            format!("date is longer than 40 bytes: \"{}…\"", "x".repeat(60))
        );
        // Control bytes and bad UTF-8 are escaped, so one error is one line.
        let odd = parse_fields(b"a\nb\"\xff", b"1", DATE.as_bytes()).unwrap_err();
        assert_eq!(odd.to_string(), "bad id \"a\\nb\\\"\u{fffd}\"");
        let huge = vec![b'9'; 1 << 20];
        let msg = parse_price(&huge).unwrap_err().to_string();
        assert!(msg.len() < 100, "{msg}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_id(&input);
                let _ = parse_price(&input);
                let _ = check_date(&input);
                let _ = parse_fields(&input, &input, &input);
                let _ = Rows::new(&input[..]).count();
            }

            /// A row written from any valid record parses back to it.
            #[test]
            fn valid_rows_round_trip(
                key in any::<u128>(),
                units in 0..=Price::MAX_UNITS,
                scale in 0..=Price::MAX_SCALE,
                (y, mo, d, h, mi, sec) in (1u32..=9999, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60),
                zone in prop::sample::select(vec![" +0200 CEST", " -0300 -03", "Z", "+05:30", ""]),
                pad in prop::sample::select(vec!["", " ", "  "]),
            ) {
                let price = Price::new(units, scale).unwrap();
                let sep = if zone.starts_with(' ') || zone.is_empty() { ' ' } else { 'T' };
                let date = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{sec:02}{zone}");
                let id = uuid::Uuid::from_u128(key).hyphenated().to_string();
                let line = format!("{pad}{id}{pad},{pad}{price}{pad},{pad}{date}{pad}\n");
                let want = Row::new(key, price, date.as_bytes());
                let got = parse_fields(id.as_bytes(), price.to_string().as_bytes(), date.as_bytes());
                prop_assert_eq!(got, Ok(want));
                // And the same through the chunk parser and the CSV reader.
                let chunk = parse_chunk(line.as_bytes(), true);
                prop_assert_eq!(chunk.records.len(), 1);
                let r = chunk.records[0];
                prop_assert_eq!((r.key(), r.price()), (key, Some(price)));
                prop_assert_eq!(chunk.date(&r), date.as_bytes());
                prop_assert_eq!(rows(line.as_bytes()), vec![(1, Ok(want))]);
            }
        }
    }
}
