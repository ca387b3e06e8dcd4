#![allow(clippy::unwrap_used)]
//! Idempotency-Key: replay, reuse with another body, a real concurrent race, expiry, and the
//! all-or-nothing write of order, lines, event and key.

mod common;

use std::time::Duration;

use common::{TestApp, order_body};
use serde_json::json;
use sqlx::PgPool;

#[tokio::test]
async fn same_key_same_body_replays_the_first_response() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let first = app.post_order(&key, &order_body("PO-1"), Some("k-1")).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);

    // Same body with its keys in another order is the same request.
    let reordered: serde_json::Value = serde_json::from_str(&{
        let b = order_body("PO-1");
        let mut pairs: Vec<_> = b.as_object().unwrap().iter().collect();
        pairs.reverse();
        format!(
            "{{{}}}",
            pairs
                .iter()
                .map(|(k, v)| format!("{:?}:{}", k, v))
                .collect::<Vec<_>>()
                .join(",")
        )
    })
    .unwrap();
    for body in [order_body("PO-1"), reordered] {
        let replay = app.post_order(&key, &body, Some("k-1")).await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.header("location"), first.header("location"));
        assert_eq!(replay.header("etag"), Some("\"v1\""), "the original's ETag");
        assert_eq!(replay.header("content-type"), first.header("content-type"));
        assert_eq!(
            replay.body, first.body,
            "a replay is byte-for-byte the original"
        );
    }
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);

    // After the order has changed, a replay still answers what the first response said.
    sqlx::query("UPDATE orders SET sync_state = 'synced'")
        .execute(&app.pool)
        .await
        .unwrap();
    let replay = app.post_order(&key, &order_body("PO-1"), Some("k-1")).await;
    assert_eq!(replay.header("etag"), Some("\"v1\""));
    assert_eq!(replay.body, first.body);
}

#[tokio::test]
async fn same_key_different_body_is_422() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    assert_eq!(
        app.post_order(&key, &order_body("PO-1"), Some("k"))
            .await
            .status,
        201
    );
    let mut changed = order_body("PO-1");
    changed["lines"][0]["quantity"] = json!(3);
    app.post_order(&key, &changed, Some("k"))
        .await
        .problem(422, "urn:orderbridge:problem:idempotency-key-reused");
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn keys_belong_to_one_client() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let portal = app.key("portal").await;
    let erp = app.key("erp").await;
    let a = app
        .post_order(&portal, &order_body("PO-1"), Some("shared"))
        .await;
    let b = app
        .post_order(&erp, &order_body("PO-1"), Some("shared"))
        .await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (201, 201));
    assert_eq!(b.header("idempotent-replayed"), None);
    assert_ne!(a.json()["id"], b.json()["id"]);
}

#[tokio::test]
async fn malformed_keys_are_400() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    for bad in ["", &"k".repeat(256), "tab\there"] {
        app.post_order(&key, &order_body("PO-1"), Some(bad))
            .await
            .problem(400, "about:blank");
    }
    assert_eq!(
        app.post_order(&key, &order_body("PO-1"), Some(&"k".repeat(255)))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn an_expired_key_starts_afresh() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let first = app
        .post_order(&key, &order_body("PO-1"), Some("k"))
        .await
        .json();
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let second = app.post_order(&key, &order_body("PO-2"), Some("k")).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(second.json()["id"], first["id"]);
    // The purge removes expired keys (none left here: the reuse replaced it).
    assert_eq!(
        orderbridge_db::idempotency::purge_expired_idempotency_keys(&app.pool, 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(app.count("idempotency_keys").await, 1);
}

/// Waits until some backend is blocked on a lock (our request stuck behind the test's lock).
async fn wait_for_lock_wait(pool: &PgPool) {
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the first request never reached the outbox insert");
}

#[tokio::test]
async fn a_key_still_in_flight_is_409_then_replays() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;

    // Hold the first request inside its transaction: it blocks on the outbox insert while the
    // test holds a conflicting table lock.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move {
            app.post_order(&key, &order_body("PO-1"), Some("race"))
                .await
        })
    };
    wait_for_lock_wait(&app.pool).await;

    let second = app
        .post_order(&key, &order_body("PO-1"), Some("race"))
        .await;
    second.problem(409, "urn:orderbridge:problem:idempotency-key-in-flight");
    blocker.rollback().await.unwrap();

    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let third = app
        .post_order(&key, &order_body("PO-1"), Some("race"))
        .await;
    assert_eq!(third.status, 201);
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    assert_eq!(third.body, first.body);
    assert_eq!(app.count("orders").await, 1);
}

#[tokio::test]
async fn a_burst_of_identical_requests_creates_one_order() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let app = app.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            app.post_order(&key, &order_body("PO-1"), Some("burst"))
                .await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let res = t.await.unwrap();
        match res.status.as_u16() {
            201 => {
                created += 1;
                ids.insert(res.json()["id"].clone());
            }
            409 => {
                res.problem(409, "urn:orderbridge:problem:idempotency-key-in-flight");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(ids.len(), 1, "every 201 names the same order");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[tokio::test]
async fn order_lines_event_and_key_are_one_transaction() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    // Make the outbox insert, the last-but-one write, fail.
    sqlx::query("ALTER TABLE outbox ADD CONSTRAINT test_reject_all CHECK (false) NOT VALID")
        .execute(&app.pool)
        .await
        .unwrap();
    let res = app
        .post_order(&key, &order_body("PO-1"), Some("atomic"))
        .await;
    let p = res.problem(500, "about:blank");
    assert!(
        !p["detail"].as_str().unwrap().contains("test_reject_all"),
        "internals must not leak"
    );
    for table in ["orders", "order_lines", "outbox", "idempotency_keys"] {
        assert_eq!(app.count(table).await, 0, "{table} must be empty");
    }
    // Nothing half-done blocks the retry once the fault is gone.
    sqlx::query("ALTER TABLE outbox DROP CONSTRAINT test_reject_all")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.post_order(&key, &order_body("PO-1"), Some("atomic"))
            .await
            .status,
        201
    );
    for table in ["orders", "outbox", "idempotency_keys"] {
        assert_eq!(app.count(table).await, 1, "{table}");
    }
    assert_eq!(app.count("order_lines").await, 3);
}
