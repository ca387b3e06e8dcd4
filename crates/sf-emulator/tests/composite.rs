//! Composite: references between subrequests, subrequest kinds, limits, allOrNone, one call.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn sub(method: &str, url: &str, reference: &str, body: Option<Value>) -> Value {
    let mut v = json!({"method": method, "url": format!("{V}{url}"), "referenceId": reference});
    if let Some(b) = body {
        v["body"] = b;
    }
    v
}

#[tokio::test]
async fn references_chain_subrequests_in_one_api_call() {
    let org = Org::start().await;
    let seeded = org
        .admin(
            reqwest::Method::POST,
            "/seed",
            Some(json!({"products": [{"Name": "Widget", "ProductCode": "W-1", "prices": {"Standard": 10}}]})),
        )
        .await
        .body;
    let std_pb = seeded["standardPricebookId"].clone();
    let entry = seeded["products"]["W-1"]["entries"]["Standard"].clone();
    let before = org.stats().await["api_calls_total"].as_u64().unwrap();
    let req = json!({"allOrNone": true, "compositeRequest": [
        sub("PATCH", "/sobjects/Account/External_Id__c/C-1", "acc", Some(json!({"Name": "Acme"}))),
        sub("POST", "/sobjects/Order", "ord", Some(json!({"AccountId": "@{acc.id}", "EffectiveDate": "2026-11-24", "Status": "Draft", "Pricebook2Id": std_pb, "External_Id__c": "O-1"}))),
        sub("POST", "/composite/sobjects", "lines", Some(json!({"allOrNone": true, "records": [
            {"attributes": {"type": "OrderItem"}, "OrderId": "@{ord.id}", "PricebookEntryId": entry, "Quantity": 1, "UnitPrice": 10},
            {"attributes": {"type": "OrderItem"}, "OrderId": "@{ord.id}", "PricebookEntryId": entry, "Quantity": 2, "UnitPrice": 10}
        ]}))),
        sub("GET", "/query?q=SELECT+Id,Status+FROM+Order+WHERE+External_Id__c='O-1'", "q", None),
        sub("PATCH", "/sobjects/Order/@{q.records[0].Id}", "activate", Some(json!({"Status": "Activated"}))),
        sub("GET", "/sobjects/OrderItem/@{lines[1].id}?fields=Quantity", "line2", None)
    ]});
    let r = org.post("/composite", req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.body["compositeResponse"].as_array().unwrap();
    let codes: Vec<u64> = res
        .iter()
        .map(|x| x["httpStatusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 201, 200, 200, 204, 200], "{}", r.body);
    assert_eq!(res[0]["referenceId"], "acc");
    assert_eq!(res[0]["body"]["created"], true);
    assert!(
        res[1]["httpHeaders"]["Location"]
            .as_str()
            .unwrap()
            .contains("/sobjects/Order/801")
    );
    assert_eq!(res[4]["body"], Value::Null);
    assert_eq!(res[5]["body"]["Quantity"], 2.0);
    let order = org.get("/sobjects/Order/External_Id__c/O-1").await.body;
    assert_eq!(order["Status"], "Activated");
    let stats = org.stats().await;
    // One Composite call, plus the GET above.
    assert_eq!(stats["api_calls_total"].as_u64().unwrap() - before, 2);
    assert_eq!(stats["api_calls_by_route"]["POST /composite"], 1);
    assert_eq!(stats["composite_subrequests"], 6);
}

#[tokio::test]
async fn all_or_none_rolls_back_and_halts_the_rest() {
    let org = Org::start().await;
    let req = json!({"allOrNone": true, "compositeRequest": [
        sub("POST", "/sobjects/Account", "a", Some(json!({"Name": "Acme"}))),
        sub("POST", "/sobjects/Account", "b", Some(json!({"Phone": "1"}))),
        sub("POST", "/sobjects/Account", "c", Some(json!({"Name": "Never"})))
    ]});
    let r = org.post("/composite", req).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[1]["httpStatusCode"], 400);
    assert_eq!(res[1]["body"][0]["errorCode"], "REQUIRED_FIELD_MISSING");
    for i in [0, 2] {
        assert_eq!(res[i]["httpStatusCode"], 400);
        assert_eq!(res[i]["body"][0]["errorCode"], "PROCESSING_HALTED");
    }
    assert_eq!(
        org.stats().await["records"]["Account"],
        0,
        "the first insert was rolled back"
    );
}

#[tokio::test]
async fn without_all_or_none_only_dependents_fail() {
    let org = Org::start().await;
    let req = json!({"allOrNone": false, "compositeRequest": [
        sub("POST", "/sobjects/Account", "bad", Some(json!({"Phone": "1"}))),
        sub("POST", "/sobjects/Contact", "dependent", Some(json!({"LastName": "x", "AccountId": "@{bad.id}"}))),
        sub("POST", "/sobjects/Account", "fine", Some(json!({"Name": "Fine"}))),
        sub("GET", "/sobjects/Account/@{nope.id}", "unknown_ref", None)
    ]});
    let r = org.post("/composite", req).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[0]["body"][0]["errorCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(res[1]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert!(
        res[1]["body"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bad.id")
    );
    assert_eq!(res[2]["httpStatusCode"], 201);
    assert_eq!(res[3]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(org.stats().await["records"]["Account"], 1);
}

#[tokio::test]
async fn limits_on_subrequests_are_enforced() {
    let org = Org::start().await;
    let many: Vec<Value> = (0..26)
        .map(|i| {
            sub(
                "POST",
                "/sobjects/Account",
                &format!("a{i}"),
                Some(json!({"Name": format!("A{i}")})),
            )
        })
        .collect();
    let r = org
        .post("/composite", json!({"compositeRequest": many}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r.body), "LIMIT_EXCEEDED");
    // 25 is fine.
    let r = org
        .post(
            "/composite",
            json!({"compositeRequest": many[..25].to_vec()}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(org.stats().await["records"]["Account"], 25);
    // Six query/collections subrequests are too many; five are fine.
    let heavy: Vec<Value> = (0..6)
        .map(|i| {
            sub(
                "GET",
                "/query?q=SELECT+Id+FROM+Account",
                &format!("q{i}"),
                None,
            )
        })
        .collect();
    let r = org
        .post("/composite", json!({"compositeRequest": heavy}))
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "LIMIT_EXCEEDED"));
    let r = org
        .post(
            "/composite",
            json!({"compositeRequest": heavy[..5].to_vec()}),
        )
        .await;
    assert_eq!(r.status, 200);
    // Malformed requests.
    for body in [
        json!({}),
        json!({"compositeRequest": []}),
        json!({"compositeRequest": [{"method": "GET", "url": "/x"}]}),
        json!({"compositeRequest": [sub("GET", "/limits", "bad-ref!", None)]}),
        json!({"compositeRequest": [sub("GET", "/limits", "a", None), sub("GET", "/limits", "a", None)]}),
    ] {
        let r = org.post("/composite", body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
    }
    // Nested composite is refused per subrequest.
    let r = org
        .post(
            "/composite",
            json!({"compositeRequest": [sub("POST", "/composite", "n", Some(json!({})))]}),
        )
        .await;
    assert_eq!(r.body["compositeResponse"][0]["httpStatusCode"], 400);
}

#[tokio::test]
async fn rollback_restores_updates_deletes_and_external_id_lookups() {
    let org = Org::start().await;
    let a = org.account("Original", "R-1").await;
    let b = org.account("Doomed", "R-2").await;
    let req = json!({"allOrNone": true, "compositeRequest": [
        sub("PATCH", &format!("/sobjects/Account/{a}"), "upd", Some(json!({"Name": "Changed", "External_Id__c": "R-1-new"}))),
        sub("DELETE", &format!("/sobjects/Account/{b}"), "del", None),
        // A nested all-or-none collection that fails on its own and rolls back its part only.
        sub("POST", "/composite/sobjects", "inner", Some(json!({"allOrNone": true, "records": [
            {"attributes": {"type": "Account"}, "Name": "Inner", "External_Id__c": "R-3"},
            {"attributes": {"type": "Account"}, "Phone": "no name"}
        ]}))),
        sub("POST", "/sobjects/Account", "created", Some(json!({"Name": "New", "External_Id__c": "R-4"}))),
        sub("POST", "/sobjects/Account", "fails", Some(json!({"Name": "Dup", "External_Id__c": "R-4"})))
    ]});
    let r = org.post("/composite", req).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(
        res[4]["body"][0]["errorCode"], "DUPLICATE_VALUE",
        "{}",
        r.body
    );
    assert!(
        res[..4]
            .iter()
            .all(|x| x["body"][0]["errorCode"] == "PROCESSING_HALTED")
    );
    // Everything is as before, including the external-id lookups.
    let got = org.get("/sobjects/Account/External_Id__c/R-1").await;
    assert_eq!(
        (got.status, got.body["Name"].clone()),
        (200, json!("Original"))
    );
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/R-1-new")
            .await
            .status,
        404
    );
    assert_eq!(
        org.get(&format!("/sobjects/Account/{b}")).await.body["Name"],
        "Doomed"
    );
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/R-3").await.status,
        404
    );
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/R-4").await.status,
        404
    );
    assert_eq!(org.stats().await["records"]["Account"], 2);
    // The restored unique values are enforced again.
    let r = org
        .post(
            "/sobjects/Account",
            json!({"Name": "x", "External_Id__c": "r-2"}),
        )
        .await;
    assert_eq!(error_code(&r.body), "DUPLICATE_VALUE");
}
