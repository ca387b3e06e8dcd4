#![allow(clippy::unwrap_used)]
//! Every validation rule of a new order, one case each, plus the computed totals.

use orderbridge_domain::{NewOrder, NewOrderRequest, SyncState};
use serde_json::{Value, json};

fn valid() -> Value {
    json!({
        "client_ref": "PO-1",
        "customer": {"external_id": "CUST-1", "name": "Acme", "email": "a@acme.example", "phone": "+49 (30) 123-45"},
        "billing_address": {"line1": "Main St 1", "city": "Berlin", "country": "DE"},
        "shipping_address": {"line1": "Dock 3", "line2": "Gate B", "city": "Hamburg", "postal_code": "20095", "region": "HH", "country": "DE"},
        "currency": "EUR",
        "lines": [
            {"sku": "MUG", "name": "Mug", "quantity": 3, "unit_price": "12.5"},
            {"sku": "TEA", "name": "Tea", "quantity": 1, "unit_price": "0"}
        ],
        "notes": "ring twice\nthen wait"
    })
}

fn parse(v: Value) -> Result<NewOrder, Vec<(String, String)>> {
    let req: NewOrderRequest = serde_json::from_value(v).unwrap();
    NewOrder::parse(req).map_err(|e| e.0.into_iter().map(|f| (f.pointer, f.code)).collect())
}

/// Applies `edit` to a valid order and returns the single violation it causes.
fn violation(edit: impl FnOnce(&mut Value)) -> (String, String) {
    let mut v = valid();
    edit(&mut v);
    let errors = parse(v).expect_err("the edit should make the order invalid");
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one violation, got {errors:?}"
    );
    errors.into_iter().next().unwrap()
}

fn is(pointer: &str, code: &str) -> (String, String) {
    (pointer.to_owned(), code.to_owned())
}

#[test]
fn a_valid_order_passes_and_totals_exactly() {
    let order = parse(valid()).unwrap();
    assert_eq!(order.total().to_string(), "37.50");
    let stored = order.into_order(uuid::Uuid::now_v7(), chrono::Utc::now());
    assert_eq!(stored.lines[0].line_number, 1);
    assert_eq!(stored.lines[0].unit_price.to_string(), "12.50");
    assert_eq!(stored.lines[0].line_total.to_string(), "37.50");
    assert_eq!(stored.lines[1].line_total.to_string(), "0.00");
    assert_eq!(stored.status, "submitted");
    assert_eq!(stored.sync.state, SyncState::Pending);
    assert_eq!(stored.version, 1);
}

#[test]
fn totals_never_use_floats() {
    // 0.1 + 0.2 is the classic float failure; ten lines of 0.10 must be exactly 1.00.
    let mut v = valid();
    v["lines"] = Value::Array(
        (0..10)
            .map(|i| json!({"sku": format!("S{i}"), "name": "x", "quantity": 1, "unit_price": "0.10"}))
            .collect(),
    );
    assert_eq!(parse(v).unwrap().total().to_string(), "1.00");
}

#[test]
fn zero_decimal_and_three_decimal_currencies() {
    let mut v = valid();
    v["currency"] = json!("JPY");
    v["lines"] = json!([{"sku": "A", "name": "a", "quantity": 2, "unit_price": "1500"}]);
    assert_eq!(parse(v).unwrap().total().to_string(), "3000");
    let mut v = valid();
    v["currency"] = json!("KWD");
    v["lines"] = json!([{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.125"}]);
    assert_eq!(parse(v).unwrap().total().to_string(), "1.125");
}

#[test]
fn client_ref_rules() {
    assert_eq!(
        violation(|v| v["client_ref"] = json!("  ")),
        is("#/client_ref", "required")
    );
    assert_eq!(
        violation(|v| v["client_ref"] = json!("x".repeat(65))),
        is("#/client_ref", "too_long")
    );
    assert_eq!(
        violation(|v| v["client_ref"] = json!("a\u{0}b")),
        is("#/client_ref", "invalid_characters")
    );
}

#[test]
fn customer_rules() {
    assert_eq!(
        violation(|v| v["customer"]["external_id"] = json!("")),
        is("#/customer/external_id", "required")
    );
    assert_eq!(
        violation(|v| v["customer"]["name"] = json!("n".repeat(256))),
        is("#/customer/name", "too_long")
    );
    for bad in [
        "",
        "plain",
        "a@b",
        "@b.example",
        "a b@c.example",
        "a@.example",
        "a@b.example.",
    ] {
        assert_eq!(
            violation(|v| v["customer"]["email"] = json!(bad)),
            is("#/customer/email", "invalid_email"),
            "{bad}"
        );
    }
    for bad in ["", "call me", "+1".repeat(21).as_str(), "---"] {
        assert_eq!(
            violation(|v| v["customer"]["phone"] = json!(bad)),
            is("#/customer/phone", "invalid_phone"),
            "{bad}"
        );
    }
}

#[test]
fn address_rules() {
    assert_eq!(
        violation(|v| v["billing_address"]["line1"] = json!("")),
        is("#/billing_address/line1", "required")
    );
    assert_eq!(
        violation(|v| v["billing_address"]["city"] = json!(" ")),
        is("#/billing_address/city", "required")
    );
    assert_eq!(
        violation(|v| v["shipping_address"]["postal_code"] = json!("1".repeat(21))),
        is("#/shipping_address/postal_code", "too_long")
    );
    // Shaped like a code but not assigned: `UK` is reserved (the code is GB), `ZZ` user-assigned.
    for bad in ["de", "DEU", "D", "", "ZZ", "UK", "EU", "XK"] {
        assert_eq!(
            violation(|v| v["shipping_address"]["country"] = json!(bad)),
            is("#/shipping_address/country", "invalid_country"),
            "{bad}"
        );
    }
}

#[test]
fn currency_rules() {
    for bad in ["eur", "EURO", "XXX", ""] {
        assert_eq!(
            violation(|v| v["currency"] = json!(bad)),
            is("#/currency", "unknown_currency"),
            "{bad}"
        );
    }
}

#[test]
fn line_count_rules() {
    assert_eq!(
        violation(|v| v["lines"] = json!([])),
        is("#/lines", "out_of_range")
    );
    let line = json!({"sku": "S", "name": "n", "quantity": 1, "unit_price": "1"});
    assert!(
        parse({
            let mut v = valid();
            v["lines"] = Value::Array(vec![line.clone(); 500]);
            v
        })
        .is_ok()
    );
    assert_eq!(
        violation(|v| v["lines"] = Value::Array(vec![line; 501])),
        is("#/lines", "out_of_range")
    );
}

#[test]
fn quantities_are_json_integers_only() {
    // A float is never a quantity, however integral: each is the rule's own violation, with
    // the field's pointer, not a type error in serde's words.
    for bad in [
        json!(2.0),
        json!(2.5),
        json!(1e20),
        json!(-0.0),
        json!(u64::MAX),
    ] {
        assert_eq!(
            violation(|v| v["lines"][0]["quantity"] = bad.clone()),
            is("#/lines/0/quantity", "out_of_range"),
            "{bad}"
        );
    }
    let mut v = valid();
    v["lines"][0]["quantity"] = json!(2.0);
    let detail = NewOrder::parse(serde_json::from_value(v).unwrap())
        .unwrap_err()
        .0[0]
        .detail
        .clone();
    assert!(
        detail.contains("whole number from 1 to 1000000"),
        "{detail}"
    );
    assert!(!detail.contains("floating point"), "{detail}");
}

#[test]
fn line_rules() {
    assert_eq!(
        violation(|v| v["lines"][1]["sku"] = json!("")),
        is("#/lines/1/sku", "required")
    );
    assert_eq!(
        violation(|v| v["lines"][0]["name"] = json!("n".repeat(256))),
        is("#/lines/0/name", "too_long")
    );
    for bad in [0, -1, 1_000_001] {
        assert_eq!(
            violation(|v| v["lines"][0]["quantity"] = json!(bad)),
            is("#/lines/0/quantity", "out_of_range"),
            "{bad}"
        );
    }
}

#[test]
fn unit_price_rules() {
    for bad in [
        "", "abc", "1e5", "+1", " 1", "1.", ".5", "1,50", "1_000", "NaN",
    ] {
        assert_eq!(
            violation(|v| v["lines"][0]["unit_price"] = json!(bad)),
            is("#/lines/0/unit_price", "invalid_decimal"),
            "{bad}"
        );
    }
    assert_eq!(
        violation(|v| v["lines"][0]["unit_price"] = json!("-1")),
        is("#/lines/0/unit_price", "out_of_range")
    );
    assert_eq!(
        violation(|v| v["lines"][0]["unit_price"] = json!("1000000000000")),
        is("#/lines/0/unit_price", "out_of_range")
    );
    assert_eq!(
        violation(|v| v["lines"][0]["unit_price"] = json!("1.005")),
        is("#/lines/0/unit_price", "too_many_decimals")
    );
}

#[test]
fn all_violations_are_reported_together() {
    let mut v = valid();
    v["client_ref"] = json!("");
    v["currency"] = json!("XXX");
    v["lines"][0]["quantity"] = json!(0);
    v["lines"][1]["unit_price"] = json!("x");
    assert_eq!(parse(v).unwrap_err().len(), 4);
}

#[test]
fn unknown_fields_are_rejected_on_input_at_every_level() {
    let edits: [fn(&mut Value); 5] = [
        |v| v["status"] = json!("synced"),
        |v| v["lines"][0]["discount"] = json!("1"),
        |v| v["customer"]["phnoe"] = json!("+49 30 1"),
        |v| v["billing_address"]["street"] = json!("Main St"),
        |v| v["shipping_address"]["zip"] = json!("20095"),
    ];
    for edit in edits {
        let mut v = valid();
        edit(&mut v);
        let err = serde_json::from_value::<NewOrderRequest>(v).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
