#![allow(clippy::unwrap_used)]
//! `POST /v1/orders/{id}/provision` against a real per-test database: it opens a fulfilment
//! request (row, `provisioning` status, outbox event) under the rules every trigger shares, and
//! the order's detail shows where provisioning stands.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, TestResponse, order_body};
use orderbridge_db::fulfilment::{self, Outcome};
use orderbridge_testkit::TestDatabase;
use uuid::Uuid;

async fn provision(app: &TestApp, key: &str, id: &str) -> TestResponse {
    app.send(
        Request::post(format!("/v1/orders/{id}/provision"))
            .header("authorization", format!("Bearer {key}"))
            .header("x-request-id", "req-provision-1")
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn outbox_events(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'fulfilment.requested' AND aggregate_id = $1",
    )
    .bind(id.parse::<Uuid>().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn provisioning_is_queued_once_retried_after_a_failure_and_a_no_op_when_done() {
    let db = TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    let created = app.post_order(&key, &order_body("PO-PROV"), None).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();

    // Not in Salesforce yet: nothing to write a result back to.
    let res = provision(&app, &key, &id).await;
    res.problem(409, "urn:orderbridge:problem:not-synced");
    assert_eq!(outbox_events(&app, &id).await, 0);

    sqlx::query(
        "UPDATE orders SET salesforce_id = '8015g0000000001AAA', sync_state = 'synced' WHERE id = $1",
    )
    .bind(id.parse::<Uuid>().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let res = provision(&app, &key, &id).await;
    assert_eq!(res.status, 202, "{:?}", res.json());
    let first = res.json();
    assert_eq!(first["queued"], true);
    assert_eq!(first["outcome"], "queued");
    assert_eq!(outbox_events(&app, &id).await, 1);
    let detail = app.get(&key, &format!("/v1/orders/{id}")).await.json();
    assert_eq!(detail["status"], "provisioning");
    assert_eq!(detail["fulfilment"]["state"], "queued");
    assert_eq!(detail["fulfilment"]["trigger"], "api");
    assert_eq!(detail["fulfilment"]["request_id"], first["request_id"]);
    let correlation: Option<String> =
        sqlx::query_scalar("SELECT correlation_id FROM fulfilment_requests WHERE order_id = $1")
            .bind(id.parse::<Uuid>().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(correlation.as_deref(), Some("req-provision-1"));

    // Asked again while it is on its way: not doubled.
    let res = provision(&app, &key, &id).await;
    assert_eq!(res.status, 202);
    assert_eq!(res.json()["queued"], false);
    assert_eq!(res.json()["outcome"], "open");
    assert_eq!(outbox_events(&app, &id).await, 1);

    // The fulfilment system refused it: the detail says why, and a retry queues a new request.
    let request: Uuid = first["request_id"].as_str().unwrap().parse().unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    fulfilment::record_outcome(
        &mut conn,
        request,
        Outcome::Failed {
            reason: "no stock".into(),
        },
    )
    .await
    .unwrap();
    let detail = app.get(&key, &format!("/v1/orders/{id}")).await.json();
    assert_eq!(detail["status"], "provisioning_failed");
    assert_eq!(detail["fulfilment"]["state"], "failed");
    assert_eq!(detail["fulfilment"]["reason"], "no stock");
    let res = provision(&app, &key, &id).await;
    assert_eq!(res.status, 202);
    let retry = res.json();
    assert_eq!(retry["queued"], true);
    assert_ne!(retry["request_id"], first["request_id"]);
    assert_eq!(outbox_events(&app, &id).await, 2);

    // Provisioned: asking again does nothing.
    let request: Uuid = retry["request_id"].as_str().unwrap().parse().unwrap();
    fulfilment::record_outcome(&mut conn, request, Outcome::Provisioned)
        .await
        .unwrap();
    let res = provision(&app, &key, &id).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["outcome"], "provisioned");
    assert_eq!(outbox_events(&app, &id).await, 2);
    let detail = app.get(&key, &format!("/v1/orders/{id}")).await.json();
    assert_eq!(detail["status"], "provisioned");
    assert_eq!(detail["fulfilment"]["state"], "provisioned");
    assert!(detail["fulfilment"].get("reason").is_none());
}

#[tokio::test]
async fn another_clients_order_unknown_ids_and_missing_keys_are_refused() {
    let db = TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let owner = app.key("owner").await;
    let other = app.key("other").await;
    let created = app.post_order(&owner, &order_body("PO-OWN"), None).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE orders SET salesforce_id = '8015g0000000002AAA', sync_state = 'synced'")
        .execute(&app.pool)
        .await
        .unwrap();

    provision(&app, &other, &id)
        .await
        .problem(404, "about:blank");
    provision(&app, &owner, &Uuid::now_v7().to_string())
        .await
        .problem(404, "about:blank");
    provision(&app, &owner, "not-a-uuid")
        .await
        .problem(404, "about:blank");
    let res = app
        .send(
            Request::post(format!("/v1/orders/{id}/provision"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(app.count("fulfilment_requests").await, 0);
}
