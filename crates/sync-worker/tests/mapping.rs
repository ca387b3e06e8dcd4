//! A mapping to another object with custom fields: one Case per order, as some teams want (the
//! org's schema here has a custom external id and a custom division field on Case).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Harness, order};
use orderbridge_mapping::{Mapping, check_against_salesforce};
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;

/// The emulator's default schema with two custom fields on Case.
fn schema_with_custom_case_fields(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(
        common::repo_root().join("crates/sf-emulator/src/default_schema.json"),
    )
    .unwrap();
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let case = schema["objects"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|o| o["name"] == "Case")
        .unwrap();
    let fields = case["fields"].as_array_mut().unwrap();
    fields.push(
        json!({"name": "Order_Id__c", "type": "string", "external_id": true, "unique": true}),
    );
    fields.push(json!({"name": "Division__c", "type": "string", "length": 40}));
    fields.push(json!({"name": "Order_Total__c", "type": "currency"}));
    // An external id that is not Unique: unusable as a create key.
    fields.push(json!({"name": "Legacy_Id__c", "type": "string", "external_id": true}));
    let path = dir.join("schema.json");
    std::fs::write(&path, schema.to_string()).unwrap();
    path
}

const CASE_MAPPING: &str = r#"{
  "account": {"sobject": "Account", "external_id_field": "External_Id__c",
              "key": {"template": "{client.external_id_prefix}{customer.external_id}", "max_length": 255},
              "fields": {"Name": {"path": "customer.name", "max_length": 255}}},
  "order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": {"path": "id", "max_length": 255},
            "account_relationship": "Account",
            "fields": {"Subject": {"template": "Order {client_ref} from {customer.name}", "max_length": 255},
                       "Origin": {"const": "Web"},
                       "Division__c": {"const": "EMEA"},
                       "Order_Total__c": {"path": "total", "format": "number", "precision": 18, "scale": 2},
                       "Description": {"path": "notes", "max_length": 32000}}}
}"#;

#[tokio::test]
async fn orders_become_cases_with_custom_fields() {
    let dir = std::env::temp_dir().join(format!("sw-mapping-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = schema_with_custom_case_fields(&dir);
    let mut h = Harness::with_emulator(
        "300ms,600ms",
        EmulatorConfig {
            schema_file: Some(schema),
            ..EmulatorConfig::ephemeral()
        },
    )
    .await;
    let mapping = Mapping::parse(CASE_MAPPING, "case mapping").unwrap();
    // The start-up check against the org passes for this schema...
    let client = orderbridge_salesforce::Client::new(&h.sf).unwrap();
    let problems = check_against_salesforce(&client, &mapping).await.unwrap();
    assert!(problems.0.is_empty(), "{problems}");
    // ...and names what is wrong when the org lacks a field.
    let wrong = Mapping::parse(&CASE_MAPPING.replace("Division__c", "Region__c"), "m").unwrap();
    let problems = check_against_salesforce(&client, &wrong).await.unwrap();
    assert_eq!(problems.0, ["order.fields: Case has no field Region__c"]);
    // A create key that is not Unique would let a redelivery write a duplicate: refused.
    let not_unique =
        Mapping::parse(&CASE_MAPPING.replace("Order_Id__c", "Legacy_Id__c"), "m").unwrap();
    let problems = check_against_salesforce(&client, &not_unique)
        .await
        .unwrap();
    assert_eq!(problems.0.len(), 1, "{problems}");
    assert!(
        problems.0[0].contains("Legacy_Id__c must be Unique"),
        "{problems}"
    );

    // The limits a mapping declares must be declared, and no more than the fields hold.
    for (edit, want) in [
        (
            (
                r#"{customer.name}", "max_length": 255}"#,
                r#"{customer.name}"}"#,
            ),
            "order.fields.Subject: Case.Subject holds 255 characters; declare \"max_length\"",
        ),
        (
            (
                r#""Division__c": {"const": "EMEA"}"#,
                r#""Division__c": {"path": "client_ref", "max_length": 64}"#,
            ),
            "order.fields.Division__c: max_length 64 promises more than Case.Division__c holds (40 characters)",
        ),
        (
            (
                r#""precision": 18, "scale": 2"#,
                r#""precision": 20, "scale": 4"#,
            ),
            "order.fields.Order_Total__c: precision 20 and scale 4 promise more than Case.Order_Total__c holds",
        ),
        (
            (r#", "precision": 18, "scale": 2"#, ""),
            "order.fields.Order_Total__c: Case.Order_Total__c holds 18 digits, 2 after the point; declare",
        ),
    ] {
        assert!(CASE_MAPPING.contains(edit.0), "{}", edit.0);
        let bad = Mapping::parse(&CASE_MAPPING.replace(edit.0, edit.1), "m").unwrap();
        let problems = check_against_salesforce(&client, &bad).await.unwrap();
        assert_eq!(problems.0.len(), 1, "{problems}");
        assert!(problems.0[0].starts_with(want), "{problems}");
    }

    h.start_worker_with_mapping(&[], mapping).await;
    let orders = vec![order("CUST-1", 2), order("CUST-2", 1)];
    h.publish_orders(&orders).await;
    let statuses = h.wait_synced(&orders, Duration::from_secs(20)).await;
    let cases = h.records("Case").await;
    assert_eq!(cases.len(), 2);
    for o in &orders {
        let case = cases
            .iter()
            .find(|c| c["Order_Id__c"] == o.id.to_string())
            .unwrap();
        assert_eq!(case["Division__c"], "EMEA");
        assert_eq!(case["Origin"], "Web");
        assert_eq!(
            case["Subject"],
            format!("Order {} from {}", o.client_ref, o.customer.name)
        );
        assert_eq!(
            case["Order_Total__c"].as_f64().unwrap(),
            o.total.to_string().parse::<f64>().unwrap()
        );
        assert_eq!(case["Description"], "leave at the door");
        assert!(case["AccountId"].as_str().unwrap().starts_with("001"));
        let reported = statuses.iter().find(|s| s.data.order_id == o.id).unwrap();
        assert_eq!(reported.data.salesforce_id.as_deref(), case["Id"].as_str());
    }
    // No Orders or items were written with this mapping.
    assert!(h.records("Order").await.is_empty());
    h.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
