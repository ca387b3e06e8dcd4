#![allow(clippy::unwrap_used)]
//! Bad input of every kind gets a problem document with the right status, never a 500.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, order_body};
use order_api::ApiConfig;
use serde_json::json;

fn post(key: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post("/v1/orders").header("authorization", format!("Bearer {key}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(body.into()).unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    for body in ["", "{", "{\"client_ref\": }", "nul", "\u{0}", "[1,2"] {
        let p = app
            .send(post(&key, Some("application/json"), body))
            .await
            .problem(400, "about:blank");
        assert!(p["detail"].as_str().unwrap().contains("malformed JSON"));
    }
    // Invalid UTF-8.
    app.send(post(&key, Some("application/json"), vec![0xff, 0xfe, b'{']))
        .await
        .problem(400, "about:blank");
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn wrong_shapes_are_422_with_a_pointer() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let cases = [
        (json!([]), "#"),
        (json!("order"), "#"),
        (
            {
                let mut b = order_body("X");
                b["lines"][1]["quantity"] = json!("2");
                b
            },
            "#/lines/1/quantity",
        ),
        (
            {
                let mut b = order_body("X");
                b["lines"][0]["unit_price"] = json!(12.5);
                b
            },
            "#/lines/0/unit_price",
        ),
        (
            {
                let mut b = order_body("X");
                b["customer"] = json!(null);
                b
            },
            "#/customer",
        ),
        (
            {
                let mut b = order_body("X");
                b.as_object_mut().unwrap().remove("currency");
                b
            },
            "#",
        ),
        (
            {
                let mut b = order_body("X");
                b["status"] = json!("synced");
                b
            },
            "#/status",
        ),
        (
            {
                let mut b = order_body("X");
                b["id"] = json!("01a20b1b-7dff-7353-9861-cc556fed7611");
                b
            },
            "#/id",
        ),
    ];
    for (body, pointer) in cases {
        let p = app
            .send(post(&key, Some("application/json"), body.to_string()))
            .await
            .problem(422, "urn:orderbridge:problem:validation-error");
        assert_eq!(p["errors"][0]["pointer"], json!(pointer), "{p}");
        assert_eq!(p["errors"][0]["code"], json!("invalid_type"));
    }
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn rule_violations_are_422_with_every_field() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let mut body = order_body("");
    body["currency"] = json!("JPY");
    body["customer"]["email"] = json!("not-an-email");
    body["lines"][0]["quantity"] = json!(0);
    let p = app
        .send(post(&key, Some("application/json"), body.to_string()))
        .await
        .problem(422, "urn:orderbridge:problem:validation-error");
    let pointers: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "#/client_ref",
            "#/customer/email",
            "#/lines/0/quantity",
            "#/lines/0/unit_price",
            "#/lines/1/unit_price",
            "#/lines/2/unit_price",
        ]
    );
    for e in p["errors"].as_array().unwrap() {
        assert!(!e["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn non_json_content_types_are_415() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    let body = order_body("X").to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
    ] {
        app.send(post(&key, ct, body.clone()))
            .await
            .problem(415, "about:blank");
    }
    assert_eq!(
        app.send(post(&key, Some("application/json; charset=utf-8"), body))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let config = ApiConfig {
        body_limit: 4096,
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(pool, config);
    let key = app.key("portal").await;
    let mut body = order_body("X");
    body["notes"] = json!("n".repeat(5000));
    let p = app
        .send(post(&key, Some("application/json"), body.to_string()))
        .await
        .problem(413, "about:blank");
    assert!(p["detail"].as_str().unwrap().contains("4096"));
    // Also when the client streams it without a Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 3000]), Ok(vec![b' '; 3000])];
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    app.send(post(&key, Some("application/json"), streamed))
        .await
        .problem(413, "about:blank");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let config = ApiConfig {
        body_timeout: Duration::from_millis(200),
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(pool, config);
    let key = app.key("portal").await;
    let stalled = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    app.send(post(
        &key,
        Some("application/json"),
        Body::from_stream(stalled),
    ))
    .await
    .problem(408, "about:blank");
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let app = TestApp::new(pool);
    let key = app.key("portal").await;
    for (method, uri) in [
        ("DELETE", "/v1/orders"),
        ("PUT", "/v1/orders"),
        ("POST", "/v1/orders/01a20b1b-7dff-7353-9861-cc556fed7611"),
    ] {
        let res = app
            .send(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .header("authorization", format!("Bearer {key}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        res.problem(405, "about:blank");
        assert!(res.header("allow").is_some());
    }
}

#[tokio::test]
async fn clients_over_their_rate_get_429_with_retry_after() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let config = ApiConfig {
        rate_limit: 1.try_into().unwrap(),
        rate_burst: 3.try_into().unwrap(),
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(pool, config);
    let key = app.key("portal").await;
    let other = app.key("erp").await;
    for _ in 0..3 {
        assert_eq!(app.get(&key, "/v1/orders").await.status, 200);
    }
    let limited = app.get(&key, "/v1/orders").await;
    limited.problem(429, "about:blank");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // The limit is per client.
    assert_eq!(app.get(&other, "/v1/orders").await.status, 200);
}
