#![allow(clippy::unwrap_used)]
//! Fulfilment requests against a real Postgres (a database per test): opening one (row, status
//! `provisioning` with history, outbox event), the same key again, an order already
//! provisioned, a failed request re-opened by its key, unknown orders, outcomes recorded once,
//! atomicity with the caller's transaction, concurrent triggers, and the claim on the call.

use chrono::{DateTime, TimeDelta, Utc};
use orderbridge_db::create::{Created, create_order};
use std::time::Duration;

use orderbridge_db::fulfilment::{
    self, CallClaim, NewRequest, Outcome, Recorded, Requested, WriteBackClaim,
};
use orderbridge_db::status;
use orderbridge_domain::fulfilment::{
    FULFILMENT_REQUESTED, FULFILMENT_RESULT, FulfilmentEvent, FulfilmentRef, MAX_REASON_CHARS,
    RequestState, Trigger,
};
use orderbridge_domain::{ClientId, ClientScope, NewOrder, NewOrderRequest, Order, OrderId};
use orderbridge_testkit::TestDatabase;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

async fn client(pool: &PgPool) -> ClientScope {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(format!("client-{id}"))
        .execute(pool)
        .await
        .unwrap();
    orderbridge_db::clients::scope(pool, ClientId::from_uuid(id))
        .await
        .unwrap()
        .unwrap()
}

/// An order created the way the API creates one; synced to `sf_id` when given.
async fn order(pool: &PgPool, client: &ClientScope, sf_id: Option<&str>) -> Order {
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": format!("PO-{}", Uuid::now_v7()),
        "customer": {"external_id": "C-1", "name": "One", "email": "one@example.com"},
        "currency": "EUR",
        "lines": [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.00"}]
    }))
    .unwrap();
    let order = NewOrder::parse(req)
        .unwrap()
        .into_order(Uuid::now_v7(), Utc::now() - TimeDelta::hours(1));
    let Created::New { order, .. } = create_order(pool, client, None, order, None).await.unwrap()
    else {
        panic!("not created")
    };
    if let Some(sf_id) = sf_id {
        sqlx::query("UPDATE orders SET salesforce_id = $2, sync_state = 'synced' WHERE id = $1")
            .bind(order.id.get())
            .bind(sf_id)
            .execute(pool)
            .await
            .unwrap();
    }
    *order
}

fn new<'a>(sf_id: &'a str, key: &'a str) -> NewRequest<'a> {
    NewRequest {
        salesforce_id: sf_id,
        idem_key: key,
        trigger: Trigger::PLATFORM_EVENT,
        correlation_id: Some("corr-1"),
    }
}

async fn status_of(pool: &PgPool, id: OrderId) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id.get())
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The fulfilment events in the outbox, oldest first.
async fn events(pool: &PgPool) -> Vec<(String, Uuid, FulfilmentEvent)> {
    let rows: Vec<(String, Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, payload FROM outbox
         WHERE event_type LIKE 'fulfilment.%' ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, a, p)| {
            let e = FulfilmentEvent::decode(p.to_string().as_bytes()).unwrap();
            (t, a, e.data)
        })
        .collect()
}

fn statuses(history: &[orderbridge_domain::StatusEntry]) -> Vec<(&str, &str)> {
    history
        .iter()
        .map(|e| (e.status.as_str(), e.source.as_str()))
        .collect()
}

async fn conn(db: &TestDatabase) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    db.pool.acquire().await.unwrap()
}

async fn queued(conn: &mut PgConnection, sf_id: &str, key: &str) -> (Uuid, OrderId) {
    match fulfilment::request(conn, new(sf_id, key)).await.unwrap() {
        Requested::Queued { id, order_id } => (id, order_id),
        other => panic!("not queued: {other:?}"),
    }
}

#[tokio::test]
async fn a_trigger_queues_a_request_with_status_history_and_event() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (v0,): (i64,) = sqlx::query_as("SELECT version FROM orders WHERE id = $1")
        .bind(order.id.get())
        .fetch_one(&db.pool)
        .await
        .unwrap();

    let (id, order_id) = queued(&mut conn, "801A", "event:e-1").await;
    assert_eq!(order_id, order.id);

    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(row.order_id, order.id);
    assert_eq!(row.salesforce_id, "801A");
    assert_eq!(row.idem_key, "event:e-1");
    assert_eq!(row.trigger, "platform_event");
    assert_eq!(row.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(row.state, RequestState::Queued);
    assert_eq!((row.reason, row.attempts, row.decided_at), (None, 0, None));

    assert_eq!(status_of(&db.pool, order.id).await, "provisioning");
    let history = status::history(&db.pool, order.id).await.unwrap();
    assert_eq!(
        statuses(&history),
        [("submitted", "api"), ("provisioning", "fulfilment")]
    );
    let (v1,): (i64,) = sqlx::query_as("SELECT version FROM orders WHERE id = $1")
        .bind(order.id.get())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(v1, v0 + 1, "the status change bumps the version (ETag)");

    let events = events(&db.pool).await;
    assert_eq!(
        events,
        [(
            "fulfilment".to_owned(),
            order.id.get(),
            FulfilmentEvent::Requested(FulfilmentRef {
                request_id: id,
                order_id: order.id
            })
        )]
    );
    let (event_type, corr): (String, Option<String>) = sqlx::query_as(
        "SELECT event_type, payload->>'correlation_id' FROM outbox
         WHERE event_type LIKE 'fulfilment.%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(event_type, FULFILMENT_REQUESTED);
    assert_eq!(corr.as_deref(), Some("corr-1"));
    assert_eq!(
        fulfilment::latest_for_order(&db.pool, order.id)
            .await
            .unwrap()
            .map(|r| r.id),
        Some(id)
    );
}

#[tokio::test]
async fn the_same_key_again_is_a_duplicate_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    let history = status::history(&db.pool, order.id).await.unwrap().len();

    for _ in 0..2 {
        let again = fulfilment::request(&mut conn, new("801A", "event:e-1"))
            .await
            .unwrap();
        assert_eq!(again, Requested::Duplicate { id });
    }
    // Accepted is still open: the same key is still a duplicate.
    fulfilment::record_outcome(&mut conn, id, Outcome::Accepted)
        .await
        .unwrap();
    assert_eq!(
        fulfilment::request(&mut conn, new("801A", "event:e-1"))
            .await
            .unwrap(),
        Requested::Duplicate { id }
    );
    // Another key while the first request is open: that request, not a second one.
    assert_eq!(
        fulfilment::request(&mut conn, new("801A", "event:e-2"))
            .await
            .unwrap(),
        Requested::Duplicate { id }
    );
    assert_eq!(events(&db.pool).await.len(), 1, "no second outbox row");
    assert_eq!(
        status::history(&db.pool, order.id).await.unwrap().len(),
        history
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM fulfilment_requests")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn an_order_already_provisioned_is_a_no_op() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    let recorded = fulfilment::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Recorded::Recorded {
            order_id: order.id,
            state: RequestState::Provisioned
        }
    );
    assert_eq!(status_of(&db.pool, order.id).await, "provisioned");

    // The event published again by an operator (a new event id, so a new key): nothing.
    let rerun = fulfilment::request(&mut conn, new("801A", "event:e-2"))
        .await
        .unwrap();
    assert_eq!(rerun, Requested::AlreadyProvisioned { order_id: order.id });
    // The API retry too.
    let api =
        fulfilment::request_for_order(&mut conn, order.id, Some(c.id), "api:1", Trigger::API, None)
            .await
            .unwrap();
    assert_eq!(api, Requested::AlreadyProvisioned { order_id: order.id });
    // And the same key as the provisioned request.
    assert_eq!(
        fulfilment::request(&mut conn, new("801A", "event:e-1"))
            .await
            .unwrap(),
        Requested::Duplicate { id }
    );
    assert_eq!(events(&db.pool).await.len(), 1);
    assert_eq!(status_of(&db.pool, order.id).await, "provisioned");
}

#[tokio::test]
async fn a_failed_request_is_reopened_by_its_key() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "IDEM-7").await;
    claim(&db, id).await;
    let failed = fulfilment::record_outcome(
        &mut conn,
        id,
        Outcome::Failed {
            reason: "no stock".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        failed,
        Recorded::Recorded {
            order_id: order.id,
            state: RequestState::Failed
        }
    );
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning_failed");
    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(row.reason.as_deref(), Some("no stock"));
    assert!(row.decided_at.is_some());
    assert!(fulfilment::mark_written_back(&db.pool, id).await.unwrap());

    // The operator publishes the event again with the same IdemKey__c: the same request, open.
    let again = fulfilment::request(&mut conn, new("801A", "IDEM-7"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Requested::Queued {
            id,
            order_id: order.id
        }
    );
    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(row.state, RequestState::Queued);
    assert_eq!(
        (
            row.reason,
            row.attempts,
            row.decided_at,
            row.written_back_at
        ),
        (None, 0, None, None)
    );
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning");
    let history = status::history(&db.pool, order.id).await.unwrap();
    assert_eq!(
        statuses(&history),
        [
            ("submitted", "api"),
            ("provisioning", "fulfilment"),
            ("provisioning_failed", "fulfilment"),
            ("provisioning", "fulfilment")
        ]
    );
    let r = FulfilmentRef {
        request_id: id,
        order_id: order.id,
    };
    let kinds: Vec<FulfilmentEvent> = events(&db.pool).await.into_iter().map(|e| e.2).collect();
    assert_eq!(
        kinds,
        [FulfilmentEvent::Requested(r), FulfilmentEvent::Requested(r)]
    );
    // Provisioned this time.
    fulfilment::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();
    assert_eq!(status_of(&db.pool, order.id).await, "provisioned");
}

#[tokio::test]
async fn a_failed_request_and_a_new_key_open_a_new_request() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (first, _) = queued(&mut conn, "801A", "event:e-1").await;
    fulfilment::record_outcome(&mut conn, first, Outcome::Failed { reason: "x".into() })
        .await
        .unwrap();
    let (second, _) = queued(&mut conn, "801A", "event:e-2").await;
    assert_ne!(first, second);
    assert_eq!(
        fulfilment::latest_for_order(&db.pool, order.id)
            .await
            .unwrap()
            .map(|r| (r.id, r.state)),
        Some((second, RequestState::Queued))
    );
}

#[tokio::test]
async fn unknown_and_unsynced_orders() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let other = client(&db.pool).await;
    let unsynced = order(&db.pool, &c, None).await;
    let synced = order(&db.pool, &c, Some("801B")).await;
    let mut conn = conn(&db).await;
    assert_eq!(
        fulfilment::request(&mut conn, new("801xx0000000000AAA", "event:e-1"))
            .await
            .unwrap(),
        Requested::UnknownOrder
    );
    let for_order = |id, client| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            fulfilment::request_for_order(
                &mut conn,
                id,
                client,
                &orderbridge_domain::fulfilment::idem_key::api(Uuid::new_v4()),
                Trigger::API,
                None,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(
        for_order(OrderId::new_v7(), None).await,
        Requested::UnknownOrder
    );
    assert_eq!(
        for_order(synced.id, Some(other.id)).await,
        Requested::UnknownOrder,
        "another client's order is not found"
    );
    assert_eq!(
        for_order(unsynced.id, Some(c.id)).await,
        Requested::NotSynced {
            order_id: unsynced.id
        }
    );
    assert!(events(&db.pool).await.is_empty());
    assert_eq!(status_of(&db.pool, unsynced.id).await, "submitted");

    let Requested::Queued { id, order_id } = for_order(synced.id, Some(c.id)).await else {
        panic!("not queued")
    };
    assert_eq!(order_id, synced.id);
    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(
        (row.salesforce_id.as_str(), row.trigger.as_str()),
        ("801B", "api")
    );
    assert!(
        fulfilment::load(&db.pool, Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn outcomes_are_recorded_once() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;

    // 202 first (twice: the worker may retry after a crash), then the callback decides.
    for _ in 0..2 {
        assert_eq!(
            fulfilment::record_outcome(&mut conn, id, Outcome::Accepted)
                .await
                .unwrap(),
            Recorded::Recorded {
                order_id: order.id,
                state: RequestState::Accepted
            }
        );
    }
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning");
    let long = "é".repeat(MAX_REASON_CHARS + 50);
    let failed = fulfilment::record_outcome(
        &mut conn,
        id,
        Outcome::Failed {
            reason: long.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        failed,
        Recorded::Recorded {
            order_id: order.id,
            state: RequestState::Failed
        }
    );
    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    let reason = row.reason.unwrap();
    assert_eq!(
        reason.chars().count(),
        MAX_REASON_CHARS,
        "cut, on a character"
    );
    let decided_at = row.decided_at.unwrap();

    // Any later outcome (a duplicate callback, the worker's late answer) is ignored.
    for late in [
        Outcome::Provisioned,
        Outcome::Accepted,
        Outcome::Failed {
            reason: "other".into(),
        },
    ] {
        assert_eq!(
            fulfilment::record_outcome(&mut conn, id, late)
                .await
                .unwrap(),
            Recorded::AlreadyDecided {
                order_id: order.id,
                state: RequestState::Failed,
                reason: Some(reason.clone())
            }
        );
    }
    let row = fulfilment::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(row.state, RequestState::Failed);
    assert_eq!(row.decided_at, Some(decided_at));
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning_failed");
    let failed_rows = status::history(&db.pool, order.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.status == "provisioning_failed")
        .count();
    assert_eq!(failed_rows, 1);

    assert_eq!(
        fulfilment::record_outcome(&mut conn, Uuid::now_v7(), Outcome::Provisioned)
            .await
            .unwrap(),
        Recorded::UnknownRequest
    );

    // Written back once.
    assert!(fulfilment::mark_written_back(&db.pool, id).await.unwrap());
    assert!(!fulfilment::mark_written_back(&db.pool, id).await.unwrap());
    assert!(
        !fulfilment::mark_written_back(&db.pool, Uuid::now_v7())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_open_request_is_not_marked_written_back_and_results_are_queued() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    assert!(!fulfilment::mark_written_back(&db.pool, id).await.unwrap());
    fulfilment::queue_result(&mut conn, id, order.id, Some("cb-1"))
        .await
        .unwrap();
    let all = events(&db.pool).await;
    assert_eq!(
        all.last().map(|e| e.2),
        Some(FulfilmentEvent::Result(FulfilmentRef {
            request_id: id,
            order_id: order.id
        }))
    );
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM outbox WHERE event_type LIKE 'fulfilment.%' ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(types, [FULFILMENT_REQUESTED, FULFILMENT_RESULT]);
}

#[tokio::test]
async fn a_request_commits_or_rolls_back_with_the_callers_transaction() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;

    let mut tx = db.pool.begin().await.unwrap();
    let (id, _) = queued(&mut tx, "801A", "event:e-1").await;
    tx.rollback().await.unwrap();
    assert!(fulfilment::load(&db.pool, id).await.unwrap().is_none());
    assert!(events(&db.pool).await.is_empty());
    assert_eq!(status_of(&db.pool, order.id).await, "submitted");
    assert_eq!(status::history(&db.pool, order.id).await.unwrap().len(), 1);

    let mut tx = db.pool.begin().await.unwrap();
    let (id, _) = queued(&mut tx, "801A", "event:e-1").await;
    tx.commit().await.unwrap();
    assert!(fulfilment::load(&db.pool, id).await.unwrap().is_some());
    assert_eq!(events(&db.pool).await.len(), 1);
}

#[tokio::test]
async fn a_key_used_by_another_order_opens_nothing() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let _a = order(&db.pool, &c, Some("801A")).await;
    let b = order(&db.pool, &c, Some("801B")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "SHARED-KEY").await;
    assert_eq!(
        fulfilment::request(&mut conn, new("801B", "SHARED-KEY"))
            .await
            .unwrap(),
        Requested::Duplicate { id }
    );
    assert_eq!(status_of(&db.pool, b.id).await, "submitted");
    assert_eq!(events(&db.pool).await.len(), 1);
}

#[tokio::test]
async fn statuses_follow_a_salesforce_status_dated_ahead_of_our_clock() {
    // Salesforce's commit time of `Activated` is a little ahead of ours: the fulfilment status
    // it caused is still applied (never judged stale against its own cause).
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let ahead: DateTime<Utc> = Utc::now() + TimeDelta::seconds(30);
    status::apply(
        &mut conn,
        order.id,
        status::StatusChange {
            status: "activated",
            at: ahead,
            source: orderbridge_domain::StatusSource::SALESFORCE,
        },
    )
    .await
    .unwrap();
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning");
    fulfilment::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();
    assert_eq!(status_of(&db.pool, order.id).await, "provisioned");
}

#[tokio::test]
async fn an_activation_overtaken_by_its_provisioning_event_still_joins_the_history() {
    // The provisioning event and the `Activated` change event come on two streams; the event
    // won. `activated` (decided before `provisioning` was) is late: it joins the history where
    // it was decided, and the order stays `provisioning`, then `provisioned`.
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let activated_at = Utc::now();
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    let activated = status::StatusChange {
        status: "activated",
        at: activated_at,
        source: orderbridge_domain::StatusSource::SALESFORCE,
    };
    let late = status::apply_by_salesforce_id(&mut conn, "801A", activated)
        .await
        .unwrap();
    assert!(
        matches!(late, status::StatusApplied::Late { .. }),
        "{late:?}"
    );
    assert_eq!(status_of(&db.pool, order.id).await, "provisioning");
    // Replayed after a subscriber restart: nothing more.
    assert_eq!(
        status::apply_by_salesforce_id(&mut conn, "801A", activated)
            .await
            .unwrap(),
        status::StatusApplied::Stale
    );
    fulfilment::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();
    let history: Vec<String> = status::history(&db.pool, order.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        history,
        ["submitted", "activated", "provisioning", "provisioned"]
    );
}

#[tokio::test]
async fn a_key_the_table_cannot_hold_fails_the_transaction() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    assert!(
        fulfilment::request(&mut conn, new("801A", "with space"))
            .await
            .is_err()
    );
    assert_eq!(status_of(&db.pool, order.id).await, "submitted");
    assert!(events(&db.pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_triggers_open_one_request() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    let order = order(&db.pool, &c, Some("801A")).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            // Half the triggers share a key (a redelivered event), half carry their own.
            let key = if i % 2 == 0 {
                "event:same".to_owned()
            } else {
                format!("event:e-{i}")
            };
            fulfilment::request(&mut conn, new("801A", &key))
                .await
                .unwrap()
        }));
    }
    let mut queued_ids = Vec::new();
    let mut duplicates = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Requested::Queued { id, .. } => queued_ids.push(id),
            Requested::Duplicate { id } => duplicates.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(queued_ids.len(), 1, "exactly one request opened");
    assert!(duplicates.iter().all(|d| *d == queued_ids[0]));
    assert_eq!(events(&db.pool).await.len(), 1);
    let provisioning = status::history(&db.pool, order.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.status == "provisioning")
        .count();
    assert_eq!(provisioning, 1);
}

/// Claims request `id`'s call for a minute; the claim.
async fn claim(db: &TestDatabase, id: Uuid) -> fulfilment::CallClaim {
    let claim = fulfilment::claim_call(&db.pool, id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(claim, CallClaim::Claimed { .. }), "{claim:?}");
    claim
}

#[tokio::test]
async fn a_call_is_claimed_by_one_caller_until_released_decided_or_expired() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    let minute = Duration::from_secs(60);

    // One claim at a time; each claim counts a call.
    let CallClaim::Claimed { attempts, until } = claim(&db, id).await else {
        unreachable!()
    };
    assert_eq!(attempts, 1);
    assert_eq!(
        fulfilment::claim_call(&db.pool, id, minute).await.unwrap(),
        CallClaim::Busy
    );
    // Releasing someone else's (an expired, re-taken) claim leaves the current one alone.
    fulfilment::release_claim(&db.pool, id, until - TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        fulfilment::claim_call(&db.pool, id, minute).await.unwrap(),
        CallClaim::Busy
    );
    fulfilment::release_claim(&db.pool, id, until)
        .await
        .unwrap();
    let CallClaim::Claimed { attempts, .. } = claim(&db, id).await else {
        unreachable!()
    };
    assert_eq!(attempts, 2);

    // A claim whose holder died expires: the next caller gets it.
    sqlx::query("UPDATE fulfilment_requests SET claimed_until = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let CallClaim::Claimed { attempts, .. } = claim(&db, id).await else {
        unreachable!()
    };
    assert_eq!(attempts, 3);
    assert_eq!(
        fulfilment::load(&db.pool, id)
            .await
            .unwrap()
            .unwrap()
            .attempts,
        3
    );

    // Accepted (and decided) requests have no call to claim; neither has a missing one.
    fulfilment::record_outcome(&mut conn, id, Outcome::Accepted)
        .await
        .unwrap();
    assert_eq!(
        fulfilment::claim_call(&db.pool, id, minute).await.unwrap(),
        CallClaim::NotQueued
    );
    assert_eq!(
        fulfilment::claim_call(&db.pool, Uuid::now_v7(), minute)
            .await
            .unwrap(),
        CallClaim::NotQueued
    );
    let claimed: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT claimed_until FROM fulfilment_requests WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(claimed, None, "recording an outcome ends the claim");
}

#[tokio::test]
async fn a_write_back_is_claimed_by_one_caller_until_marked_released_or_expired() {
    let db = TestDatabase::new().await;
    let c = client(&db.pool).await;
    order(&db.pool, &c, Some("801A")).await;
    let mut conn = conn(&db).await;
    let (id, _) = queued(&mut conn, "801A", "event:e-1").await;
    let minute = Duration::from_secs(60);
    // Nothing to write back while the request is open.
    assert_eq!(
        fulfilment::claim_write_back(&db.pool, id, minute)
            .await
            .unwrap(),
        WriteBackClaim::Nothing
    );
    claim(&db, id).await;
    fulfilment::record_outcome(&mut conn, id, Outcome::Provisioned)
        .await
        .unwrap();

    let WriteBackClaim::Claimed { until } = fulfilment::claim_write_back(&db.pool, id, minute)
        .await
        .unwrap()
    else {
        panic!("the decided result is claimed")
    };
    assert_eq!(
        fulfilment::claim_write_back(&db.pool, id, minute)
            .await
            .unwrap(),
        WriteBackClaim::Busy,
        "one writer at a time"
    );
    fulfilment::release_claim(&db.pool, id, until)
        .await
        .unwrap();
    assert!(matches!(
        fulfilment::claim_write_back(&db.pool, id, minute)
            .await
            .unwrap(),
        WriteBackClaim::Claimed { .. }
    ));
    sqlx::query("UPDATE fulfilment_requests SET claimed_until = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        fulfilment::claim_write_back(&db.pool, id, minute)
            .await
            .unwrap(),
        WriteBackClaim::Claimed { .. }
    ));
    assert!(fulfilment::mark_written_back(&db.pool, id).await.unwrap());
    assert_eq!(
        fulfilment::claim_write_back(&db.pool, id, minute)
            .await
            .unwrap(),
        WriteBackClaim::Nothing,
        "written back: nothing to claim"
    );
}
