//! sObject Collections: create, update, upsert, delete, retrieve; per-record results; allOrNone.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn accounts(n: usize, prefix: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("Acc {i}"), "External_Id__c": format!("{prefix}-{i}")}))
        .collect()
}

#[tokio::test]
async fn create_200_in_one_call_and_refuse_201() {
    let org = Org::start().await;
    let r = org
        .post(
            "/composite/sobjects",
            json!({"allOrNone": false, "records": accounts(200, "A")}),
        )
        .await;
    assert_eq!(r.status, 200);
    let results = r.body.as_array().unwrap();
    assert_eq!(results.len(), 200);
    assert!(
        results
            .iter()
            .all(|x| x["success"] == true && x["id"].as_str().unwrap().starts_with("001"))
    );
    let r = org
        .post(
            "/composite/sobjects",
            json!({"records": accounts(201, "B")}),
        )
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "EXCEEDED_ID_LIMIT"));
    let stats = org.stats().await;
    assert_eq!(stats["api_calls_total"], 2);
    assert_eq!(stats["records"]["Account"], 200);
}

#[tokio::test]
async fn per_record_errors_without_all_or_none() {
    let org = Org::start().await;
    let records = json!([
        {"attributes": {"type": "Account"}, "Name": "ok"},
        {"attributes": {"type": "Account"}, "Phone": "1"},
        {"Name": "no type"},
        {"attributes": {"type": "Account"}, "Name": "ok 2"}
    ]);
    let r = org
        .post(
            "/composite/sobjects",
            json!({"allOrNone": false, "records": records}),
        )
        .await;
    assert_eq!(r.status, 200);
    let res = r.body.as_array().unwrap();
    assert_eq!(res[0]["success"], true);
    assert_eq!(
        res[1],
        json!({"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]}]})
    );
    assert_eq!(res[2]["errors"][0]["statusCode"], "INVALID_TYPE");
    assert_eq!(res[3]["success"], true);
    assert_eq!(org.stats().await["records"]["Account"], 2);
}

#[tokio::test]
async fn all_or_none_rolls_everything_back() {
    let org = Org::start().await;
    let records = json!([
        {"attributes": {"type": "Account"}, "Name": "ok"},
        {"attributes": {"type": "Account"}, "Phone": "1"},
        {"attributes": {"type": "Account"}, "Name": "ok 2"}
    ]);
    let r = org
        .post(
            "/composite/sobjects",
            json!({"allOrNone": true, "records": records}),
        )
        .await;
    assert_eq!(r.status, 200);
    let res = r.body.as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(
        res[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(res[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(
        res[2]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert!(res.iter().all(|x| x["success"] == false));
    assert_eq!(
        org.stats().await["records"]["Account"],
        0,
        "nothing persisted"
    );
}

#[tokio::test]
async fn upsert_collection_reports_created_flags_and_duplicates() {
    let org = Org::start().await;
    org.account("Existing", "U-1").await;
    let records = json!([
        {"attributes": {"type": "Account"}, "Name": "one", "External_Id__c": "U-1"},
        {"attributes": {"type": "Account"}, "Name": "two", "External_Id__c": "U-2"},
        {"attributes": {"type": "Account"}, "Name": "dup a", "External_Id__c": "U-3"},
        {"attributes": {"type": "Account"}, "Name": "dup b", "External_Id__c": "u-3"},
        {"attributes": {"type": "Account"}, "Name": "no ext"}
    ]);
    let r = org
        .patch(
            "/composite/sobjects/Account/External_Id__c",
            json!({"allOrNone": false, "records": records}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.body.as_array().unwrap();
    assert_eq!(
        (res[0]["success"].clone(), res[0]["created"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        (res[1]["success"].clone(), res[1]["created"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(res[2]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID");
    assert_eq!(res[3]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID");
    assert_eq!(res[4]["success"], false);
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/U-1").await.body["Name"],
        "one"
    );
    // Unknown external-id field.
    let r = org
        .patch(
            "/composite/sobjects/Account/Nope__c",
            json!({"records": []}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Upsert of Orders with relationship references to Accounts by external id.
    let orders = json!([
        {"attributes": {"type": "Order"}, "External_Id__c": "O-1", "Account": {"External_Id__c": "U-2"}, "EffectiveDate": "2026-11-24", "Status": "Draft"},
        {"attributes": {"type": "Order"}, "External_Id__c": "O-2", "Account": {"External_Id__c": "U-404"}, "EffectiveDate": "2026-11-24", "Status": "Draft"}
    ]);
    let r = org
        .patch(
            "/composite/sobjects/Order/External_Id__c",
            json!({"records": orders}),
        )
        .await;
    let res = r.body.as_array().unwrap();
    assert_eq!(res[0]["created"], true);
    assert_eq!(res[1]["errors"][0]["statusCode"], "INVALID_FIELD");
}

#[tokio::test]
async fn update_retrieve_and_delete_collections() {
    let org = Org::start().await;
    let a = org.account("A", "X-1").await;
    let b = org.account("B", "X-2").await;
    let r = org
        .patch(
            "/composite/sobjects",
            json!({"records": [
                {"attributes": {"type": "Account"}, "id": a, "Name": "A2"},
                {"attributes": {"type": "Account"}, "Name": "no id"},
                {"attributes": {"type": "Account"}, "Id": b, "Name": null}
            ]}),
        )
        .await;
    let res = r.body.as_array().unwrap();
    assert_eq!(res[0]["success"], true);
    assert_eq!(res[1]["errors"][0]["statusCode"], "MISSING_ARGUMENT");
    assert_eq!(res[2]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    let r = org
        .get(&format!(
            "/composite/sobjects/Account?ids={a},{b}&fields=Id,Name"
        ))
        .await;
    assert_eq!(r.body[0]["Name"], "A2");
    assert_eq!(r.body[1]["Name"], "B");
    let r = org
        .call(
            Method::DELETE,
            &format!("/composite/sobjects?ids={a},001000000000000AAA&allOrNone=false"),
            None,
        )
        .await;
    let res = r.body.as_array().unwrap();
    assert_eq!(res[0], json!({"id": a, "success": true, "errors": []}));
    assert_eq!(res[1]["errors"][0]["statusCode"], "NOT_FOUND");
}
