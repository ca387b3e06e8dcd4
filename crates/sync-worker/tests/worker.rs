//! The worker against the real RabbitMQ and the emulator: batching, per-record outcomes, retries,
//! dead letters, poison messages and emulator faults.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Harness, eventually, header, order, order_with_skus};
use orderbridge_broker::headers;
use orderbridge_domain::SyncState;

#[tokio::test]
async fn a_batch_of_orders_becomes_accounts_orders_and_items_in_one_call() {
    let mut h = Harness::new().await;
    // Two orders share a customer: one Account for both.
    let orders = vec![
        order("CUST-A", 3),
        order("CUST-A", 2),
        order("CUST-B", 3),
        order("CUST-C", 1),
        order("CUST-D", 3),
    ];
    // Published before the worker starts, so they form one batch.
    h.publish_orders(&orders).await;
    let metrics = h.start_worker(&["--batch-linger", "200ms"]).await;
    let statuses = h.wait_synced(&orders, Duration::from_secs(20)).await;

    for o in &orders {
        let s = statuses
            .iter()
            .find(|s| s.data.order_id == o.id && s.data.state == SyncState::Synced)
            .unwrap();
        assert_eq!(s.data.order_version, o.version);
        assert_eq!(s.data.attempts, 1);
        assert!(s.data.error.is_none());
        assert_eq!(
            s.correlation_id.as_deref(),
            Some(format!("req-{}", o.id).as_str())
        );
        let id = s.data.salesforce_id.as_deref().unwrap();
        assert!(id.starts_with("801"), "{id}");
    }
    let sf_orders = h.records("Order").await;
    assert_eq!(sf_orders.len(), 5);
    for o in &orders {
        let r = sf_orders
            .iter()
            .find(|r| r["External_Id__c"] == o.id.to_string())
            .unwrap();
        assert_eq!(r["Status"], "Draft");
        assert_eq!(r["PoNumber"], o.client_ref.as_str());
        assert_eq!(
            r["EffectiveDate"],
            o.created_at.format("%Y-%m-%d").to_string()
        );
        assert_eq!(r["ShippingCity"], "Berlin");
        assert!(r["Pricebook2Id"].as_str().unwrap().starts_with("01s"));
    }
    let items = h.records("OrderItem").await;
    assert_eq!(items.len(), 12);
    let first = &orders[0];
    let line2 = items
        .iter()
        .find(|r| r["External_Id__c"] == format!("{}-2", first.id))
        .unwrap();
    assert_eq!(line2["Quantity"], 2.0);
    assert_eq!(line2["UnitPrice"], 12.5);
    assert!(
        line2["PricebookEntryId"]
            .as_str()
            .unwrap()
            .starts_with("01u")
    );
    let accounts = h.count_by_external_id("Account").await;
    assert_eq!(accounts.len(), 4);
    // Keyed by the client's prefix and the customer id.
    assert_eq!(accounts["test:CUST-A"], 1);

    // One composite call for the whole batch (plus two price book queries, cached after).
    assert_eq!(h.composite_calls().await, 1);
    assert_eq!(
        metrics
            .synced_total
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    h.cleanup().await;
}

#[tokio::test]
async fn outcomes_are_per_order_within_one_batch() {
    let mut h = Harness::new().await;
    let good = order("CUST-1", 2);
    let unknown_sku = order_with_skus("CUST-2", &["SKU-RED-MUG", "SKU-NOPE"]);
    let locked = order("CUST-3", 1);
    // The locked order's record refuses writes twice (UNABLE_TO_LOCK_ROW), then accepts.
    h.faults(serde_json::json!({"lock_records": [{"key": locked.id.to_string(), "times": 2}]}))
        .await;
    let orders = vec![good.clone(), unknown_sku.clone(), locked.clone()];
    h.publish_orders(&orders).await;
    h.start_worker(&["--batch-linger", "200ms"]).await;

    let mut all = Vec::new();
    h.statuses_until(Duration::from_secs(30), &mut all, |s| {
        let has = |id, st| {
            s.iter()
                .any(|r| r.data.order_id == id && r.data.state == st)
        };
        has(good.id, SyncState::Synced)
            && has(unknown_sku.id, SyncState::Failed)
            && has(locked.id, SyncState::Synced)
    })
    .await;

    // The unknown SKU: failed at once, naming the SKU and the price book; dead-lettered.
    let failed = all
        .iter()
        .find(|r| r.data.order_id == unknown_sku.id && r.data.state == SyncState::Failed)
        .unwrap();
    let err = failed.data.error.as_ref().unwrap();
    assert_eq!(err.code, "UNKNOWN_SKU");
    assert!(err.message.contains("SKU-NOPE"), "{}", err.message);
    assert!(
        err.message.contains("Standard Price Book"),
        "{}",
        err.message
    );
    let dead = h.drain(&h.topology.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    let (props, body) = &dead[0];
    assert_eq!(header(props, headers::REASON).as_deref(), Some("permanent"));
    assert_eq!(
        header(props, headers::ERROR_CODE).as_deref(),
        Some("UNKNOWN_SKU")
    );
    assert_eq!(header(props, headers::ATTEMPTS).as_deref(), Some("1"));
    assert!(header(props, headers::FIRST_FAILURE_AT).is_some());
    assert!(header(props, headers::LAST_FAILURE_AT).is_some());
    let env = orderbridge_domain::OrderEvent::decode(body).unwrap();
    assert_eq!(
        env.correlation_id.as_deref(),
        Some(format!("req-{}", unknown_sku.id).as_str())
    );

    // The locked order went through the delay tiers: retrying twice, then synced on attempt 3.
    let retries: Vec<_> = all
        .iter()
        .filter(|r| r.data.order_id == locked.id && r.data.state == SyncState::Retrying)
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(
        retries[0].data.error.as_ref().unwrap().code,
        "UNABLE_TO_LOCK_ROW"
    );
    assert_eq!(retries[1].data.attempts, 2);
    let synced = all
        .iter()
        .find(|r| r.data.order_id == locked.id && r.data.state == SyncState::Synced)
        .unwrap();
    assert_eq!(synced.data.attempts, 3);

    // Nothing partial of the failed order, exactly one of each other order.
    let orders_in_sf = h.count_by_external_id("Order").await;
    assert_eq!(orders_in_sf.get(&unknown_sku.id.to_string()), None);
    assert_eq!(orders_in_sf[&good.id.to_string()], 1);
    assert_eq!(orders_in_sf[&locked.id.to_string()], 1);
    h.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_rest_flow() {
    let mut h = Harness::new().await;
    h.publish_raw("order.submitted", b"{not json").await;
    h.publish_raw(
        "order.submitted",
        br#"{"id":"0190a0a0-0000-7000-8000-000000000001","type":"order.submitted","version":9,"occurred_at":"2026-11-24T00:00:00Z","correlation_id":null,"data":{}}"#,
    )
    .await;
    let good = order("CUST-1", 1);
    h.publish_orders(std::slice::from_ref(&good)).await;
    let metrics = h.start_worker(&[]).await;
    h.wait_synced(std::slice::from_ref(&good), Duration::from_secs(20))
        .await;
    eventually(Duration::from_secs(10), "two dead letters", || async {
        h.message_count(&h.topology.dead_letter_queue).await == 2
    })
    .await;
    let dead = h.drain(&h.topology.dead_letter_queue).await;
    let codes: Vec<_> = dead
        .iter()
        .map(|(p, _)| header(p, headers::ERROR_CODE).unwrap())
        .collect();
    assert!(codes.contains(&"MALFORMED_MESSAGE".to_owned()), "{codes:?}");
    assert!(codes.contains(&"UNSUPPORTED_EVENT".to_owned()), "{codes:?}");
    for (p, _) in &dead {
        assert_eq!(header(p, headers::REASON).as_deref(), Some("undecodable"));
    }
    assert_eq!(dead.iter().filter(|(_, b)| b == b"{not json").count(), 1);
    assert_eq!(
        metrics
            .undecodable_total
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // The dead-letter gauge saw them.
    h.cleanup().await;
}

/// A message that came back unsettled as often as the broker allows but once (what a worker
/// crashing on it leaves) is dead-lettered by the worker, with a reason and a `failed` report the
/// portal can read, instead of tried once more and then dropped silently by the broker.
#[tokio::test]
async fn a_message_at_its_last_delivery_is_dead_lettered_with_a_failed_report() {
    let mut h = Harness::new().await;
    let crashing = order("CUST-1", 1);
    h.publish_orders(std::slice::from_ref(&crashing)).await;
    eventually(Duration::from_secs(10), "the order queued", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 1
    })
    .await;
    // BROKER_DELIVERY_LIMIT is 10 here: the broker dead-letters a message returned more than
    // ten times, so after ten returns the next delivery is the last. (This also checks the
    // broker's rule: were it "at ten", the message would be gone from the work queue by now.)
    assert_eq!(h.topology.delivery_limit, 10);
    h.return_unsettled(&h.topology.sf_sync_queue, 10).await;
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 1);
    let good = order("CUST-2", 1);
    h.publish_orders(std::slice::from_ref(&good)).await;
    h.start_worker(&[]).await;

    let mut reports = Vec::new();
    h.statuses_until(Duration::from_secs(20), &mut reports, |r| {
        r.iter()
            .any(|s| s.data.order_id == crashing.id && s.data.state == SyncState::Failed)
            && r.iter()
                .any(|s| s.data.order_id == good.id && s.data.state == SyncState::Synced)
    })
    .await;
    let failed = reports
        .iter()
        .find(|s| s.data.order_id == crashing.id)
        .unwrap();
    assert_eq!(failed.data.state, SyncState::Failed);
    let error = failed.data.error.as_ref().unwrap();
    assert_eq!(error.code, "REDELIVERY_LIMIT");
    assert!(
        error.message.contains("returned unsettled 10 times"),
        "{}",
        error.message
    );

    let dead = h.drain(&h.topology.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].0, headers::REASON).as_deref(),
        Some("redelivered")
    );
    assert_eq!(
        header(&dead[0].0, headers::ERROR_CODE).as_deref(),
        Some("REDELIVERY_LIMIT")
    );
    // Not written: the worker did not try it again.
    let orders = h.count_by_external_id("Order").await;
    assert!(!orders.contains_key(&crashing.id.to_string()), "{orders:?}");
    assert_eq!(orders[&good.id.to_string()], 1);
    h.cleanup().await;
}

#[tokio::test]
async fn redelivery_of_a_written_order_creates_nothing_new() {
    let mut h = Harness::new().await;
    let o = order("CUST-1", 3);
    h.publish_orders(std::slice::from_ref(&o)).await;
    h.start_worker(&[]).await;
    let first = h
        .wait_synced(std::slice::from_ref(&o), Duration::from_secs(20))
        .await;
    // The same event again (a redelivery, a replay, a zombie relay's duplicate), and once more
    // in the same batch as itself.
    h.stop_worker().await;
    h.publish_orders(&[o.clone(), o.clone()]).await;
    h.start_worker(&["--batch-linger", "200ms"]).await;
    let second = h
        .wait_synced(std::slice::from_ref(&o), Duration::from_secs(20))
        .await;
    let id = |s: &[orderbridge_domain::Envelope<orderbridge_domain::SyncStatus>]| {
        s.iter()
            .find(|r| r.data.state == SyncState::Synced)
            .unwrap()
            .data
            .salesforce_id
            .clone()
    };
    assert_eq!(id(&first), id(&second), "the same Salesforce record");
    assert_eq!(h.count_by_external_id("Order").await[&o.id.to_string()], 1);
    let items = h.count_by_external_id("OrderItem").await;
    assert_eq!(items.len(), 3);
    assert!(items.values().all(|n| *n == 1));
    h.cleanup().await;
}
