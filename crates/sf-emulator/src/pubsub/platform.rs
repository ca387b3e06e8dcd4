//! Platform events published over REST (`POST /sobjects/Name__e`) or Pub/Sub (`Publish`),
//! delivered on `/event/Name__e`.
//!
//! REST bodies are checked against the topic's current fields (including ones added at run time)
//! and written with its schema; a Pub/Sub payload must decode, whole, with the schema it names.

use apache_avro::types::Value as AvroValue;
use orderbridge_pubsub::proto::ProducerEvent;
use orderbridge_pubsub::topics;
use serde_json::{Map, Value};

use super::Hub;
use super::avro::{EventSchema, field_value};
use super::registry::TopicKind;
use crate::reply::RecordError;

/// Largest event payload accepted (Salesforce's limit for one event message).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Publishes a platform event from a REST body; returns its sequence number.
pub fn publish_rest(
    hub: &Hub,
    event: &str,
    body: &Map<String, Value>,
    user: &str,
) -> Result<u64, RecordError> {
    let topic = topics::platform_event_topic(event);
    let schema = match hub.lock().registry.topic(&topic) {
        Some((TopicKind::Event { .. }, Some(schema))) => schema,
        _ => {
            return Err(RecordError::new(
                "INVALID_TYPE",
                format!("sObject type '{event}' is not supported."),
            ));
        }
    };
    let payload = encode_rest(&schema, body, user)?;
    let produced = ProducerEvent {
        id: uuid::Uuid::new_v4().to_string(),
        schema_id: schema.id.clone(),
        payload,
        headers: Vec::new(),
    };
    Ok(hub.publish(&[&topic], produced))
}

fn encode_rest(
    schema: &EventSchema,
    body: &Map<String, Value>,
    user: &str,
) -> Result<Vec<u8>, RecordError> {
    for key in body.keys() {
        if key == "attributes" {
            continue;
        }
        if !schema
            .fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(key))
        {
            return Err(RecordError::new(
                "INVALID_FIELD",
                format!("No such column '{key}' on sobject"),
            )
            .with_fields(vec![key.clone()]));
        }
    }
    let mut fields = vec![
        (
            "CreatedDate".to_owned(),
            AvroValue::Long(chrono::Utc::now().timestamp_millis()),
        ),
        ("CreatedById".to_owned(), AvroValue::String(user.to_owned())),
    ];
    for f in &schema.fields {
        let v = body
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&f.name))
            .map_or(&Value::Null, |(_, v)| v);
        let value = field_value(f, v).map_err(|e| {
            RecordError::new("INVALID_FIELD", e.to_string()).with_fields(vec![f.name.clone()])
        })?;
        fields.push((f.name.clone(), value));
    }
    apache_avro::to_avro_datum(&schema.avro, AvroValue::Record(fields))
        .map_err(|e| RecordError::new("INVALID_FIELD", format!("cannot encode the event: {e}")))
}

/// Checks that `payload` is exactly one datum of `schema` (no trailing bytes).
pub fn check_payload(schema: &EventSchema, payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "payload of {} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
            payload.len()
        ));
    }
    let mut reader = payload;
    apache_avro::from_avro_datum(&schema.avro, &mut reader, None)
        .map_err(|e| format!("payload does not decode with schema {}: {e}", schema.id))?;
    if !reader.is_empty() {
        return Err(format!(
            "payload has {} bytes after the event",
            reader.len()
        ));
    }
    Ok(())
}
