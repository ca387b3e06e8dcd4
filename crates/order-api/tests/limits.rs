#![allow(clippy::unwrap_used)]
//! Intake refuses what Salesforce could not hold exactly, per the mapping's declared field
//! limits: a 422 naming the field, instead of a value cut or rounded in Salesforce (issue 12:
//! a 100-character city was cut to 40, totals of 5×10²⁰ drifted). And a client that kept its
//! unprefixed Salesforce keys cannot send a customer id shaped like another client's key.

mod common;

use std::sync::Arc;

use common::{TestApp, order_body};
use order_api::ApiConfig;
use orderbridge_mapping::{Mapping, Targets};
use serde_json::{Value, json};

const INVALID: &str = "urn:orderbridge:problem:validation-error";

fn errors(p: &Value) -> Vec<(String, String, String)> {
    p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn text_longer_than_its_salesforce_field_is_422_naming_the_field() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    // 100 characters: the order model allows it, Order.ShippingCity holds 40.
    let mut body = order_body("PO-1");
    body["shipping_address"]["city"] = json!("x".repeat(100));
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    let errors = errors(&p);
    assert_eq!(errors.len(), 1, "{p}");
    let (pointer, code, detail) = &errors[0];
    assert_eq!(
        (pointer.as_str(), code.as_str()),
        ("#/shipping_address/city", "too_long")
    );
    assert!(detail.contains("Order.ShippingCity holds 40"), "{detail}");
    assert_eq!(app.count("orders").await, 0);

    // 40 fits.
    body["shipping_address"]["city"] = json!("x".repeat(40));
    assert_eq!(app.post_order(&key, &body, None).await.status, 201);
}

#[tokio::test]
async fn amounts_beyond_what_salesforce_holds_exactly_are_422() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;

    // A line total and an order total of ~10^17: Salesforce currency fields hold 16 digits
    // before the point (the issue's 5×10²⁰ totals drifted by millions).
    let mut body = order_body("PO-BIG");
    body["lines"] = json!([
        {"sku": "SKU-TEA", "name": "Tea", "quantity": 1_000_000, "unit_price": "99999999999.99"}
    ]);
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    let got: Vec<(String, String)> = errors(&p).into_iter().map(|(p, c, _)| (p, c)).collect();
    assert_eq!(
        got,
        [
            ("#/lines".to_owned(), "out_of_range".to_owned()),
            ("#/lines/0".to_owned(), "out_of_range".to_owned()),
        ],
        "{p}"
    );
    let detail = &errors(&p)[0].2;
    assert!(
        detail.contains("order total") && detail.contains("Order.TotalAmount"),
        "{detail}"
    );

    // Three decimals are fine for KWD, but the price field holds two: rounding it would change
    // the amount.
    let mut body = order_body("PO-KWD");
    body["currency"] = json!("KWD");
    body["lines"] =
        json!([{"sku": "SKU-TEA", "name": "Tea", "quantity": 1, "unit_price": "1.125"}]);
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    let errors = errors(&p);
    // The price, and the totals made from it.
    let price = errors
        .iter()
        .find(|(pointer, _, _)| pointer == "#/lines/0/unit_price")
        .unwrap_or_else(|| panic!("{p}"));
    assert_eq!(price.1, "too_many_decimals");
    assert!(price.2.contains("OrderItem.UnitPrice holds 2"), "{p}");
    assert!(errors.iter().all(|e| e.1 == "too_many_decimals"), "{p}");
    assert_eq!(app.count("orders").await, 0);

    // "1.120" has two significant decimals: exact in the field, accepted.
    body["lines"][0]["unit_price"] = json!("1.120");
    assert_eq!(app.post_order(&key, &body, None).await.status, 201);
}

/// The limits are the mapping's: a mapping whose field holds more accepts more.
#[tokio::test]
async fn the_limits_come_from_the_mapping() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let roomy = Mapping::parse(
        r#"{"order": {"sobject": "Order", "external_id_field": "External_Id__c", "key": "id",
            "fields": {"ShippingCity": {"path": "shipping_address.city", "max_length": 100}}}}"#,
        "roomy",
    )
    .unwrap();
    let app = TestApp::with_config(
        db.pool.clone(),
        ApiConfig {
            mapping: Arc::new(Targets::single(roomy)),
            ..ApiConfig::default()
        },
    );
    let key = app.key("portal").await;
    let mut body = order_body("PO-1");
    body["shipping_address"]["city"] = json!("x".repeat(100));
    assert_eq!(app.post_order(&key, &body, None).await.status, 201);
}

/// With several targets (divisions), an order is held to its own target's limits, and an
/// order no target takes is refused at intake, naming the field the routing reads; nothing is
/// stored for it.
#[tokio::test]
async fn each_order_meets_its_targets_limits_and_one_without_a_target_is_refused() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let case = |city_max: usize| {
        json!({"order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": "id",
            "fields": {"Subject": {"path": "client_ref", "max_length": 80},
                       "City__c": {"path": "shipping_address.city", "max_length": city_max}}}})
    };
    let file = json!({
        "route": {"rules": [
            {"path": "currency", "in": ["EUR"], "target": "emea"},
            {"path": "shipping_address.country", "in": ["US"], "target": "amer"}
        ]},
        "targets": {"emea": {"mapping": case(10)}, "amer": {"mapping": case(100)}}
    });
    let targets = Targets::parse(&file.to_string(), "divisions").unwrap();
    let app = TestApp::with_config(
        db.pool.clone(),
        ApiConfig {
            mapping: Arc::new(targets),
            ..ApiConfig::default()
        },
    );
    let key = app.key("portal").await;
    let mut body = order_body("PO-1");
    body["shipping_address"]["city"] = json!("x".repeat(40));
    // EMEA holds 10 characters of city...
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    assert_eq!(errors(&p)[0].0, "#/shipping_address/city", "{p}");
    assert!(errors(&p)[0].2.contains("Case.City__c"), "{p}");
    // ...AMER holds 100: the same order shipped to the US in dollars is accepted.
    body["currency"] = json!("USD");
    body["shipping_address"]["country"] = json!("US");
    assert_eq!(app.post_order(&key, &body, None).await.status, 201);
    // In yen to Japan no rule matches and there is no default: refused, nothing stored.
    body["client_ref"] = json!("PO-2");
    body["currency"] = json!("JPY");
    body["shipping_address"]["country"] = json!("JP");
    for line in body["lines"].as_array_mut().unwrap() {
        line["unit_price"] = json!("12");
    }
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    let errors = errors(&p);
    assert_eq!(errors.len(), 1, "{p}");
    assert_eq!(errors[0].0, "#/currency");
    assert_eq!(errors[0].1, "no_target");
    assert!(
        errors[0]
            .2
            .contains("currency is \"JPY\", shipping_address.country is \"JP\""),
        "{p}"
    );
    assert_eq!(app.count("orders").await, 1);
}

/// A client kept on unprefixed keys (the migration path for a single-client deployment) may
/// not send a customer id with `:`, which could be another client's account key.
#[tokio::test]
async fn an_unprefixed_client_cannot_name_another_clients_account() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("legacy").await;
    sqlx::query("UPDATE api_clients SET external_id_prefix = '' WHERE name = 'legacy'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut body = order_body("PO-1");
    body["customer"]["external_id"] = json!("beta:CUST-42");
    let p = app
        .post_order(&key, &body, None)
        .await
        .problem(422, INVALID);
    let errors = errors(&p);
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1.as_str()),
        ("#/customer/external_id", "ambiguous_key"),
        "{p}"
    );
    assert_eq!(app.count("orders").await, 0);

    // Its own ids, as before, are fine; and a prefixed client may use `:` freely.
    assert_eq!(
        app.post_order(&key, &order_body("PO-2"), None).await.status,
        201
    );
    let scoped = app.key("scoped").await;
    assert_eq!(app.post_order(&scoped, &body, None).await.status, 201);
}

/// Every event carries the client's scope, and the customer's key in Salesforce is built from it.
#[tokio::test]
async fn events_carry_the_clients_prefix() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("Acme Portal").await;
    assert_eq!(
        app.post_order(&key, &order_body("PO-1"), None).await.status,
        201
    );
    let payload: Value = sqlx::query_scalar("SELECT payload FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        payload["data"]["client"]["external_id_prefix"],
        "acme-portal:"
    );
    let client_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_clients")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(payload["data"]["client"]["id"], client_id.to_string());
}
