#![allow(clippy::unwrap_used)]
//! `POST /v1/fulfilment/callback` over the real router and a per-test database: signed
//! outcomes recorded with the write-back queued, duplicates idempotent, and every bad or
//! hostile request refused with a problem document and nothing stored.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, TestResponse, order_body};
use order_api::ApiConfig;
use orderbridge_db::fulfilment::{self, NewRequest, Outcome, Requested};
use orderbridge_domain::fulfilment::{RequestState, Trigger};
use orderbridge_testkit::TestDatabase;
use orderbridge_webhook::{DEV_SECRET, Webhook};
use serde_json::{Value, json};
use uuid::Uuid;

const SF_ID: &str = "801xx000003GZ8bAAG";

fn webhook() -> Webhook {
    Webhook::from_secrets(DEV_SECRET).unwrap()
}

fn app(db: &TestDatabase) -> TestApp {
    let config = ApiConfig {
        fulfilment_webhook: Some(Arc::new(webhook())),
        ..ApiConfig::default()
    };
    TestApp::with_config(db.pool.clone(), config)
}

/// An order synced to [`SF_ID`] with an open fulfilment request; the request's id.
async fn open_request(app: &TestApp) -> Uuid {
    let key = app.key("acme").await;
    let created = app.post_order(&key, &order_body("PO-1"), None).await;
    let order_id: Uuid = created.json()["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE orders SET salesforce_id = $2, sync_state = 'synced' WHERE id = $1")
        .bind(order_id)
        .bind(SF_ID)
        .execute(&app.pool)
        .await
        .unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let requested = fulfilment::request(
        &mut conn,
        NewRequest {
            salesforce_id: SF_ID,
            idem_key: "event:e-1",
            trigger: Trigger::PLATFORM_EVENT,
            correlation_id: None,
        },
    )
    .await
    .unwrap();
    let Requested::Queued { id, .. } = requested else {
        panic!("not queued: {requested:?}")
    };
    fulfilment::record_outcome(&mut conn, id, Outcome::Accepted)
        .await
        .unwrap();
    id
}

fn signed(body: &[u8], timestamp: u64, wh: &Webhook) -> Request<Body> {
    let h = wh.sign(&format!("msg_{}", Uuid::now_v7()), timestamp, body);
    let mut req =
        Request::post("/v1/fulfilment/callback").header("content-type", "application/json");
    for (name, value) in h.pairs() {
        req = req.header(name, value);
    }
    req.body(Body::from(body.to_vec())).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn callback(app: &TestApp, body: &Value) -> TestResponse {
    app.send(signed(body.to_string().as_bytes(), now(), &webhook()))
        .await
}

async fn results(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'fulfilment.result'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn order_status(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE salesforce_id = $1")
        .bind(SF_ID)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_result_is_recorded_once_and_queued_for_write_back() {
    let db = TestDatabase::new().await;
    let app = app(&db);
    let id = open_request(&app).await;

    let res = callback(&app, &json!({"request_id": id, "status": "provisioned"})).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(
        res.json(),
        json!({"request_id": id, "state": "provisioned", "recorded": true})
    );
    let row = fulfilment::load(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(row.state, RequestState::Provisioned);
    assert_eq!(order_status(&app).await, "provisioned");
    assert_eq!(results(&app).await, 1);
    let (aggregate_type, corr): (String, Option<String>) = sqlx::query_as(
        "SELECT aggregate_type, payload->>'correlation_id' FROM outbox
         WHERE event_type = 'fulfilment.result'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(aggregate_type, "fulfilment");
    assert!(
        corr.is_some_and(|c| !c.is_empty()),
        "the request id correlates"
    );

    // The sender retries (or says something else later): 200, nothing changes.
    for again in [
        json!({"request_id": id, "status": "provisioned"}),
        json!({"request_id": id, "status": "failed", "reason": "late"}),
    ] {
        let res = callback(&app, &again).await;
        assert_eq!(res.status, 200);
        assert_eq!(
            res.json(),
            json!({"request_id": id, "state": "provisioned", "recorded": false})
        );
    }
    assert_eq!(results(&app).await, 1);
    assert_eq!(order_status(&app).await, "provisioned");
}

#[tokio::test]
async fn a_failure_is_recorded_with_its_reason() {
    let db = TestDatabase::new().await;
    let app = app(&db);
    let id = open_request(&app).await;
    let res = callback(
        &app,
        &json!({"request_id": id, "status": "failed", "reason": "no stock", "extra": 1}),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["state"], "failed");
    let row = fulfilment::load(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.reason.as_deref()),
        (RequestState::Failed, Some("no stock"))
    );
    assert_eq!(order_status(&app).await, "provisioning_failed");
    assert_eq!(results(&app).await, 1);

    // Failed without a reason still fails, readably.
    let other = open_request_again(&app).await;
    let res = callback(&app, &json!({"request_id": other, "status": "failed"})).await;
    assert_eq!(res.status, 200);
    let row = fulfilment::load(&app.pool, other).await.unwrap().unwrap();
    assert!(row.reason.is_some_and(|r| r.contains("no reason")));
}

/// A second request for the order of [`open_request`] (after its first failed).
async fn open_request_again(app: &TestApp) -> Uuid {
    let mut conn = app.pool.acquire().await.unwrap();
    match fulfilment::request(
        &mut conn,
        NewRequest {
            salesforce_id: SF_ID,
            idem_key: "event:e-2",
            trigger: Trigger::PLATFORM_EVENT,
            correlation_id: None,
        },
    )
    .await
    .unwrap()
    {
        Requested::Queued { id, .. } => id,
        other => panic!("not queued: {other:?}"),
    }
}

#[tokio::test]
async fn bad_signatures_are_401_and_store_nothing() {
    let db = TestDatabase::new().await;
    let app = app(&db);
    let id = open_request(&app).await;
    let body = json!({"request_id": id, "status": "provisioned"}).to_string();

    let mut cases: Vec<(&str, Request<Body>)> = Vec::new();
    cases.push((
        "unsigned",
        Request::post("/v1/fulfilment/callback")
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap(),
    ));
    let other = Webhook::from_secrets("someone-elses-secret-of-24-bytes+").unwrap();
    cases.push(("another key", signed(body.as_bytes(), now(), &other)));
    cases.push(("stale", signed(body.as_bytes(), now() - 3600, &webhook())));
    cases.push((
        "from the future",
        signed(body.as_bytes(), now() + 3600, &webhook()),
    ));
    // Signed for one body, sent with another.
    let mut tampered = signed(body.as_bytes(), now(), &webhook());
    *tampered.body_mut() = Body::from(body.replace("provisioned", "failed"));
    cases.push(("tampered body", tampered));
    // Hostile headers.
    let mut binary = signed(body.as_bytes(), now(), &webhook());
    binary.headers_mut().insert(
        "webhook-signature",
        axum::http::HeaderValue::from_bytes(b"v1,\xff\xfe\xfd").unwrap(),
    );
    cases.push(("non-UTF-8 signature", binary));
    let mut huge = signed(body.as_bytes(), now(), &webhook());
    let long = format!("v1,{}", "A".repeat(12_000));
    huge.headers_mut()
        .insert("webhook-signature", long.parse().unwrap());
    cases.push(("huge signature", huge));
    let mut v2 = signed(body.as_bytes(), now(), &webhook());
    let sig = v2.headers()["webhook-signature"]
        .to_str()
        .unwrap()
        .replace("v1,", "v2,");
    v2.headers_mut()
        .insert("webhook-signature", sig.parse().unwrap());
    cases.push(("v2 scheme", v2));
    let mut bad_ts = signed(body.as_bytes(), now(), &webhook());
    bad_ts
        .headers_mut()
        .insert("webhook-timestamp", "yesterday".parse().unwrap());
    cases.push(("bad timestamp", bad_ts));

    for (name, req) in cases {
        let res = app.send(req).await;
        let p = res.problem(401, "urn:orderbridge:problem:bad-signature");
        assert!(
            res.header("www-authenticate").is_none(),
            "{name}: not a bearer scheme"
        );
        assert!(p["detail"].as_str().is_some(), "{name}");
    }
    let row = fulfilment::load(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(row.state, RequestState::Accepted);
    assert_eq!(results(&app).await, 0);
    assert_eq!(order_status(&app).await, "provisioning");
}

#[tokio::test]
async fn bad_bodies_unknown_requests_and_oversize() {
    let db = TestDatabase::new().await;
    let app = app(&db);
    let id = open_request(&app).await;

    for body in [
        "not json".to_owned(),
        "\u{0}\u{1}".to_owned(),
        json!({"request_id": id}).to_string(),
        json!({"request_id": id, "status": "accepted"}).to_string(),
        json!({"request_id": id, "status": "done"}).to_string(),
        json!({"request_id": "not-a-uuid", "status": "provisioned"}).to_string(),
        json!([1, 2]).to_string(),
        String::new(),
    ] {
        let res = app.send(signed(body.as_bytes(), now(), &webhook())).await;
        res.problem(422, "urn:orderbridge:problem:validation-error");
    }
    // Non-UTF-8 body, properly signed.
    let res = app
        .send(signed(b"\xff\xfe{\"a\":1}", now(), &webhook()))
        .await;
    res.problem(422, "urn:orderbridge:problem:validation-error");

    let unknown = json!({"request_id": Uuid::now_v7(), "status": "provisioned"});
    callback(&app, &unknown).await.problem(404, "about:blank");

    let big = json!({"request_id": id, "status": "failed", "reason": "x".repeat(20_000)});
    callback(&app, &big).await.problem(413, "about:blank");

    let row = fulfilment::load(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(row.state, RequestState::Accepted);
    assert_eq!(results(&app).await, 0);
}

#[tokio::test]
async fn without_a_secret_the_endpoint_does_not_exist() {
    let db = TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let id = open_request(&app).await;
    let res = callback(&app, &json!({"request_id": id, "status": "provisioned"})).await;
    res.problem(404, "about:blank");
    assert_eq!(results(&app).await, 0);
}

#[tokio::test]
async fn a_peer_sending_bad_signatures_is_throttled() {
    let db = TestDatabase::new().await;
    let config = ApiConfig {
        fulfilment_webhook: Some(Arc::new(webhook())),
        auth_failure_rate: std::num::NonZeroU32::new(1).unwrap(),
        auth_failure_burst: std::num::NonZeroU32::new(2).unwrap(),
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(db.pool.clone(), config);
    let id = open_request(&app).await;
    let body = json!({"request_id": id, "status": "provisioned"}).to_string();
    let from_peer = |mut req: Request<Body>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 7],
                4711,
            ))));
        req
    };
    let forger = Webhook::from_secrets("someone-elses-secret-of-24-bytes+").unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = app
            .send(from_peer(signed(body.as_bytes(), now(), &forger)))
            .await;
        statuses.push(res.status.as_u16());
    }
    assert_eq!(statuses[..2], [401, 401]);
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    // Throttled even with a good signature, until the wait is over.
    let res = app
        .send(from_peer(signed(body.as_bytes(), now(), &webhook())))
        .await;
    assert_eq!(res.status, 429);
    assert!(res.header("retry-after").is_some());
    assert_eq!(results(&app).await, 0);
}
