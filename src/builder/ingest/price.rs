//! The price: an exact, non-negative decimal that fits a [`Price`], its
//! digits kept as written.

use super::{snippet, RowError};
use crate::generation::record::Price;

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

/// The price that `field` starts with, up to the comma that ends it, and
/// where that comma is: digits with at most one `.`, at most 18 digits in
/// all, that fit a [`Price`] as written, which is what [`parse_price`]
/// gives for such a field. One pass finds the comma and the value.
#[inline]
pub(super) fn plain_price(field: &[u8]) -> Option<(Price, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ingest::testing::price;

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
}
