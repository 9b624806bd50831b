//! A chunk of the input, parsed apart from the others: rows of the usual
//! shape in one pass over their bytes, the rest as plain lines or through
//! the CSV reader; and the feed's first row, told apart as a header or data.

use super::date::go_date_len;
use super::id::hyphenated_id;
use super::price::plain_price;
use super::{
    check_date, parse_after_id, parse_fields, parse_id, parse_price, snippet, Row, RowError, Rows,
    BOM,
};
use crate::generation::date::{DateTables, Dates, Fields, PREFIX_LEN};
use crate::generation::record::{Price, Record, RECORD_LEN};

/// The row every feed is made of, checked in one pass with fixed offsets:
/// a lower- or upper-case hyphenated id, a plain decimal price of at most
/// 18 digits, and a Go date without fractional seconds and with a named
/// zone, then `\n`, `\r\n` or the end of `rest`. It accepts nothing the
/// general path would refuse and gives the same record; `None` means "not
/// this shape", never "invalid", and sends the row the general way.
///
/// `rest` is the input from the start of a row on; the row's end is found
/// here rather than by a search for `\n` first. Returns the fields and the
/// bytes up to the next row, counting a missing last line feed as one.
#[inline]
fn parse_fast(rest: &[u8]) -> Option<(u128, Price, &[u8], Fields, usize)> {
    let (id, after) = rest.split_first_chunk::<36>()?;
    let after = after.strip_prefix(b",")?;
    let key = hyphenated_id(id)?;
    let (price, comma) = plain_price(after)?;
    let tail = &after[comma + 1..];
    let (date_len, fields) = go_date_len(tail)?;
    let ending = match &tail[date_len..] {
        [] | [b'\n', ..] => 1,
        [b'\r', b'\n', ..] => 2,
        _ => return None,
    };
    let len = id.len() + 1 + comma + 1 + date_len + ending;
    Some((key, price, &tail[..date_len], fields, len))
}

/// The common row, a hyphenated id then a comma, without scanning the id
/// for commas: a valid id holds none. `None` sends the row the general way.
#[inline]
fn parse_usual(text: &[u8]) -> Option<Result<Row, RowError>> {
    const ID_LEN: usize = 36;
    if text.get(ID_LEN) != Some(&b',') {
        return None;
    }
    let key = parse_id(&text[..ID_LEN])?;
    let rest = &text[ID_LEN + 1..];
    let comma = memchr::memchr(b',', rest)?;
    let (price, date) = (&rest[..comma], &rest[comma + 1..]);
    if memchr::memchr(b',', date).is_some() {
        return None;
    }
    Some(parse_after_id(key, price, date))
}

/// What parsing one chunk of the input found.
#[derive(Debug, Default)]
pub struct ChunkRows {
    /// The valid rows' records, in input order. Their dates' zones and
    /// overflow text are in `dates`, which is the chunk's own.
    pub records: Vec<Record>,
    pub dates: DateTables,
    /// Data rows (header and blank lines excluded).
    pub rows: u64,
    /// Invalid rows.
    pub invalid: u64,
    /// The first invalid rows: line (1-based, within the chunk) and why.
    pub first_invalid: Vec<(u64, RowError)>,
    /// Newlines in the chunk, to number the lines of the chunks after it.
    pub newlines: u64,
}

/// Invalid rows a [`ChunkRows`] keeps the reasons of.
pub const CHUNK_INVALID_KEPT: usize = 10;

impl ChunkRows {
    /// A valid row whose date's fields are known, its record built where
    /// it is kept.
    #[inline]
    fn accept(&mut self, key: u128, price: Price, date: &[u8], fields: Fields) {
        self.rows += 1;
        let word = self.dates.encode(Some(fields), &date[PREFIX_LEN..], date);
        self.records.push(Record::from_bytes([0; RECORD_LEN]));
        self.records.last_mut().unwrap().set(key, price, word);
    }

    /// The date of one of this chunk's records, as written.
    pub fn date(&self, record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        self.dates.write(record.date(), &mut out);
        out
    }

    fn verdict(&mut self, line: u64, verdict: Result<Row, RowError>) {
        self.rows += 1;
        match verdict {
            Ok(row) => {
                let word = self.dates.encode_text(row.date());
                self.records.push(Record::new(row.key, row.price, word));
            }
            Err(why) => {
                self.invalid += 1;
                if self.first_invalid.len() < CHUNK_INVALID_KEPT {
                    self.first_invalid.push((line, why));
                }
            }
        }
    }
}

/// Parses a chunk of the input: whole rows, starting at the start of the
/// input (`first`, where a BOM and a header may be) or right after a row.
///
/// Chunks can be parsed in parallel; together they give what [`Rows`] gives
/// for the whole input. Rows of the usual shape (nearly all of a real feed)
/// take a fast path (`parse_fast`) that reads the fields in place. At the
/// first row that does not, the rest of the chunk is checked once: without
/// quotes and without a lone carriage return, a row is a line and its
/// fields what commas separate; otherwise the rest goes through the CSV
/// reader. (A row on the fast path holds neither, so the CSV reader would
/// have read the rows before it the same way.)
pub fn parse_chunk(chunk: &[u8], first: bool) -> ChunkRows {
    let mut out = ChunkRows {
        records: Vec::with_capacity(chunk.len() / 64),
        ..ChunkRows::default()
    };
    let mut body = chunk;
    if first {
        body = body.strip_prefix(BOM).unwrap_or(body);
    }
    let mut past_first = !first;
    let mut line = 0u64;
    let mut start = 0;
    let mut rest_checked = false;
    // Every row, the text after the last line feed included, even if empty.
    while start <= body.len() {
        line += 1;
        if let Some((key, price, date, fields, len)) = parse_fast(&body[start..]) {
            past_first = true;
            out.accept(key, price, date, fields);
            start += len;
            continue;
        }
        if !std::mem::replace(&mut rest_checked, true) && !plain(&body[start..]) {
            // From where the fast path stopped; with nothing read yet, the
            // chunk as it is (its BOM and header too).
            let rest = if start == 0 { chunk } else { &body[start..] };
            let rows = if start == 0 && first {
                Rows::new(rest)
            } else {
                Rows::continuation(rest)
            };
            let lines_before = line - 1;
            for row in rows {
                // Reading from memory cannot fail.
                let (line, verdict) = row.expect("reading a slice cannot fail");
                out.verdict(lines_before + line, verdict);
            }
            out.newlines = lines_before + memchr::memchr_iter(b'\n', rest).count() as u64;
            return out;
        }
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |at| start + at);
        let text = &body[start..end];
        start = end + 1;
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if let Some(verdict) = parse_usual(text) {
            past_first = true;
            out.verdict(line, verdict);
            continue;
        }
        let mut commas = memchr::memchr_iter(b',', text);
        let (Some(c1), Some(c2), None) = (commas.next(), commas.next(), commas.next()) else {
            // Not three fields: blank, a lone header word, or a bad row.
            if text.trim_ascii().is_empty() {
                continue;
            }
            let n = memchr::memchr_iter(b',', text).count() + 1;
            let verdict = || Err(RowError::field_count(n, text));
            if std::mem::replace(&mut past_first, true) {
                out.verdict(line, verdict());
            } else {
                let fields: Vec<&[u8]> = text.split(|&b| b == b',').collect();
                if let Some(verdict) = FirstRow::judge(&fields, verdict) {
                    out.verdict(line, verdict);
                }
            }
            continue;
        };
        let (id, price, date) = (&text[..c1], &text[c1 + 1..c2], &text[c2 + 1..]);
        let verdict = || parse_fields(id, price, date);
        if std::mem::replace(&mut past_first, true) {
            out.verdict(line, verdict());
        } else if let Some(verdict) = FirstRow::judge(&[id, price, date], verdict) {
            out.verdict(line, verdict);
        }
    }
    out.newlines = line - 1;
    out
}

/// What the first row of a feed (its first row that is not blank) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstRow {
    /// A header, skipped and not counted as a row: its first field is `id`
    /// (any case), whatever the others are; or, `by_names`, it has 3 fields
    /// and every one is a column name ([`is_column_name`]).
    Header {
        by_names: bool,
    },
    /// Data whose first field is a column name while no other field holds
    /// a price or a date: if it is invalid, its error says that it looks
    /// like a header ([`RowError::HeaderLike`]).
    HeaderLike,
    Data,
}

impl FirstRow {
    /// What the row of `fields` (untrimmed) is, if it is the first.
    fn of(fields: &[&[u8]]) -> FirstRow {
        let Some(first) = fields.first().map(|f| f.trim_ascii()) else {
            return FirstRow::Data;
        };
        if first.eq_ignore_ascii_case(b"id") {
            return FirstRow::Header { by_names: false };
        }
        if !is_column_name(first) {
            return FirstRow::Data;
        }
        let mut rest = fields[1..].iter().map(|f| f.trim_ascii());
        if fields.len() == 3 && rest.clone().all(is_column_name) {
            return FirstRow::Header { by_names: true };
        }
        if rest.any(|f| parse_price(f).is_ok() || check_date(f).is_ok()) {
            return FirstRow::Data;
        }
        FirstRow::HeaderLike
    }

    /// The first row, of `fields`, judged: `None` for a header (which is
    /// logged), else `verdict`, its error saying when the row looks like
    /// a header. Only the first row comes here, so it may take its time.
    pub(super) fn judge(
        fields: &[&[u8]],
        verdict: impl FnOnce() -> Result<Row, RowError>,
    ) -> Option<Result<Row, RowError>> {
        let text = || snippet(&fields.join(&b','));
        match FirstRow::of(fields) {
            // The documented header: nothing to remark on.
            FirstRow::Header { by_names: false } => {
                tracing::debug!("the first line was read as a header: {:?}", text());
                None
            }
            FirstRow::Header { by_names: true } => {
                tracing::info!(
                    "the first line was read as a header (column names), not as a row: {:?}",
                    text()
                );
                None
            }
            FirstRow::HeaderLike => {
                Some(verdict().map_err(|why| RowError::HeaderLike(Box::new(why))))
            }
            FirstRow::Data => Some(verdict()),
        }
    }
}

/// Bytes a column name may have: enough for `expiration_date_utc`, too few
/// for a hyphenated UUID.
const COLUMN_NAME_MAX: usize = 32;

/// Whether `field` (trimmed) reads as a header's column name: 1 to
/// [`COLUMN_NAME_MAX`] bytes, a letter first, then only ASCII letters,
/// digits, `_`, `-` and spaces, fewer digits than letters, and neither a
/// UUID, a price nor a date.
///
/// Strict on purpose: a header is skipped without being counted, so no row
/// of data may pass for one. A data row's price and date never are names;
/// nor is a mistyped id, which is mostly hex digits.
fn is_column_name(field: &[u8]) -> bool {
    let shape = field.first().is_some_and(u8::is_ascii_alphabetic)
        && field.len() <= COLUMN_NAME_MAX
        && field
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b' '));
    let count = |class: fn(&u8) -> bool| field.iter().filter(|b| class(b)).count();
    // The shape already rules out today's values; they are checked all the
    // same, so that a value format added later (a date that starts with
    // the month's name) can never make a row of data a header.
    shape
        && count(u8::is_ascii_digit) < count(u8::is_ascii_alphabetic)
        && parse_id(field).is_none()
        && parse_price(field).is_err()
        && check_date(field).is_err()
}

/// True when `chunk` has no quote and no carriage return other than before
/// a line feed: then a row is a line and a field is what commas separate.
fn plain(chunk: &[u8]) -> bool {
    memchr::memchr(b'"', chunk).is_none()
        && memchr::memchr_iter(b'\r', chunk).all(|at| chunk.get(at + 1) == Some(&b'\n'))
}

/// Where to end a chunk taken from the front of `buf`: just after the last
/// line feed that is outside quotes, or `None` if there is none.
pub fn chunk_end(buf: &[u8]) -> Option<usize> {
    if memchr::memchr(b'"', buf).is_none() {
        return memchr::memrchr(b'\n', buf).map(|at| at + 1);
    }
    // Follow the CSV reader's states: a quote opens a quoted field only at
    // the start of a field, and a doubled quote inside one is a quote.
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut end = None;
    for (at, &b) in buf.iter().enumerate() {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::FieldStart, b'"') => State::Quoted,
            (_, b'\n') => {
                end = Some(at + 1);
                State::FieldStart
            }
            (_, b',' | b'\r') => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ingest::testing::{rows, verdicts, DATE, ID};

    #[test]
    fn header_is_skipped_only_when_first() {
        let input = format!("id,price,expiration_date\n{ID},1,{DATE}\nid,price,expiration_date\n");
        let got = rows(input.as_bytes());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 2);
        assert!(got[0].1.is_ok());
        assert_eq!(got[1].0, 3);
        assert!(matches!(&got[1].1, Err(RowError::BadId(id)) if id == "id"));

        // Any case, padded, quoted, after blank lines, any field count.
        for header in [
            " ID , Price , Expiration_Date",
            "\"Id\",x,y",
            "\n\n  \nid",
            "iD,price",
        ] {
            let input = format!("{header}\n{ID},1,{DATE}\n");
            let got = rows(input.as_bytes());
            assert_eq!(got.len(), 1, "{header:?}");
            assert!(got[0].1.is_ok());
        }

        // A first row of data is data, and then no later row is a header.
        let input = format!("{ID},1,{DATE}\nid,price,expiration_date\n");
        let got = verdicts(input.as_bytes());
        assert_eq!(got, [(1, true), (2, false)]);

        // Not a header: the first field must be exactly `id`, or every
        // field a column name (see the tests below).
        assert_eq!(verdicts(b"ids,price,2019-03-29 00:10:04\n"), [(1, false)]);
    }

    /// The rows that `Rows` and `parse_chunk` (as the first chunk) find in
    /// `input`, which must agree: rows counted, and each invalid row's line
    /// and error.
    fn invalid_rows(input: &str) -> (u64, Vec<(u64, RowError)>) {
        let whole = rows(input.as_bytes());
        let invalid: Vec<(u64, RowError)> = whole
            .iter()
            .filter_map(|(line, v)| Some((*line, v.clone().err()?)))
            .collect();
        let chunk = parse_chunk(input.as_bytes(), true);
        assert_eq!(chunk.rows, whole.len() as u64, "{input:?}");
        assert_eq!(chunk.invalid, invalid.len() as u64, "{input:?}");
        assert_eq!(chunk.first_invalid, invalid, "{input:?}");
        (chunk.rows, invalid)
    }

    #[test]
    fn a_first_row_of_column_names_is_a_header() {
        let data = format!("{ID},1,{DATE}\n");
        for header in [
            "uuid,price,expiration_date",
            "UUID , Price , Expiration Date",
            "\"promo-id\",\"price_eur\",\"valid until\"",
            "guid,amount,expires\r",
            "\n \n coupon_id2,price,expiry",
            "x,y,z",
            "\u{feff}uuid,price,expiration_date",
        ] {
            let input = format!("{header}\n{data}");
            let line = 2 + header.matches('\n').count() as u64;
            assert_eq!(invalid_rows(&input), (1, vec![]), "{header:?}");
            assert_eq!(verdicts(input.as_bytes()), [(line, true)], "{header:?}");
        }
        // Only the first row: later, the same line is an invalid row.
        let input = format!("{data}uuid,price,expiration_date\n");
        let (n, invalid) = invalid_rows(&input);
        assert_eq!(n, 2);
        assert_eq!(invalid, [(2, RowError::BadId("uuid".into()))]);
    }

    #[test]
    fn a_first_row_of_data_is_never_a_header() {
        let bad_id = "d018ef0b-dbd9-48f1-ac1a-eb4d90e5711z";
        for (first, why) in [
            // A mistyped id, whatever else is wrong with the row.
            (format!("{bad_id},1,{DATE}"), RowError::BadId(bad_id.into())),
            (
                format!("{bad_id},price,expiration_date"),
                RowError::BadId(bad_id.into()),
            ),
            (
                "d018ef0bdbd948f1ac1aeb4d90e5711,price,expiration_date".into(),
                RowError::BadId("d018ef0bdbd948f1ac1aeb4d90e5711".into()),
            ),
            // A word for an id, but a price or a date beside it.
            (format!("uuid,1,{DATE}"), RowError::BadId("uuid".into())),
            (format!("uuid,price,{DATE}"), RowError::BadId("uuid".into())),
            ("uuid,12.50,tomorrow".into(), RowError::BadId("uuid".into())),
            // A first field that is not a name, by shape or by length.
            (
                "1st,price,expiration_date".into(),
                RowError::BadId("1st".into()),
            ),
            (
                "promo.id,price,expiration_date".into(),
                RowError::BadId("promo.id".into()),
            ),
            (
                format!("{},price,expiration_date", "a".repeat(33)),
                RowError::BadId("a".repeat(33)),
            ),
            ("Id;Price;Date".into(), RowError::OtherDelimiter(b';')),
        ] {
            let input = format!("{first}\n{ID},1,{DATE}\n");
            assert_eq!(
                invalid_rows(&input),
                (2, vec![(1, why.clone())]),
                "{first:?}"
            );
        }
    }

    #[test]
    fn a_first_row_that_looks_partly_like_a_header_says_so() {
        let hint = |why: RowError| RowError::HeaderLike(Box::new(why));
        for (first, why) in [
            (
                "uuid,price,expiration date (UTC)",
                hint(RowError::BadId("uuid".into())),
            ),
            ("uuid,price", hint(RowError::FieldCount(2))),
            ("uuid", hint(RowError::FieldCount(1))),
            (
                "uuid,price,expiration_date,notes",
                hint(RowError::FieldCount(4)),
            ),
            ("\"uuid\",\"\",\"\"", hint(RowError::BadId("uuid".into()))),
            ("promo.id,price", RowError::FieldCount(2)),
        ] {
            let input = format!("{first}\n{ID},1,{DATE}\n");
            assert_eq!(
                invalid_rows(&input),
                (2, vec![(1, why.clone())]),
                "{first:?}"
            );
        }
        let why = hint(RowError::BadId("uuid".into())).to_string();
        assert!(
            why.starts_with("bad id \"uuid\" (the first line looks like a header, but"),
            "{why}"
        );
        assert!(why.contains("3 fields that are all column names"), "{why}");
        // The delimiter a row seems to use is seen through the hint.
        assert_eq!(
            hint(RowError::OtherDelimiter(b'\t')).delimiter(),
            Some(b'\t')
        );
    }

    #[test]
    fn column_names_are_short_words_that_are_no_value() {
        for name in [
            "id",
            "uuid",
            "Expiration Date",
            "price_eur",
            "promo-id",
            "x",
            "price_v2",
            "z".repeat(32).as_str(),
        ] {
            assert!(is_column_name(name.as_bytes()), "{name:?}");
        }
        for value in [
            "",
            "12.5",
            "1e3",
            "2019-03-29",
            ID,
            "d018ef0bdbd948f1ac1aeb4d90e57118",
            // A UUID without its hyphens, of letters only.
            "a".repeat(32).as_str(),
            "ab12",
            "a1b2c3",
            "_id",
            "-id",
            " id",
            "price (EUR)",
            "price.eur",
            "prix_€",
            "z".repeat(33).as_str(),
        ] {
            assert!(!is_column_name(value.as_bytes()), "{value:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Every accepted date, in every form, comes back from its
            /// record exactly as written: compact or in the overflow area,
            /// through the fast path, the plain path and the CSV reader.
            #[test]
            fn every_accepted_date_round_trips(
                (y, mo, d, h, mi, sec) in (0u32..=9999, 1u32..=12, 1u32..=31, 0u32..24, 0u32..60, 0u32..=60),
                form in 0..3usize,
                sep in prop::sample::select(vec![" ", "T", "t"]),
                fraction in proptest::option::of("[0-9]{1,12}"),
                (sign, zh, zm) in (prop::sample::select(vec!["+", "-"]), 0u32..24, 0u32..60),
                name in "[A-Za-z]{1,6}|[+-][0-9]{2}([0-9]{2})?",
                z in prop::sample::select(vec!["Z", "z", "offset"]),
            ) {
                let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
                let head = format!("{y:04}-{mo:02}-{d:02}");
                let time = format!("{h:02}:{mi:02}:{sec:02}{fraction}");
                let date = match form {
                    0 => format!("{head} {time} {sign}{zh:02}{zm:02} {name}"),
                    1 => format!("{head} {time}"),
                    _ if z == "offset" => format!("{head}{sep}{time}{sign}{zh:02}:{zm:02}"),
                    _ => format!("{head}{sep}{time}{z}"),
                };
                prop_assume!(check_date(date.as_bytes()).is_ok());
                let id = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
                for line in [format!("{id},1,{date}\n"), format!("{id},1,\"{date}\"\n")] {
                    let chunk = parse_chunk(line.as_bytes(), true);
                    prop_assert_eq!(chunk.records.len(), 1, "{}", line);
                    let record = chunk.records[0];
                    prop_assert_eq!(chunk.date(&record), date.as_bytes());
                    // Fractional seconds, and only they, take the overflow area.
                    prop_assert_eq!(record.date().is_overflow(), !fraction.is_empty(), "{}", date);
                }
            }
        }

        proptest! {
            // Edge values are a few in a hundred of each field: enough cases
            // that every one of them is met in every run.
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// The one-pass path for the usual row accepts nothing the
            /// general path refuses, and gives the same record.
            #[test]
            fn the_fast_path_agrees_with_the_general_one(
                key in any::<u128>(),
                upper in any::<bool>(),
                price in "[0-9.]{0,21}|[0-9]{1,3}\\.[0-9]{1,7}",
                (y, mo, d, h, mi, sec) in (0u32..=9999, 0u32..=13, 0u32..=32, 0u32..=24, 0u32..=60, 0u32..=60),
                (sign, zh, zm) in (prop::sample::select(vec!['+', '-']), 0u32..=24, 0u32..=60),
                zone in prop::sample::select(vec!["CEST", "Z", "ABCDEF", "ABCDEFG", "", "-03", "C1"]),
                ending in prop::sample::select(vec!["", "\n", "\r\n", "\nnext", "\r", " "]),
                flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            ) {
                let date = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{sec:02} {sign}{zh:02}{zm:02} {zone}");
                let id = uuid::Uuid::from_u128(key).hyphenated().to_string();
                let id = if upper { id.to_uppercase() } else { id };
                let mut text = format!("{id},{price},{date}{ending}").into_bytes();
                if let Some((at, byte)) = flip {
                    let at = at.index(text.len());
                    text[at] = byte;
                }
                if let Some((k, p, d, f, len)) = parse_fast(&text) {
                    prop_assert_eq!(Some(f), crate::generation::date::split(d).map(|s| s.0));
                    // The row ends at the first line feed, or at the end.
                    let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
                    prop_assert_eq!(len, end + 1);
                    let row = &text[..end];
                    let row = row.strip_suffix(b"\r").unwrap_or(row);
                    let fields: Vec<&[u8]> = row.split(|&b| b == b',').collect();
                    prop_assert_eq!(fields.len(), 3);
                    let general = parse_fields(fields[0], fields[1], fields[2]);
                    prop_assert_eq!(general, Ok(Row::new(k, p, d)));
                }
            }
        }
    }
}
