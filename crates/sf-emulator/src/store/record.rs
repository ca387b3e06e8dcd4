//! One stored record: its fields as a vector sorted by name, the names shared.
//!
//! An org of a million orders holds tens of millions of fields, and almost all of them have one
//! of a few dozen names. A `serde_json::Map` gives every field of every record its own copy of
//! its name plus the map's own overhead (an `IndexMap` here, since the workspace enables
//! `preserve_order`: a hash, a table slot, and the key's heap block per field). A [`Record`]
//! keeps one `(name, value)` pair per field, 48 bytes, the name an [`Arc<str>`] taken from one
//! process-wide set, so each distinct name is allocated once. Records of a few dozen fields are
//! searched by binary search, which at that size is as fast as hashing.
//!
//! Serialized as a JSON object (the data file's format is unchanged); field order inside a
//! record is by name, which nothing depends on: the REST shape is rendered from the schema's
//! field order (`render`).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Field names seen so far. Bounded: names come from the schema (which an admin call can
/// extend) or from request bodies (which are checked against the schema before they are
/// stored), so the set stays small; past the bound a name is allocated per use instead of
/// shared, which costs memory, never correctness.
static NAMES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);
const MAX_SHARED_NAMES: usize = 10_000;

fn intern(name: &str) -> Arc<str> {
    // A poisoned lock only means another thread panicked while inserting a name; the set is
    // still a valid set.
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = names.get(name) {
        return Arc::clone(shared);
    }
    let shared: Arc<str> = Arc::from(name);
    if names.len() < MAX_SHARED_NAMES {
        names.insert(Arc::clone(&shared));
    }
    shared
}

/// A record: field name (schema spelling) → JSON value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Sorted by name, names unique.
    fields: Vec<(Arc<str>, Value)>,
}

static NULL: Value = Value::Null;

impl Record {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.fields.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.fields[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.position(name).ok().map(|i| &mut self.fields[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets a field, answering its previous value.
    pub fn insert(&mut self, name: &str, value: Value) -> Option<Value> {
        match self.position(name) {
            Ok(i) => Some(std::mem::replace(&mut self.fields[i].1, value)),
            Err(i) => {
                self.fields.insert(i, (intern(name), value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name).ok().map(|i| self.fields.remove(i).1)
    }

    /// The fields, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(n, v)| (&**n, v))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Gives back the spare capacity left by the writes that built the record: a record is
    /// written once and then read many times.
    pub fn shrink(&mut self) {
        self.fields.shrink_to_fit();
    }

    /// The record as a JSON object (for answers that show the whole stored record).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.clone()))
            .collect()
    }
}

/// A missing field reads as `null`, as `serde_json::Map` indexing does for `Value`.
impl std::ops::Index<&str> for Record {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&NULL)
    }
}

impl From<Map<String, Value>> for Record {
    fn from(map: Map<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

impl FromIterator<(String, Value)> for Record {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut rec = Record::new();
        for (name, value) in iter {
            rec.insert(&name, value);
        }
        rec.shrink();
        rec
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::<String, Value>::deserialize(deserializer).map(Record::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_are_found_replaced_and_removed_whatever_the_order_of_writes() {
        let mut rec = Record::new();
        for name in ["Status", "Id", "Name", "AccountId"] {
            assert_eq!(rec.insert(name, json!(name.len())), None);
        }
        assert_eq!(rec.insert("Name", json!("Acme")), Some(json!(4)));
        assert_eq!(rec.get("Name"), Some(&json!("Acme")));
        assert_eq!(rec["Missing"], Value::Null);
        assert!(rec.contains_key("Id") && !rec.contains_key("id"));
        assert_eq!(rec.remove("Status"), Some(json!(6)));
        assert_eq!(rec.remove("Status"), None);
        let names: Vec<&str> = rec.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["AccountId", "Id", "Name"]);
        assert_eq!(rec.len(), 3);
    }

    #[test]
    fn names_are_shared_between_records() {
        let mut a = Record::new();
        let mut b = Record::new();
        a.insert("ShippingCity__test", json!("Paris"));
        b.insert("ShippingCity__test", json!("Lyon"));
        assert!(Arc::ptr_eq(&a.fields[0].0, &b.fields[0].0));
    }

    #[test]
    fn serializes_as_the_json_object_it_was_read_from() {
        let text = r#"{"Amount":12.5,"Id":"801000000000001AAA","Nested":{"a":[1,2]},"Void":null}"#;
        let rec: Record = serde_json::from_str(text).unwrap();
        assert_eq!(rec.len(), 4);
        assert_eq!(serde_json::to_string(&rec).unwrap(), text);
        assert_eq!(
            Value::Object(rec.to_map()),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }
}
