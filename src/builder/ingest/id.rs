//! The id: any UUID text `uuid` accepts, and the hyphenated form that the
//! fast path reads in place.

/// Parses an id (already trimmed): any UUID text `uuid` accepts, in any case.
pub fn parse_id(field: &[u8]) -> Option<u128> {
    uuid::Uuid::try_parse_ascii(field).ok().map(|u| u.as_u128())
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
pub(super) fn hyphenated_id(s: &[u8; 36]) -> Option<u128> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::ingest::testing::{uuid, DATE, ID};
    use crate::builder::ingest::{parse_fields, RowError};

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

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
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
        }
    }
}
