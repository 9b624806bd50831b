//! The date: one of the accepted formats, a real calendar date and time,
//! at most [`DATE_MAX`] bytes.

use super::{snippet, RowError};
use crate::generation::date::Fields;
use crate::generation::record::DATE_MAX;

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

/// The length and fields of the Go date `2006-01-02 15:04:05 -0700 MST`,
/// with a 1-6 letter zone name and a real calendar date, that `tail` starts
/// with: the form [`check_date`] accepts first.
#[inline]
pub(super) fn go_date_len(tail: &[u8]) -> Option<(usize, Fields)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ingest::parse_fields;
    use crate::builder::ingest::testing::ID;

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
}
