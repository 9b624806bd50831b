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

use std::collections::VecDeque;
use std::io::{self, Read};

use crate::generation::date::{DateTables, Dates, Fields, PREFIX_LEN};
use crate::generation::record::{Price, Record, DATE_MAX, RECORD_LEN};

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

/// Parses an id (already trimmed): any UUID text `uuid` accepts, in any case.
pub fn parse_id(field: &[u8]) -> Option<u128> {
    uuid::Uuid::try_parse_ascii(field).ok().map(|u| u.as_u128())
}

/// Parses a price (already trimmed) into an exact decimal, keeping the digits
/// as written (`0.50` stays units 50, scale 2).
///
/// Accepted: digits with an optional `.` (`12`, `0.5`, `.5`, `5.`), an
/// optional leading `+`, and an optional exponent (`1e3`, `2.5E-2`) that only
/// moves the scale. Trailing fractional zeros are dropped only when that is
/// what it takes to fit a [`Price`].
pub fn parse_price(field: &[u8]) -> Result<Price, RowError> {
    let bad = || RowError::BadPrice(snippet(field));
    if field.first() == Some(&b'-') {
        return Err(RowError::NegativePrice(snippet(field)));
    }
    let body = field.strip_prefix(b"+").unwrap_or(field);
    let (mantissa, exponent) = match body.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &[][..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    let exp = match exponent {
        None => 0,
        Some(e) => parse_exponent(e).ok_or_else(bad)?,
    };
    // `units / 10^scale` where units are the written digits, int then frac.
    let scale = len_i64(frac.len()).saturating_sub(exp);
    let digits = Digits::new(int, frac);
    fit_price(&digits, scale).ok_or_else(|| RowError::PriceTooLong(snippet(field)))
}

/// Parses an exponent's `[+-]digits`, saturating far beyond any scale that
/// could fit so that absurd exponents are "too many digits", not overflow.
fn parse_exponent(e: &[u8]) -> Option<i64> {
    const CAP: i64 = 1 << 40;
    let (negative, digits) = match e.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, e),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits
        .iter()
        .fold(0i64, |n, &d| (n * 10 + i64::from(d - b'0')).min(CAP));
    Some(if negative { -magnitude } else { magnitude })
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// The significant digits of a mantissa written as `int.frac`: leading zeros
/// dropped (they never change the value), never copied.
struct Digits<'a> {
    int: &'a [u8],
    frac: &'a [u8],
    /// Digits kept, counting from the first non-zero one.
    len: usize,
    /// Zeros at the end of those digits.
    trailing_zeros: usize,
}

impl<'a> Digits<'a> {
    fn new(int: &'a [u8], frac: &'a [u8]) -> Digits<'a> {
        let all = || int.iter().chain(frac);
        let leading = all().take_while(|&&d| d == b'0').count();
        let len = int.len() + frac.len() - leading;
        let trailing_zeros = all().rev().take(len).take_while(|&&d| d == b'0').count();
        Digits {
            int,
            frac,
            len,
            trailing_zeros,
        }
    }

    /// The value of the first `n` significant digits, or `None` on overflow.
    fn value_of_first(&self, n: usize) -> Option<u64> {
        let skip = self.int.len() + self.frac.len() - self.len;
        self.int
            .iter()
            .chain(self.frac)
            .skip(skip)
            .take(n)
            .try_fold(0u64, |v, &d| {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
    }
}

/// The [`Price`] `digits / 10^scale`, dropping as few trailing fractional
/// zeros as needed to fit, or `None` when no form of it fits.
fn fit_price(digits: &Digits, scale: i64) -> Option<Price> {
    let max_scale = i64::from(Price::MAX_SCALE);
    if digits.len == 0 {
        // Zero: its fractional digits are all zeros, so any of them may go.
        let scale = u8::try_from(scale.clamp(0, max_scale)).ok()?;
        return Price::new(0, scale);
    }
    if scale < 0 {
        // A positive exponent past the point: append zeros to the units.
        let zeros = u32::try_from(scale.unsigned_abs()).ok()?;
        let units = digits
            .value_of_first(digits.len)?
            .checked_mul(10u64.checked_pow(zeros)?)?;
        return Price::new(units, 0);
    }
    // Any value of 19 or more digits is at least 10^18 > MAX_UNITS, so start
    // at the first candidate that could fit; the loop then runs at most twice.
    let need_for_scale = usize::try_from(scale - max_scale).unwrap_or(0);
    let need_for_len = digits.len.saturating_sub(18);
    let most = digits
        .trailing_zeros
        .min(usize::try_from(scale).unwrap_or(usize::MAX));
    (need_for_scale.max(need_for_len)..=most).find_map(|drop| {
        let units = digits.value_of_first(digits.len - drop)?;
        let scale = u8::try_from(scale - len_i64(drop)).ok()?;
        Price::new(units, scale)
    })
}

/// Checks a date (already trimmed) against the accepted formats; the caller
/// stores the bytes as written.
///
/// Accepted, with every field fixed-width digits and a real calendar date:
/// 1. Go's `time.Time.String()`: `2006-01-02 15:04:05[.999999999] -0700 MST`,
///    the zone name being 1-6 ASCII letters or a numeric `-03` / `+0530`;
/// 2. `2006-01-02 15:04:05`, no zone;
/// 3. RFC 3339: `2006-01-02T15:04:05[.fraction](Z|+hh:mm|-hh:mm)`, any case
///    `T`/`Z`, `T` or a space between date and time (RFC 3339 §5.6 NOTE), a
///    leap second `:60` allowed.
pub fn check_date(field: &[u8]) -> Result<(), RowError> {
    if field.len() > DATE_MAX {
        return Err(RowError::DateTooLong(snippet(field)));
    }
    match parse_date(field) {
        Ok(()) => Ok(()),
        Err(DateFault::Format) => Err(RowError::DateFormat(snippet(field))),
        Err(DateFault::Range) => Err(RowError::DateOutOfRange(snippet(field))),
    }
}

/// Whether a date failed on its layout or on its values; layout is checked
/// first so that garbage is never reported as "out of range".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateFault {
    Format,
    Range,
}

/// A cursor over a date's bytes; every method fails with `Format`.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// Exactly `width` ASCII digits as a number.
    fn num(&mut self, width: usize) -> Result<u32, DateFault> {
        let end = self.at + width;
        let digits = self.s.get(self.at..end).ok_or(DateFault::Format)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(DateFault::Format);
        }
        self.at = end;
        Ok(digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0')))
    }

    /// One byte out of `allowed`, returned.
    fn one_of(&mut self, allowed: &[u8]) -> Result<u8, DateFault> {
        match self.peek() {
            Some(b) if allowed.contains(&b) => {
                self.at += 1;
                Ok(b)
            }
            _ => Err(DateFault::Format),
        }
    }

    /// A run of ASCII digits, possibly empty; returns its length.
    fn digit_run(&mut self) -> usize {
        let n = self.s[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.at += n;
        n
    }

    fn rest(&self) -> &[u8] {
        &self.s[self.at..]
    }
}

fn parse_date(s: &[u8]) -> Result<(), DateFault> {
    let mut c = Cursor { s, at: 0 };
    let year = c.num(4)?;
    c.one_of(b"-")?;
    let month = c.num(2)?;
    c.one_of(b"-")?;
    let day = c.num(2)?;
    let sep = c.one_of(b" Tt")?;
    let hour = c.num(2)?;
    c.one_of(b":")?;
    let minute = c.num(2)?;
    c.one_of(b":")?;
    let second = c.num(2)?;
    let fraction = if c.one_of(b".").is_ok() {
        match c.digit_run() {
            0 => return Err(DateFault::Format),
            n => Some(n),
        }
    } else {
        None
    };

    // Offsets are range-checked only once the whole layout is known good.
    let mut offsets_ok = true;
    let leap_second_ok = match c.peek() {
        None => {
            // Form 2: space-separated, no fraction, no zone.
            if sep != b' ' || fraction.is_some() {
                return Err(DateFault::Format);
            }
            false
        }
        Some(b' ') => {
            // Form 1, Go: ` -0700 MST`, at most nanoseconds.
            if sep != b' ' || fraction.is_some_and(|n| n > 9) {
                return Err(DateFault::Format);
            }
            c.one_of(b" ")?;
            c.one_of(b"+-")?;
            let (h, m) = (c.num(2)?, c.num(2)?);
            offsets_ok &= h <= 23 && m <= 59;
            c.one_of(b" ")?;
            offsets_ok &= go_zone_name(c.rest())?;
            false
        }
        Some(_) => {
            // Form 3, RFC 3339: `Z` or `+hh:mm`, then nothing.
            if c.one_of(b"Zz").is_err() {
                c.one_of(b"+-")?;
                let h = c.num(2)?;
                c.one_of(b":")?;
                let m = c.num(2)?;
                offsets_ok &= h <= 23 && m <= 59;
            }
            if !c.rest().is_empty() {
                return Err(DateFault::Format);
            }
            true
        }
    };

    let max_second = if leap_second_ok { 60 } else { 59 };
    let in_range = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= max_second
        && offsets_ok;
    if in_range {
        Ok(())
    } else {
        Err(DateFault::Range)
    }
}

/// Checks Go's zone name: 1-6 letters (`CEST`), or, for zones without an
/// abbreviation, the offset itself (`-03`, `+0530`). `Ok(false)` means a
/// numeric name whose hours or minutes are out of range.
fn go_zone_name(name: &[u8]) -> Result<bool, DateFault> {
    if (1..=6).contains(&name.len()) && name.iter().all(u8::is_ascii_alphabetic) {
        return Ok(true);
    }
    let mut c = Cursor { s: name, at: 0 };
    c.one_of(b"+-")?;
    let h = c.num(2)?;
    let m = match c.rest().len() {
        0 => 0,
        2 => c.num(2)?,
        _ => return Err(DateFault::Format),
    };
    Ok(h <= 23 && m <= 59)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    }
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

/// Hex digit values; 0xff marks a byte that is not one.
const HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits of either case.
#[inline]
fn hyphenated_id(s: &[u8; 36]) -> Option<u128> {
    if s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
        return None;
    }
    // Where the id's 32 hex digits are: the key's high and low 64 bits.
    const HIGH: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17];
    const LOW: [usize; 16] = [
        19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
    ];
    let mut bad = 0;
    let (high, low) = (hex_digits(s, HIGH, &mut bad), hex_digits(s, LOW, &mut bad));
    (bad & 0xf0 == 0).then_some(u128::from(high) << 64 | u128::from(low))
}

/// The hex digits of `s` at `at` as a number; `bad` collects 0xff for a
/// byte that is not a hex digit.
#[inline(always)]
fn hex_digits(s: &[u8; 36], at: [usize; 16], bad: &mut u8) -> u64 {
    at.into_iter().fold(0, |v, i| {
        let h = HEX[usize::from(s[i])];
        *bad |= h;
        v << 4 | u64::from(h)
    })
}

/// The price that `field` starts with, up to the comma that ends it, and
/// where that comma is: digits with at most one `.`, at most 18 digits in
/// all, that fit a [`Price`] as written, which is what [`parse_price`]
/// gives for such a field. One pass finds the comma and the value.
#[inline]
fn plain_price(field: &[u8]) -> Option<(Price, usize)> {
    let (mut units, mut digits, mut dot) = (0u64, 0usize, None);
    for (at, &b) in field.iter().enumerate() {
        match b {
            b'0'..=b'9' if digits < 18 => {
                units = units * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if dot.is_none() => dot = Some(at),
            b',' if digits > 0 => {
                let scale = dot.map_or(0, |dot| at - dot - 1);
                return Some((Price::new(units, u8::try_from(scale).ok()?)?, at));
            }
            _ => return None,
        }
    }
    None
}

/// The length and fields of the Go date `2006-01-02 15:04:05 -0700 MST`,
/// with a 1-6 letter zone name and a real calendar date, that `tail` starts
/// with: the form [`check_date`] accepts first.
#[inline]
fn go_date_len(tail: &[u8]) -> Option<(usize, Fields)> {
    const FIXED: usize = 26;
    let (d, zone) = tail.split_first_chunk::<FIXED>()?;
    let letters = zone
        .iter()
        .take(7)
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let layout = d[4] == b'-'
        && d[7] == b'-'
        && d[10] == b' '
        && d[13] == b':'
        && d[16] == b':'
        && d[19] == b' '
        && (d[20] == b'+' || d[20] == b'-')
        && d[25] == b' '
        && (1..=6).contains(&letters);
    let digit = |at: usize| u32::from(d[at].wrapping_sub(b'0'));
    let mut not_digit = false;
    let mut num = |at: usize, width: usize| {
        (at..at + width).fold(0, |n, i| {
            not_digit |= digit(i) > 9;
            n * 10 + digit(i)
        })
    };
    let (year, month, day) = (num(0, 4), num(5, 2), num(8, 2));
    let (hour, minute, second) = (num(11, 2), num(14, 2), num(17, 2));
    let (zone_h, zone_m) = (num(21, 2), num(23, 2));
    let valid = layout
        && !not_digit
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59
        && zone_h <= 23
        && zone_m <= 59;
    let fields = Fields {
        year,
        month,
        day,
        hour,
        minute,
        second,
        sep: b' ',
    };
    valid.then_some((FIXED + letters, fields))
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
enum FirstRow {
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
    fn judge(
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

    const REAL: &str = "\
d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST
e2649ca5-7e05-4d53-a8ff-919917a4922e,66.640497,2018-08-22 18:34:11 +0200 CEST
78bfd79d-53c4-421d-b054-013ad294deab,42.780199,2018-10-07 00:55:20 +0200 CEST
";
    const ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
    const DATE: &str = "2018-08-04 05:32:31 +0200 CEST";

    fn uuid(s: &str) -> u128 {
        uuid::Uuid::parse_str(s).unwrap().as_u128()
    }

    fn price(units: u64, scale: u8) -> Price {
        Price::new(units, scale).unwrap()
    }

    /// Every yielded row of `input`, failing the test on a stream error.
    fn rows_of(input: impl Read) -> Vec<(u64, Result<Row, RowError>)> {
        Rows::new(input).map(|r| r.unwrap()).collect()
    }

    fn rows(input: &[u8]) -> Vec<(u64, Result<Row, RowError>)> {
        rows_of(input)
    }

    fn lines(input: &[u8]) -> Vec<u64> {
        rows(input).into_iter().map(|(line, _)| line).collect()
    }

    fn verdicts(input: &[u8]) -> Vec<(u64, bool)> {
        rows(input)
            .into_iter()
            .map(|(l, v)| (l, v.is_ok()))
            .collect()
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
    fn accepted_dates() {
        for date in [
            // 1. Go's time.String
            "2018-08-04 05:32:31 +0200 CEST",
            "2018-08-04 05:32:31 +0000 UTC",
            "2018-08-04 05:32:31 -0700 MST",
            "2018-08-04 05:32:31 +0100 A",
            "2018-08-04 05:32:31 +0100 ABCDEF",
            "2018-08-04 05:32:31 +0100 cest",
            "2018-08-04 05:32:31.5 +0200 CEST",
            "2018-08-04 05:32:31.123456789 +0200 CEST", // exactly DATE_MAX bytes
            "2018-08-04 05:32:31 -0300 -03",
            "2018-08-04 05:32:31 +0530 +0530",
            "2018-08-04 05:32:31 +2359 +2359",
            // 2. no zone
            "2018-08-04 05:32:31",
            "0000-01-01 00:00:00",
            "9999-12-31 23:59:59",
            // 3. RFC 3339
            "2018-08-04T05:32:31Z",
            "2018-08-04t05:32:31z",
            "2018-08-04T05:32:31+02:00",
            "2018-08-04T05:32:31-07:00",
            "2018-08-04T05:32:31.5Z",
            "2018-08-04T05:32:31.123456789012+02:00",
            "2018-08-04 05:32:31Z",
            "2018-08-04 05:32:31.25-07:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(DATE_MAX, 40);
            assert_eq!(check_date(date.as_bytes()), Ok(()), "{date}");
        }
        assert_eq!("2018-08-04 05:32:31.123456789 +0200 CEST".len(), DATE_MAX);
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        for ok in ["2020-02-29", "2000-02-29", "2016-02-29", "0000-02-29"] {
            let date = format!("{ok} 12:00:00");
            assert_eq!(check_date(date.as_bytes()), Ok(()), "{date}");
        }
        for bad in ["2019-02-29", "1900-02-29", "2100-02-29", "2020-02-30"] {
            let date = format!("{bad}T12:00:00Z");
            assert!(
                matches!(
                    check_date(date.as_bytes()),
                    Err(RowError::DateOutOfRange(_))
                ),
                "{date}"
            );
        }
        for (month, days) in [(1, 31), (4, 30), (6, 30), (9, 30), (11, 30), (12, 31)] {
            let last = format!("2018-{month:02}-{days} 00:00:00");
            let past = format!("2018-{month:02}-{} 00:00:00", days + 1);
            assert_eq!(check_date(last.as_bytes()), Ok(()), "{last}");
            assert!(check_date(past.as_bytes()).is_err(), "{past}");
        }
    }

    #[test]
    fn impossible_dates_are_out_of_range() {
        for date in [
            "2018-13-04 05:32:31 +0200 CEST",  // month 13
            "2018-00-04 05:32:31 +0200 CEST",  // month 0
            "2018-08-32 05:32:31 +0200 CEST",  // day 32
            "2018-08-00 05:32:31 +0200 CEST",  // day 0
            "2018-04-31 05:32:31",             // April has 30
            "2019-02-29 05:32:31",             // not a leap year
            "2018-08-04 24:00:00 +0200 CEST",  // hour 24
            "2018-08-04 05:60:31 +0200 CEST",  // minute 60
            "2018-08-04 05:32:60 +0200 CEST",  // Go has no leap seconds
            "2018-08-04 05:32:60",             // nor does the zoneless form
            "2018-08-04T05:32:61Z",            // not even RFC 3339
            "2018-08-04 05:32:31 +2400 CEST",  // offset hours
            "2018-08-04 05:32:31 +0260 CEST",  // offset minutes
            "2018-08-04 05:32:31 -0300 -24",   // numeric zone name hours
            "2018-08-04 05:32:31 +0530 +0560", // numeric zone name minutes
            "2018-08-04T05:32:31+24:00",
            "2018-08-04T05:32:31+02:60",
            "2018-08-04T24:32:31Z",
        ] {
            assert!(
                matches!(
                    check_date(date.as_bytes()),
                    Err(RowError::DateOutOfRange(_))
                ),
                "{date}"
            );
        }
    }

    #[test]
    fn malformed_dates_match_no_format() {
        for date in [
            "",
            " ",
            "2018-08-04",
            "05:32:31",
            "2018-8-04 05:32:31",
            "2018-08-4 05:32:31",
            "18-08-04 05:32:31",
            "2018/08/04 05:32:31",
            "2018-08-04 5:32:31",
            "2018-08-04 05:32",
            "2018-08-04  05:32:31",
            "2018-08-04_05:32:31",
            "2018-08-04\t05:32:31",
            "2018-08-04 05:32:31 +0200",         // Go without zone name
            "2018-08-04 05:32:31 +02 CEST",      // Go offset is 4 digits
            "2018-08-04 05:32:31 +02:00 CEST",   // ... without a colon
            "2018-08-04 05:32:31 0200 CEST",     // ... and signed
            "2018-08-04 05:32:31 +0200 CESTXYZ", // zone name too long
            "2018-08-04 05:32:31 +0200 C3ST",    // zone name not letters
            "2018-08-04 05:32:31 +0200 -3",      // numeric name: 2 or 4 digits
            "2018-08-04 05:32:31 +0200 +053",
            "2018-08-04 05:32:31 +0200 0530",
            "2018-08-04 05:32:31 +0200  CEST",     // double space
            "2018-08-04 05:32:31 +0200 CEST x",    // trailing garbage
            "2018-08-04 05:32:31 +0200 CEST m=+0", // Go's monotonic suffix
            "2018-08-04T05:32:31 +0200 CEST",      // Go layout with a T
            "2018-08-04 05:32:31.1234567890 +0200 A", // Go has at most 9 digits
            "2018-08-04 05:32:31. +0200 CEST",
            "2018-08-04 05:32:31.5", // zoneless form has no fraction
            "2018-08-04T05:32:31",   // RFC 3339 needs a zone
            "2018-08-04T05:32:31+0200",
            "2018-08-04T05:32:31+02",
            "2018-08-04T05:32:31+2:00",
            "2018-08-04T05:32:31Zx", // trailing garbage
            "2018-08-04T05:32:31ZZ",
            "2018-08-04T05:32:31.Z",
            "2018-08-04T05:32:31 Z",
            "2018-08-04X05:32:31Z",
            "+2018-08-04T05:32:31Z",
            "-018-08-04T05:32:31Z",
            "2018-08-04T05:32:31\0",
            "2018-08-04\x0005:32:31",
            "2018-08-04 05:32:31 +0200 CÉST", // non-ASCII
            "２018-08-04 05:32:31",           // full-width digit
        ] {
            assert!(
                matches!(check_date(date.as_bytes()), Err(RowError::DateFormat(_))),
                "{date:?} gave {:?}",
                check_date(date.as_bytes())
            );
        }
        // Not even valid UTF-8.
        assert!(matches!(
            check_date(b"2018-08-04 05:32:31 +0200 \xff"),
            Err(RowError::DateFormat(_))
        ));
    }

    #[test]
    fn dates_longer_than_date_max_are_rejected_before_parsing() {
        let long = "2018-08-04 05:32:31.123456789 +0200 CESTX"; // 41 bytes
        assert_eq!(long.len(), DATE_MAX + 1);
        assert!(matches!(
            check_date(long.as_bytes()),
            Err(RowError::DateTooLong(_))
        ));
        let garbage = [b'x'; 1000];
        assert!(matches!(
            check_date(&garbage),
            Err(RowError::DateTooLong(_))
        ));
        // Trimming happens first: padding does not count against the limit.
        let padded = format!("   {}   ", "2018-08-04 05:32:31.123456789 +0200 CEST");
        let r = parse_fields(ID.as_bytes(), b"1", padded.as_bytes()).unwrap();
        assert_eq!(r.date().len(), DATE_MAX);
    }

    #[test]
    fn accepted_prices_keep_their_digits() {
        for (text, units, scale) in [
            ("60.683466", 60683466, 6),
            ("12", 12, 0),
            ("0.5", 5, 1),
            (".5", 5, 1),
            ("5.", 5, 0),
            ("+7", 7, 0),
            ("+.5", 5, 1),
            ("0.50", 50, 2),
            ("007.10", 710, 2),
            ("0", 0, 0),
            ("0.00", 0, 2),
            ("000", 0, 0),
            ("1e3", 1000, 0),
            ("1E3", 1000, 0),
            ("1e+2", 100, 0),
            ("2.5E-2", 25, 3),
            ("1.5e1", 15, 0),
            ("1.25e1", 125, 1),
            ("12e-0", 12, 0),
            ("0e999", 0, 0),
            ("576460752303423487", Price::MAX_UNITS, 0),
            ("0.576460752303423487", Price::MAX_UNITS, 18),
            ("0.000000000000000001", 1, 18),
            // Trailing fractional zeros go only when needed, and only as many.
            ("1.0000000000000000000", 100_000_000_000_000_000, 17),
            ("0.1000000000000000000000", 100_000_000_000_000_000, 18),
            ("1.20e-17", 12, 18),
            ("0.000000000000000000000", 0, 18),
            ("00000000000000000000000000012", 12, 0),
        ] {
            assert_eq!(
                parse_price(text.as_bytes()),
                Ok(price(units, scale)),
                "{text}"
            );
        }
        assert_eq!(parse_price(b"0.50").unwrap().to_string(), "0.50");
        assert_eq!(parse_price(b"2.5E-2").unwrap().to_string(), "0.025");
    }

    #[test]
    fn malformed_prices_are_bad() {
        for text in [
            "", ".", "+", "++1", "+-1", "NaN", "nan", "inf", "Infinity", "1,5", "1.2.3", "0x10",
            "1e", "1e+", "1e-", "e3", ".e3", "1e3.5", "1e3e3", "1 000", " 1", "1 ", "1_000", "$5",
            "5€", "１", "1\0", "½",
        ] {
            assert!(
                matches!(parse_price(text.as_bytes()), Err(RowError::BadPrice(_))),
                "{text:?} gave {:?}",
                parse_price(text.as_bytes())
            );
        }
    }

    #[test]
    fn negative_prices_are_rejected() {
        for text in ["-1", "-0", "-0.0", "-.5", "-", "-abc", "-1e3"] {
            assert!(
                matches!(
                    parse_price(text.as_bytes()),
                    Err(RowError::NegativePrice(_))
                ),
                "{text}"
            );
        }
        assert_eq!(
            parse_price(b"-1").unwrap_err().to_string(),
            "price is negative: \"-1\""
        );
    }

    #[test]
    fn prices_that_do_not_fit_have_too_many_digits() {
        for text in [
            "576460752303423488", // MAX_UNITS + 1
            "999999999999999999",
            "99999999999999999999999",
            "0.1234567890123456789", // 19 significant fractional digits
            "1e-19",
            "1e18",
            "1e99999999999999999999",
            "5764607523034234.880", // 19 digits; without the zero, MAX_UNITS + 1
        ] {
            assert!(
                matches!(parse_price(text.as_bytes()), Err(RowError::PriceTooLong(_))),
                "{text} gave {:?}",
                parse_price(text.as_bytes())
            );
        }
        // Same digits with a zero to spare: stripping it makes it fit.
        assert_eq!(
            parse_price(b"57646075230342348.70"),
            Ok(price(576460752303423487, 1))
        );
    }

    #[test]
    fn ids_any_case_and_bad_ids() {
        let lower = parse_id(ID.as_bytes());
        assert_eq!(lower, Some(uuid(ID)));
        assert_eq!(parse_id(ID.to_uppercase().as_bytes()), lower);
        assert_eq!(parse_id(b"D018EF0B-dbd9-48F1-ac1a-EB4D90E57118"), lower);
        for bad in [
            "",
            "xyz",
            "d018ef0b-dbd9-48f1-ac1a-eb4d90e5711",   // 35 chars
            "d018ef0b-dbd9-48f1-ac1a-eb4d90e571188", // 37 chars
            "g018ef0b-dbd9-48f1-ac1a-eb4d90e57118",  // not hex
            "d018ef0bd-bd9-48f1-ac1a-eb4d90e57118",  // hyphen moved
            "d018ef0b dbd9 48f1 ac1a eb4d90e57118",  // spaces for hyphens
            "d018ef0b-dbd9-48f1-ac1a-eb4d90e5711é",
        ] {
            assert_eq!(parse_id(bad.as_bytes()), None, "{bad}");
            assert!(
                matches!(
                    parse_fields(bad.as_bytes(), b"1", DATE.as_bytes()),
                    Err(RowError::BadId(_))
                ),
                "{bad}"
            );
        }
        // Padding is not part of the id.
        let padded = format!("  {ID}\t");
        assert_eq!(parse_id(padded.as_bytes()), None);
        assert!(parse_fields(padded.as_bytes(), b"1", DATE.as_bytes()).is_ok());
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
        let csv = include_str!("../../fixtures/odd-rows.csv");
        let want = expected_rows(include_str!("../../fixtures/odd-rows.expected"));
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
            fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_id(&input);
                let _ = parse_price(&input);
                let _ = check_date(&input);
                let _ = parse_fields(&input, &input, &input);
                let _ = Rows::new(&input[..]).count();
            }

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
            fn ids_round_trip_in_every_spelling(key in any::<u128>(), form in 0..4) {
                let u = uuid::Uuid::from_u128(key);
                let text = match form {
                    0 => u.hyphenated().to_string(),
                    1 => u.hyphenated().to_string().to_uppercase(),
                    2 => u.simple().to_string(),
                    _ => u.urn().to_string(),
                };
                prop_assert_eq!(parse_id(text.as_bytes()), Some(key));
            }

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
