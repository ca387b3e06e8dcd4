//! Avro payloads: the writer schema of an event (from `GetSchema`, parsed once per schema id),
//! and one event decoded against it: the Change Data Capture header with its field bitmaps
//! turned into field names, and the top-level fields.
//!
//! Field names come from the fetched schema every time (Salesforce's bitmaps count positions
//! in *that* schema, and an admin adding a field changes the positions and the schema id), never
//! from a list of our own. Payloads come from outside: every failure is a [`DecodeError`], never
//! a panic.

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use orderbridge_pubsub::bitmap::Bitmap;

/// A parsed writer schema and what decoding needs from it.
#[derive(Debug)]
pub struct EventSchema {
    pub id: String,
    schema: Schema,
    /// Top-level field names, by position.
    fields: Vec<String>,
    /// For each top-level field that is a record (or a union with a record), its field names.
    nested: BTreeMap<usize, Vec<String>>,
    /// True when field 0 is `ChangeEventHeader` (a CDC event), false for platform events.
    pub change_event: bool,
}

/// Why a schema or a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("schema {id} is not a valid Avro schema: {reason}")]
    BadSchema { id: String, reason: String },
    #[error("schema {0} is not a record schema")]
    NotARecord(String),
    #[error("payload does not decode with schema {id}: {reason}")]
    BadPayload { id: String, reason: String },
    #[error("payload has {trailing} bytes after the datum (schema {id})")]
    TrailingBytes { id: String, trailing: usize },
    #[error("ChangeEventHeader: {0}")]
    BadHeader(String),
}

impl EventSchema {
    /// Parses the JSON `GetSchema` returned.
    pub fn parse(id: &str, json: &str) -> Result<Self, DecodeError> {
        let schema = Schema::parse_str(json).map_err(|e| DecodeError::BadSchema {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let Schema::Record(RecordSchema { fields, .. }) = &schema else {
            return Err(DecodeError::NotARecord(id.to_owned()));
        };
        let mut nested = BTreeMap::new();
        for (i, field) in fields.iter().enumerate() {
            if let Some(record) = record_of(&field.schema) {
                nested.insert(i, record.fields.iter().map(|f| f.name.clone()).collect());
            }
        }
        let change_event = fields
            .first()
            .is_some_and(|f| f.name == "ChangeEventHeader");
        Ok(Self {
            id: id.to_owned(),
            fields: fields.iter().map(|f| f.name.clone()).collect(),
            nested,
            schema,
            change_event,
        })
    }

    /// The top-level field names, by position.
    pub fn field_names(&self) -> &[String] {
        &self.fields
    }

    /// Decodes one payload (a single Avro datum, no container header).
    pub fn decode(&self, payload: &[u8]) -> Result<Event, DecodeError> {
        let mut reader = payload;
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None).map_err(|e| {
            DecodeError::BadPayload {
                id: self.id.clone(),
                reason: e.to_string(),
            }
        })?;
        if !reader.is_empty() {
            return Err(DecodeError::TrailingBytes {
                id: self.id.clone(),
                trailing: reader.len(),
            });
        }
        let Value::Record(fields) = value else {
            return Err(DecodeError::NotARecord(self.id.clone()));
        };
        let mut fields: BTreeMap<String, Value> = fields.into_iter().collect();
        let header = if self.change_event {
            let raw = fields
                .remove("ChangeEventHeader")
                .ok_or_else(|| DecodeError::BadHeader("missing".into()))?;
            Some(self.header(raw)?)
        } else {
            None
        };
        Ok(Event { header, fields })
    }

    fn header(&self, raw: Value) -> Result<ChangeHeader, DecodeError> {
        let Value::Record(parts) = unwrap_union(raw) else {
            return Err(DecodeError::BadHeader("not a record".into()));
        };
        let mut parts: BTreeMap<String, Value> = parts.into_iter().collect();
        let mut take = |name: &str| parts.remove(name).map(unwrap_union);
        let change_type = match take("changeType") {
            Some(Value::Enum(_, s) | Value::String(s)) => ChangeType::parse(&s),
            _ => return Err(DecodeError::BadHeader("changeType missing".into())),
        };
        let record_ids = string_array(take("recordIds"))
            .ok_or_else(|| DecodeError::BadHeader("recordIds missing".into()))?;
        let commit_timestamp = match take("commitTimestamp") {
            Some(Value::Long(ms) | Value::TimestampMillis(ms)) => ms,
            _ => return Err(DecodeError::BadHeader("commitTimestamp missing".into())),
        };
        let entity_name = match take("entityName") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let change_origin = match take("changeOrigin") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let transaction_key = match take("transactionKey") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let changed = self.names(string_array(take("changedFields")).unwrap_or_default())?;
        let nulled = self.names(string_array(take("nulledFields")).unwrap_or_default())?;
        let diff = self.names(string_array(take("diffFields")).unwrap_or_default())?;
        Ok(ChangeHeader {
            entity_name,
            record_ids,
            change_type,
            change_origin,
            transaction_key,
            commit_timestamp,
            changed_fields: changed,
            nulled_fields: nulled,
            diff_fields: diff,
        })
    }

    /// Turns bitmap strings into field names (`Parent.Child` for nested ones).
    fn names(&self, bitmaps: Vec<String>) -> Result<FieldNames, DecodeError> {
        let mut names = Vec::new();
        for s in bitmaps {
            let bitmap = Bitmap::parse(&s)
                .map_err(|e| DecodeError::BadHeader(format!("field bitmap {s:?}: {e}")))?;
            let bad = |e: orderbridge_pubsub::bitmap::BitmapError| {
                DecodeError::BadHeader(format!("field bitmap {s:?}: {e}"))
            };
            match &bitmap {
                Bitmap::TopLevel(_) => {
                    names.extend(
                        bitmap
                            .names(&self.fields)
                            .map_err(bad)?
                            .into_iter()
                            .map(str::to_owned),
                    );
                }
                Bitmap::Nested { parent, .. } => {
                    let (Some(parent_name), Some(children)) =
                        (self.fields.get(*parent), self.nested.get(parent))
                    else {
                        return Err(DecodeError::BadHeader(format!(
                            "field bitmap {s:?} names field {parent}, which is not a nested record"
                        )));
                    };
                    for child in bitmap.names(children).map_err(bad)? {
                        names.push(format!("{parent_name}.{child}"));
                    }
                }
            }
        }
        Ok(FieldNames(names))
    }
}

/// The record inside a field's schema (`record` or `["null", record]`).
fn record_of(schema: &Schema) -> Option<&RecordSchema> {
    match schema {
        Schema::Record(r) => Some(r),
        Schema::Union(u) => u.variants().iter().find_map(|v| match v {
            Schema::Record(r) => Some(r),
            _ => None,
        }),
        _ => None,
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn string_array(v: Option<Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|i| match unwrap_union(i) {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The CDC header; `None` for a platform event.
    pub header: Option<ChangeHeader>,
    /// The other top-level fields, unions unwrapped by [`Event::string`].
    pub fields: BTreeMap<String, Value>,
}

impl Event {
    /// A field's string value; `None` when absent, null, or not a string.
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.fields.get(name)? {
            Value::String(s) => Some(s),
            Value::Union(_, inner) => match inner.as_ref() {
                Value::String(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Field names decoded from bitmaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldNames(pub Vec<String>);

impl FieldNames {
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `ChangeEventHeader`, with its bitmaps as field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeHeader {
    pub entity_name: String,
    pub record_ids: Vec<String>,
    pub change_type: ChangeType,
    pub change_origin: String,
    pub transaction_key: String,
    /// Milliseconds since the epoch.
    pub commit_timestamp: i64,
    pub changed_fields: FieldNames,
    pub nulled_fields: FieldNames,
    pub diff_fields: FieldNames,
}

/// `changeType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    /// `GAP_*`: the change happened but its values were not captured: re-read the record.
    Gap(String),
    /// A value this version does not know (treated like a gap: re-read).
    Other(String),
}

impl ChangeType {
    fn parse(s: &str) -> Self {
        match s {
            "CREATE" => Self::Create,
            "UPDATE" => Self::Update,
            "DELETE" => Self::Delete,
            "UNDELETE" => Self::Undelete,
            s if s.starts_with("GAP_") => Self::Gap(s.to_owned()),
            s => Self::Other(s.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Undelete => "UNDELETE",
            Self::Gap(s) | Self::Other(s) => s,
        }
    }
}

impl ChangeHeader {
    /// True when the change came from a client that sent `Sforce-Call-Options: client=<name>`
    /// (`changeOrigin` is `com/salesforce/api/rest/62.0;client=<name>`).
    pub fn from_client(&self, name: &str) -> bool {
        self.change_origin
            .split(';')
            .filter_map(|part| part.trim().strip_prefix("client="))
            .any(|client| client == name)
    }
}

#[cfg(test)]
mod tests;
