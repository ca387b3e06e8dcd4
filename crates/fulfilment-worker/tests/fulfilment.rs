//! The provisioning loop against real Postgres, RabbitMQ, the outbox relay and the Salesforce
//! emulator, with a fulfilment receiver that verifies every signature: a request provisioned
//! and written back; 500 twice then provisioned with one idempotency key; a refusal with its
//! reason on both sides; the same message twice calling once; 202 and a callback; a forged
//! message dead-lettered and never acted on; the sweeper re-queuing a request whose message was
//! lost and failing one whose callback never came.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::{Harness, eventually, header};
use orderbridge_broker::headers;
use orderbridge_broker::lapin::BasicProperties;
use orderbridge_db::fulfilment::{self as requests, Outcome};
use orderbridge_domain::fulfilment::RequestState;
use serde_json::json;

#[tokio::test]
async fn a_provisioned_request_is_written_back_to_salesforce_and_the_order() {
    let mut h = Harness::new().await;
    h.start_relay();
    h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-provisioned-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(request.attempts, 1);
    assert_eq!(
        h.activation(&sf_id).await,
        (Some("Provisioned".into()), None)
    );
    assert_eq!(h.status(order_id).await, "provisioned");
    let history = h.history(order_id).await;
    let statuses: Vec<(&str, &str)> = history
        .iter()
        .map(|(s, src)| (s.as_str(), src.as_str()))
        .collect();
    assert_eq!(
        &statuses[statuses.len() - 2..],
        [
            ("provisioning", "fulfilment"),
            ("provisioned", "fulfilment")
        ]
    );

    // The receiver got one signed request, idempotent on the key, carrying the ids.
    let calls = h.receiver.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.webhook_id, id.to_string());
    assert_eq!(call.idem_key.as_deref(), Some("idem-provisioned-1"));
    assert_eq!(call.correlation_id.as_deref(), Some("corr-test-1"));
    assert_eq!(call.body["request_id"], json!(id));
    assert_eq!(call.body["order_id"], json!(order_id));
    assert_eq!(call.body["salesforce_id"], json!(sf_id));
    assert_eq!(call.body["order"]["lines"][0]["sku"], "SKU-RED-MUG");
    assert_eq!(*h.receiver.forged.lock().unwrap(), 0);
    h.cleanup().await;
}

#[tokio::test]
async fn two_server_errors_then_provisioned_calls_three_times_with_one_key() {
    let mut h = Harness::new().await;
    h.receiver.answer(500, "down");
    h.receiver.answer(503, "still down");
    h.start_relay();
    let metrics = h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-retry-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(request.attempts, 3);
    let calls = h.receiver.calls();
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c.idem_key.as_deref(), Some("idem-retry-1"));
        assert_eq!(c.webhook_id, id.to_string());
        assert_eq!(
            c.body, calls[0].body,
            "every attempt sends the same request"
        );
    }
    assert_eq!(metrics.requests("retry"), 2);
    assert_eq!(metrics.requests("provisioned"), 1);
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(h.activation(&sf_id).await.0.as_deref(), Some("Provisioned"));
    h.cleanup().await;
}

/// A fulfilment system that never answers properly: after FULFILMENT_MAX_ATTEMPTS (5 here) calls
/// the request fails with the reason, the result is written back, and the message is
/// dead-lettered for the operator.
#[tokio::test]
async fn calls_that_keep_failing_end_failed_written_back_and_dead_lettered() {
    let mut h = Harness::new().await;
    for _ in 0..5 {
        h.receiver.answer(502, "bad gateway");
    }
    h.start_relay();
    let metrics = h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-exhausted-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Failed);
    assert_eq!(request.attempts, 5);
    let reason = request.reason.unwrap();
    assert!(reason.starts_with("gave up after 5 calls"), "{reason}");
    assert!(reason.contains("502"), "{reason}");
    assert_eq!(h.receiver.calls().len(), 5);
    assert_eq!(h.status(order_id).await, "provisioning_failed");
    let (status, error) = h.activation(&sf_id).await;
    assert_eq!(status.as_deref(), Some("Failed"));
    assert!(error.unwrap().starts_with("gave up after 5 calls"));
    eventually("the dead letter", || async {
        metrics.dead_letters("attempts_exhausted") == 1
    })
    .await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let (props, _) = &dead[0];
    assert_eq!(
        header(props, headers::REASON).as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(
        header(props, headers::ERROR_CODE).as_deref(),
        Some("FULFILMENT_UNAVAILABLE")
    );
    h.cleanup().await;
}

/// Salesforce refusing the write-back (a field the org does not have) is no reason to call the
/// fulfilment system again: the request stays decided, not written back, and the message is
/// dead-lettered `permanent` with Salesforce's error code.
#[tokio::test]
async fn a_write_back_salesforce_refuses_is_dead_lettered() {
    let mut h = Harness::new().await;
    h.start_relay();
    let metrics = h
        .start_worker_with(&["--sf-status-field", "No_Such_Field__c"])
        .await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-refused-write-1").await;
    eventually("the dead letter", || async {
        metrics.dead_letters("permanent") == 1
    })
    .await;
    let request = h.load(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(request.written_back_at, None);
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(h.receiver.calls().len(), 1);
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0].0, headers::REASON).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        header(&dead[0].0, headers::ERROR_CODE).as_deref(),
        Some("INVALID_FIELD")
    );
    h.cleanup().await;
}

#[tokio::test]
async fn a_refusal_fails_the_order_with_its_reason_on_both_sides() {
    let mut h = Harness::new().await;
    h.receiver.answer(
        200,
        r#"{"status":"failed","reason":"no stock for SKU-RED-MUG"}"#,
    );
    h.start_relay();
    h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-failed-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Failed);
    assert_eq!(request.reason.as_deref(), Some("no stock for SKU-RED-MUG"));
    assert_eq!(h.status(order_id).await, "provisioning_failed");
    assert_eq!(
        h.activation(&sf_id).await,
        (
            Some("Failed".into()),
            Some("no stock for SKU-RED-MUG".into())
        )
    );
    assert_eq!(h.receiver.calls().len(), 1);
    h.cleanup().await;
}

#[tokio::test]
async fn the_same_message_twice_calls_the_fulfilment_system_once() {
    let mut h = Harness::new().await;
    h.start_relay();
    let metrics = h.start_worker().await;
    let (_, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-twice-1").await;
    h.wait_written_back(id).await;

    // The relay's message again, exactly (as after a relay failover), signed by the relay key.
    let (event_type, payload) = h.outbox_envelope(id).await;
    let body = serde_json::to_vec(&payload).unwrap();
    let props = BasicProperties::default()
        .with_message_id(payload["id"].as_str().unwrap().into())
        .with_type(event_type.as_str().into())
        .with_content_type("application/json".into());
    let props = common_keyring().sign(props, &body);
    h.publish(&event_type, &body, props.clone()).await;
    h.publish(&event_type, &body, props).await;
    eventually("both duplicates handled", || async {
        metrics.noops_total.load(Relaxed) >= 2
    })
    .await;
    assert_eq!(h.receiver.calls().len(), 1);
    assert_eq!(h.load(id).await.attempts, 1);
    h.cleanup().await;
}

/// Two deliveries of one request at once, the fulfilment system slow to answer: the second finds
/// the call claimed while the first is calling, and afterwards decided: still one call.
#[tokio::test]
async fn two_deliveries_at_once_call_the_fulfilment_system_once() {
    // No relay: the test publishes the request's event itself, twice, before the worker
    // starts, so both are handed over together (prefetch) and handled side by side.
    let mut h = Harness::new().await;
    h.receiver.answer_after(std::time::Duration::from_secs(1));
    let (_, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-concurrent-1").await;
    let (event_type, payload) = h.outbox_envelope(id).await;
    let body = serde_json::to_vec(&payload).unwrap();
    let props = BasicProperties::default()
        .with_message_id(payload["id"].as_str().unwrap().into())
        .with_type(event_type.as_str().into());
    let props = common_keyring().sign(props, &body);
    h.publish(&event_type, &body, props.clone()).await;
    h.publish(&event_type, &body, props).await;
    let metrics = h.start_worker().await;

    let request = h.wait_written_back(id).await;
    eventually("the second delivery settled", || async {
        metrics.noops_total.load(Relaxed) >= 1
    })
    .await;
    assert_eq!(h.receiver.calls().len(), 1);
    assert_eq!(request.attempts, 1);
    assert_eq!(request.state, RequestState::Provisioned);
    assert!(
        metrics.retries_total.load(Relaxed) >= 1,
        "the second delivery found the request busy and came back later"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn accepted_then_a_callback_result_is_written_back() {
    let mut h = Harness::new().await;
    h.receiver.answer(202, r#"{"status":"accepted"}"#);
    h.start_relay();
    h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-accepted-1").await;
    eventually("the request accepted", || async {
        h.load(id).await.state == RequestState::Accepted
    })
    .await;
    assert_eq!(h.status(order_id).await, "provisioning");
    assert_eq!(h.activation(&sf_id).await.0, None);

    // What the callback endpoint does with a signed `provisioned`: record it and queue the
    // result, in one transaction.
    let mut tx = h.db.pool.begin().await.unwrap();
    requests::record_outcome(&mut tx, id, Outcome::Provisioned)
        .await
        .unwrap();
    requests::queue_result(&mut tx, id, order_id, Some("corr-callback"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(
        h.activation(&sf_id).await,
        (Some("Provisioned".into()), None)
    );
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(h.receiver.calls().len(), 1, "the result nudge calls nobody");
    h.cleanup().await;
}

/// The callback decides the request while the worker is still waiting for the 202 (its
/// `record_outcome` ends the worker's claim on the call): the callback's decision stands, and the
/// result is written back once although the worker and the result nudge both want to write it.
#[tokio::test]
async fn a_callback_that_races_the_202_decides_and_is_written_back() {
    let mut h = Harness::new().await;
    h.receiver.callback_before_answering(h.db.pool.clone());
    h.receiver.answer(202, r#"{"status":"accepted"}"#);
    h.start_relay();
    let metrics = h.start_worker().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-race-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(
        h.activation(&sf_id).await,
        (Some("Provisioned".into()), None)
    );
    // The `fulfilment.result` nudge arrives after: nothing left to do.
    eventually("the result nudge handled", || async {
        metrics.noops_total.load(Relaxed) >= 1
    })
    .await;
    assert_eq!(h.receiver.calls().len(), 1);
    assert_eq!(metrics.write_backs_total.load(Relaxed), 1);
    h.cleanup().await;
}

#[tokio::test]
async fn a_forged_message_is_dead_lettered_and_never_acted_on() {
    // No relay: the only message is the forged one.
    let mut h = Harness::new().await;
    let metrics = h.start_worker().await;
    let (_, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-forged-1").await;
    let (event_type, payload) = h.outbox_envelope(id).await;
    let body = serde_json::to_vec(&payload).unwrap();
    let props = BasicProperties::default()
        .with_message_id(payload["id"].as_str().unwrap().into())
        .with_type(event_type.as_str().into());
    // Signed with a key the worker does not accept, and once not signed at all.
    let forger =
        orderbridge_broker::Keyring::single("evil:an-attackers-own-key-of-at-least-32-bytes")
            .unwrap();
    h.publish(&event_type, &body, forger.sign(props.clone(), &body))
        .await;
    h.publish(&event_type, &body, props).await;

    eventually("both dead-lettered", || async {
        metrics.dead_letters("bad_signature") >= 2
    })
    .await;
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 2);
    let mut codes: Vec<String> = dead
        .iter()
        .map(|(p, _)| header(p, headers::ERROR_CODE).unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, ["SIGNATURE_MISSING", "SIGNATURE_UNKNOWN_KEY"]);
    for (p, b) in &dead {
        assert_eq!(header(p, headers::REASON).as_deref(), Some("bad_signature"));
        assert_eq!(
            header(p, headers::ORIGIN_QUEUE).as_deref(),
            Some(h.topology.fulfilment_queue.as_str())
        );
        assert_eq!(b, &body);
    }
    assert!(h.receiver.calls().is_empty());
    let request = h.load(id).await;
    assert_eq!(request.state, RequestState::Queued);
    assert_eq!(request.attempts, 0);
    h.cleanup().await;
}

/// A signed message the worker cannot read (another type, another version, not JSON) is
/// dead-lettered `undecodable` with a code naming why, and nothing else happens.
#[tokio::test]
async fn an_unreadable_message_is_dead_lettered_with_the_reason() {
    let mut h = Harness::new().await;
    let metrics = h.start_worker().await;
    let keys = common_keyring();
    let other_version = json!({
        "id": uuid::Uuid::now_v7(), "type": "fulfilment.requested", "version": 9,
        "occurred_at": "2026-12-03T12:00:00Z", "correlation_id": null,
        "data": {"request_id": uuid::Uuid::now_v7(), "order_id": uuid::Uuid::now_v7()}
    });
    for (key, body) in [
        (
            "fulfilment.requested",
            serde_json::to_vec(&other_version).unwrap(),
        ),
        ("fulfilment.requested", b"not json".to_vec()),
    ] {
        let props = BasicProperties::default()
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_type(key.into());
        h.publish(key, &body, keys.sign(props, &body)).await;
    }
    eventually("both dead-lettered", || async {
        metrics.dead_letters("undecodable") >= 2
    })
    .await;
    let mut codes: Vec<String> = h
        .dead_letters()
        .await
        .iter()
        .map(|(p, _)| header(p, headers::ERROR_CODE).unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, ["MALFORMED_MESSAGE", "UNSUPPORTED_EVENT"]);
    assert!(h.receiver.calls().is_empty());
    h.cleanup().await;
}

fn common_keyring() -> orderbridge_broker::Keyring {
    orderbridge_broker::Keyring::single(common::SIGNING_KEY).unwrap()
}

#[tokio::test]
async fn a_queued_request_whose_message_was_lost_is_queued_again_by_the_sweeper() {
    let mut h = Harness::new().await;
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-lost-1").await;
    // Its message is lost before anyone published it (as if dead-lettered and never
    // replayed), and nothing has touched the request for an hour.
    sqlx::query("DELETE FROM outbox")
        .execute(&h.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE fulfilment_requests SET updated_at = now() - interval '1 hour'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    h.start_relay();
    h.start_worker().await;
    let swept = h.start_sweeper_with(&["--sweep-interval", "200ms", "--requeue-after", "10m"]);

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(h.receiver.calls().len(), 1);
    assert_eq!(swept.sweeper_requeued_total.load(Relaxed), 1);
    // Touched now: not stuck any more, so the next sweeps leave it alone.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(swept.sweeper_requeued_total.load(Relaxed), 1);
    h.cleanup().await;
}

#[tokio::test]
async fn an_accepted_request_whose_callback_never_comes_fails_and_is_written_back() {
    let mut h = Harness::new().await;
    h.receiver.answer(202, r#"{"status":"accepted"}"#);
    h.start_relay();
    h.start_worker().await;
    let swept = h.start_sweeper_with(&["--sweep-interval", "200ms", "--callback-timeout", "1s"]);
    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-no-callback-1").await;

    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Failed);
    let reason = request.reason.unwrap_or_default();
    assert!(
        reason.contains("no result from the fulfilment system within 1s"),
        "{reason}"
    );
    assert_eq!(h.status(order_id).await, "provisioning_failed");
    assert_eq!(
        h.activation(&sf_id).await,
        (Some("Failed".into()), Some(reason))
    );
    assert_eq!(h.receiver.calls().len(), 1, "the sweeper calls nobody");
    assert_eq!(swept.sweeper_timed_out_total.load(Relaxed), 1);
    // A callback that comes after all changes nothing: the request is decided.
    let mut conn = h.db.pool.acquire().await.unwrap();
    let late = requests::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();
    assert!(matches!(late, requests::Recorded::AlreadyDecided { .. }));
    h.cleanup().await;
}
