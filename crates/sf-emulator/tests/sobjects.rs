//! sObject REST: versions, CRUD, upsert by external id, relationship references, validation
//! errors, object rules, limits and the Sforce-Limit-Info header.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;

#[tokio::test]
async fn versions_need_no_auth_and_are_not_counted() {
    let org = Org::start().await;
    let r = to_resp(
        org.http
            .get(format!("{}/services/data/", org.base()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let list = r.body.as_array().unwrap();
    let v62 = list.iter().find(|v| v["version"] == "62.0").unwrap();
    assert_eq!(v62["label"], "Winter '25");
    assert_eq!(v62["url"], "/services/data/v62.0");
    assert_eq!(org.stats().await["api_calls_total"], 0);
    // An unknown version is a 404.
    let r = org
        .call_with(Method::GET, "/services/data/v9.0/limits", None, &[])
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn crud_round_trip_with_limit_header_on_every_response() {
    let org = Org::start().await;
    let r = org
        .post(
            "/sobjects/Account",
            json!({"Name": "Acme", "External_Id__c": "C-1", "BillingCity": "Lyon"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body, json!({"id": id, "success": true, "errors": []}));
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("001"));
    assert_eq!(r.headers["location"], format!("{V}/sobjects/Account/{id}"));
    assert_eq!(r.headers["sforce-limit-info"], "api-usage=1/15000");

    let r = org.get(&format!("/sobjects/Account/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["Name"], "Acme");
    assert_eq!(r.body["attributes"]["type"], "Account");
    assert_eq!(
        r.body["attributes"]["url"],
        format!("{V}/sobjects/Account/{id}")
    );
    assert!(r.body["CreatedDate"].as_str().unwrap().ends_with("+0000"));
    // 15-character ids work too.
    let r = org
        .get(&format!(
            "/sobjects/account/{}?fields=Name,BillingCity",
            &id[..15]
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["BillingCity"], "Lyon");
    assert!(r.body.get("Phone").is_none(), "only the requested fields");
    // By external id (case-insensitive match).
    let r = org.get("/sobjects/Account/External_Id__c/c-1").await;
    assert_eq!(r.body["Id"], json!(id));

    let r = org
        .patch(
            &format!("/sobjects/Account/{id}"),
            json!({"Name": "Acme Ltd", "BillingCity": null}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, Value::Null);
    let r = org.get(&format!("/sobjects/Account/{id}")).await;
    assert_eq!(
        (r.body["Name"].clone(), r.body["BillingCity"].clone()),
        (json!("Acme Ltd"), Value::Null)
    );

    let r = org.delete(&format!("/sobjects/Account/{id}")).await;
    assert_eq!(r.status, 204);
    let r = org.get(&format!("/sobjects/Account/{id}")).await;
    assert_eq!((r.status, error_code(&r.body)), (404, "ENTITY_IS_DELETED"));
    assert_eq!(r.headers["sforce-limit-info"], "api-usage=8/15000");

    let r = org.get("/limits").await;
    assert_eq!(
        r.body["DailyApiRequests"],
        json!({"Max": 15000, "Remaining": 14991})
    );
}

#[tokio::test]
async fn validation_errors_use_salesforce_codes() {
    let org = Org::start().await;
    let acc = org.account("Acme", "C-1").await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/sobjects/Account",
            json!({"BillingCity": "x"}),
            400,
            "REQUIRED_FIELD_MISSING",
        ),
        (
            "/sobjects/Account",
            json!({"Name": "x", "Nope__c": 1}),
            400,
            "INVALID_FIELD",
        ),
        (
            "/sobjects/Account",
            json!({"Id": acc, "Name": "x"}),
            400,
            "INVALID_FIELD",
        ),
        (
            "/sobjects/Account",
            json!({"Name": "x", "External_Id__c": "c-1"}),
            400,
            "DUPLICATE_VALUE",
        ),
        (
            "/sobjects/Account",
            json!({"Name": "x".repeat(256)}),
            400,
            "STRING_TOO_LONG",
        ),
        (
            "/sobjects/Contact",
            json!({"LastName": "x", "Email": "not-an-email"}),
            400,
            "INVALID_EMAIL_ADDRESS",
        ),
        (
            "/sobjects/Contact",
            json!({"LastName": "x", "AccountId": "garbage"}),
            400,
            "MALFORMED_ID",
        ),
        (
            "/sobjects/Order",
            json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Shipped"}),
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            "/sobjects/Order",
            json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Activated"}),
            400,
            "FIELD_INTEGRITY_EXCEPTION",
        ),
        (
            "/sobjects/Order",
            json!({"AccountId": acc, "EffectiveDate": "24/11/2026", "Status": "Draft"}),
            400,
            "JSON_PARSER_ERROR",
        ),
        (
            "/sobjects/Order",
            json!({"AccountId": acc, "EffectiveDate": "2026-11-24", "Status": "Draft", "OrderNumber": "1"}),
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
        ),
        ("/sobjects/Nope__c", json!({"Name": "x"}), 404, "NOT_FOUND"),
    ];
    for (path, body, status, code) in cases {
        let r = org.post(path, body.clone()).await;
        assert_eq!(
            (r.status, error_code(&r.body)),
            (status, code),
            "{path} {body} -> {}",
            r.body
        );
        assert!(r.body[0]["message"].is_string());
    }
    let r = org.post("/sobjects/Account", json!({"Phone": "1"})).await;
    assert_eq!(r.body[0]["message"], "Required fields are missing: [Name]");
    assert_eq!(r.body[0]["fields"], json!(["Name"]));
    // A body that is not JSON.
    let r = to_resp(
        org.http
            .post(format!("{}{V}/sobjects/Account", org.base()))
            .bearer_auth(&org.token)
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "JSON_PARSER_ERROR"));
    // Unsupported method.
    let r = org
        .call(Method::PUT, "/sobjects/Account", Some(json!({})))
        .await;
    assert_eq!((r.status, error_code(&r.body)), (405, "METHOD_NOT_ALLOWED"));
    // Unknown record and resource.
    let r = org.get("/sobjects/Account/001000000000000AAA").await;
    assert_eq!((r.status, error_code(&r.body)), (404, "NOT_FOUND"));
    let r = org.get("/nothing/here").await;
    assert_eq!((r.status, error_code(&r.body)), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn upsert_by_external_id_creates_then_updates() {
    let org = Org::start().await;
    let r = org
        .patch(
            "/sobjects/Account/External_Id__c/C-9",
            json!({"Name": "Nine"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.body,
        json!({"id": id, "success": true, "errors": [], "created": true})
    );
    let r = org
        .patch(
            "/sobjects/Account/External_Id__c/c-9",
            json!({"Name": "Nine B"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"id": id, "success": true, "errors": [], "created": false})
    );
    assert_eq!(
        org.get(&format!("/sobjects/Account/{id}")).await.body["External_Id__c"],
        "C-9"
    );
    // Unknown external-id field: 404 NOT_FOUND as Salesforce answers.
    let r = org
        .patch("/sobjects/Account/Nope__c/1", json!({"Name": "x"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}])
    );
    // A field that exists but is not an external id.
    let r = org
        .patch("/sobjects/Account/Name/x", json!({"Phone": "1"}))
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "INVALID_FIELD"));
    // updateOnly forbids the create.
    let r = org
        .patch(
            "/sobjects/Account/External_Id__c/C-10?updateOnly=true",
            json!({"Name": "x"}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Validation still applies on the create path.
    let r = org
        .patch(
            "/sobjects/Account/External_Id__c/C-11",
            json!({"Phone": "1"}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "REQUIRED_FIELD_MISSING")
    );
    // Delete by external id.
    assert_eq!(
        org.delete("/sobjects/Account/External_Id__c/C-9")
            .await
            .status,
        204
    );
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/C-9").await.status,
        404
    );
}

#[tokio::test]
async fn upsert_with_several_matches_answers_300() {
    let schema = r#"{"objects":[{"name":"Widget__c","key_prefix":"a01","fields":[
        {"name":"Name","type":"string"},
        {"name":"Code__c","type":"string","external_id":true}]}]}"#;
    let path =
        std::env::temp_dir().join(format!("sf-emulator-schema-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, schema).unwrap();
    let org = Org::start_with(EmulatorConfig {
        schema_file: Some(path.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let a = org
        .post("/sobjects/Widget__c", json!({"Name": "a", "Code__c": "W"}))
        .await;
    let b = org
        .post("/sobjects/Widget__c", json!({"Name": "b", "Code__c": "w"}))
        .await;
    assert_eq!(
        (a.status, b.status),
        (201, 201),
        "not unique, so both insert"
    );
    assert!(a.body["id"].as_str().unwrap().starts_with("a01"));
    let r = org
        .patch("/sobjects/Widget__c/Code__c/W", json!({"Name": "c"}))
        .await;
    assert_eq!(r.status, 300);
    let urls: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 2);
    assert!(urls[0].starts_with(&format!("{V}/sobjects/Widget__c/a01")));
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn external_id_relationship_references_set_lookups() {
    let org = Org::start().await;
    let acc = org.account("Acme", "C-1").await;
    let r = org
        .patch(
            "/sobjects/Order/External_Id__c/O-1",
            json!({"Account": {"External_Id__c": "C-1"}, "EffectiveDate": "2026-11-24", "Status": "Draft"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let order = org.get("/sobjects/Order/External_Id__c/O-1").await.body;
    assert_eq!(order["AccountId"], json!(acc));
    assert_eq!(order["OrderNumber"], "00000100");
    assert!(order["Id"].as_str().unwrap().starts_with("801"));
    // An unknown external id is an error, as in Salesforce.
    let r = org
        .post(
            "/sobjects/Order",
            json!({"Account": {"External_Id__c": "C-404"}, "EffectiveDate": "2026-11-24", "Status": "Draft"}),
        )
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "INVALID_FIELD"));
    assert_eq!(
        r.body[0]["message"],
        "Foreign key external ID: C-404 not found for field External_Id__c in entity Account"
    );
    // Referencing through a field that is not an external id.
    let r = org
        .post(
            "/sobjects/Contact",
            json!({"LastName": "x", "Account": {"Name": "Acme"}}),
        )
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "INVALID_FIELD"));
}

#[tokio::test]
async fn order_activation_and_order_item_price_book_rules() {
    let org = Org::start().await;
    let seeded = org
        .admin(
            Method::POST,
            "/seed",
            Some(json!({"pricebooks": [{"Name": "EU"}], "products": [{"Name": "Widget", "ProductCode": "W-1", "prices": {"Standard": 10, "EU": 12}}]})),
        )
        .await;
    assert_eq!(seeded.status, 201, "{}", seeded.body);
    let std_pb = seeded.body["standardPricebookId"]
        .as_str()
        .unwrap()
        .to_owned();
    let eu_pb = seeded.body["pricebooks"]["EU"].as_str().unwrap().to_owned();
    let eu_entry = seeded.body["products"]["W-1"]["entries"]["EU"]
        .as_str()
        .unwrap()
        .to_owned();
    let std_entry = seeded.body["products"]["W-1"]["entries"]["Standard"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = seeded.body["products"]["W-1"]["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(std_pb.starts_with("01s") && eu_entry.starts_with("01u") && product.starts_with("01t"));

    org.account("Acme", "C-1").await;
    let order = org
        .patch(
            "/sobjects/Order/External_Id__c/O-1",
            json!({"Account": {"External_Id__c": "C-1"}, "EffectiveDate": "2026-11-24", "Status": "Draft"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // No price book on the order yet.
    let item = json!({"OrderId": order, "PricebookEntryId": eu_entry, "Quantity": 2, "UnitPrice": 12, "External_Id__c": "O-1-1"});
    let r = org.post("/sobjects/OrderItem", item.clone()).await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "FIELD_INTEGRITY_EXCEPTION")
    );
    assert_eq!(
        org.patch(
            &format!("/sobjects/Order/{order}"),
            json!({"Pricebook2Id": eu_pb})
        )
        .await
        .status,
        204
    );
    // An entry from another price book.
    let mut wrong = item.clone();
    wrong["PricebookEntryId"] = json!(std_entry);
    let r = org.post("/sobjects/OrderItem", wrong).await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "FIELD_INTEGRITY_EXCEPTION")
    );
    let r = org.post("/sobjects/OrderItem", item).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let line = org
        .get(&format!(
            "/sobjects/OrderItem/{}",
            r.body["id"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(
        line["Product2Id"],
        json!(product),
        "derived from the price book entry"
    );
    assert!(line["Id"].as_str().unwrap().starts_with("802"));
    // Activation must be an update of Status alone.
    let r = org
        .patch(
            &format!("/sobjects/Order/{order}"),
            json!({"Status": "Activated", "Description": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "FIELD_INTEGRITY_EXCEPTION")
    );
    assert_eq!(
        org.patch(
            &format!("/sobjects/Order/{order}"),
            json!({"Status": "Activated"})
        )
        .await
        .status,
        204
    );
    // A custom price entry needs a standard price first; duplicates are refused.
    let p2 = org
        .post("/sobjects/Product2", json!({"Name": "Gadget"}))
        .await
        .body["id"]
        .clone();
    let r = org
        .post(
            "/sobjects/PricebookEntry",
            json!({"Pricebook2Id": eu_pb, "Product2Id": p2, "UnitPrice": 5}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "STANDARD_PRICE_NOT_DEFINED")
    );
    let r = org
        .post(
            "/sobjects/PricebookEntry",
            json!({"Pricebook2Id": std_pb, "Product2Id": product, "UnitPrice": 5}),
        )
        .await;
    assert_eq!((r.status, error_code(&r.body)), (400, "DUPLICATE_VALUE"));
    // The standard price book exists from the start and cannot be created by the API.
    let q = org
        .query("SELECT Id, Name FROM Pricebook2 WHERE IsStandard = true")
        .await;
    assert_eq!(q.body["records"][0]["Id"], json!(std_pb));
    let r = org
        .post(
            "/sobjects/Pricebook2",
            json!({"Name": "Fake", "IsStandard": true}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "INVALID_FIELD_FOR_INSERT_UPDATE")
    );
}

#[tokio::test]
async fn platform_event_publish_and_describe() {
    let org = Org::start().await;
    let r = org
        .post("/sobjects/Order_Status__e/", json!({"Order_Id__c": "O-1"}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["errors"][0]["statusCode"], "OPERATION_ENQUEUED");
    let dump = org
        .admin(Method::GET, "/records/Order_Status__e", None)
        .await;
    assert_eq!(dump.body["totalSize"], 1);

    let d = org.get("/sobjects/Order/describe").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["keyPrefix"], "801");
    let ext = d.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "External_Id__c")
        .unwrap();
    assert_eq!(
        (ext["externalId"].clone(), ext["unique"].clone()),
        (json!(true), json!(true))
    );
    // Limits as Salesforce describes them: text length, number precision and scale.
    let field = |d: &serde_json::Value, name: &str| {
        d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    };
    let city = field(&d.body, "ShippingCity");
    assert_eq!(
        (city["length"].clone(), city["precision"].clone()),
        (json!(40), json!(0))
    );
    let total = field(&d.body, "TotalAmount");
    assert_eq!(
        (
            total["precision"].clone(),
            total["scale"].clone(),
            total["length"].clone()
        ),
        (json!(18), json!(2), json!(0))
    );
    let items = org.get("/sobjects/OrderItem/describe").await;
    let quantity = field(&items.body, "Quantity");
    assert_eq!(
        (quantity["precision"].clone(), quantity["scale"].clone()),
        (json!(18), json!(2))
    );
    let g = org.get("/sobjects").await;
    assert_eq!(g.body["sobjects"].as_array().unwrap().len(), 8);
    assert_eq!(org.get("/").await.body["query"], format!("{V}/query"));
}

#[tokio::test]
async fn order_totals_roll_up_and_lines_cascade() {
    let org = Org::start().await;
    let seeded = org
        .admin(
            Method::POST,
            "/seed",
            Some(json!({"products": [{"Name": "Widget", "ProductCode": "W-1", "prices": {"Standard": 9.99}}]})),
        )
        .await
        .body;
    let entry = seeded["products"]["W-1"]["entries"]["Standard"].clone();
    org.account("Acme", "C-1").await;
    let order = org
        .post(
            "/sobjects/Order",
            json!({"Account": {"External_Id__c": "C-1"}, "EffectiveDate": "2026-11-24", "Status": "Draft", "Pricebook2Id": seeded["standardPricebookId"]}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(order_total(&org, &order).await, 0.0);
    let l1 = org
        .post("/sobjects/OrderItem", json!({"Order": {"Id": order}, "PricebookEntryId": entry, "Quantity": 3, "UnitPrice": 9.99}))
        .await;
    assert_eq!(l1.status, 201, "{}", l1.body);
    let l1 = l1.body["id"].as_str().unwrap().to_owned();
    org.post(
        "/sobjects/OrderItem",
        json!({"OrderId": order, "PricebookEntryId": entry, "Quantity": 1, "UnitPrice": 0.01}),
    )
    .await;
    assert_eq!(order_total(&org, &order).await, 29.98);
    assert_eq!(
        org.get(&format!("/sobjects/OrderItem/{l1}")).await.body["TotalPrice"],
        29.97
    );
    org.patch(&format!("/sobjects/OrderItem/{l1}"), json!({"Quantity": 1}))
        .await;
    assert_eq!(order_total(&org, &order).await, 10.0);
    org.delete(&format!("/sobjects/OrderItem/{l1}")).await;
    assert_eq!(order_total(&org, &order).await, 0.01);
    // TotalAmount is read-only.
    let r = org
        .patch(
            &format!("/sobjects/Order/{order}"),
            json!({"TotalAmount": 5}),
        )
        .await;
    assert_eq!(error_code(&r.body), "INVALID_FIELD_FOR_INSERT_UPDATE");
    // Deleting the order deletes its lines.
    org.delete(&format!("/sobjects/Order/{order}")).await;
    assert_eq!(org.stats().await["records"]["OrderItem"], 0);
}

async fn order_total(org: &Org, order: &str) -> f64 {
    org.get(&format!("/sobjects/Order/{order}?fields=TotalAmount"))
        .await
        .body["TotalAmount"]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_of_one_external_id_create_exactly_one_record() {
    let org = std::sync::Arc::new(Org::start().await);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let org = std::sync::Arc::clone(&org);
            tokio::spawn(async move {
                org.patch(
                    "/sobjects/Account/External_Id__c/SAME",
                    json!({"Name": format!("try {i}")}),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
        if r.body["created"] == true {
            created += 1;
        }
        ids.insert(r.body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(org.stats().await["records"]["Account"], 1);
}
