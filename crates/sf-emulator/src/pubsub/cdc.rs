//! Change Data Capture: a committed record change as a change event payload.
//!
//! CREATE carries every non-null field; UPDATE only the fields that changed (the others null),
//! with `changedFields` and `nulledFields` as bitmaps of their schema positions (field 0 is the
//! header); DELETE carries no fields. `changeOrigin` names the REST client that sent
//! `Sforce-Call-Options: client=<name>`, which is how an integration recognises its own writes.

use apache_avro::types::Value as AvroValue;
use orderbridge_pubsub::bitmap::Bitmap;
use serde_json::Value;

use super::avro::{CHANGE_TYPES, EventSchema, field_value};
use crate::store::Change;

/// What the whole transaction (one REST request) shares.
#[derive(Debug, Clone)]
pub struct Commit {
    pub origin: String,
    pub transaction_key: String,
    pub timestamp_ms: i64,
    pub number: i64,
    pub user: String,
}

/// `com/salesforce/api/rest/<version>;client=<name>`, or empty without a client name.
pub fn change_origin(version: &str, client: Option<&str>) -> String {
    match client {
        Some(name) => format!("com/salesforce/api/rest/{version};client={name}"),
        None => String::new(),
    }
}

fn strings(v: Vec<String>) -> AvroValue {
    AvroValue::Array(v.into_iter().map(AvroValue::String).collect())
}

/// The Avro datum of one change, written with `schema`.
pub fn payload(
    schema: &EventSchema,
    change: &Change,
    commit: &Commit,
    sequence: i32,
) -> Result<Vec<u8>, apache_avro::Error> {
    let (kind, values): (usize, Option<&crate::store::Record>) = match (&change.old, &change.new) {
        (None, Some(new)) => (0, Some(new)),
        (Some(_), Some(new)) => (1, Some(new)),
        _ => (2, None),
    };
    let mut changed = Vec::new();
    let mut nulled = Vec::new();
    let mut fields = Vec::with_capacity(schema.fields.len() + 1);
    for (i, f) in schema.fields.iter().enumerate() {
        let position = i + 1;
        let new = values.and_then(|m| m.get(&f.name)).unwrap_or(&Value::Null);
        let include = match (kind, &change.old) {
            (1, Some(old)) => {
                let before = old.get(&f.name).unwrap_or(&Value::Null);
                let differs = before != new;
                if differs {
                    changed.push(position);
                    if new.is_null() {
                        nulled.push(position);
                    }
                }
                differs
            }
            (0, _) => true,
            _ => false,
        };
        let value = if include {
            // A value the schema type cannot hold (never after the store's validation) is
            // sent as null rather than failing the whole event.
            field_value(f, new).unwrap_or(AvroValue::Union(0, Box::new(AvroValue::Null)))
        } else {
            AvroValue::Union(0, Box::new(AvroValue::Null))
        };
        fields.push((f.name.clone(), value));
    }
    let bitmap = |p: Vec<usize>| {
        if p.is_empty() {
            Vec::new()
        } else {
            vec![Bitmap::top_level(p).encode()]
        }
    };
    let header = AvroValue::Record(vec![
        (
            "entityName".into(),
            AvroValue::String(change.object.clone()),
        ),
        ("recordIds".into(), strings(vec![change.id.clone()])),
        (
            "changeType".into(),
            AvroValue::Enum(kind as u32, CHANGE_TYPES[kind].to_owned()),
        ),
        (
            "changeOrigin".into(),
            AvroValue::String(commit.origin.clone()),
        ),
        (
            "transactionKey".into(),
            AvroValue::String(commit.transaction_key.clone()),
        ),
        ("sequenceNumber".into(), AvroValue::Int(sequence)),
        (
            "commitTimestamp".into(),
            AvroValue::Long(commit.timestamp_ms),
        ),
        ("commitNumber".into(), AvroValue::Long(commit.number)),
        ("commitUser".into(), AvroValue::String(commit.user.clone())),
        ("nulledFields".into(), strings(bitmap(nulled))),
        ("diffFields".into(), strings(Vec::new())),
        ("changedFields".into(), strings(bitmap(changed))),
    ]);
    fields.insert(0, ("ChangeEventHeader".into(), header));
    apache_avro::to_avro_datum(&schema.avro, AvroValue::Record(fields))
}
