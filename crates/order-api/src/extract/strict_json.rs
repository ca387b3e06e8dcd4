//! Reading a request body into a JSON document that refuses duplicate object keys.
//!
//! serde_json keeps the last of two equal keys when it builds a `Value` (and a struct sees only
//! that one), so `{"quantity": 1, "quantity": 1000}` was an order for 1,000 while a proxy or a
//! log reader that keeps the first saw 1. RFC 8259 leaves duplicates' meaning open; refusing
//! them is the one reading nobody can misunderstand. The document is built by our own visitor,
//! which fails on the second key, and serde_path_to_error says where ([`pointer_of`] turns its
//! paths into JSON pointers, for the extractor's shape errors too).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not an acceptable JSON document.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("duplicate key `{key}` in the object at {pointer}")]
    DuplicateKey { key: String, pointer: String },
}

/// Parses `bytes` as one JSON document with no duplicate key in any object.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc = serde_path_to_error::deserialize::<_, Strict>(&mut de).map_err(|e| {
        let pointer = pointer_of(e.path());
        let inner = e.into_inner();
        let message = inner.to_string();
        match message.strip_prefix(DUPLICATE_MARK) {
            Some(rest) => StrictJsonError::DuplicateKey {
                // The message is `<mark><key> at line …`: the key is what precedes the location.
                key: rest
                    .rsplit_once(" at line ")
                    .map_or(rest, |(key, _)| key)
                    .to_owned(),
                // The error is raised before the repeated key's value is entered, so the path
                // is the object's that holds it.
                pointer: if pointer.is_empty() {
                    "/".to_owned()
                } else {
                    pointer
                },
            },
            None => StrictJsonError::Malformed(message),
        }
    })?;
    de.end()
        .map_err(|e| StrictJsonError::Malformed(e.to_string()))?;
    Ok(doc.0)
}

/// Turns serde_path_to_error's path (`lines[0].quantity`) into a JSON pointer (`/lines/0/quantity`).
pub(super) fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

/// Starts the custom error a duplicate key raises, to tell it from serde_json's own errors.
const DUPLICATE_MARK: &str = "\u{0}duplicate key: ";

/// A JSON value whose objects have unique keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never hands over a non-finite number; `Null` would be its fallback anyway.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("{DUPLICATE_MARK}{key}")));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dup(body: &str) -> (String, String) {
        match parse(body.as_bytes()) {
            Err(StrictJsonError::DuplicateKey { key, pointer }) => (key, pointer),
            other => panic!("expected a duplicate key, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_found_at_every_level() {
        assert_eq!(dup(r#"{"a": 1, "a": 2}"#), ("a".into(), "/".into()));
        assert_eq!(
            dup(r#"{"customer": {"name": "x", "name": "y"}}"#),
            ("name".into(), "/customer".into())
        );
        assert_eq!(
            dup(r#"{"lines": [{"q": 1}, {"q": 1, "q": 1000}]}"#),
            ("q".into(), "/lines/1".into())
        );
        // Escapes are decoded first: these are the same key.
        assert_eq!(dup(r#"{"a": 1, "\u0061": 2}"#).0, "a");
    }

    #[test]
    fn everything_else_is_the_document_serde_json_reads() {
        let body = r#"{"a": [1, -2, 2.5, "x", null, true, {"b": {}}], "c": {"a": 1}}"#;
        assert_eq!(
            parse(body.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(body).unwrap()
        );
        for bad in ["", "{", r#"{"a": 1} x"#, "[1,]", "{\"a\": 1e999}"] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(StrictJsonError::Malformed(_))),
                "{bad}"
            );
        }
        // serde_json's nesting limit still applies.
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
