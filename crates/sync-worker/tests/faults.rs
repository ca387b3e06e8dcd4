//! Salesforce misbehaving (through the emulator's fault API): latency, an outage and its end,
//! expired sessions, a spent API budget, a mapping Salesforce refuses. Nothing is lost or
//! written twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Harness, assert_exactly_once, eventually, order};
use orderbridge_domain::SyncState;
use orderbridge_mapping::Mapping;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn latency_slows_but_does_not_fail() {
    let mut h = Harness::new().await;
    h.faults(json!({"latency_ms": 300, "jitter_ms": 100})).await;
    let orders: Vec<_> = (0..10).map(|i| order(&format!("C-{i}"), 3)).collect();
    h.start_worker(&[]).await;
    h.publish_orders(&orders).await;
    h.wait_synced(&orders, WAIT).await;
    assert_exactly_once(&h, &orders).await;
    h.cleanup().await;
}

#[tokio::test]
async fn an_outage_pauses_consumption_and_it_resumes_by_itself() {
    let mut h = Harness::new().await;
    let metrics = h.start_worker(&[]).await;
    // Warm up: the price book is resolved and cached before the outage.
    let warm = order("C-0", 1);
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;

    h.faults(json!({"outage": true})).await;
    let orders: Vec<_> = (1..=5).map(|i| order(&format!("C-{i}"), 2)).collect();
    h.publish_orders(&orders).await;
    eventually(WAIT, "the breaker to pause consumption", || async {
        metrics.paused.load(Ordering::Relaxed)
    })
    .await;
    // Paused: the messages went back to the queue and stay there, unconsumed.
    eventually(WAIT, "messages back in the queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 5);
    assert!(metrics.breaker_trips_total.load(Ordering::Relaxed) >= 1);
    assert!(metrics.requeued_total.load(Ordering::Relaxed) >= 5);
    // Nothing went to the retry tiers or the dead-letter queue for an outage.
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    assert_eq!(metrics.retried_total.load(Ordering::Relaxed), 0);

    h.faults(json!({"outage": false})).await;
    h.wait_synced(&orders, WAIT).await;
    assert!(!metrics.paused.load(Ordering::Relaxed));
    assert_exactly_once(&h, &orders).await;
    h.cleanup().await;
}

#[tokio::test]
async fn expired_sessions_are_refreshed_transparently() {
    let mut h = Harness::new().await;
    let metrics = h.start_worker(&[]).await;
    let first = order("C-1", 1);
    h.publish_orders(std::slice::from_ref(&first)).await;
    h.wait_synced(std::slice::from_ref(&first), WAIT).await;
    let logins_before = h.stats().await["token_requests"]["password"]
        .as_u64()
        .unwrap();

    h.faults(json!({"expire_sessions": true})).await;
    let second = order("C-2", 2);
    h.publish_orders(std::slice::from_ref(&second)).await;
    h.wait_synced(std::slice::from_ref(&second), WAIT).await;
    let logins_after = h.stats().await["token_requests"]["password"]
        .as_u64()
        .unwrap();
    assert_eq!(logins_after, logins_before + 1, "one re-login");
    assert_eq!(metrics.breaker_trips_total.load(Ordering::Relaxed), 0);
    assert_exactly_once(&h, &[first, second]).await;
    h.cleanup().await;
}

#[tokio::test]
async fn a_spent_api_budget_pauses_until_it_returns() {
    let mut h = Harness::new().await;
    // The client's usage guard refuses calls for SF_API_USAGE_RECHECK (default 5 minutes) once
    // usage is over its share. The worker's budget probe (`/limits`) must not wait for that: with
    // the default recheck and the harness's short probe interval, the orders must still sync
    // within WAIT.
    let metrics = h.start_worker(&[]).await;
    let warm = order("C-0", 1);
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;

    h.faults(json!({"daily_limit_remaining": 0})).await;
    let orders: Vec<_> = (1..=3).map(|i| order(&format!("C-{i}"), 3)).collect();
    h.publish_orders(&orders).await;
    eventually(WAIT, "paused for budget", || async {
        metrics.paused.load(Ordering::Relaxed)
    })
    .await;
    assert!(metrics.salesforce_errors("REQUEST_LIMIT_EXCEEDED") >= 1);
    eventually(WAIT, "messages back in the queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 3
    })
    .await;

    h.faults(json!({"daily_limit_remaining": 100000})).await;
    h.wait_synced(&orders, WAIT).await;
    assert_exactly_once(&h, &orders).await;
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    h.cleanup().await;
}

#[tokio::test]
async fn a_required_field_salesforce_misses_dead_letters_the_orders() {
    let mut h = Harness::new().await;
    // A mapping without the Order's required Status: Salesforce answers REQUIRED_FIELD_MISSING
    // per record; that is permanent, so each order is dead-lettered at once, with the reason.
    let default: serde_json::Value =
        serde_json::from_str(orderbridge_mapping::DEFAULT_MAPPING).unwrap();
    let mut m = default.clone();
    m["order"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("Status");
    let mapping = Mapping::parse(&m.to_string(), "test").unwrap();
    h.start_worker_with_mapping(&[], mapping).await;
    let orders: Vec<_> = (1..=2).map(|i| order(&format!("C-{i}"), 1)).collect();
    h.publish_orders(&orders).await;
    let mut all = Vec::new();
    h.statuses_until(WAIT, &mut all, |s| {
        s.iter()
            .filter(|r| r.data.state == SyncState::Failed)
            .count()
            == 2
    })
    .await;
    for s in &all {
        let e = s.data.error.as_ref().unwrap();
        assert_eq!(e.code, "REQUIRED_FIELD_MISSING");
        assert!(e.message.contains("Status"), "{}", e.message);
        assert_eq!(s.data.attempts, 1);
    }
    eventually(WAIT, "two dead letters", || async {
        h.message_count(&h.topology.dead_letter_queue).await == 2
    })
    .await;
    assert!(h.count_by_external_id("Order").await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn retryable_failures_that_never_pass_end_dead_lettered() {
    let mut h = Harness::new().await;
    let o = order("C-1", 1);
    // Locked for good: every attempt is UNABLE_TO_LOCK_ROW.
    h.faults(json!({"lock_records": [{"key": o.id.to_string()}]}))
        .await;
    h.start_worker(&["--max-attempts", "3"]).await;
    h.publish_orders(std::slice::from_ref(&o)).await;
    let mut all = Vec::new();
    h.statuses_until(WAIT, &mut all, |s| {
        s.iter().any(|r| r.data.state == SyncState::Failed)
    })
    .await;
    let states: Vec<_> = all
        .iter()
        .map(|r| (r.data.state, r.data.attempts))
        .collect();
    assert_eq!(
        states,
        [
            (SyncState::Retrying, 1),
            (SyncState::Retrying, 2),
            (SyncState::Failed, 3)
        ]
    );
    eventually(WAIT, "a dead letter", || async {
        h.message_count(&h.topology.dead_letter_queue).await == 1
    })
    .await;
    let dead = h.drain(&h.topology.dead_letter_queue).await;
    let props = &dead[0].0;
    use common::header;
    assert_eq!(
        header(props, orderbridge_broker::headers::REASON).as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(
        header(props, orderbridge_broker::headers::ERROR_CODE).as_deref(),
        Some("UNABLE_TO_LOCK_ROW")
    );
    assert_eq!(
        header(props, orderbridge_broker::headers::ATTEMPTS).as_deref(),
        Some("3")
    );
    h.cleanup().await;
}

#[tokio::test]
async fn a_composite_refused_as_a_whole_is_split_and_no_order_is_blamed() {
    let mut h = Harness::new().await;
    let warm = order("C-0", 1);
    h.start_worker(&["--batch-linger", "200ms"]).await;
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;
    let before = h.composite_calls().await;

    // The next call is refused whole with a request error (400): not an outage, not any one
    // order's fault. The worker splits the batch and every order goes through.
    h.faults(json!({"fail_next": {"JSON_PARSER_ERROR": 1}}))
        .await;
    let orders: Vec<_> = (1..=6).map(|i| order(&format!("C-{i}"), 2)).collect();
    h.publish_orders(&orders).await;
    let statuses = h.wait_synced(&orders, WAIT).await;
    assert!(
        statuses.iter().all(|s| s.data.state == SyncState::Synced),
        "{statuses:?}"
    );
    assert_exactly_once(&h, &orders).await;
    // The refused call, then the two halves.
    assert_eq!(h.composite_calls().await - before, 3);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    h.cleanup().await;
}
