//! The store's rules without HTTP: each test fails if one rule breaks (the integration tests
//! under `tests/` check the same rules through the REST API, where a failure is harder to place).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{LockRule, Locks, Store, UpsertError};
use crate::reply::RecordError;
use crate::schema::Schema;

fn store() -> Store {
    Store::new(Arc::new(Schema::builtin().unwrap()))
}

fn body(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn create(s: &mut Store, obj: &str, v: Value) -> Result<String, RecordError> {
    s.create(&mut Locks::default(), obj, &body(v))
}

fn update(s: &mut Store, obj: &str, id: &str, v: Value) -> Result<String, RecordError> {
    s.update(&mut Locks::default(), Some(obj), id, &body(v))
}

fn upsert(
    s: &mut Store,
    obj: &str,
    field: &str,
    value: &str,
    v: Value,
) -> Result<(String, bool), UpsertError> {
    s.upsert(&mut Locks::default(), obj, field, value, &body(v), false)
        .map(|u| (u.id, u.created))
}

fn field(s: &Store, obj: &str, id: &str, name: &str) -> Value {
    s.get(Some(obj), id).unwrap().1.get(name).cloned().unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, RecordError>) -> String {
    r.unwrap_err().code
}

fn upsert_code<T: std::fmt::Debug>(r: Result<T, UpsertError>) -> String {
    match r.unwrap_err() {
        UpsertError::Record(e) => e.code,
        other => panic!("expected a record error, got {other:?}"),
    }
}

/// An account, a product with a standard price, and a Draft order on the standard price book.
struct Org {
    store: Store,
    standard: String,
    product: String,
    entry: String,
    order: String,
}

fn org() -> Org {
    let mut store = store();
    let standard = store.standard_pricebook_id().unwrap();
    let account = create(&mut store, "Account", json!({"Name": "Acme"})).unwrap();
    let product = create(&mut store, "Product2", json!({"Name": "Widget"})).unwrap();
    let entry = create(
        &mut store,
        "PricebookEntry",
        json!({"Pricebook2Id": standard, "Product2Id": product, "UnitPrice": 10}),
    )
    .unwrap();
    let order = create(
        &mut store,
        "Order",
        json!({"AccountId": account, "EffectiveDate": "2026-11-24", "Status": "Draft", "Pricebook2Id": standard}),
    )
    .unwrap();
    Org {
        store,
        standard,
        product,
        entry,
        order,
    }
}

fn add_line(o: &mut Org, quantity: f64, unit_price: f64) -> Result<String, RecordError> {
    let line = json!({"OrderId": o.order, "PricebookEntryId": o.entry, "Quantity": quantity, "UnitPrice": unit_price});
    create(&mut o.store, "OrderItem", line)
}

#[test]
fn create_stores_typed_values_system_fields_defaults_and_auto_numbers() {
    let o = org();
    let (def, rec) = o.store.get(Some("order"), &o.order).unwrap();
    assert_eq!(def.name, "Order");
    assert_eq!(o.order.len(), 18);
    assert!(o.order.starts_with("801"));
    assert_eq!(rec["Id"], json!(o.order));
    assert_eq!(rec["IsDeleted"], json!(false));
    assert!(rec["CreatedDate"].as_str().unwrap().ends_with("+0000"));
    assert_eq!(rec["EffectiveDate"], json!("2026-11-24"));
    assert_eq!(rec["OrderNumber"], json!("00000100"));
    assert_eq!(rec["TotalAmount"], json!(0));
    // 15-character ids find the same record.
    assert!(o.store.get(None, &o.order[..15]).is_ok());
}

#[test]
fn create_refuses_ids_unknown_read_only_and_missing_fields() {
    let mut s = store();
    let id = create(&mut s, "Account", json!({"Name": "Acme"})).unwrap();
    let e = create(&mut s, "Account", json!({"Name": "B", "Id": id})).unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.fields.clone()),
        ("INVALID_FIELD", vec!["Id".to_owned()])
    );
    assert_eq!(
        code(create(
            &mut s,
            "Account",
            json!({"Name": "B", "Nope__c": 1})
        )),
        "INVALID_FIELD"
    );
    assert_eq!(
        code(create(
            &mut s,
            "Pricebook2",
            json!({"Name": "B", "IsStandard": true})
        )),
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );
    let e = create(&mut s, "Account", json!({"Phone": "1"})).unwrap_err();
    assert_eq!(e.code, "REQUIRED_FIELD_MISSING");
    assert_eq!(e.fields, vec!["Name".to_owned()]);
    assert_eq!(code(create(&mut s, "Nope", json!({}))), "INVALID_TYPE");
    assert_eq!(
        code(create(
            &mut s,
            "Contact",
            json!({"LastName": "L", "AccountId": "001000000000000"})
        )),
        "INVALID_CROSS_REFERENCE_KEY"
    );
    assert_eq!(s.records("Account").count(), 1);
}

#[test]
fn upsert_inserts_when_nothing_matches_then_updates_the_match() {
    let mut s = store();
    let (id, created) = upsert(
        &mut s,
        "Account",
        "External_Id__c",
        "CUST-1",
        json!({"Name": "A"}),
    )
    .unwrap();
    assert!(created);
    assert_eq!(field(&s, "Account", &id, "External_Id__c"), json!("CUST-1"));
    // Matching is case-insensitive, as Salesforce matches external ids.
    let (again, created) = upsert(
        &mut s,
        "Account",
        "external_id__c",
        "cust-1",
        json!({"Name": "B"}),
    )
    .unwrap();
    assert_eq!((again.as_str(), created), (id.as_str(), false));
    assert_eq!(field(&s, "Account", &id, "Name"), json!("B"));
    assert_eq!(s.records("Account").count(), 1);
}

#[test]
fn upsert_rules_update_only_body_value_and_field_kind() {
    let mut s = store();
    let missing = s.upsert(
        &mut Locks::default(),
        "Account",
        "External_Id__c",
        "X",
        &body(json!({"Name": "A"})),
        true,
    );
    assert_eq!(upsert_code(missing), "NOT_FOUND");
    assert_eq!(s.records("Account").count(), 0);
    let other_value = json!({"Name": "A", "External_Id__c": "Y"});
    assert_eq!(
        upsert_code(upsert(
            &mut s,
            "Account",
            "External_Id__c",
            "X",
            other_value
        )),
        "INVALID_FIELD"
    );
    assert_eq!(
        upsert_code(upsert(&mut s, "Account", "Name", "A", json!({}))),
        "INVALID_FIELD"
    );
    assert!(matches!(
        upsert(&mut s, "Account", "Nope__c", "A", json!({})),
        Err(UpsertError::UnknownField)
    ));
}

#[test]
fn upsert_reports_every_record_when_several_match() {
    // External ids need not be unique; the built-in schema's all are, so use a custom object.
    let schema = r#"{"objects":[{"name":"Widget__c","key_prefix":"a01","fields":[
        {"name":"Name","type":"string"},
        {"name":"Code__c","type":"string","external_id":true}]}]}"#;
    let mut s = Store::new(Arc::new(Schema::from_json(schema).unwrap()));
    let a = create(&mut s, "Widget__c", json!({"Code__c": "W"})).unwrap();
    let b = create(&mut s, "Widget__c", json!({"Code__c": "w"})).unwrap();
    match upsert(&mut s, "Widget__c", "Code__c", "W", json!({"Name": "x"})) {
        Err(UpsertError::Multiple(found)) => assert_eq!(found, vec![a, b]),
        other => panic!("expected several matches, got {other:?}"),
    }
}

#[test]
fn duplicate_external_ids_are_refused_on_create_and_update() {
    let mut s = store();
    let a = create(
        &mut s,
        "Account",
        json!({"Name": "A", "External_Id__c": "C-1"}),
    )
    .unwrap();
    let e = create(
        &mut s,
        "Account",
        json!({"Name": "B", "External_Id__c": "c-1"}),
    )
    .unwrap_err();
    assert_eq!(e.code, "DUPLICATE_VALUE");
    assert_eq!(e.fields, vec!["External_Id__c".to_owned()]);
    assert!(e.message.contains(&a));
    let b = create(
        &mut s,
        "Account",
        json!({"Name": "B", "External_Id__c": "C-2"}),
    )
    .unwrap();
    assert_eq!(
        code(update(
            &mut s,
            "Account",
            &b,
            json!({"External_Id__c": "C-1"})
        )),
        "DUPLICATE_VALUE"
    );
    // A record keeps its own value without clashing with itself.
    update(
        &mut s,
        "Account",
        &a,
        json!({"External_Id__c": "C-1", "Name": "A2"}),
    )
    .unwrap();
    // The index follows updates: the old value is free again, the new one taken.
    update(&mut s, "Account", &b, json!({"External_Id__c": "C-3"})).unwrap();
    create(
        &mut s,
        "Account",
        json!({"Name": "D", "External_Id__c": "C-2"}),
    )
    .unwrap();
    assert_eq!(s.find_by("Account", "External_Id__c", "c-3"), vec![b]);
}

#[test]
fn an_order_is_inserted_as_draft_and_activated_by_an_update_of_status_alone() {
    let mut o = org();
    let account = field(&o.store, "Order", &o.order, "AccountId");
    let activated =
        json!({"AccountId": account, "EffectiveDate": "2026-11-24", "Status": "Activated"});
    assert_eq!(
        code(create(&mut o.store, "Order", activated)),
        "FIELD_INTEGRITY_EXCEPTION"
    );
    assert_eq!(
        code(update(
            &mut o.store,
            "Order",
            &o.order,
            json!({"Status": "Activated", "Name": "x"})
        )),
        "FIELD_INTEGRITY_EXCEPTION"
    );
    assert_eq!(
        code(update(
            &mut o.store,
            "Order",
            &o.order,
            json!({"Status": "Nope"})
        )),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    update(
        &mut o.store,
        "Order",
        &o.order,
        json!({"Status": "activated"}),
    )
    .unwrap();
    assert_eq!(
        field(&o.store, "Order", &o.order, "Status"),
        json!("Activated")
    );
}

#[test]
fn an_order_item_needs_an_entry_of_the_orders_price_book_and_takes_its_product() {
    let mut o = org();
    let custom = create(&mut o.store, "Pricebook2", json!({"Name": "EU"})).unwrap();
    let eu_entry = create(
        &mut o.store,
        "PricebookEntry",
        json!({"Pricebook2Id": custom, "Product2Id": o.product, "UnitPrice": 12}),
    )
    .unwrap();
    let wrong_book =
        json!({"OrderId": o.order, "PricebookEntryId": eu_entry, "Quantity": 1, "UnitPrice": 12});
    let e = create(&mut o.store, "OrderItem", wrong_book).unwrap_err();
    assert_eq!(e.code, "FIELD_INTEGRITY_EXCEPTION");
    assert_eq!(e.fields, vec!["PricebookEntryId".to_owned()]);

    let other = create(&mut o.store, "Product2", json!({"Name": "Other"})).unwrap();
    let wrong_product = json!({"OrderId": o.order, "PricebookEntryId": o.entry, "Product2Id": other, "Quantity": 1, "UnitPrice": 10});
    let e = create(&mut o.store, "OrderItem", wrong_product).unwrap_err();
    assert_eq!(e.code, "FIELD_INTEGRITY_EXCEPTION");
    assert_eq!(e.fields, vec!["Product2Id".to_owned()]);

    let line = add_line(&mut o, 3.0, 2.5).unwrap();
    assert_eq!(
        field(&o.store, "OrderItem", &line, "Product2Id"),
        json!(o.product)
    );
    assert_eq!(
        field(&o.store, "OrderItem", &line, "TotalPrice"),
        json!(7.5)
    );
    assert_eq!(
        field(&o.store, "OrderItem", &line, "OrderItemNumber"),
        json!("00000100")
    );

    // An order without a price book takes no lines.
    update(
        &mut o.store,
        "Order",
        &o.order,
        json!({"Pricebook2Id": null}),
    )
    .unwrap();
    assert_eq!(
        code(add_line(&mut o, 1.0, 1.0)),
        "FIELD_INTEGRITY_EXCEPTION"
    );
}

#[test]
fn order_total_follows_its_lines_and_lines_go_with_their_order() {
    let mut o = org();
    let total = |o: &Org| field(&o.store, "Order", &o.order, "TotalAmount");
    let a = add_line(&mut o, 1.0, 0.1).unwrap();
    let b = add_line(&mut o, 1.0, 0.2).unwrap();
    // Cents stay exact: 0.3, not the 0.30000000000000004 of plain floating point.
    assert_eq!(total(&o), json!(0.3));
    update(&mut o.store, "OrderItem", &a, json!({"Quantity": 5})).unwrap();
    assert_eq!(total(&o), json!(0.7));
    let e = update(&mut o.store, "OrderItem", &a, json!({"TotalPrice": 1})).unwrap_err();
    assert_eq!(e.code, "INVALID_FIELD_FOR_INSERT_UPDATE");
    o.store
        .delete(&mut Locks::default(), Some("OrderItem"), &b)
        .unwrap();
    assert_eq!(total(&o), json!(0.5));

    o.store
        .delete(&mut Locks::default(), Some("Order"), &o.order)
        .unwrap();
    assert_eq!(
        code(o.store.get(Some("OrderItem"), &a)),
        "ENTITY_IS_DELETED"
    );
    assert_eq!(o.store.records("OrderItem").count(), 0);
}

#[test]
fn price_book_entries_need_a_standard_price_first_and_are_one_per_book() {
    let mut o = org();
    let custom = create(&mut o.store, "Pricebook2", json!({"Name": "EU"})).unwrap();
    let product = create(&mut o.store, "Product2", json!({"Name": "New"})).unwrap();
    let entry = |book: &str| json!({"Pricebook2Id": book, "Product2Id": product, "UnitPrice": 1});
    assert_eq!(
        code(create(&mut o.store, "PricebookEntry", entry(&custom))),
        "STANDARD_PRICE_NOT_DEFINED"
    );
    create(&mut o.store, "PricebookEntry", entry(&o.standard)).unwrap();
    assert_eq!(
        code(create(&mut o.store, "PricebookEntry", entry(&o.standard))),
        "DUPLICATE_VALUE"
    );
    create(&mut o.store, "PricebookEntry", entry(&custom)).unwrap();
}

#[test]
fn the_standard_price_book_cannot_be_deleted() {
    let mut s = store();
    let standard = s.standard_pricebook_id().unwrap();
    let e = s
        .delete(&mut Locks::default(), Some("Pricebook2"), &standard)
        .unwrap_err();
    assert_eq!(e.code, "ENTITY_IS_LOCKED");
    assert!(s.get(Some("Pricebook2"), &standard).is_ok());
}

#[test]
fn rollback_undoes_every_change_since_the_savepoint() {
    let mut o = org();
    let line = add_line(&mut o, 1.0, 10.0).unwrap();
    let before = serde_json::to_value(&o.store.snapshot().tables).unwrap();

    let sp = o.store.begin();
    let account = create(
        &mut o.store,
        "Account",
        json!({"Name": "New", "External_Id__c": "N-1"}),
    )
    .unwrap();
    update(&mut o.store, "OrderItem", &line, json!({"Quantity": 4})).unwrap();
    o.store
        .delete(&mut Locks::default(), Some("Order"), &o.order)
        .unwrap();
    o.store.rollback(sp);

    assert_eq!(
        serde_json::to_value(&o.store.snapshot().tables).unwrap(),
        before
    );
    assert_eq!(code(o.store.get(Some("Account"), &account)), "NOT_FOUND");
    assert_eq!(
        field(&o.store, "Order", &o.order, "TotalAmount"),
        json!(10.0)
    );
    // The index was rolled back too: the external id is free again.
    assert!(
        o.store
            .find_by("Account", "External_Id__c", "N-1")
            .is_empty()
    );
    create(
        &mut o.store,
        "Account",
        json!({"Name": "Again", "External_Id__c": "N-1"}),
    )
    .unwrap();

    // After a commit there is nothing left to undo.
    let sp = o.store.begin();
    update(&mut o.store, "OrderItem", &line, json!({"Quantity": 2})).unwrap();
    o.store.commit(sp);
    assert_eq!(
        field(&o.store, "Order", &o.order, "TotalAmount"),
        json!(20.0)
    );
}

#[test]
fn locked_records_refuse_writes_and_new_children_until_the_rule_is_used_up() {
    let mut s = store();
    let account = create(
        &mut s,
        "Account",
        json!({"Name": "A", "External_Id__c": "CUST-9"}),
    )
    .unwrap();
    let mut locks = Locks {
        rules: vec![LockRule {
            key: "cust-9".into(),
            times: Some(2),
        }],
    };
    let e = s
        .update(
            &mut locks,
            Some("Account"),
            &account,
            &body(json!({"Name": "B"})),
        )
        .unwrap_err();
    assert_eq!(e.code, "UNABLE_TO_LOCK_ROW");
    let child = body(json!({"LastName": "L", "AccountId": account}));
    assert_eq!(
        code(s.create(&mut locks, "Contact", &child)),
        "UNABLE_TO_LOCK_ROW"
    );
    assert!(locks.rules.is_empty());
    s.create(&mut locks, "Contact", &child).unwrap();
    assert_eq!(field(&s, "Account", &account, "Name"), json!("A"));
}
