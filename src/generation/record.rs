//! One promotion as it lives on disk: a fixed-width, 32-byte record.
//!
//! A record is the key, the price and the date as an eight-byte
//! [`DateWord`]; the date's zone and any text that does not fit are kept
//! once per file (see `date`). Two records fill a cache line, and once the
//! record area starts 32-byte aligned a record never straddles a line or a
//! page. The byte layout of both versions is documented in `format`, the
//! one place that owns the file format.

use std::fmt;

use crate::generation::date::DateWord;

/// Bytes in one record.
pub const RECORD_LEN: usize = 32;
/// Most bytes an `expiration_date` may hold (a version-1 record's date field).
pub const DATE_MAX: usize = 40;

const KEY_AT: usize = 0;
const PRICE_AT: usize = 16;
const DATE_AT: usize = 24;

/// An exact decimal price: `units / 10^scale`.
///
/// Prices are kept as decimals, not floats, so that what a partner wrote
/// (`60.683466`, `12`, `0.50`) is what a client reads back, digit for digit.
/// On disk the scale takes the top 5 bits of a `u64` and the units the low 59.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Price {
    units: u64,
    scale: u8,
}

impl Price {
    /// Largest number of units (about 5.7e17: 17 significant digits always fit).
    pub const MAX_UNITS: u64 = (1 << 59) - 1;
    /// Most digits after the decimal point.
    pub const MAX_SCALE: u8 = 18;

    /// A price of `units / 10^scale`, or `None` when it does not fit the record.
    pub fn new(units: u64, scale: u8) -> Option<Price> {
        (units <= Self::MAX_UNITS && scale <= Self::MAX_SCALE).then_some(Price { units, scale })
    }

    /// The integer before the scale is applied.
    pub fn units(self) -> u64 {
        self.units
    }

    /// Digits after the decimal point.
    pub fn scale(self) -> u8 {
        self.scale
    }

    fn to_bits(self) -> u64 {
        (u64::from(self.scale) << 59) | self.units
    }

    /// Decodes the on-disk bits; `None` for a scale no encoder writes.
    fn from_bits(bits: u64) -> Option<Price> {
        Price::new(bits & Self::MAX_UNITS, (bits >> 59) as u8)
    }
}

impl Price {
    /// Appends the price as a plain decimal that is also a valid JSON
    /// number (`60.683466`, `12`, `0.05`), without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        // u64::MAX has 20 digits; a scale of up to 18 adds "0." in front.
        let mut digits = [b'0'; 20];
        let mut n = self.units;
        let mut len = 0;
        while n > 0 || len == 0 {
            digits[19 - len] = b'0' + (n % 10) as u8;
            n /= 10;
            len += 1;
        }
        let digits = &digits[20 - len..];
        let scale = usize::from(self.scale);
        if scale == 0 {
            out.extend_from_slice(digits);
        } else if len > scale {
            out.extend_from_slice(&digits[..len - scale]);
            out.push(b'.');
            out.extend_from_slice(&digits[len - scale..]);
        } else {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', scale - len));
            out.extend_from_slice(digits);
        }
    }
}

impl fmt::Display for Price {
    /// Writes the price as a plain decimal that is also a valid JSON number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(24);
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).expect("digits and a dot are ASCII"))
    }
}

/// A promotion: a 128-bit id, a price and its date's word.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Record([u8; RECORD_LEN]);

impl Record {
    /// Builds a record.
    pub fn new(key: u128, price: Price, date: DateWord) -> Record {
        let mut r = Record([0; RECORD_LEN]);
        r.set(key, price, date);
        r
    }

    /// Overwrites the record in place, as [`Record::new`] builds one. A
    /// record built on the stack and then copied into a vector is read back
    /// in wider pieces than it was written in, which stalls the CPU.
    #[inline]
    pub fn set(&mut self, key: u128, price: Price, date: DateWord) {
        let b = &mut self.0;
        b[KEY_AT..PRICE_AT].copy_from_slice(&key.to_be_bytes());
        b[PRICE_AT..DATE_AT].copy_from_slice(&price.to_bits().to_le_bytes());
        b[DATE_AT..].copy_from_slice(&date.0.to_le_bytes());
    }

    /// Reinterprets 32 bytes read from a generation file.
    pub fn from_bytes(bytes: [u8; RECORD_LEN]) -> Record {
        Record(bytes)
    }

    /// The bytes as they are written to disk.
    pub fn as_bytes(&self) -> &[u8; RECORD_LEN] {
        &self.0
    }

    /// The id as a 128-bit integer; byte order makes integer order equal
    /// to the order of the on-disk bytes and of the UUID's text.
    pub fn key(&self) -> u128 {
        key_of(&self.0)
    }

    /// The price, or `None` when the bytes hold a scale no encoder writes.
    pub fn price(&self) -> Option<Price> {
        price_of(&self.0)
    }

    /// The date's word: its fields and zone, or where its text is.
    pub fn date(&self) -> DateWord {
        DateWord(u64::from_le_bytes(self.0[DATE_AT..].try_into().unwrap()))
    }

    /// The same record with its date's word replaced.
    pub fn with_date(mut self, date: DateWord) -> Record {
        self.0[DATE_AT..].copy_from_slice(&date.0.to_le_bytes());
        self
    }
}

/// The price of the record (of either version) that starts at `bytes[0]`.
#[inline]
pub fn price_of(bytes: &[u8]) -> Option<Price> {
    Price::from_bits(u64::from_le_bytes(
        bytes[PRICE_AT..DATE_AT].try_into().unwrap(),
    ))
}

/// Appends the API's JSON body for a promotion to `out`; `date` appends the
/// date's text.
pub fn write_json(
    key: u128,
    price: Option<Price>,
    out: &mut Vec<u8>,
    date: impl FnOnce(&mut Vec<u8>),
) {
    let id = uuid::Uuid::from_u128(key);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.extend_from_slice(b"\",\"price\":");
    // A checksummed file never holds a bad scale; show 0 rather than panic if one did.
    price.unwrap_or(Price { units: 0, scale: 0 }).write_to(out);
    out.extend_from_slice(b",\"expiration_date\":\"");
    let at = out.len();
    date(out);
    if !out[at..]
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
    {
        // Validation lets nothing through that needs escaping; a damaged
        // file might, and must still give valid JSON.
        let text = String::from_utf8_lossy(&out[at..]).into_owned();
        out.truncate(at - 1);
        serde_json::to_writer(&mut *out, &text).expect("writing to a Vec cannot fail");
    } else {
        out.push(b'"');
    }
    out.push(b'}');
}

/// The date text of a version-1 record: its 40-byte field up to the first NUL.
pub fn v1_date(bytes: &[u8]) -> &[u8] {
    let d = &bytes[DATE_AT..];
    let len = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    &d[..len]
}

/// A version-1 record (64 bytes) with these fields; `date` is at most
/// [`DATE_MAX`] bytes without NUL.
pub fn v1_record(key: u128, price: Price, date: &[u8]) -> [u8; 64] {
    assert!(date.len() <= DATE_MAX, "date longer than {DATE_MAX} bytes");
    let mut b = [0u8; 64];
    b[KEY_AT..PRICE_AT].copy_from_slice(&key.to_be_bytes());
    b[PRICE_AT..DATE_AT].copy_from_slice(&price.to_bits().to_le_bytes());
    b[DATE_AT..DATE_AT + date.len()].copy_from_slice(date);
    b
}

/// Hints the CPU to load the cache line at `data` (a record is one line).
#[inline(always)]
pub fn prefetch<T>(data: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and never changes
    // memory, and the pointer comes from a reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (data as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The key of the record that starts at `bytes[0]`.
#[inline]
pub fn key_of(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes[KEY_AT..PRICE_AT].try_into().unwrap())
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &uuid::Uuid::from_u128(self.key()))
            .field("price", &self.price())
            .field("date", &self.date().decode())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_prints_as_written() {
        assert_eq!(Price::new(60683466, 6).unwrap().to_string(), "60.683466");
        assert_eq!(Price::new(12, 0).unwrap().to_string(), "12");
        assert_eq!(Price::new(5, 1).unwrap().to_string(), "0.5");
        assert_eq!(Price::new(50, 2).unwrap().to_string(), "0.50");
        assert_eq!(Price::new(7, 3).unwrap().to_string(), "0.007");
        assert_eq!(Price::new(0, 0).unwrap().to_string(), "0");
    }

    #[test]
    fn price_write_to_matches_display_at_every_length() {
        for units in [0, 1, 9, 10, 99, 100, 123_456, Price::MAX_UNITS] {
            for scale in 0..=Price::MAX_SCALE {
                let p = Price::new(units, scale).unwrap();
                let mut out = Vec::new();
                p.write_to(&mut out);
                let text = String::from_utf8(out).unwrap();
                // The text is the same decimal: parse it back exactly.
                let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
                assert_eq!(frac.len(), usize::from(scale), "{text}");
                let back: u128 = format!("{int}{frac}").parse().unwrap();
                assert_eq!(back, u128::from(units), "{text}");
                assert!(
                    !int.is_empty() && (int == "0" || !int.starts_with('0')),
                    "{text}"
                );
            }
        }
    }

    fn json(key: u128, price: Price, date: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(key, Some(price), &mut out, |o| {
            o.extend_from_slice(date);
        });
        out
    }

    #[test]
    fn dates_with_odd_bytes_are_escaped_in_json() {
        let out = json(1, Price::new(1, 0).unwrap(), b"a\"b\\c\x01");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["expiration_date"], "a\"b\\c\u{1}");
    }

    #[test]
    fn price_limits() {
        assert!(Price::new(Price::MAX_UNITS, Price::MAX_SCALE).is_some());
        assert!(Price::new(Price::MAX_UNITS + 1, 0).is_none());
        assert!(Price::new(1, Price::MAX_SCALE + 1).is_none());
    }

    #[test]
    fn record_round_trips_and_prints_json() {
        let id = uuid::Uuid::parse_str("d018ef0b-dbd9-48f1-ac1a-eb4d90e57118").unwrap();
        let date = DateWord::overflow(12, 30);
        let r = Record::new(id.as_u128(), Price::new(60683466, 6).unwrap(), date);
        let back = Record::from_bytes(*r.as_bytes());
        assert_eq!(back.key(), id.as_u128());
        assert_eq!(back.date(), date);
        assert_eq!(back.price(), Price::new(60683466, 6));
        let out = json(
            back.key(),
            back.price().unwrap(),
            b"2018-08-04 05:32:31 +0200 CEST",
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118","price":60.683466,"expiration_date":"2018-08-04 05:32:31 +0200 CEST"}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["price"].as_f64(), Some(60.683466));
    }

    #[test]
    fn a_full_width_date_fills_a_version_1_record() {
        let date = [b'9'; DATE_MAX];
        let r = v1_record(1, Price::new(1, 0).unwrap(), &date);
        assert_eq!(v1_date(&r), &date);
        assert_eq!(
            v1_date(&v1_record(1, Price::new(1, 0).unwrap(), b"ab")),
            b"ab"
        );
    }

    #[test]
    fn key_order_is_byte_order() {
        let a = Record::new(1, Price::new(1, 0).unwrap(), DateWord(0));
        let b = Record::new(1 << 120, Price::new(1, 0).unwrap(), DateWord(0));
        assert!(a.as_bytes()[..16] < b.as_bytes()[..16]);
        assert!(a.key() < b.key());
    }
}
