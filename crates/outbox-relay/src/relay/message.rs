//! An outbox row as an AMQP message: its routing key, properties and headers (the row's JSON
//! headers turned into AMQP field values), signed (`orderbridge_broker::signing`).
//!
//! Kept apart from the batch loop so the row → message mapping sits in one small place.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use orderbridge_broker::Keyring;
use orderbridge_broker::headers::long_string;
use orderbridge_domain::text::truncate_bytes;
use serde_json::Value;

use crate::outbox::OutboxRow;

/// The routing key and properties for a row, with the signature of its payload (the body).
pub(crate) fn message(
    row: &OutboxRow,
    keyring: &Keyring,
) -> Result<(ShortString, BasicProperties), &'static str> {
    let event_type = ShortString::try_new(row.event_type.as_str())
        .map_err(|_| "event type longer than 255 bytes")?;
    let mut headers = FieldTable::default();
    headers.insert("aggregate_type".into(), long_string(&row.aggregate_type));
    headers.insert(
        "aggregate_id".into(),
        long_string(&row.aggregate_id.to_string()),
    );
    let mut correlation_id = None;
    if let Value::Object(map) = &row.headers.0 {
        for (k, v) in map {
            if k == "correlation_id" {
                correlation_id = v
                    .as_str()
                    .map(|s| ShortString::from(truncate_bytes(s, 255)));
                continue;
            }
            let Ok(key) = ShortString::try_new(k.as_str()) else {
                continue;
            };
            let value = match v {
                Value::Null => continue,
                Value::Bool(b) => AMQPValue::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => AMQPValue::LongLongInt(i),
                    None => long_string(&n.to_string()),
                },
                Value::String(s) => long_string(s),
                other => long_string(&other.to_string()),
            };
            headers.insert(key, value);
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(row.event_id.to_string().into())
        .with_type(event_type.clone())
        .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0))
        .with_app_id("orderbridge-outbox-relay".into())
        .with_headers(headers);
    if let Some(c) = correlation_id {
        properties = properties.with_correlation_id(c);
    }
    Ok((event_type, keyring.sign(properties, row.payload.as_bytes())))
}
