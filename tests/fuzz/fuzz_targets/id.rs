//! `ingest::parse_id` on arbitrary bytes.
//!
//! Properties: it accepts exactly what `uuid` accepts, and exactly the four
//! textual forms of a UUID (hyphenated, 32 hex digits, `{braced}`,
//! `urn:uuid:`) in any case, without trimming; an accepted id comes back
//! from every form of its own text; and a CSV row's id field is valid
//! exactly when its trimmed text is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promo::builder::ingest::{parse_fields, parse_id, RowError};
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let got = parse_id(data);

    // The same acceptance as the uuid crate, from bytes and from text.
    assert_eq!(got, Uuid::try_parse_ascii(data).ok().map(|u| u.as_u128()));
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(got, Uuid::try_parse(text).ok().map(|u| u.as_u128()));
    }

    if let Some(key) = got {
        let uuid = Uuid::from_u128(key);
        let forms = [
            uuid.hyphenated().to_string(),
            uuid.simple().to_string(),
            uuid.braced().to_string(),
            uuid.urn().to_string(),
        ];
        // What was accepted is one of the four forms, in some case.
        assert!(
            forms
                .iter()
                .any(|f| f.as_bytes().eq_ignore_ascii_case(data)),
            "accepted {:?} as {uuid}, which is none of its forms",
            String::from_utf8_lossy(data)
        );
        // Every form, in either case, parses back to the same key.
        for form in &forms {
            assert_eq!(parse_id(form.as_bytes()), Some(key), "{form}");
            let upper = form.to_ascii_uppercase();
            assert_eq!(parse_id(upper.as_bytes()), Some(key), "{upper}");
        }
        // parse_id takes trimmed fields: padding is the caller's to remove.
        let mut padded = b" ".to_vec();
        padded.extend_from_slice(data);
        assert_eq!(parse_id(&padded), None);
    }

    // As a row's first field, the id is trimmed first and then judged the
    // same way; a bad id is the error reported, whatever follows it.
    let row = parse_fields(data, b"1", b"2018-08-04 05:32:31");
    match parse_id(data.trim_ascii()) {
        Some(key) => assert_eq!(row.map(|r| r.key()), Ok(key)),
        None => assert!(matches!(row, Err(RowError::BadId(_))), "{row:?}"),
    }
});
