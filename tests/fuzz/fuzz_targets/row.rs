//! The CSV row parser: `ingest::parse_fields`, `ingest::parse_price`,
//! `ingest::parse_chunk`, `ingest::Rows` and `pipeline::Chunker`.
//!
//! The input is three control bytes, then a body:
//! - `ctl[0]` odd: the body is cut into id, price and date at its first two
//!   commas; even: at two positions taken from `ctl[0]` and `ctl[1]`, the
//!   byte at each cut dropped as the separator.
//! - `ctl[2]`: the chunk length (1..=256) for the chunked parse, and the
//!   read size (1..=7) for the trickled one.
//!
//! Properties:
//! - a price is accepted, refused as negative, malformed or too long exactly
//!   as an independent reading of docs/feeds.md's grammar says, and an
//!   accepted one is the same number, with the most written decimals that fit;
//! - an accepted row, written back as text (fields, a CSV line, a quoted
//!   CRLF line) parses to the same record, and its JSON says the same;
//! - the fast path of `parse_chunk` finds what `Rows` finds, row by row;
//! - cutting the input into chunks (`Chunker`) and parsing them apart
//!   (`parse_chunk`, as `promo build` does) finds the same records, counts
//!   and invalid rows at the same lines as reading it whole with `Rows`,
//!   and reading it a few bytes at a time finds the same as reading it whole.
//!
//! Each `Rows` builds a CSV state machine, by far the most expensive step
//! under the fuzzer's instrumentation, so the checks make few of them.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use promo::builder::ingest::{
    self, parse_chunk, parse_fields, parse_id, parse_price, RowError, Rows,
};
use promo::builder::ingest::{ChunkRows, Row};
use promo::builder::pipeline::Chunker;
use promo::generation::date::Dates;
use promo::generation::record::Price;
use uuid::Uuid;

type Verdicts = Vec<(u64, Result<Row, RowError>)>;

/// A promotion as text reads it: id, price, the date as written. What
/// `Rows` yields and what `parse_chunk` yields (records whose dates point
/// into the chunk's own tables) compare in this form.
type Promotion = (u128, Price, Vec<u8>);

fn of_row(r: &Row) -> Promotion {
    (r.key(), r.price(), r.date().to_vec())
}

/// A parsed chunk's records, each date rendered from the chunk's tables.
fn of_chunk(parsed: &ChunkRows) -> Vec<Promotion> {
    parsed
        .records
        .iter()
        .map(|r| {
            let mut date = Vec::new();
            assert!(
                parsed.dates.write(r.date(), &mut date),
                "a date outside its chunk's tables"
            );
            (r.key(), r.price().expect("a parsed price is valid"), date)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, body)) = data.split_first_chunk::<3>() else {
        return;
    };
    let (id, price, date) = split_fields(ctl, body);
    fields(id, price, date);

    let whole = verdicts(Rows::new(body));
    check_lines(&whole, body);
    check_chunk(body, true, &whole);
    check_chunk(body, false, &verdicts(Rows::continuation(body)));
    for (_, verdict) in whole.iter().take(4) {
        if let Ok(record) = verdict {
            round_trip(record);
        }
    }

    let step = 1 + usize::from(ctl[2] % 7);
    assert_eq!(
        verdicts(Rows::new(Trickle { data: body, step })),
        whole,
        "reading {step} bytes at a time"
    );
    check_chunked(body, 1 + usize::from(ctl[2]), &whole);
});

/// The id, price and date fields the control bytes pick out of `body`.
fn split_fields<'a>(ctl: &[u8; 3], body: &'a [u8]) -> (&'a [u8], &'a [u8], &'a [u8]) {
    if ctl[0] % 2 == 1 {
        let mut parts = body.splitn(3, |&b| b == b',');
        let mut next = || parts.next().unwrap_or_default();
        return (next(), next(), next());
    }
    let a = usize::from(ctl[0] / 2) % (body.len() + 1);
    let b = (a + 1 + usize::from(ctl[1])).min(body.len());
    let id = &body[..a];
    let price = body.get(a + 1..b).unwrap_or_default();
    let date = body.get(b + 1..).unwrap_or_default();
    (id, price, date)
}

/// One row's fields: the verdict agrees with each field's own parser, in
/// column order, and an accepted row holds what was written.
fn fields(id: &[u8], price: &[u8], date: &[u8]) {
    let verdict = parse_fields(id, price, date);
    // parse_fields trims each field; the field parsers take trimmed text.
    let (id, price, date) = (id.trim_ascii(), price.trim_ascii(), date.trim_ascii());
    check_price(price);
    let Some(key) = parse_id(id) else {
        assert!(matches!(verdict, Err(RowError::BadId(_))), "{verdict:?}");
        return;
    };
    let price = match parse_price(price) {
        Ok(p) => p,
        Err(e) => return assert_eq!(verdict, Err(e)),
    };
    if let Err(e) = ingest::check_date(date) {
        return assert_eq!(verdict, Err(e));
    }
    let record = verdict.expect("every field is valid");
    assert_eq!(record.key(), key);
    assert_eq!(record.price(), price);
    assert_eq!(record.date(), date);
    round_trip(&record);
}

/// A written price's integer digits, fraction digits and exponent, read
/// straight from docs/feeds.md's grammar: an optional `+`, digits with at most
/// one `.` and at least one digit, then optionally `e`/`E`, a sign and digits.
/// `None` when the text is not of that form.
fn written_decimal(text: &[u8]) -> Option<(&[u8], &[u8], i128)> {
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let text = text.strip_prefix(b"+").unwrap_or(text);
    let (mantissa, exponent) = match text.iter().position(|b| b.eq_ignore_ascii_case(&b'e')) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let mut halves = mantissa.splitn(2, |&b| b == b'.');
    let int = halves.next().unwrap_or_default();
    let frac = halves.next().unwrap_or_default();
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    let exp = match exponent {
        None => 0,
        Some(e) => {
            let (sign, e) = match e.first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if e.is_empty() || !digits(e) {
                return None;
            }
            // Saturate far beyond any exponent that could fit a Price.
            let magnitude = e.iter().fold(0i128, |n, &d| {
                (n * 10 + i128::from(d - b'0')).min(1_000_000_000_000_000)
            });
            sign * magnitude
        }
    };
    Some((int, frac, exp))
}

/// The price a written decimal must become: the same value, with as many of
/// the written decimals as fit (only trailing zeros may go), or `None` when
/// no `Price` holds the value.
fn expected_price(int: &[u8], frac: &[u8], exp: i128) -> Option<Price> {
    let written_scale = frac.len() as i128 - exp;
    let mut digits: Vec<u8> = int
        .iter()
        .chain(frac)
        .copied()
        .skip_while(|&d| d == b'0')
        .collect();
    // The value is digits * 10^power, digits without trailing zeros.
    let mut power = -written_scale;
    while digits.last() == Some(&b'0') {
        digits.pop();
        power += 1;
    }
    let max_scale = i128::from(Price::MAX_SCALE);
    if digits.is_empty() {
        return Price::new(0, written_scale.clamp(0, max_scale) as u8);
    }
    if digits.len() > 19 {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u128, |n, &d| n * 10 + u128::from(d - b'0'));
    let lowest = (-power).max(0);
    let highest = written_scale.clamp(0, max_scale);
    (lowest..=highest).rev().find_map(|scale| {
        let zeros = u32::try_from(power + scale).ok()?;
        let units = value.checked_mul(10u128.checked_pow(zeros)?)?;
        Price::new(u64::try_from(units).ok()?, scale as u8)
    })
}

/// `parse_price` against the oracle above.
fn check_price(text: &[u8]) {
    let got = parse_price(text);
    if text.first() == Some(&b'-') {
        assert!(matches!(got, Err(RowError::NegativePrice(_))), "{got:?}");
        return;
    }
    match written_decimal(text) {
        None => assert!(matches!(got, Err(RowError::BadPrice(_))), "{got:?}"),
        Some((int, frac, exp)) => match expected_price(int, frac, exp) {
            Some(want) => assert_eq!(got, Ok(want)),
            None => assert!(matches!(got, Err(RowError::PriceTooLong(_))), "{got:?}"),
        },
    }
}

/// An accepted record, written back as text, parses to itself.
fn round_trip(record: &Row) {
    let id = Uuid::from_u128(record.key()).hyphenated().to_string();
    let price = record.price().to_string();
    let date = std::str::from_utf8(record.date()).expect("a valid date is ASCII");
    assert_eq!(
        parse_fields(id.as_bytes(), price.as_bytes(), date.as_bytes()).as_ref(),
        Ok(record)
    );
    // The plain forms take parse_chunk's fast path, the quoted one the CSV
    // reader (the equivalence of the two is checked on every input).
    for line in [
        format!("{id},{price},{date}\n"),
        format!("id,price,expiration_date\n {id} , {price} , {date} "),
        format!("\"{id}\",\"{price}\",\"{date}\"\r\n"),
    ] {
        let parsed = parse_chunk(line.as_bytes(), true);
        assert_eq!(
            (parsed.rows, parsed.invalid, of_chunk(&parsed)),
            (1, 0, vec![of_row(record)]),
            "{line:?}"
        );
    }

    let mut json = Vec::new();
    record.write_json(&mut json);
    let text = std::str::from_utf8(&json).expect("JSON is UTF-8");
    let v: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["expiration_date"], date);
    assert!(v["price"].is_number());
    assert!(text.contains(&format!(",\"price\":{price},")), "{text}");
}

fn verdicts<R: Read>(rows: Rows<R>) -> Verdicts {
    rows.map(|r| r.expect("reading from memory cannot fail"))
        .collect()
}

/// Line numbers are 1-based physical lines, in order, within the input.
fn check_lines(verdicts: &Verdicts, input: &[u8]) {
    let last_line = input.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let mut prev = 1;
    for &(line, _) in verdicts {
        assert!(
            (prev..=last_line).contains(&line),
            "line {line} after {prev}"
        );
        prev = line;
    }
}

/// `parse_chunk` finds the rows `Rows` found (`verdicts`) in `chunk`.
fn check_chunk(chunk: &[u8], first: bool, verdicts: &Verdicts) {
    let parsed = parse_chunk(chunk, first);
    let records: Vec<Promotion> = verdicts
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok().map(of_row))
        .collect();
    let invalid: Vec<(u64, RowError)> = verdicts
        .iter()
        .filter_map(|(line, v)| v.as_ref().err().map(|e| (*line, e.clone())))
        .collect();
    assert_eq!(parsed.rows, verdicts.len() as u64);
    assert_eq!(of_chunk(&parsed), records);
    assert_eq!(parsed.invalid, invalid.len() as u64);
    let kept = invalid.len().min(ingest::CHUNK_INVALID_KEPT);
    assert_eq!(parsed.first_invalid, invalid[..kept]);
    let newlines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(parsed.newlines, newlines);
}

/// Cuts `input` into chunks as `promo build` does and parses each with
/// `parse_chunk`: together they find what `Rows` found in the whole input
/// (`whole`): the same records, counts and first invalid rows, at the same
/// global lines.
fn check_chunked(input: &[u8], chunk_len: usize, whole: &Verdicts) {
    let mut chunks = Chunker::new(input, chunk_len);
    let mut seen = Vec::new();
    let mut records = Vec::new();
    let (mut rows, mut invalid) = (0, 0);
    let mut lines_before = 0;
    let mut errors = whole
        .iter()
        .filter_map(|(line, v)| v.as_ref().err().map(|e| (*line, e)));
    while let Some(c) = chunks
        .next_chunk()
        .expect("reading from memory cannot fail")
    {
        assert!(!c.bytes.is_empty(), "an empty chunk");
        assert_eq!(c.first, seen.is_empty(), "only the first chunk is first");
        let parsed = parse_chunk(&c.bytes, c.first);
        rows += parsed.rows;
        invalid += parsed.invalid;
        records.extend(of_chunk(&parsed));
        // This chunk's invalid rows are the next ones of the whole input;
        // it reports the first few of them, with lines within the chunk.
        let mine: Vec<_> = errors.by_ref().take(parsed.invalid as usize).collect();
        assert_eq!(
            parsed.first_invalid.len(),
            mine.len().min(ingest::CHUNK_INVALID_KEPT)
        );
        for ((line, why), (whole_line, whole_why)) in parsed.first_invalid.iter().zip(&mine) {
            assert_eq!((lines_before + line, why), (*whole_line, *whole_why));
        }
        assert_eq!(
            parsed.newlines,
            c.bytes.iter().filter(|&&b| b == b'\n').count() as u64
        );
        lines_before += parsed.newlines;
        seen.extend_from_slice(&c.bytes);
    }
    assert_eq!(seen, input, "the chunks are the input, in order");
    assert_eq!(rows, whole.len() as u64);
    assert_eq!(
        invalid,
        whole.iter().filter(|(_, v)| v.is_err()).count() as u64
    );
    let whole_records: Vec<Promotion> = whole
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok().map(of_row))
        .collect();
    assert_eq!(records, whole_records);
}

/// A reader that hands over at most `step` bytes a call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
