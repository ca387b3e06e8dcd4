#![allow(clippy::unwrap_used)]
//! The message schema: round trips, tolerance of unknown fields, and refusal of what a reader
//! does not understand.

use orderbridge_domain::events::ORDER_SUBMITTED;
use orderbridge_domain::{
    ClientId, ClientScope, DecodeError, NewOrder, NewOrderRequest, Order, OrderEvent,
    SubmittedOrder,
};
use serde_json::json;

fn order() -> Order {
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": "PO-9",
        "customer": {"external_id": "C-9", "name": "Nine", "email": "n@nine.example"},
        "currency": "USD",
        "lines": [{"sku": "A", "name": "a", "quantity": 2, "unit_price": "0.10"}]
    }))
    .unwrap();
    NewOrder::parse(req)
        .unwrap()
        .into_order(uuid::Uuid::now_v7(), chrono::Utc::now())
}

fn client() -> ClientScope {
    ClientScope {
        id: ClientId::from_uuid(uuid::Uuid::now_v7()),
        external_id_prefix: "alpha:".into(),
    }
}

#[test]
fn order_submitted_round_trips() {
    let order = order();
    let client = client();
    let envelope = OrderEvent::submitted(order.clone(), client.clone())
        .into_envelope(order.created_at, Some("req-1".into()));
    assert_eq!(
        envelope.data["client"]["external_id_prefix"],
        json!("alpha:")
    );
    assert_eq!(envelope.data["client"]["id"], json!(client.id.to_string()));
    assert_eq!(envelope.event_type, ORDER_SUBMITTED);
    assert_eq!(envelope.version, 1);
    let bytes = serde_json::to_vec(&envelope).unwrap();
    let decoded = OrderEvent::decode(&bytes).unwrap();
    assert_eq!(decoded.id, envelope.id);
    assert_eq!(decoded.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(decoded.occurred_at, envelope.occurred_at);
    assert_eq!(decoded.data, OrderEvent::submitted(order, client));
}

/// Events written before `client` existed still decode (with no client), so the worker can
/// name why it will not write them instead of calling them malformed.
#[test]
fn events_without_a_client_decode_without_one() {
    let order = order();
    let mut value = serde_json::to_value(
        OrderEvent::submitted(order.clone(), client()).into_envelope(chrono::Utc::now(), None),
    )
    .unwrap();
    value["data"].as_object_mut().unwrap().remove("client");
    let decoded = OrderEvent::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(
        decoded.data,
        OrderEvent::Submitted(Box::new(SubmittedOrder {
            order,
            client: None
        }))
    );
    value["data"]["client"] = json!({"id": "not a uuid", "external_id_prefix": "x:"});
    assert!(matches!(
        OrderEvent::decode(&serde_json::to_vec(&value).unwrap()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn money_travels_as_exact_strings() {
    let order = order();
    let envelope = OrderEvent::submitted(order, client()).into_envelope(chrono::Utc::now(), None);
    assert_eq!(envelope.data["total"], json!("0.20"));
    assert_eq!(envelope.data["lines"][0]["unit_price"], json!("0.10"));
}

#[test]
fn unknown_fields_are_tolerated_on_read() {
    let order = order();
    let client = client();
    let envelope = OrderEvent::submitted(order.clone(), client.clone())
        .into_envelope(chrono::Utc::now(), None);
    let mut value = serde_json::to_value(&envelope).unwrap();
    value["data"]["client"]["tier"] = json!("gold");
    value["producer"] = json!("a newer writer");
    value["data"]["loyalty_tier"] = json!("gold");
    value["data"]["customer"]["vat_id"] = json!("DE123");
    value["data"]["lines"][0]["discount"] = json!("0.01");
    let decoded = OrderEvent::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(decoded.data, OrderEvent::submitted(order, client));
}

#[test]
fn unknown_type_or_version_is_named_not_guessed() {
    let envelope = OrderEvent::submitted(order(), client()).into_envelope(chrono::Utc::now(), None);
    let mut value = serde_json::to_value(&envelope).unwrap();
    value["version"] = json!(2);
    match OrderEvent::decode(&serde_json::to_vec(&value).unwrap()) {
        Err(DecodeError::Unsupported {
            event_type,
            version,
        }) => {
            assert_eq!((event_type.as_str(), version), (ORDER_SUBMITTED, 2));
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    value["version"] = json!(1);
    value["type"] = json!("order.exploded");
    assert!(matches!(
        OrderEvent::decode(&serde_json::to_vec(&value).unwrap()),
        Err(DecodeError::Unsupported { .. })
    ));
}

#[test]
fn malformed_messages_are_reported() {
    for bad in [
        &b"not json"[..],
        b"{}",
        br#"{"id":"x","type":"order.submitted","version":1}"#,
    ] {
        assert!(matches!(
            OrderEvent::decode(bad),
            Err(DecodeError::Malformed(_))
        ));
    }
    let envelope = OrderEvent::submitted(order(), client()).into_envelope(chrono::Utc::now(), None);
    let mut value = serde_json::to_value(&envelope).unwrap();
    value["data"]["lines"] = json!("not a list");
    assert!(matches!(
        OrderEvent::decode(&serde_json::to_vec(&value).unwrap()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn sync_status_round_trips_and_refuses_other_types() {
    use orderbridge_domain::{SyncState, SyncStatus};
    let status = SyncStatus {
        order_id: uuid::Uuid::now_v7().into(),
        order_version: 3,
        state: SyncState::Synced,
        salesforce_id: Some("801000000000001AAA".into()),
        attempts: 1,
        error: None,
        source_event_id: uuid::Uuid::now_v7().into(),
        source_occurred_at: chrono::Utc::now(),
    };
    assert_eq!(status.routing_key(), "order.sync_status.synced");
    let envelope = status
        .clone()
        .into_envelope(chrono::Utc::now(), Some("req-2".into()));
    let bytes = serde_json::to_vec(&envelope).unwrap();
    let decoded = SyncStatus::decode(&bytes).unwrap();
    assert_eq!(decoded.data, status);
    assert_eq!(decoded.correlation_id.as_deref(), Some("req-2"));

    let submitted =
        OrderEvent::submitted(order(), client()).into_envelope(chrono::Utc::now(), None);
    let err = SyncStatus::decode(&serde_json::to_vec(&submitted).unwrap()).unwrap_err();
    assert!(matches!(err, DecodeError::Unsupported { .. }), "{err}");
}
