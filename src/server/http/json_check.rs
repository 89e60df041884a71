//! Checks that a text reads back as a JSON tree, without building one.
//!
//! A raw JSON payload is stored as the client wrote it; the frame's parser only delimited it.
//! [`JsonCheck`] walks it through the same `deserialize_any` a `serde_json::Value` uses, so it
//! refuses exactly what a `Value` refuses (a lone UTF-16 surrogate escape, a number out of
//! `f64` range, arrays and objects nested more than 127 deep: serde_json's recursion limit
//! refuses a 128th level) — but allocates nothing except the scratch buffer of an escaped
//! string. A send's payload is checked on every send, and a `Value` tree cost one allocation
//! per node.
//!
//! One deliberate difference: an object with serde_json's private raw-value key (`RAW_KEY`)
//! anywhere is refused. With the `raw_value` feature a `Value` gives that key special meaning
//! when it comes first (the entry must be a string holding JSON, and alone), so a payload
//! with it may not read back as the JSON it looks like; no real payload needs it.

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// serde_json's private token for a `RawValue` inside a map (with its `raw_value` feature).
const RAW_KEY: &str = "$serde_json::private::RawValue";

/// Any JSON value, read and dropped.
pub(crate) struct JsonCheck;

/// An object's key, checked not to be [`RAW_KEY`] (compared unescaped, as serde_json does).
struct KeyCheck;

impl<'de> Deserialize<'de> for KeyCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = KeyCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<KeyCheck, E> {
        if key == RAW_KEY {
            return Err(E::custom(format!("the key {RAW_KEY:?} is reserved")));
        }
        Ok(KeyCheck)
    }
}

impl<'de> Deserialize<'de> for JsonCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E: Error>(self, _: i64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E: Error>(self, _: u64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E: Error>(self, _: f64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E: Error>(self, _: &str) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E: Error>(self) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_none<E: Error>(self) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<JsonCheck, D::Error> {
        JsonCheck::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonCheck, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonCheck, A::Error> {
        while map.next_key::<KeyCheck>()?.is_some() {
            map.next_value::<JsonCheck>()?;
        }
        Ok(JsonCheck)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    /// Accepts and refuses the same texts a `Value` does.
    #[test]
    fn agrees_with_a_value_tree() {
        let deep_ok = format!("{}{}", "[".repeat(120), "]".repeat(120));
        let deep_bad = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_map = format!("{}1{}", r#"{"a":"#.repeat(130), "}".repeat(130));
        let cases = [
            "null",
            "true",
            "-0",
            "18446744073709551615",
            "-9223372036854775808",
            "1e308",
            "1e400",
            "-1e400",
            "1.5e-400",
            r#""plain""#,
            r#""\u00e9\n\"""#,
            r#""\ud83d\ude00""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#"{"\ud800": 1}"#,
            r#"{"a": [1, {"b": null}], "a": 2}"#,
            "[1, 2,]",
            r#"{"a" 1}"#,
            "[1e999]",
            deep_ok.as_str(),
            deep_bad.as_str(),
            deep_map.as_str(),
        ];
        for text in cases {
            let value = serde_json::from_str::<Value>(text).is_ok();
            let check = serde_json::from_str::<JsonCheck>(text).is_ok();
            assert_eq!(check, value, "{text:.40}");
        }
        assert!(serde_json::from_str::<JsonCheck>(r#""\ud800""#).is_err());
        // What a `Value` refuses with serde_json's raw-value key, and what it takes (and
        // would read back as something else): all refused.
        for text in [
            r#"{"$serde_json::private::RawValue": 5}"#,
            r#"{"$serde_json::private::RawValue": "not json"}"#,
            r#"{"$serde_json::private::RawValue": "1", "b": 2}"#,
            r#"{"$serde_json::private::RawValue": "1"}"#,
            r#"{"a": 1, "\u0024serde_json::private::RawValue": 2}"#,
            r#"[{"x": {"$serde_json::private::RawValue": "[]"}}]"#,
        ] {
            assert!(serde_json::from_str::<JsonCheck>(text).is_err(), "{text}");
        }
        assert!(serde_json::from_str::<Value>(r#"{"$serde_json::private::RawValue": 5}"#).is_err());
        assert!(serde_json::from_str::<JsonCheck>(r#"{"$serde_json": 1, "private": 2}"#).is_ok());
        assert!(serde_json::from_str::<JsonCheck>(&deep_ok).is_ok());
    }

    /// The nesting limit the README states: 127 levels are taken, 128 refused (the README
    /// said 128 were).
    #[test]
    fn nesting_stops_at_127() {
        const MAX_NESTING: usize = 127;
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let in_objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        for text in [nested(MAX_NESTING), in_objects(MAX_NESTING)] {
            assert!(serde_json::from_str::<JsonCheck>(&text).is_ok());
        }
        for text in [nested(MAX_NESTING + 1), in_objects(MAX_NESTING + 1)] {
            let Err(e) = serde_json::from_str::<JsonCheck>(&text) else {
                panic!("{} levels were taken", MAX_NESTING + 1);
            };
            assert!(e.to_string().contains("recursion limit"), "{e}");
        }
    }
}
