//! SOQL subset: filters, ordering, limits, parent fields, paging via nextRecordsUrl, errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn seed_accounts(org: &Org, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"attributes": {"type": "Account"}, "Name": format!("Acc {i:04}"), "External_Id__c": format!("A-{i}"),
                       "BillingCity": if i % 2 == 0 { "Lyon" } else { "Paris" }, "Type": if i % 3 == 0 { Value::Null } else { json!("Customer") }})
            })
            .collect();
        let r = org
            .post("/composite/sobjects", json!({"records": records}))
            .await;
        assert!(
            r.body
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["success"] == true)
        );
    }
}

fn names(r: &Resp) -> Vec<String> {
    r.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn filters_ordering_and_limits() {
    let org = Org::start().await;
    seed_accounts(&org, 10).await;
    let r = org
        .query("SELECT Id, Name FROM Account WHERE BillingCity = 'lyon' ORDER BY Name DESC LIMIT 3")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(names(&r), ["Acc 0008", "Acc 0006", "Acc 0004"]);
    assert_eq!(r.body["totalSize"], 3);
    assert_eq!(r.body["done"], true);
    assert!(r.body.get("nextRecordsUrl").is_none());
    let rec = &r.body["records"][0];
    assert_eq!(rec["attributes"]["type"], "Account");
    assert!(
        rec["attributes"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{V}/sobjects/Account/001"))
    );
    assert_eq!(
        rec.as_object().unwrap().len(),
        3,
        "attributes + selected fields only"
    );

    let r = org
        .query(
            "SELECT Name FROM Account WHERE External_Id__c IN ('A-1', 'a-2', 'A-99') ORDER BY Name",
        )
        .await;
    assert_eq!(names(&r), ["Acc 0001", "Acc 0002"]);
    let r = org.query("SELECT Name FROM Account WHERE (BillingCity != 'Lyon' AND Name LIKE 'Acc 000%') OR External_Id__c = 'A-0' ORDER BY Name LIMIT 3 OFFSET 1").await;
    assert_eq!(names(&r), ["Acc 0001", "Acc 0003", "Acc 0005"]);
    let r = org
        .query("SELECT Name FROM Account WHERE Type = null ORDER BY Name")
        .await;
    assert_eq!(names(&r), ["Acc 0000", "Acc 0003", "Acc 0006", "Acc 0009"]);
    let r = org
        .query("SELECT Name FROM Account WHERE NOT External_Id__c NOT IN ('A-4') ")
        .await;
    assert_eq!(names(&r), ["Acc 0004"]);
    let r = org
        .query("SELECT COUNT() FROM Account WHERE BillingCity = 'Paris'")
        .await;
    assert_eq!(
        (r.body["totalSize"].clone(), r.body["records"].clone()),
        (json!(5), json!([]))
    );
    // Ordering by a column with nulls: NULLS FIRST by default for ASC.
    let r = org
        .query("SELECT Name FROM Account ORDER BY Type, Name LIMIT 2")
        .await;
    assert_eq!(names(&r), ["Acc 0000", "Acc 0003"]);
    let r = org
        .query("SELECT Name FROM Account ORDER BY Type NULLS LAST, Name DESC LIMIT 1")
        .await;
    assert_eq!(names(&r), ["Acc 0008"]);
}

#[tokio::test]
async fn parent_fields_nest_under_the_relationship() {
    let org = Org::start().await;
    let acc = org.account("Acme", "C-1").await;
    org.post(
        "/sobjects/Contact",
        json!({"LastName": "Doe", "AccountId": acc}),
    )
    .await;
    org.post("/sobjects/Contact", json!({"LastName": "Solo"}))
        .await;
    let r = org.query("SELECT Id, LastName, Account.Name, Account.External_Id__c FROM Contact WHERE Account.Name = 'Acme'").await;
    assert_eq!(r.body["totalSize"], 1, "{}", r.body);
    let c = &r.body["records"][0];
    assert_eq!(c["Account"]["Name"], "Acme");
    assert_eq!(c["Account"]["External_Id__c"], "C-1");
    assert_eq!(c["Account"]["attributes"]["type"], "Account");
    let r = org
        .query("SELECT LastName, Account.Name FROM Contact WHERE Account.Name = null")
        .await;
    assert_eq!(r.body["records"][0]["Account"], Value::Null);
}

#[tokio::test]
async fn paging_with_next_records_url() {
    let org = Org::start().await;
    seed_accounts(&org, 450).await;
    let r = org
        .call_with(
            Method::GET,
            &format!("{V}/query?q=SELECT+Id,Name+FROM+Account+ORDER+BY+Name"),
            None,
            &[("Sforce-Query-Options", "batchSize=200")],
        )
        .await;
    assert_eq!(r.body["totalSize"], 450);
    assert_eq!(r.body["done"], false);
    let mut seen: Vec<String> = names(&r);
    let mut next = r.body["nextRecordsUrl"].as_str().unwrap().to_owned();
    assert!(next.starts_with(&format!("{V}/query/01g")), "{next}");
    assert!(next.ends_with("-200"));
    let mut pages = 1;
    loop {
        let r = org.call_with(Method::GET, &next, None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        seen.extend(names(&r));
        match r.body.get("nextRecordsUrl").and_then(Value::as_str) {
            Some(n) => {
                assert_eq!(r.body["done"], false);
                next = n.to_owned();
            }
            None => {
                assert_eq!(r.body["done"], true);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..450).map(|i| format!("Acc {i:04}")).collect();
    assert_eq!(seen, expected);
    // The finished cursor is gone; garbage locators are refused.
    for bad in [
        next.as_str(),
        &format!("{V}/query/01gnope-200"),
        &format!("{V}/query/junk"),
    ] {
        let r = org.call_with(Method::GET, bad, None, &[]).await;
        assert_eq!(
            (r.status, error_code(&r.body)),
            (400, "INVALID_QUERY_LOCATOR"),
            "{bad}"
        );
    }
    // Default batch is 2000: one page.
    let r = org.query("SELECT Id FROM Account").await;
    assert_eq!(
        (
            r.body["done"].clone(),
            r.body["records"].as_array().unwrap().len()
        ),
        (json!(true), 450)
    );
    // Each page was an API call.
    assert_eq!(
        org.stats().await["api_calls_by_route"]["GET /query/{locator}"],
        5
    );
}

/// Opens a paged query of the seeded accounts (batches of 200) and answers its first
/// `nextRecordsUrl`.
async fn open_cursor(org: &Org) -> String {
    let r = org
        .call_with(
            Method::GET,
            &format!("{V}/query?q=SELECT+Name+FROM+Account+ORDER+BY+Name"),
            None,
            &[("Sforce-Query-Options", "batchSize=200")],
        )
        .await;
    assert_eq!((r.status, r.body["done"].clone()), (200, json!(false)));
    r.body["nextRecordsUrl"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn at_most_ten_cursors_are_open_and_the_oldest_is_released() {
    let org = Org::start().await;
    seed_accounts(&org, 450).await;
    let mut locators = Vec::new();
    for _ in 0..11 {
        locators.push(open_cursor(&org).await);
    }
    // The eleventh released the first, as a Salesforce user's eleventh cursor does.
    let r = org.call_with(Method::GET, &locators[0], None, &[]).await;
    assert_eq!(
        (r.status, error_code(&r.body)),
        (400, "INVALID_QUERY_LOCATOR")
    );
    for locator in &locators[1..] {
        let r = org.call_with(Method::GET, locator, None, &[]).await;
        assert_eq!(r.status, 200, "{locator}: {}", r.body);
        assert_eq!(names(&r)[0], "Acc 0200");
    }
}

#[tokio::test]
async fn later_pages_show_the_matched_records_as_they_are_when_read() {
    let org = Org::start().await;
    seed_accounts(&org, 450).await;
    let next = open_cursor(&org).await;
    // After the query ran: one record of the second page renamed, one deleted, one added.
    let ids = org
        .query("SELECT Id, Name FROM Account WHERE Name IN ('Acc 0200', 'Acc 0201')")
        .await;
    let id_of = |name: &str| {
        ids.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Name"] == name)
            .unwrap()["Id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (renamed, deleted) = (id_of("Acc 0200"), id_of("Acc 0201"));
    let r = org
        .patch(
            &format!("/sobjects/Account/{renamed}"),
            json!({"Name": "Acc 0200 renamed"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = org.delete(&format!("/sobjects/Account/{deleted}")).await;
    assert_eq!(r.status, 204, "{}", r.body);
    seed_more(&org).await;
    let r = org.call_with(Method::GET, &next, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalSize"], 450);
    let page = names(&r);
    assert_eq!(page.len(), 199);
    assert_eq!(page[0], "Acc 0200 renamed");
    assert_eq!(page[1], "Acc 0202");
    assert!(!page.iter().any(|n| n.starts_with("Zed")));
}

async fn seed_more(org: &Org) {
    let r = org
        .post(
            "/sobjects/Account",
            json!({"Name": "Zed", "External_Id__c": "Z-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn query_errors() {
    let org = Org::start().await;
    for (q, code) in [
        ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
        ("SELECT Nope__c FROM Account", "INVALID_FIELD"),
        ("SELECT Id FROM Account WHERE Nope__c = 1", "INVALID_FIELD"),
        ("SELECT Id FROM Account ORDER BY Nope__c", "INVALID_FIELD"),
        ("SELECT Id Account", "MALFORMED_QUERY"),
        ("SELECT Id FROM Account WHERE Name = 'x", "MALFORMED_QUERY"),
        (
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            "MALFORMED_QUERY",
        ),
        ("", "MALFORMED_QUERY"),
    ] {
        let r = org.query(q).await;
        assert_eq!(
            (r.status, error_code(&r.body)),
            (400, code),
            "{q}: {}",
            r.body
        );
    }
}
