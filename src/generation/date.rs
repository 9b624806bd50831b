//! An expiration date in eight bytes, rendered back exactly as written.
//!
//! The API returns `expiration_date` byte for byte as the partner wrote it,
//! so version 1 stored the text, NUL-padded to 40 bytes: most of every
//! record. Every accepted date starts with the same 19 fixed-width
//! characters, `YYYY-MM-DD?HH:MM:SS`, where `?` is a space, `T` or `t`;
//! what follows (the *zone*: ` +0200 CEST`, `Z`, `+02:00`, or nothing) takes
//! few distinct values in a feed. So version 2 keeps the date's fields as
//! numbers and the zone as an index into a small table kept once per file.
//! The text is the fields printed at their fixed widths, then the zone:
//! exactly what was written, by construction.
//!
//! Dates that do not fit (fractional seconds, or a feed with more than
//! [`MAX_ZONES`] distinct zones) keep their text in the file's overflow
//! area, and the record points to it. The word's layout, bit by bit, is in
//! [`format`](crate::generation::format), with the rest of the file.

/// Most zones a file's table may hold: the index takes 20 bits.
pub const MAX_ZONES: usize = 1 << 20;
/// Most bytes one zone may hold (what follows the seconds of a 40-byte date).
pub const MAX_ZONE_LEN: usize = 40 - PREFIX_LEN;
/// The fixed-width part every accepted date starts with: `YYYY-MM-DD HH:MM:SS`.
pub const PREFIX_LEN: usize = 19;

const OVERFLOW: u64 = 1 << 63;
const SEPARATORS: [u8; 3] = [b' ', b'T', b't'];

/// The fixed-width fields of a date, as [`ingest`](crate::builder::ingest)
/// parsed them; `sep` is the byte between the day and the hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fields {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub sep: u8,
}

/// A record's date: the eight bytes at offset 24 of a version-2 record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateWord(pub u64);

/// Where a date's text is, once decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Fields and an index into the zone table.
    Compact { fields: Fields, zone: u32 },
    /// `len` bytes at `offset` in the overflow area.
    Overflow { offset: u64, len: usize },
}

impl DateWord {
    /// The compact word for `fields` and zone `zone`, or `None` when a
    /// field does not fit (the validated dates of `ingest` always fit).
    pub fn compact(f: Fields, zone: u32) -> Option<DateWord> {
        let sep = SEPARATORS.iter().position(|&s| s == f.sep)? as u64;
        let fits = f.year <= 9999
            && (1..=12).contains(&f.month)
            && (1..=31).contains(&f.day)
            && f.hour <= 23
            && f.minute <= 59
            && f.second <= 60
            && (zone as usize) < MAX_ZONES;
        fits.then(|| {
            DateWord(
                u64::from(f.second)
                    | u64::from(f.minute) << 6
                    | u64::from(f.hour) << 12
                    | u64::from(f.day) << 17
                    | u64::from(f.month) << 22
                    | u64::from(f.year) << 26
                    | sep << 40
                    | u64::from(zone) << 42,
            )
        })
    }

    /// The word for a date kept in the overflow area.
    pub fn overflow(offset: u64, len: usize) -> DateWord {
        debug_assert!(len < 256 && offset < 1 << 55);
        DateWord(OVERFLOW | offset << 8 | len as u64)
    }

    /// The word's fields, or `None` for bits no encoder writes.
    pub fn decode(self) -> Option<Decoded> {
        let w = self.0;
        if w & OVERFLOW != 0 {
            return Some(Decoded::Overflow {
                offset: (w & !OVERFLOW) >> 8,
                len: (w & 0xff) as usize,
            });
        }
        let bits = |at: u32, width: u32| ((w >> at) & ((1 << width) - 1)) as u32;
        let fields = Fields {
            second: bits(0, 6),
            minute: bits(6, 6),
            hour: bits(12, 5),
            day: bits(17, 5),
            month: bits(22, 4),
            year: bits(26, 14),
            sep: *SEPARATORS.get(bits(40, 2) as usize)?,
        };
        let zone = bits(42, 20);
        // Encoding the decoded fields gives the same word back only when
        // every field was in range and the unused bit is clear.
        (DateWord::compact(fields, zone) == Some(self)).then_some(Decoded::Compact { fields, zone })
    }

    /// Same word with its zone index or overflow offset moved: `zone` maps
    /// a chunk's zone indices to the file's, `base` is where the chunk's
    /// overflow text starts in the file's area.
    pub fn relocate(self, zones: &[u32], base: u64) -> DateWord {
        if self.0 & OVERFLOW != 0 {
            DateWord(self.0 + (base << 8))
        } else {
            let zone = (self.0 >> 42) & (MAX_ZONES as u64 - 1);
            DateWord(
                self.0 & !((MAX_ZONES as u64 - 1) << 42) | u64::from(zones[zone as usize]) << 42,
            )
        }
    }

    /// Whether the text is in the overflow area.
    pub fn is_overflow(self) -> bool {
        self.0 & OVERFLOW != 0
    }
}

/// Appends the date's text: the fields at their fixed widths, then the zone.
pub fn write_fields(f: &Fields, zone: &[u8], out: &mut Vec<u8>) {
    let two = |n: u32| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let (y1, y2) = (two(f.year / 100), two(f.year % 100));
    let (mo, d, h, mi, s) = (
        two(f.month),
        two(f.day),
        two(f.hour),
        two(f.minute),
        two(f.second),
    );
    out.extend_from_slice(&[
        y1[0], y1[1], y2[0], y2[1], b'-', mo[0], mo[1], b'-', d[0], d[1], f.sep, h[0], h[1], b':',
        mi[0], mi[1], b':', s[0], s[1],
    ]);
    out.extend_from_slice(zone);
}

/// The fixed-width fields a date starts with, and the rest of its text;
/// `None` unless it has the layout `YYYY-MM-DD?HH:MM:SS` with digits where
/// digits go, which then print back as they were.
pub fn split(text: &[u8]) -> Option<(Fields, &[u8])> {
    let (p, rest) = text.split_first_chunk::<PREFIX_LEN>()?;
    let mut digits_ok = true;
    let mut num = |at: usize, width: usize| {
        p[at..at + width].iter().fold(0u32, |n, &d| {
            digits_ok &= d.is_ascii_digit();
            n * 10 + u32::from(d.wrapping_sub(b'0'))
        })
    };
    let f = Fields {
        year: num(0, 4),
        month: num(5, 2),
        day: num(8, 2),
        hour: num(11, 2),
        minute: num(14, 2),
        second: num(17, 2),
        sep: p[10],
    };
    let layout = p[4] == b'-' && p[7] == b'-' && p[13] == b':' && p[16] == b':';
    (digits_ok && layout).then_some((f, rest))
}

/// The dates of one file: its zone table and its overflow area, as the
/// reader (or a build, for what it has written so far) sees them.
pub trait Dates {
    /// Zone `i`, if the table has it.
    fn zone(&self, i: u32) -> Option<&[u8]>;
    /// The overflow area.
    fn overflow_area(&self) -> &[u8];

    /// `len` bytes at `offset` of the overflow area, if it has them.
    fn overflow(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.overflow_area().get(start..start.checked_add(len)?)
    }

    /// Appends the date's text to `out`; `false` (and nothing appended)
    /// when the word points outside the tables, which a verified file never
    /// does.
    fn write(&self, word: DateWord, out: &mut Vec<u8>) -> bool {
        match word.decode() {
            Some(Decoded::Compact { fields, zone }) => match self.zone(zone) {
                Some(z) => {
                    write_fields(&fields, z, out);
                    true
                }
                None => false,
            },
            Some(Decoded::Overflow { offset, len }) => match self.overflow(offset, len) {
                Some(text) => {
                    out.extend_from_slice(text);
                    true
                }
                None => false,
            },
            None => false,
        }
    }
}

/// A zone table and an overflow area held in memory: a chunk's while it is
/// parsed, or a file's once read.
#[derive(Debug, Default, Clone)]
pub struct DateTables {
    /// Each zone's end in `zone_bytes`; zone `i` starts where `i - 1` ends.
    zone_ends: Vec<u32>,
    zone_bytes: Vec<u8>,
    /// The overflow area.
    pub overflow: Vec<u8>,
    /// The zone just looked up: nearly every row of a feed has the zone of
    /// the row before it.
    last: u32,
    index: rustc_hash::FxHashMap<Box<[u8]>, u32>,
}

impl DateTables {
    /// Zones in the table.
    pub fn zone_count(&self) -> usize {
        self.zone_ends.len()
    }

    /// The index of `zone`, added if new; `None` when the table is full.
    #[inline]
    pub fn intern(&mut self, zone: &[u8]) -> Option<u32> {
        if self.zone(self.last) == Some(zone) {
            return Some(self.last);
        }
        let i = match self.index.get(zone) {
            Some(&i) => i,
            None => {
                if self.zone_ends.len() >= MAX_ZONES || zone.len() > MAX_ZONE_LEN {
                    return None;
                }
                self.zone_bytes.extend_from_slice(zone);
                self.zone_ends.push(self.zone_bytes.len() as u32);
                let i = self.zone_ends.len() as u32 - 1;
                self.index.insert(zone.into(), i);
                i
            }
        };
        self.last = i;
        Some(i)
    }

    /// The word for a date with these fields and this zone text, interning
    /// the zone, or keeping `text` (the whole date) in the overflow area.
    #[inline]
    pub fn encode(&mut self, fields: Option<Fields>, zone: &[u8], text: &[u8]) -> DateWord {
        if let Some(f) = fields {
            if let Some(word) = self.intern(zone).and_then(|i| DateWord::compact(f, i)) {
                return word;
            }
        }
        let word = DateWord::overflow(self.overflow.len() as u64, text.len());
        self.overflow.extend_from_slice(text);
        word
    }

    /// The word for a date from its text alone: compact when it starts
    /// with the fixed-width fields and its zone is not a fraction, in the
    /// overflow area otherwise. Either way it renders back as `text`.
    pub fn encode_text(&mut self, text: &[u8]) -> DateWord {
        let (fields, zone) = match split(text) {
            Some((f, zone)) if !zone.starts_with(b".") => (Some(f), zone),
            _ => (None, &b""[..]),
        };
        self.encode(fields, zone, text)
    }

    /// Every zone, in index order.
    pub fn zones(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.zone_ends.len() as u32).map(|i| self.zone(i).unwrap())
    }

    /// The zone table as the file stores it: each zone as a length byte
    /// and its bytes.
    pub fn encode_zones(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.zone_bytes.len() + self.zone_ends.len());
        for z in self.zones() {
            out.push(z.len() as u8);
            out.extend_from_slice(z);
        }
        out
    }

    /// Reads a zone table as [`DateTables::encode_zones`] writes it; `None`
    /// if it does not parse to exactly its end.
    pub fn decode_zones(mut bytes: &[u8]) -> Option<DateTables> {
        let mut t = DateTables::default();
        while let Some((&len, rest)) = bytes.split_first() {
            let len = usize::from(len);
            if rest.len() < len || len > MAX_ZONE_LEN || t.zone_ends.len() >= MAX_ZONES {
                return None;
            }
            t.zone_bytes.extend_from_slice(&rest[..len]);
            t.zone_ends.push(t.zone_bytes.len() as u32);
            bytes = &rest[len..];
        }
        Some(t)
    }
}

impl Dates for DateTables {
    #[inline]
    fn zone(&self, i: u32) -> Option<&[u8]> {
        let end = *self.zone_ends.get(i as usize)? as usize;
        let start = match i {
            0 => 0,
            _ => self.zone_ends[i as usize - 1] as usize,
        };
        Some(&self.zone_bytes[start..end])
    }

    fn overflow_area(&self) -> &[u8] {
        &self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Fields {
        let n = |r: std::ops::Range<usize>| text[r].parse::<u32>().unwrap();
        Fields {
            year: n(0..4),
            month: n(5..7),
            day: n(8..10),
            hour: n(11..13),
            minute: n(14..16),
            second: n(17..19),
            sep: text.as_bytes()[10],
        }
    }

    #[test]
    fn compact_words_print_the_date_back() {
        let mut t = DateTables::default();
        for text in [
            "2018-08-04 05:32:31 +0200 CEST",
            "0000-01-01 00:00:00",
            "9999-12-31T23:59:60Z",
            "2016-02-29t00:00:00+05:30",
        ] {
            let w = t.encode(Some(fields(text)), &text.as_bytes()[19..], text.as_bytes());
            assert!(!w.is_overflow(), "{text}");
            let mut out = Vec::new();
            assert!(t.write(w, &mut out));
            assert_eq!(out, text.as_bytes());
        }
        assert_eq!(t.zone_count(), 4);
        let back = DateTables::decode_zones(&t.encode_zones()).unwrap();
        assert_eq!(
            back.zones().collect::<Vec<_>>(),
            t.zones().collect::<Vec<_>>()
        );
    }

    #[test]
    fn dates_that_do_not_fit_overflow() {
        let mut t = DateTables::default();
        let text = b"2018-08-04 05:32:31.5 +0200 CEST";
        let w = t.encode(None, b"", text);
        assert!(w.is_overflow());
        let mut out = Vec::new();
        assert!(t.write(w, &mut out));
        assert_eq!(out, text);
        // A field out of range cannot be compact.
        let mut f = fields("2018-08-04 05:32:31");
        f.month = 13;
        assert!(t.encode(Some(f), b"", b"whatever").is_overflow());
    }

    #[test]
    fn words_no_encoder_writes_do_not_decode() {
        let good = DateWord::compact(fields("2018-08-04 05:32:31"), 0).unwrap();
        assert!(good.decode().is_some());
        assert_eq!(DateWord(good.0 | 1 << 62).decode(), None);
        assert_eq!(DateWord(good.0 | 3 << 40).decode(), None);
        assert_eq!(DateWord(good.0 & !(0xf << 22)).decode(), None, "month 0");
        let t = DateTables::default();
        assert!(
            !t.write(good, &mut Vec::new()),
            "zone 0 is not in an empty table"
        );
        assert!(!t.write(DateWord::overflow(5, 3), &mut Vec::new()));
    }

    #[test]
    fn relocation_moves_zones_and_offsets() {
        let w = DateWord::compact(fields("2018-08-04 05:32:31"), 1).unwrap();
        let moved = w.relocate(&[7, 9], 0);
        let Some(Decoded::Compact { zone, fields: f }) = moved.decode() else {
            panic!()
        };
        assert_eq!((zone, f), (9, fields("2018-08-04 05:32:31")));
        let o = DateWord::overflow(10, 30).relocate(&[], 1000);
        assert_eq!(
            o.decode(),
            Some(Decoded::Overflow {
                offset: 1010,
                len: 30
            })
        );
    }

    #[test]
    fn bad_zone_tables_are_refused() {
        assert!(DateTables::decode_zones(&[3, b'a']).is_none());
        assert!(DateTables::decode_zones(&[]).is_some());
        assert!(DateTables::decode_zones(&[0]).unwrap().zone_count() == 1);
    }
}
