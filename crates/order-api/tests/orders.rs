#![allow(clippy::unwrap_used)]
//! Creating, reading and listing orders over HTTP, against a real per-test database.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, order_body};
use serde_json::json;

#[tokio::test]
async fn create_then_get_returns_the_stored_order() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;

    let created = app.post_order(&key, &order_body("PO-1"), None).await;
    assert_eq!(created.status, 201);
    let order = created.json();
    let id = order["id"].as_str().unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/orders/{id}").as_str())
    );
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(order["total"], json!("40.72"));
    assert_eq!(order["lines"][1]["line_total"], json!("14.97"));
    assert_eq!(order["lines"][2]["line_number"], json!(3));
    assert_eq!(order["status"], json!("submitted"));
    assert_eq!(
        order["sync"],
        json!({"state": "pending", "salesforce_id": null, "attempts": 0, "last_error": null, "synced_at": null})
    );

    let fetched = app.get(&key, &format!("/v1/orders/{id}")).await;
    assert_eq!(fetched.status, 200);
    // GET adds the business status history to the order the POST returned.
    let mut fetched_order = fetched.json();
    let history = fetched_order
        .as_object_mut()
        .unwrap()
        .remove("status_history")
        .unwrap();
    assert_eq!(
        history,
        json!([{"status": "submitted", "at": order["created_at"], "source": "api"}])
    );
    assert_eq!(fetched_order, order);
    assert_eq!(fetched.header("etag"), Some("\"v1\""));
}

#[tokio::test]
async fn the_order_and_its_event_are_stored_together() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let res = app
        .send(
            Request::post("/v1/orders")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .header("x-request-id", "corr-123")
                .body(Body::from(order_body("PO-7").to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("x-request-id"), Some("corr-123"));
    let order = res.json();

    let (aggregate_id, event_type, payload, headers, published_at): (
        uuid::Uuid,
        String,
        serde_json::Value,
        serde_json::Value,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload, headers, published_at FROM outbox",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(aggregate_id.to_string(), order["id"].as_str().unwrap());
    assert_eq!(event_type, "order.submitted");
    assert_eq!(published_at, None);
    assert_eq!(payload["correlation_id"], json!("corr-123"));
    assert_eq!(headers["correlation_id"], json!("corr-123"));
    // The event is the order as the API returned it, plus the client it came from (which
    // scopes its Salesforce keys).
    let mut data = payload["data"].clone();
    let client = data.as_object_mut().unwrap().remove("client").unwrap();
    assert_eq!(data, order);
    assert_eq!(client["external_id_prefix"], json!("portal:"));
    // The stored payload is a valid, decodable event.
    let decoded =
        orderbridge_domain::OrderEvent::decode(&serde_json::to_vec(&payload).unwrap()).unwrap();
    assert_eq!(decoded.event_type, "order.submitted");
    assert_eq!(app.count("order_lines").await, 3);
}

#[tokio::test]
async fn a_bad_request_id_is_replaced() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let res = app
        .send(
            Request::get("/health/live")
                .header("x-request-id", "x".repeat(500))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let id = res.header("x-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn keys_are_required_and_checked() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    // No key cache: revocation below takes effect at once (tests/auth.rs covers the cache).
    let config = order_api::ApiConfig {
        key_cache_ttl: std::time::Duration::ZERO,
        ..order_api::ApiConfig::default()
    };
    let app = TestApp::with_config(pool, config);
    let key = app.key("portal").await;
    let no_auth = app
        .send(Request::get("/v1/orders").body(Body::empty()).unwrap())
        .await;
    no_auth.problem(401, "about:blank");
    assert!(no_auth.header("www-authenticate").is_some());

    let tampered = format!("{}x", &key);
    let wrong_secret = format!("{}_{}", key.rsplit_once('_').unwrap().0, "A".repeat(43));
    for bad in [
        "Bearer nope",
        "Bearer obk_",
        "Bearer obk_unknown_secret",
        &format!("Bearer {tampered}"),
        &format!("Bearer {wrong_secret}"),
        &format!("Basic {key}"),
        &key,
    ] {
        let res = app
            .send(
                Request::get("/v1/orders")
                    .header("authorization", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        res.problem(401, "about:blank");
    }
    // Revoked keys stop working.
    sqlx::query("UPDATE api_keys SET revoked_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    app.get(&key, "/v1/orders")
        .await
        .problem(401, "about:blank");
}

#[tokio::test]
async fn another_clients_order_is_not_found() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let portal = app.key("portal").await;
    let erp = app.key("erp").await;
    let order = app
        .post_order(&portal, &order_body("PO-1"), None)
        .await
        .json();
    let uri = format!("/v1/orders/{}", order["id"].as_str().unwrap());

    app.get(&erp, &uri).await.problem(404, "about:blank");
    assert_eq!(app.get(&erp, "/v1/orders").await.json()["items"], json!([]));
    // The other client may use the same client_ref: uniqueness is per client.
    assert_eq!(
        app.post_order(&erp, &order_body("PO-1"), None).await.status,
        201
    );
    // A second key of the same client sees the order.
    let portal2 = app.key("portal").await;
    assert_eq!(app.get(&portal2, &uri).await.status, 200);
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_not_found() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let p = app
        .get(&key, &format!("/v1/orders/{}", uuid::Uuid::now_v7()))
        .await
        .problem(404, "about:blank");
    assert_eq!(p["title"], json!("Not Found"));
    app.get(&key, "/v1/orders/not-a-uuid")
        .await
        .problem(404, "about:blank");
    app.get(&key, "/v1/nothing-here")
        .await
        .problem(404, "about:blank");
}

#[tokio::test]
async fn duplicate_client_ref_is_a_conflict_naming_the_existing_order() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let first = app.post_order(&key, &order_body("PO-1"), None).await.json();
    let p = app
        .post_order(&key, &order_body("PO-1"), None)
        .await
        .problem(409, "urn:orderbridge:problem:duplicate-client-ref");
    assert_eq!(p["existing_order_id"], first["id"]);
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[tokio::test]
async fn etag_and_conditional_get() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let order = app.post_order(&key, &order_body("PO-1"), None).await.json();
    let uri = format!("/v1/orders/{}", order["id"].as_str().unwrap());
    let conditional = |tag: &str| {
        Request::get(&uri)
            .header("authorization", format!("Bearer {key}"))
            .header("if-none-match", tag)
            .body(Body::empty())
            .unwrap()
    };

    let first = app.get(&key, &uri).await;
    let etag = first.header("etag").unwrap().to_owned();
    let not_modified = app.send(conditional(&etag)).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(
        app.send(conditional(&format!("W/{etag}"))).await.status,
        304
    );

    // Any change to the order (here: what the relay does when it publishes) changes the tag.
    sqlx::query("UPDATE orders SET sync_state = 'published'")
        .execute(&app.pool)
        .await
        .unwrap();
    let changed = app.send(conditional(&etag)).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    assert_eq!(changed.json()["sync"]["state"], json!("published"));
    assert_eq!(changed.json()["version"], json!(2));

    // Conditional requests are still authorized per client.
    let other = app.key("erp").await;
    let res = app
        .send(
            Request::get(&uri)
                .header("authorization", format!("Bearer {other}"))
                .header("if-none-match", "*")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    res.problem(404, "about:blank");
}

#[tokio::test]
async fn listing_pages_newest_first_without_gaps_or_repeats() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            app.post_order(&key, &order_body(&format!("PO-{i}")), None)
                .await
                .json()["id"]
                .clone(),
        );
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut uri = "/v1/orders?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get(&key, &uri).await.json();
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        assert!(
            items
                .iter()
                .all(|o| o["lines"].as_array().unwrap().len() == 3)
        );
        seen.extend(items.iter().map(|o| o["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/orders?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn listing_filters() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let a = app.post_order(&key, &order_body("A"), None).await.json();
    let b = app.post_order(&key, &order_body("B"), None).await.json();
    sqlx::query("UPDATE orders SET sync_state = 'failed' WHERE client_ref = 'A'")
        .execute(&app.pool)
        .await
        .unwrap();

    let ids = |uri: String| {
        let (app, key) = (&app, &key);
        async move { app.list_ids(key, &uri).await }
    };
    assert_eq!(
        ids("/v1/orders?sync_state=failed".into()).await,
        vec![a["id"].clone()]
    );
    assert_eq!(
        ids("/v1/orders?sync_state=pending".into()).await,
        vec![b["id"].clone()]
    );
    assert_eq!(
        ids("/v1/orders?client_ref=B".into()).await,
        vec![b["id"].clone()]
    );
    assert_eq!(
        ids("/v1/orders?client_ref=nope".into()).await,
        Vec::<serde_json::Value>::new()
    );
    let after = a["created_at"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(
        ids(format!("/v1/orders?created_after={after}")).await,
        vec![b["id"].clone()]
    );
    assert_eq!(
        ids("/v1/orders?created_after=2000-01-01T00:00:00Z".into())
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn a_state_list_pages_and_combines_with_the_other_filters() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    let mut all = Vec::new();
    for i in 0..7 {
        let o = app
            .post_order(&key, &order_body(&format!("S-{i}")), None)
            .await
            .json();
        all.push(o);
    }
    // Every other order failed: the list's state branch (first page), then its cursor pages.
    sqlx::query(
        "UPDATE orders SET sync_state = 'failed' WHERE client_ref IN ('S-0','S-2','S-4','S-6')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let failed: Vec<_> = [6, 4, 2, 0].iter().map(|i| all[*i]["id"].clone()).collect();
    let seen = app
        .list_all_ids(&key, "/v1/orders?sync_state=failed&limit=3")
        .await;
    assert_eq!(seen, failed);
    let items = |uri: String| {
        let (app, key) = (&app, &key);
        async move { app.list_ids(key, &uri).await }
    };
    // State and created_after: the orders after the fourth, of that state.
    let after = all[3]["created_at"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(
        items(format!(
            "/v1/orders?sync_state=pending&created_after={after}"
        ))
        .await,
        vec![all[5]["id"].clone()]
    );
    assert_eq!(
        items(format!(
            "/v1/orders?sync_state=failed&created_after={after}"
        ))
        .await,
        vec![all[6]["id"].clone(), all[4]["id"].clone()]
    );
    // client_ref with a state it is not in: nothing; with its own: the order.
    assert!(
        items("/v1/orders?client_ref=S-1&sync_state=failed".into())
            .await
            .is_empty()
    );
    assert_eq!(
        items("/v1/orders?client_ref=S-1&sync_state=pending".into()).await,
        vec![all[1]["id"].clone()]
    );
}

/// An order stored as order-api stores it, but created at `created` with an id carrying the
/// millisecond `id_ms` (UUIDv7), so the test decides both sides of the list's id bound.
async fn insert_order_at(
    app: &TestApp,
    client: &str,
    client_ref: &str,
    created: chrono::DateTime<chrono::Utc>,
    id_ms: i64,
) -> uuid::Uuid {
    use orderbridge_domain::{NewOrder, NewOrderRequest};
    let client_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_clients WHERE name = $1")
        .bind(client)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (id_ms / 1000) as u64,
        (id_ms % 1000) as u32 * 1_000_000,
    );
    let id = uuid::Uuid::new_v7(ts);
    let req: NewOrderRequest = serde_json::from_value(order_body(client_ref)).unwrap();
    let order = NewOrder::parse(req).unwrap().into_order(id, created);
    let mut conn = app.pool.acquire().await.unwrap();
    orderbridge_db::create::insert_order(&mut conn, client_id.into(), &order)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn created_after_returns_exactly_the_orders_created_after_the_instant() {
    use chrono::{Duration, DurationRound, Utc};
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    // An instant half-way through a millisecond, so orders can share its millisecond on
    // either side of it.
    let t = (Utc::now() - Duration::minutes(10))
        .duration_trunc(Duration::milliseconds(1))
        .unwrap()
        + Duration::microseconds(500);
    let ms = |c: chrono::DateTime<Utc>| c.timestamp_millis();
    let mut expected = Vec::new();
    // (client_ref, created_at, id millisecond, listed?)
    let orders = [
        (
            "old",
            t - Duration::days(1),
            ms(t - Duration::days(1)),
            false,
        ),
        ("just-before", t - Duration::microseconds(1), ms(t), false),
        ("at", t, ms(t), false),
        ("same-ms-after", t + Duration::microseconds(1), ms(t), true),
        ("ms-after", t + Duration::milliseconds(1), ms(t) + 1, true),
        (
            "later",
            t + Duration::minutes(5),
            ms(t + Duration::minutes(5)),
            true,
        ),
        // A writer whose clock ran 30 s behind when it made the id: inside the margin.
        (
            "clock-behind",
            t + Duration::milliseconds(2),
            ms(t) - 30_000,
            true,
        ),
    ];
    for (client_ref, created, id_ms, listed) in orders {
        let id = insert_order_at(&app, "portal", client_ref, created, id_ms).await;
        if listed {
            expected.push(id.to_string());
        }
    }
    // Newest (largest id) first.
    expected.sort();
    expected.reverse();
    let after = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let page = app
        .get(&key, &format!("/v1/orders?created_after={after}"))
        .await
        .json();
    let ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);
    assert!(page["next_cursor"].is_null());

    // Page by page (the cursor's upper bound with the filter's lower one): the same orders.
    let paged: Vec<String> = app
        .list_all_ids(&key, &format!("/v1/orders?created_after={after}&limit=1"))
        .await
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paged, expected);

    // One microsecond earlier takes in the order created at the instant, and no other.
    let earlier =
        (t - Duration::microseconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let n = app
        .get(&key, &format!("/v1/orders?created_after={earlier}"))
        .await
        .json()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, expected.len() + 1);
}

#[tokio::test]
async fn listing_rejects_bad_parameters() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    for uri in [
        "/v1/orders?limit=0",
        "/v1/orders?limit=201",
        "/v1/orders?limit=-1",
        "/v1/orders?limit=ten",
        "/v1/orders?sync_state=lost",
        "/v1/orders?created_after=yesterday",
        "/v1/orders?cursor=garbage",
        "/v1/orders?unknown=1",
    ] {
        app.get(&key, uri).await.problem(400, "about:blank");
    }
    assert_eq!(app.get(&key, "/v1/orders?limit=200").await.status, 200);
}

#[tokio::test]
async fn health_probes() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    for uri in ["/health/live", "/health/ready"] {
        let res = app
            .send(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(res.status, 200);
        assert_eq!(res.json(), json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn docs_and_openapi_are_served_offline() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let spec = app
        .send(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], json!("3.1.0"));
    let ui = app
        .send(Request::get("/docs/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ui.status, 200);
    let html = String::from_utf8_lossy(&ui.body);
    assert!(html.contains("swagger-ui"), "{html}");
    // The UI's assets come from the binary (vendored), not from a CDN.
    let bundle = app
        .send(
            Request::get("/docs/swagger-ui-bundle.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bundle.status, 200);
    assert!(bundle.body.len() > 100_000);
    assert!(
        !html.contains("https://"),
        "the UI must not load anything from the network"
    );
}
