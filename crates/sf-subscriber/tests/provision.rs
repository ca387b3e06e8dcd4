#![allow(clippy::unwrap_used)]
//! Fulfilment triggers: an approval in Salesforce (the emulator's `provision-on-activate` Flow
//! rule publishing `OrderProvisionRequested__e`, or the event published directly) becomes exactly
//! one fulfilment request — row, `provisioning` status, outbox event — stored in the same
//! transaction as the event's inbox row; a configured Status value does the same.

mod common;

use common::*;
use orderbridge_testkit::TestDatabase;
use serde_json::json;
use sf_emulator::EmulatorConfig;
use sf_emulator::config::FlowsAtStart;
use sqlx::PgPool;
use uuid::Uuid;

const EVENT_TOPIC: &str = "/event/OrderProvisionRequested__e";

/// The order's fulfilment requests: (trigger, idem_key, state, correlation_id).
async fn requests(pool: &PgPool, order: Uuid) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT trigger, idem_key, state, correlation_id FROM fulfilment_requests
         WHERE order_id = $1 ORDER BY created_at",
    )
    .bind(order)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The order's `fulfilment.requested` outbox events.
async fn outbox_events(pool: &PgPool, order: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = 'fulfilment.requested'",
    )
    .bind(order)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn history(pool: &PgPool, order: Uuid) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT status, source FROM order_status_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(order)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_approval_in_salesforce_queues_exactly_one_fulfilment_request() {
    let db = TestDatabase::new().await;
    let org = Org::start(EmulatorConfig {
        flows: FlowsAtStart::Default,
        ..emulator_config()
    })
    .await;
    let sf = org.order().await;
    let order = local_order(&db.pool, &sf).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    // An operator activates the order; the Flow rule publishes the provisioning event.
    org.set_status(&sf, "Activated", Some("operator")).await;
    let pool = db.pool.clone();
    eventually("a fulfilment request queued", || {
        let pool = pool.clone();
        async move { !requests(&pool, order).await.is_empty() }
    })
    .await;
    let rows = requests(&db.pool, order).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "platform_event");
    assert!(rows[0].1.starts_with("event:"), "{rows:?}");
    assert_eq!(rows[0].2, "queued");
    assert_eq!(outbox_events(&db.pool, order).await, 1);
    eventually("the order shows provisioning", || {
        let pool = pool.clone();
        async move { status_of(&pool, order).await == "provisioning" }
    })
    .await;
    let h = history(&db.pool, order).await;
    assert!(
        h.contains(&("provisioning".into(), "fulfilment".into())),
        "{h:?}"
    );

    // The operator retries from Salesforce while the request is open: published again, with
    // a key, twice. Nothing new is queued (an open request stands for the order).
    for _ in 0..2 {
        let (code, body) = org
            .call(
                "POST",
                "/sobjects/OrderProvisionRequested__e",
                Some(json!({"OrderId__c": sf, "IdemKey__c": "retry-1", "CorrelationId__c": "c-9"})),
                Some("operator"),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    eventually("both retries handled", || async {
        sub.metric("sf_subscriber_provision_ignored_total").await >= 2.0
    })
    .await;
    assert_eq!(requests(&db.pool, order).await.len(), 1);
    assert_eq!(outbox_events(&db.pool, order).await, 1);
    assert_eq!(
        sub.metric("sf_subscriber_provision_requested_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_failed_request_is_retried_by_publishing_the_event_again() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let order = local_order(&db.pool, &sf).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    let publish = |key: &'static str| {
        let org = &org;
        let sf = sf.clone();
        async move {
            let (code, body) = org
                .call(
                    "POST",
                    "/sobjects/OrderProvisionRequested__e",
                    Some(
                        json!({"OrderId__c": sf, "IdemKey__c": key, "CorrelationId__c": "corr-7"}),
                    ),
                    Some("operator"),
                )
                .await;
            assert_eq!(code, 201, "{body}");
        }
    };
    publish("approve-1").await;
    let pool = db.pool.clone();
    eventually("the request queued", || {
        let pool = pool.clone();
        async move { requests(&pool, order).await.len() == 1 }
    })
    .await;
    let rows = requests(&db.pool, order).await;
    assert_eq!(
        rows[0],
        (
            "platform_event".into(),
            "approve-1".into(),
            "queued".into(),
            Some("corr-7".into())
        )
    );

    // The fulfilment system refused it; the operator publishes the event again (same key).
    sqlx::query("UPDATE fulfilment_requests SET state = 'failed', reason = 'no stock', decided_at = now() WHERE order_id = $1")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    publish("approve-1").await;
    eventually("the request re-opened", || {
        let pool = pool.clone();
        async move { requests(&pool, order).await[0].2 == "queued" }
    })
    .await;
    assert_eq!(requests(&db.pool, order).await.len(), 1);
    assert_eq!(outbox_events(&db.pool, order).await, 2);

    // Provisioned: publishing again (another key) changes nothing.
    sqlx::query("UPDATE fulfilment_requests SET state = 'provisioned', decided_at = now() WHERE order_id = $1")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    publish("approve-2").await;
    eventually("the re-run ignored", || async {
        sub.metric("sf_subscriber_provision_ignored_total").await >= 1.0
    })
    .await;
    assert_eq!(requests(&db.pool, order).await.len(), 1);
    assert_eq!(outbox_events(&db.pool, order).await, 2);
}

#[tokio::test]
async fn unusable_provisioning_events_are_dead_lettered_or_counted_never_queued() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sub = Subscriber::start(&db, &org, &[]).await;

    for fields in [
        json!({"CorrelationId__c": "no order id"}),
        json!({"OrderId__c": "'; DROP TABLE orders;--"}),
    ] {
        let (code, body) = org
            .call(
                "POST",
                "/sobjects/OrderProvisionRequested__e",
                Some(fields),
                None,
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    // An Order no order here is synced to (created in Salesforce by someone else).
    let foreign = org.order().await;
    let (code, body) = org
        .call(
            "POST",
            "/sobjects/OrderProvisionRequested__e",
            Some(json!({"OrderId__c": foreign})),
            None,
        )
        .await;
    assert_eq!(code, 201, "{body}");

    eventually("the unknown order counted", || async {
        sub.metric("sf_subscriber_provision_unknown_order_total")
            .await
            == 1.0
    })
    .await;
    let pool = db.pool.clone();
    eventually("two dead letters", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pubsub_dead_letters WHERE topic = $1",
            )
            .bind(EVENT_TOPIC)
            .fetch_one(&pool)
            .await
            .unwrap()
                == 2
        }
    })
    .await;
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM pubsub_dead_letters WHERE topic = $1 ORDER BY reason",
    )
    .bind(EVENT_TOPIC)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        reasons.iter().any(|r| r == "the event has no OrderId__c"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("is not a Salesforce id")),
        "{reasons:?}"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfilment_requests")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn a_configured_status_value_requests_provisioning_once() {
    let db = TestDatabase::new().await;
    let org = Org::start(emulator_config()).await;
    let sf = org.order().await;
    let order = local_order(&db.pool, &sf).await;
    let sub = Subscriber::start(
        &db,
        &org,
        &[
            ("SUBSCRIBER_PROVISION_ON_STATUS", "Activated"),
            ("SUBSCRIBER_PROVISION_EVENT", ""),
        ],
    )
    .await;

    org.set_status(&sf, "Activated", Some("operator")).await;
    let pool = db.pool.clone();
    eventually("the request queued", || {
        let pool = pool.clone();
        async move { requests(&pool, order).await.len() == 1 }
    })
    .await;
    let rows = requests(&db.pool, order).await;
    assert_eq!(rows[0].0, "status_change");
    assert_eq!(rows[0].1, format!("status:{sf}:Activated"));
    let h = history(&db.pool, order).await;
    assert_eq!(
        h.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        // (The test's order was inserted directly, without its creation entry.)
        ["activated", "provisioning"],
        "{h:?}"
    );

    // Other Status values do nothing.
    org.set_status(&sf, "Draft", Some("operator")).await;
    eventually("the Draft applied", || async {
        sub.metric("sf_subscriber_events_applied_total").await >= 2.0
    })
    .await;
    assert_eq!(requests(&db.pool, order).await.len(), 1);
    assert_eq!(outbox_events(&db.pool, order).await, 1);
}
