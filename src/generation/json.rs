//! How the generation's values are written in JSON (sidecars, manifests,
//! `inspect --json`, `diff --json`), for serde's `with` attributes: one
//! form for each, wherever it appears.

/// Checksums as 16 hex digits, as the generation header's are shown
/// everywhere.
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// A promotion's id as the API writes it: a hyphenated lowercase UUID.
pub mod id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&uuid::Uuid::from_u128(*v).hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        uuid::Uuid::parse_str(&s)
            .map(|u| u.as_u128())
            .map_err(serde::de::Error::custom)
    }
}

/// A price as the API writes it, a JSON number (its value, to within a
/// double's 15 significant digits; trailing zeros go), kept as the text
/// the feed had. Read from a number, or from the string that sidecars and
/// manifests written before prices were numbers hold.
pub mod price {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        match v.parse::<f64>().ok().filter(|p| p.is_finite()) {
            Some(p) => p.serialize(s),
            None => s.serialize_str(v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(serde::de::Error::custom(format!(
                "a price is a number, not {other}"
            ))),
        }
    }
}

/// A field that is kept only when it reads: an unreadable value (written
/// by another version) is `None`, not an error of the whole document.
pub fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}
