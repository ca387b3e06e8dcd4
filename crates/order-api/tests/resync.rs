#![allow(clippy::unwrap_used)]
//! `POST /v1/orders/{id}/resync`, and the ETag following sync status changes, against a real
//! per-test database.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, TestResponse, order_body};
use serde_json::{Value, json};
use uuid::Uuid;

async fn resync(app: &TestApp, key: &str, id: &str, request_id: Option<&str>) -> TestResponse {
    let mut req = Request::post(format!("/v1/orders/{id}/resync"))
        .header("authorization", format!("Bearer {key}"));
    if let Some(r) = request_id {
        req = req.header("x-request-id", r);
    }
    app.send(req.body(Body::empty()).unwrap()).await
}

/// The order's outbox events, oldest first: (payload, headers).
async fn events(app: &TestApp, id: &str) -> Vec<(Value, Value)> {
    sqlx::query_as(
        "SELECT payload, headers FROM outbox WHERE aggregate_id = $1::uuid ORDER BY position",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn sync_event_version(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("SELECT sync_event_version FROM orders WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// What the relay's status applier does with a `synced` report (same columns, same trigger).
async fn apply_synced(app: &TestApp, id: &str) {
    sqlx::query(
        "UPDATE orders SET sync_state = 'synced', salesforce_id = '801xx000003GZ8bAAG',
             sync_attempts = 2, last_error_code = NULL, last_error_message = NULL,
             synced_at = '2026-11-24T10:00:00Z', sync_reported_at = '2026-11-24T10:00:00Z'
         WHERE id = $1::uuid",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn resync_starts_the_order_over_with_a_new_event() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    let created = app.post_order(&key, &order_body("PO-R1"), None).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{id}");
    assert_eq!(app.get(&key, &path).await.header("etag"), Some("\"v1\""));

    // A status report applied to the order changes its ETag and shows on GET.
    apply_synced(&app, &id).await;
    let synced = app.get(&key, &path).await;
    assert_eq!(synced.header("etag"), Some("\"v2\""));
    assert_eq!(synced.json()["sync"]["state"], json!("synced"));
    let not_modified = app
        .send(
            Request::get(&path)
                .header("authorization", format!("Bearer {key}"))
                .header("if-none-match", "\"v1\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(not_modified.status, 200, "the old ETag no longer matches");

    let res = resync(&app, &key, &id, Some("corr-resync-1")).await;
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("etag"), Some("\"v3\""));
    assert_eq!(res.header("location"), Some(path.as_str()));
    assert_eq!(res.header("x-request-id"), Some("corr-resync-1"));
    let order = res.json();
    assert_eq!(order["version"], json!(3));
    assert_eq!(
        order["sync"],
        json!({"state": "pending", "salesforce_id": "801xx000003GZ8bAAG", "attempts": 0,
               "last_error": null, "synced_at": "2026-11-24T10:00:00Z"}),
        "the Salesforce id and synced_at are kept"
    );
    // The body is what GET returns (GET adds the status history).
    let fetched = app.get(&key, &path).await;
    let mut fetched_order = fetched.json();
    fetched_order
        .as_object_mut()
        .unwrap()
        .remove("status_history")
        .unwrap();
    assert_eq!(fetched_order, order);
    assert_eq!(fetched.header("etag"), Some("\"v3\""));

    // A fresh order.submitted event carrying the order as it now is (data.version = 3), the
    // request's correlation id, and the order's sync_event_version pointing at it.
    let events = events(&app, &id).await;
    assert_eq!(events.len(), 2);
    let (payload, headers) = &events[1];
    assert_eq!(payload["type"], json!("order.submitted"));
    assert_eq!(payload["version"], json!(1));
    let mut data = payload["data"].clone();
    let client = data.as_object_mut().unwrap().remove("client").unwrap();
    assert_eq!(data, order);
    assert!(client["external_id_prefix"].is_string(), "{client}");
    assert_eq!(payload["data"]["version"], json!(3));
    assert_eq!(payload["correlation_id"], json!("corr-resync-1"));
    assert_eq!(headers["correlation_id"], json!("corr-resync-1"));
    assert_ne!(payload["id"], events[0].0["id"], "a new event id");
    let decoded =
        orderbridge_domain::OrderEvent::decode(&serde_json::to_vec(payload).unwrap()).unwrap();
    assert_eq!(decoded.event_type, "order.submitted");
    assert_eq!(sync_event_version(&app, &id).await, 3);

    assert_eq!(res.header("resync-queued"), Some("true"));

    // Again while that event is on its way: nothing new is queued.
    let again = resync(&app, &key, &id, None).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("resync-queued"), Some("false"));
    assert_eq!(again.header("etag"), Some("\"v3\""));
    assert_eq!(again.json(), order);
    assert_eq!(crate::events(&app, &id).await.len(), 2);

    // Once it has settled again, a resync is a new event with the next version.
    apply_synced(&app, &id).await;
    let third = resync(&app, &key, &id, None).await;
    assert_eq!(third.status, 202);
    assert_eq!(third.header("resync-queued"), Some("true"));
    assert_eq!(third.header("etag"), Some("\"v5\""));
    let events = crate::events(&app, &id).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].0["data"]["version"], json!(5));
    assert_eq!(sync_event_version(&app, &id).await, 5);
}

/// 1,000 resyncs of one order used to queue 1,000 events (18 Salesforce calls): an order whose
/// sync is under way (pending, published, retrying) is left alone.
#[tokio::test]
async fn resync_of_an_order_whose_sync_is_under_way_queues_nothing() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    let id = app
        .post_order(&key, &order_body("PO-R4"), None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for state in ["pending", "published", "retrying"] {
        sqlx::query("UPDATE orders SET sync_state = $2 WHERE id = $1::uuid")
            .bind(&id)
            .bind(state)
            .execute(&app.pool)
            .await
            .unwrap();
        let version = app.get(&key, &format!("/v1/orders/{id}")).await;
        for _ in 0..5 {
            let res = resync(&app, &key, &id, None).await;
            assert_eq!(res.status, 202, "{state}");
            assert_eq!(res.header("resync-queued"), Some("false"), "{state}");
            assert_eq!(
                res.header("etag"),
                version.header("etag"),
                "{state}: unchanged"
            );
            assert_eq!(res.json()["sync"]["state"], json!(state));
        }
    }
    assert_eq!(
        events(&app, &id).await.len(),
        1,
        "only the order's first event"
    );
    assert_eq!(sync_event_version(&app, &id).await, 1);
}

#[tokio::test]
async fn resyncs_are_rate_limited_per_client() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let config = order_api::ApiConfig {
        resync_rate: std::num::NonZeroU32::new(1).unwrap(),
        resync_burst: std::num::NonZeroU32::new(3).unwrap(),
        ..order_api::ApiConfig::default()
    };
    let app = TestApp::with_config(db.pool.clone(), config);
    let key = app.key("portal").await;
    let other = app.key("other").await;
    let id = app
        .post_order(&key, &order_body("PO-R5"), None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..3 {
        assert_eq!(resync(&app, &key, &id, None).await.status, 202);
    }
    let limited = resync(&app, &key, &id, None).await;
    let problem = limited.problem(429, "about:blank");
    assert!(
        problem["detail"].as_str().unwrap().contains("resync"),
        "{problem}"
    );
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another client has its own allowance; other requests are not affected.
    assert_eq!(resync(&app, &other, &id, None).await.status, 404);
    assert_eq!(app.get(&key, &format!("/v1/orders/{id}")).await.status, 200);
}

#[tokio::test]
async fn resync_clears_the_last_error() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    let id = app
        .post_order(&key, &order_body("PO-R2"), None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query(
        "UPDATE orders SET sync_state = 'failed', sync_attempts = 10,
             last_error_code = 'FIELD_CUSTOM_VALIDATION_EXCEPTION', last_error_message = 'no'
         WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    let res = resync(&app, &key, &id, None).await;
    assert_eq!(res.status, 202);
    assert_eq!(
        res.json()["sync"],
        json!({"state": "pending", "salesforce_id": null, "attempts": 0,
               "last_error": null, "synced_at": null})
    );
}

#[tokio::test]
async fn resync_of_another_clients_or_an_unknown_order_is_404() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let owner = app.key("portal").await;
    let other = app.key("intruder").await;
    let id = app
        .post_order(&owner, &order_body("PO-R3"), None)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    resync(&app, &other, &id, None)
        .await
        .problem(404, "about:blank");
    resync(&app, &owner, &Uuid::now_v7().to_string(), None)
        .await
        .problem(404, "about:blank");
    resync(&app, &owner, "not-a-uuid", None)
        .await
        .problem(404, "about:blank");
    // Nothing changed: no event, same version.
    assert_eq!(events(&app, &id).await.len(), 1);
    let fetched = app.get(&owner, &format!("/v1/orders/{id}")).await;
    assert_eq!(fetched.header("etag"), Some("\"v1\""));

    let no_auth = app
        .send(
            Request::post(format!("/v1/orders/{id}/resync"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    no_auth.problem(401, "about:blank");
    let wrong_method = app.get(&owner, &format!("/v1/orders/{id}/resync")).await;
    wrong_method.problem(405, "about:blank");
}
