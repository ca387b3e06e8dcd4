//! The committed message schemas (`schemas/*.json`) describe the messages as the real code
//! writes them: bodies built by the same constructors the services use validate, and messages
//! with a field missing or of the wrong type do not. Validation is check-jsonschema's (pinned in
//! tools/requirements-test.txt), an implementation other systems may use too, not ours.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::Utc;
use orderbridge_domain::contracts::{message_schemas, schema_file_name};
use orderbridge_domain::events::{ORDER_SUBMITTED, ORDER_SYNC_STATUS};
use orderbridge_domain::fulfilment::{
    FULFILMENT_REQUESTED, FULFILMENT_RESULT, FulfilmentEvent, FulfilmentRef,
};
use orderbridge_domain::{
    ClientId, ClientScope, EventId, NewOrder, NewOrderRequest, Order, OrderEvent, OrderId,
    SyncError, SyncState, SyncStatus,
};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schema(event_type: &str) -> PathBuf {
    root().join("schemas").join(schema_file_name(event_type, 1))
}

/// check-jsonschema on `instances` (JSON values, written to files) against `schema`.
fn check(schema: &Path, name: &str, instances: &[Value]) -> Output {
    let dir = std::env::temp_dir().join(format!("contracts-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = instances
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = dir.join(format!("{name}-{i}.json"));
            std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
            path
        })
        .collect();
    let out =
        std::process::Command::new(orderbridge_testkit::python_tool("check-jsonschema").unwrap())
            .arg("--schemafile")
            .arg(schema)
            .args(&files)
            .output()
            .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An order as order-api stores it, with every optional part `full` or none of them.
fn order(full: bool) -> Order {
    let mut req = json!({
        "client_ref": "PO-1",
        "customer": {"external_id": "CUST-42", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"},
            {"sku": "SKU-TEA", "name": "Tea", "quantity": 1, "unit_price": "3"}
        ]
    });
    if full {
        let address = json!({"line1": "Hauptstraße 1", "line2": "Hof", "city": "Berlin",
            "postal_code": "10115", "region": "BE", "country": "DE"});
        req["customer"]["phone"] = json!("+49 30 1234567");
        req["billing_address"] = address.clone();
        req["shipping_address"] = address;
        req["notes"] = json!("Leave at the door");
    }
    let req: NewOrderRequest = serde_json::from_value(req).unwrap();
    NewOrder::parse(req)
        .unwrap()
        .into_order(OrderId::new_v7(), Utc::now())
}

/// A body as it goes on the wire: the envelope serialized (what the outbox stores, the relay
/// publishes and the worker sends), read back as JSON.
fn wire<T: serde::Serialize>(envelope: &T) -> Value {
    serde_json::from_slice(&serde_json::to_vec(envelope).unwrap()).unwrap()
}

fn order_submitted() -> Vec<Value> {
    let client = |prefix: &str| ClientScope {
        id: ClientId::from_uuid(uuid::Uuid::now_v7()),
        external_id_prefix: prefix.into(),
    };
    vec![
        wire(
            &OrderEvent::submitted(order(true), client("acme-portal:"))
                .into_envelope(Utc::now(), Some("req-1".into())),
        ),
        wire(&OrderEvent::submitted(order(false), client("")).into_envelope(Utc::now(), None)),
    ]
}

fn sync_status() -> Vec<Value> {
    let report = |state, salesforce_id: Option<&str>, error: Option<SyncError>| SyncStatus {
        order_id: OrderId::new_v7(),
        order_version: 3,
        state,
        salesforce_id: salesforce_id.map(str::to_owned),
        attempts: 2,
        error,
        source_event_id: EventId::new_v7(),
        source_occurred_at: Utc::now(),
    };
    let error = SyncError {
        code: "UNABLE_TO_LOCK_ROW".into(),
        message: "unable to obtain exclusive access to this record".into(),
    };
    vec![
        wire(
            &report(SyncState::Synced, Some("801xx000003GZ8bAAG"), None)
                .into_envelope(Utc::now(), Some("req-1".into())),
        ),
        wire(
            &report(SyncState::Retrying, None, Some(error.clone())).into_envelope(Utc::now(), None),
        ),
        wire(&report(SyncState::Failed, None, Some(error)).into_envelope(Utc::now(), None)),
    ]
}

fn fulfilment(result: bool) -> Vec<Value> {
    let reference = FulfilmentRef {
        request_id: uuid::Uuid::now_v7(),
        order_id: OrderId::new_v7(),
    };
    let event = if result {
        FulfilmentEvent::Result(reference)
    } else {
        FulfilmentEvent::Requested(reference)
    };
    vec![
        wire(&event.into_envelope(Utc::now(), Some("req-9".into()))),
        wire(&event.into_envelope(Utc::now(), None)),
    ]
}

/// Every message orderbridge publishes, by type, as the real constructors build it.
fn samples() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (ORDER_SUBMITTED, order_submitted()),
        (ORDER_SYNC_STATUS, sync_status()),
        (FULFILMENT_REQUESTED, fulfilment(false)),
        (FULFILMENT_RESULT, fulfilment(true)),
    ]
}

#[test]
fn real_messages_validate_against_the_committed_schemas() {
    let samples = samples();
    // One sample set per schema, none forgotten.
    assert_eq!(samples.len(), message_schemas().len());
    for (event_type, messages) in samples {
        for m in &messages {
            assert_eq!(m["type"], event_type);
        }
        let out = check(&schema(event_type), event_type, &messages);
        assert!(out.status.success(), "{event_type}: {}", text(&out));
    }
}

/// The schemas are valid draft-07 schemas themselves.
#[test]
fn the_schemas_are_valid_json_schemas() {
    let files: Vec<PathBuf> = message_schemas()
        .iter()
        .map(|s| root().join("schemas").join(s.file_name()))
        .collect();
    let out =
        std::process::Command::new(orderbridge_testkit::python_tool("check-jsonschema").unwrap())
            .arg("--check-metaschema")
            .args(&files)
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The check is not vacuous: a message without a required field, with a field of the wrong
/// type or shape, or of another type than the schema's, is refused, naming what is wrong.
#[test]
fn broken_messages_are_refused() {
    let submitted = order_submitted().remove(0);
    let status = sync_status().remove(0);
    let requested = fulfilment(false).remove(0);
    let edit = |mut v: Value, f: &dyn Fn(&mut Value)| {
        f(&mut v);
        v
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            ORDER_SUBMITTED,
            "no total",
            edit(submitted.clone(), &|v| {
                v["data"].as_object_mut().unwrap().remove("total");
            }),
            "'total' is a required property",
        ),
        (
            ORDER_SUBMITTED,
            "quantity as text",
            edit(submitted.clone(), &|v| {
                v["data"]["lines"][0]["quantity"] = json!("2")
            }),
            "'2' is not of type 'integer'",
        ),
        (
            ORDER_SUBMITTED,
            "amount as a number",
            edit(submitted.clone(), &|v| v["data"]["total"] = json!(28.0)),
            "28.0 is not of type 'string'",
        ),
        (
            ORDER_SUBMITTED,
            "unscoped prefix",
            edit(submitted.clone(), &|v| {
                v["data"]["client"]["external_id_prefix"] = json!("acme")
            }),
            "does not match",
        ),
        (
            ORDER_SUBMITTED,
            "no envelope id",
            edit(submitted.clone(), &|v| {
                v.as_object_mut().unwrap().remove("id");
            }),
            "'id' is a required property",
        ),
        (
            ORDER_SUBMITTED,
            "id not a uuid",
            edit(submitted.clone(), &|v| v["id"] = json!("not-a-uuid")),
            "is not a 'uuid'",
        ),
        (
            ORDER_SUBMITTED,
            "another type",
            edit(submitted, &|v| v["type"] = json!("order.cancelled")),
            "'order.submitted' was expected",
        ),
        (
            ORDER_SYNC_STATUS,
            "unknown state",
            edit(status.clone(), &|v| v["data"]["state"] = json!("done")),
            "data.state",
        ),
        (
            ORDER_SYNC_STATUS,
            "version 2",
            edit(status, &|v| v["version"] = json!(2)),
            "1 was expected",
        ),
        (
            FULFILMENT_REQUESTED,
            "no request id",
            edit(requested, &|v| {
                v["data"].as_object_mut().unwrap().remove("request_id");
            }),
            "'request_id' is a required property",
        ),
    ];
    for (event_type, name, message, why) in cases {
        let out = check(&schema(event_type), &name.replace(' ', "-"), &[message]);
        assert!(!out.status.success(), "{event_type}, {name}: accepted");
        assert!(
            text(&out).contains(why),
            "{event_type}, {name}: expected {why:?} in {}",
            text(&out)
        );
    }
}
