//! The published message contracts: one JSON Schema (draft-07) per message type and version on
//! the broker, derived from the types that write the messages, so another system can read
//! orderbridge's events without reading its code.
//!
//! The schemas are committed under `schemas/` at the repository root (`order.submitted.v1.json`
//! …) and referenced by the AsyncAPI document (`asyncapi/asyncapi.yaml`); a test
//! (`crates/domain/tests/message_schemas.rs`) fails when they differ from what this module
//! generates, and another validates real messages against them. They describe the JSON as it is
//! written (schemars' serialize contract): every field that is always written is `required`,
//! one that may be `null` says so. Readers must ignore properties they do not know (the schemas
//! allow them): a writer adds fields without a version bump, and removing or changing one needs
//! a new version (see [`crate::events`]).
//!
//! AMQP properties and headers (`message_id`, `type`, the signature) are not part of the body;
//! the AsyncAPI document describes them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use crate::events::{Envelope, ORDER_SUBMITTED, ORDER_SYNC_STATUS, SubmittedOrderData, SyncStatus};
use crate::fulfilment::{FULFILMENT_REQUESTED, FULFILMENT_RESULT, FulfilmentRef};

/// The schema of one message type and version.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSchema {
    /// The envelope's `type`, also the routing key (or its first part, for status reports).
    pub event_type: &'static str,
    /// The envelope's `version`.
    pub version: u32,
    /// The JSON Schema of the whole message body (envelope and `data`).
    pub schema: Value,
}

impl MessageSchema {
    /// The file name under `schemas/`: `order.submitted.v1.json`.
    pub fn file_name(&self) -> String {
        schema_file_name(self.event_type, self.version)
    }

    /// The schema as committed: pretty-printed, keys sorted at every level (so the bytes do not
    /// depend on whether serde_json keeps insertion order in this build), trailing newline.
    pub fn to_pretty_json(&self) -> String {
        // Serializing a Value cannot fail (its map keys are strings).
        let mut text = serde_json::to_string_pretty(&sorted(&self.schema)).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The file under `schemas/` of a message type and version.
pub fn schema_file_name(event_type: &str, version: u32) -> String {
    format!("{event_type}.v{version}.json")
}

/// Every message type and version orderbridge publishes, with its schema.
pub fn message_schemas() -> Vec<MessageSchema> {
    vec![
        message::<SubmittedOrderData<'static>>(
            ORDER_SUBMITTED,
            1,
            "An order accepted by order-api (or re-queued by a resync or backfill): the order as \
             GET /v1/orders/{id} returns it, plus the API client it came from. Published by \
             outbox-relay to the `{ns}.events` exchange with routing key `order.submitted`.",
        ),
        message::<SyncStatus>(
            ORDER_SYNC_STATUS,
            1,
            "What the sync worker did with one `order.submitted` event (synced, retrying, \
             failed). Published by sync-worker to the `{ns}.status` exchange with routing key \
             `order.sync_status.<state>`.",
        ),
        message::<FulfilmentRef>(
            FULFILMENT_REQUESTED,
            1,
            "A fulfilment (provisioning) request was queued or re-opened: a nudge naming the \
             request and its order; the request's row in Postgres is the truth. Published by \
             outbox-relay to `{ns}.events` with routing key `fulfilment.requested`.",
        ),
        message::<FulfilmentRef>(
            FULFILMENT_RESULT,
            1,
            "A callback decided a fulfilment request, whose result is still to be written back to \
             the Salesforce order. Published by outbox-relay to `{ns}.events` with routing key \
             `fulfilment.result`.",
        ),
    ]
}

/// The schema of an [`Envelope`] around `T`, with `type` and `version` pinned to the message's.
fn message<T: JsonSchema>(
    event_type: &'static str,
    version: u32,
    description: &str,
) -> MessageSchema {
    let schema = SchemaSettings::draft07()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<Envelope<T>>();
    let mut schema = schema.to_value();
    if let Value::Object(root) = &mut schema {
        root.insert(
            "title".into(),
            Value::String(format!("{event_type} v{version}")),
        );
        root.insert("description".into(), Value::String(description.into()));
        root.insert(
            "$comment".into(),
            Value::String(
                "Generated from orderbridge's Rust types (crates/domain/src/contracts.rs); do \
                 not edit. Refresh: UPDATE_SCHEMAS=1 cargo test -p orderbridge-domain --test \
                 message_schemas"
                    .into(),
            ),
        );
        let properties = root.get_mut("properties").and_then(Value::as_object_mut);
        if let Some(properties) = properties {
            pin(properties, "type", Value::String(event_type.into()));
            pin(properties, "version", Value::from(version));
        }
    }
    MessageSchema {
        event_type,
        version,
        schema,
    }
}

/// Adds `const` to a property's schema: the envelope type is generic, one message's is not.
fn pin(properties: &mut Map<String, Value>, name: &str, value: Value) {
    if let Some(Value::Object(property)) = properties.get_mut(name) {
        property.insert("const".into(), value);
    }
}

/// `value` with every object's keys in sorted order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The schema of an exact amount: `rust_decimal` writes it as a decimal string (`"12.50"`,
/// never a JSON number, so no float touches money), without sign or exponent.
pub(crate) fn decimal_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": r"^[0-9]+(\.[0-9]+)?$",
    })
}
