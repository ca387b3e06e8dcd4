//! Avro for the Pub/Sub API: the schemas of change events and platform events in Salesforce's
//! shape, their ids, and record values to Avro values.
//!
//! Every non-header field is a union `["null", T]` with default null, as Salesforce writes them;
//! date-times are `long` milliseconds and dates `int` days since the epoch (the `doc` names the
//! Salesforce type, as Salesforce's own schemas do).

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value as AvroValue;
use base64::Engine;
use chrono::{DateTime, NaiveDate};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::schema::FieldType;

/// The namespace of every Salesforce event schema.
pub const NAMESPACE: &str = "com.sforce.eventbus";

/// The change types of the CDC header, in the enum's order.
pub const CHANGE_TYPES: [&str; 9] = [
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
];

/// One top-level field of an event schema (after the header, for change events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
}

/// A schema as served by GetSchema, parsed once.
#[derive(Debug)]
pub struct EventSchema {
    pub id: String,
    pub json: String,
    pub avro: AvroSchema,
    /// The data fields in schema order (for change events: positions 1.., after the header).
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the Avro schema: {0}")]
pub struct SchemaBuildError(String);

impl SchemaBuildError {
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

fn avro_type(ty: FieldType) -> (&'static str, &'static str) {
    match ty {
        FieldType::Boolean => ("boolean", "Boolean"),
        FieldType::Double => ("double", "Double"),
        FieldType::Currency => ("double", "Currency"),
        FieldType::Percent => ("double", "Percent"),
        FieldType::Int => ("int", "Int"),
        FieldType::Date => ("int", "Date"),
        FieldType::Datetime => ("long", "DateTime"),
        FieldType::Id => ("string", "Id"),
        FieldType::Reference => ("string", "Reference"),
        FieldType::Picklist => ("string", "Picklist"),
        FieldType::Textarea => ("string", "Textarea"),
        FieldType::Phone => ("string", "Phone"),
        FieldType::Url => ("string", "Url"),
        FieldType::Email => ("string", "Email"),
        FieldType::Autonumber | FieldType::String => ("string", "Text"),
    }
}

fn nullable(f: &FieldSpec) -> Value {
    let (t, doc) = avro_type(f.ty);
    json!({"name": f.name, "type": ["null", t], "doc": format!("Data:{doc}"), "default": null})
}

/// The change event schema of `object` with these data fields.
pub fn change_event_schema(
    record_name: &str,
    fields: &[FieldSpec],
) -> Result<EventSchema, SchemaBuildError> {
    let strings = json!({"type": "array", "items": "string"});
    let header = json!({
        "name": "ChangeEventHeader",
        "type": {
            "type": "record",
            "name": "ChangeEventHeader",
            "namespace": NAMESPACE,
            "fields": [
                {"name": "entityName", "type": "string"},
                {"name": "recordIds", "type": strings},
                {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": NAMESPACE, "symbols": CHANGE_TYPES}},
                {"name": "changeOrigin", "type": "string"},
                {"name": "transactionKey", "type": "string"},
                {"name": "sequenceNumber", "type": "int"},
                {"name": "commitTimestamp", "type": "long"},
                {"name": "commitNumber", "type": "long"},
                {"name": "commitUser", "type": "string"},
                {"name": "nulledFields", "type": strings},
                {"name": "diffFields", "type": strings},
                {"name": "changedFields", "type": strings},
            ]
        },
        "doc": "Data:ComplexValueType"
    });
    let mut all = vec![header];
    all.extend(fields.iter().map(nullable));
    build(record_name, all, fields.to_vec())
}

/// The schema of a platform event: `CreatedDate`, `CreatedById`, then the custom fields.
pub fn platform_event_schema(
    name: &str,
    custom: &[FieldSpec],
) -> Result<EventSchema, SchemaBuildError> {
    let mut all = vec![
        json!({"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"}),
        json!({"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"}),
    ];
    all.extend(custom.iter().map(nullable));
    build(name, all, custom.to_vec())
}

fn build(
    name: &str,
    fields: Vec<Value>,
    specs: Vec<FieldSpec>,
) -> Result<EventSchema, SchemaBuildError> {
    let doc = json!({"type": "record", "name": name, "namespace": NAMESPACE, "fields": fields});
    let text = doc.to_string();
    let avro = AvroSchema::parse_str(&text).map_err(|e| SchemaBuildError(e.to_string()))?;
    Ok(EventSchema {
        id: schema_id(&text),
        json: text,
        avro,
        fields: specs,
    })
}

/// A schema id like Salesforce's (22 URL-safe base64 characters), derived from the schema text,
/// so the same schema always has the same id and a changed one a new id.
pub fn schema_id(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Why a JSON value does not fit a field.
#[derive(Debug, thiserror::Error)]
#[error("value of {field} is not a valid {ty:?}")]
pub struct ValueError {
    pub field: String,
    pub ty: FieldType,
}

/// A stored or posted JSON value as the Avro value of its field (inside the `["null", T]`
/// union).
pub fn field_value(f: &FieldSpec, v: &Value) -> Result<AvroValue, ValueError> {
    if v.is_null() {
        return Ok(AvroValue::Union(0, Box::new(AvroValue::Null)));
    }
    let bad = || ValueError {
        field: f.name.clone(),
        ty: f.ty,
    };
    let inner = match f.ty {
        FieldType::Boolean => AvroValue::Boolean(v.as_bool().ok_or_else(bad)?),
        FieldType::Double | FieldType::Currency | FieldType::Percent => {
            AvroValue::Double(v.as_f64().ok_or_else(bad)?)
        }
        FieldType::Int => AvroValue::Int(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(bad)?,
        ),
        FieldType::Date => {
            let day = v
                .as_str()
                .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
                .ok_or_else(bad)?;
            let days = day.signed_duration_since(NaiveDate::default()).num_days();
            AvroValue::Int(i32::try_from(days).map_err(|_| bad())?)
        }
        FieldType::Datetime => AvroValue::Long(datetime_millis(v).ok_or_else(bad)?),
        _ => match v {
            Value::String(s) => AvroValue::String(s.clone()),
            Value::Number(n) => AvroValue::String(n.to_string()),
            Value::Bool(b) => AvroValue::String(b.to_string()),
            _ => return Err(bad()),
        },
    };
    Ok(AvroValue::Union(1, Box::new(inner)))
}

/// Milliseconds since the epoch of a Salesforce date-time string (or a number of ms).
pub fn datetime_millis(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let s = v.as_str()?;
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schemas_parse_and_ids_follow_the_text() {
        let fields = vec![FieldSpec {
            name: "Status".into(),
            ty: FieldType::Picklist,
        }];
        let a = change_event_schema("OrderChangeEvent", &fields).unwrap();
        let b = change_event_schema("OrderChangeEvent", &fields).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 22);
        let mut more = fields.clone();
        more.push(FieldSpec {
            name: "Extra__c".into(),
            ty: FieldType::String,
        });
        assert_ne!(
            change_event_schema("OrderChangeEvent", &more).unwrap().id,
            a.id
        );
        assert!(platform_event_schema("X__e", &fields).is_ok());
    }

    #[test]
    fn values_convert() {
        let dt = FieldSpec {
            name: "D".into(),
            ty: FieldType::Datetime,
        };
        assert_eq!(
            field_value(&dt, &json!("1970-01-01T00:00:01.000+0000")).unwrap(),
            AvroValue::Union(1, Box::new(AvroValue::Long(1000)))
        );
        let day = FieldSpec {
            name: "D".into(),
            ty: FieldType::Date,
        };
        assert_eq!(
            field_value(&day, &json!("1970-01-11")).unwrap(),
            AvroValue::Union(1, Box::new(AvroValue::Int(10)))
        );
        assert!(field_value(&day, &json!("yesterday")).is_err());
        let int = FieldSpec {
            name: "I".into(),
            ty: FieldType::Int,
        };
        assert!(field_value(&int, &json!(1e12)).is_err());
    }
}
