#![allow(clippy::unwrap_used)]
//! Input is read one way only: no duplicate keys, no unknown fields at any depth, quantities as
//! JSON integers, assigned country codes, JSON in UTF-8. Each case is refused with a problem
//! document naming what is wrong, and nothing is stored.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, order_body};
use serde_json::{Value, json};

fn post(key: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/orders")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

async fn app() -> (orderbridge_testkit::TestDatabase, TestApp, String) {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    (db, app, key)
}

/// The one error of a 422 validation problem: (pointer, code, detail).
fn only_error(p: &Value) -> (String, String, String) {
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{p}");
    let e = &errors[0];
    (
        e["pointer"].as_str().unwrap().to_owned(),
        e["code"].as_str().unwrap().to_owned(),
        e["detail"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn duplicate_keys_are_400_at_every_level() {
    let (_db, app, key) = app().await;
    let valid = order_body("PO-1").to_string();
    // Each body repeats one key, at the top, in a nested object, or in a line; the second
    // value would silently win in a plain serde_json read.
    let cases = [
        (
            valid.replacen(
                "\"currency\":\"EUR\"",
                "\"currency\":\"EUR\",\"currency\":\"JPY\"",
                1,
            ),
            "currency",
            "/",
        ),
        (
            valid.replacen(
                "\"name\":\"Acme GmbH\"",
                "\"name\":\"Acme GmbH\",\"name\":\"Other\"",
                1,
            ),
            "name",
            "/customer",
        ),
        (
            valid.replacen(
                "\"city\":\"Berlin\"",
                "\"city\":\"Berlin\",\"city\":\"Bonn\"",
                1,
            ),
            "city",
            "/shipping_address",
        ),
        (
            valid.replacen("\"quantity\":3", "\"quantity\":3,\"quantity\":3000", 1),
            "quantity",
            "/lines/1",
        ),
    ];
    for (body, field, at) in cases {
        assert_ne!(body, valid, "the case must change the body");
        let p = app
            .send(post(&key, "application/json", body))
            .await
            .problem(400, "about:blank");
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("duplicate key `{field}`")) && detail.ends_with(at),
            "{detail}"
        );
    }
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn unknown_fields_are_422_at_every_level() {
    let (_db, app, key) = app().await;
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 4] = [
        (|b| b["loyalty"] = json!("gold"), "#/loyalty"),
        (
            |b| b["customer"]["phnoe"] = json!("+49 1"),
            "#/customer/phnoe",
        ),
        (
            |b| b["shipping_address"]["zip"] = json!("10115"),
            "#/shipping_address/zip",
        ),
        (
            |b| b["lines"][2]["discount"] = json!("1"),
            "#/lines/2/discount",
        ),
    ];
    for (edit, pointer) in cases {
        let mut body = order_body("PO-1");
        edit(&mut body);
        let p = app
            .send(post(&key, "application/json", body.to_string()))
            .await
            .problem(422, "urn:orderbridge:problem:validation-error");
        let (at, code, detail) = only_error(&p);
        assert_eq!(
            (at.as_str(), code.as_str()),
            (pointer, "invalid_type"),
            "{p}"
        );
        assert!(detail.contains("unknown field"), "{detail}");
    }
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn quantities_must_be_json_integers_in_range() {
    let (_db, app, key) = app().await;
    for quantity in ["2.0", "1e20", "2.5", "1E2", "18446744073709551616"] {
        let body = order_body("PO-1").to_string().replacen(
            "\"quantity\":2",
            &format!("\"quantity\":{quantity}"),
            1,
        );
        let p = app
            .send(post(&key, "application/json", body))
            .await
            .problem(422, "urn:orderbridge:problem:validation-error");
        let (at, code, detail) = only_error(&p);
        assert_eq!(
            (at.as_str(), code.as_str()),
            ("#/lines/0/quantity", "out_of_range")
        );
        assert!(
            detail.contains("whole number from 1 to 1000000") && !detail.contains("floating"),
            "{quantity}: {detail}"
        );
    }
    assert_eq!(app.count("orders").await, 0);
}

#[tokio::test]
async fn countries_must_be_assigned_iso_codes() {
    let (_db, app, key) = app().await;
    for country in ["ZZ", "UK", "EU", "XK"] {
        let mut body = order_body("PO-1");
        body["shipping_address"]["country"] = json!(country);
        let p = app
            .send(post(&key, "application/json", body.to_string()))
            .await
            .problem(422, "urn:orderbridge:problem:validation-error");
        let (at, code, _) = only_error(&p);
        assert_eq!(
            (at.as_str(), code.as_str()),
            ("#/shipping_address/country", "invalid_country"),
            "{country}"
        );
    }
    let mut body = order_body("PO-GB");
    body["shipping_address"]["country"] = json!("GB");
    assert_eq!(
        app.send(post(&key, "application/json", body.to_string()))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn json_in_another_charset_is_415() {
    let (_db, app, key) = app().await;
    let body = order_body("PO-1").to_string();
    for ct in [
        "application/json; charset=latin1",
        "application/json; charset=ISO-8859-1",
        "application/json;charset=\"utf-16\"",
    ] {
        app.send(post(&key, ct, body.clone()))
            .await
            .problem(415, "about:blank");
    }
    assert_eq!(app.count("orders").await, 0);
    for ct in ["application/json", "application/json; charset=UTF-8"] {
        let mut body = order_body(ct);
        body["client_ref"] = json!(format!("PO-{}", ct.len()));
        assert_eq!(
            app.send(post(&key, ct, body.to_string())).await.status,
            201,
            "{ct}"
        );
    }
}
