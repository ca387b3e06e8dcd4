//! Admin API: stats, records, faults (latency, error rates, outage, sessions, daily limit,
//! locked rows), reset and seed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;

#[tokio::test]
async fn stats_and_records() {
    let org = Org::start().await;
    org.account("A", "C-1").await;
    org.get("/limits").await;
    let stats = org.stats().await;
    assert_eq!(stats["api_calls_total"], 2);
    assert_eq!(stats["api_calls_by_route"]["POST /sobjects/{sobject}"], 1);
    assert_eq!(stats["api_calls_by_route"]["GET /limits"], 1);
    assert_eq!(stats["api_usage"], json!({"used": 2, "max": 15000}));
    assert_eq!(stats["token_requests"]["password"], 1);
    let r = org.admin(Method::GET, "/records/account", None).await;
    assert_eq!(r.body["totalSize"], 1);
    assert_eq!(r.body["records"][0]["External_Id__c"], "C-1");
    assert_eq!(
        org.admin(Method::GET, "/records/Nope", None).await.status,
        404
    );
}

#[tokio::test]
async fn latency_with_jitter_delays_calls() {
    let org = Org::start().await;
    org.faults(json!({"latency_ms": 150, "jitter_ms": 50}))
        .await;
    let start = Instant::now();
    assert_eq!(org.get("/limits").await.status, 200);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    org.admin(Method::DELETE, "/faults", None).await;
    assert_eq!(
        org.admin(Method::GET, "/faults", None).await.body["latency_ms"],
        0
    );
}

#[tokio::test]
async fn max_concurrent_calls_makes_calls_wait_their_turn() {
    let org = Org::start().await;
    org.faults(json!({"latency_ms": 500, "max_concurrent_calls": 1}))
        .await;
    let start = Instant::now();
    let calls = async {
        let (a, b, c) = tokio::join!(org.get("/limits"), org.get("/limits"), org.get("/limits"));
        [a, b, c]
    };
    let watch = async {
        // While the first call sits in its latency, the others have not reached it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        org.stats().await["delayed_requests"].as_u64()
    };
    let (answers, delayed) = tokio::join!(calls, watch);
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(delayed, Some(1));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "one at a time: {took:?}"
    );
    assert_eq!(org.stats().await["peak_concurrent_calls"], 1);
    assert_eq!(
        org.admin(Method::GET, "/faults", None).await.body["max_concurrent_calls"],
        1
    );
    // Cleared: all three are served at once.
    org.faults(json!({"max_concurrent_calls": 0})).await;
    let calls = async { tokio::join!(org.get("/limits"), org.get("/limits"), org.get("/limits")) };
    let watch = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        org.stats().await["delayed_requests"].as_u64()
    };
    let (_, delayed) = tokio::join!(calls, watch);
    assert_eq!(delayed, Some(6));
    assert_eq!(org.stats().await["peak_concurrent_calls"], 3);
}

#[tokio::test]
async fn error_rates_and_fail_next_inject_salesforce_errors() {
    let org = Org::start().await;
    org.faults(json!({"error_rates": {"SERVER_UNAVAILABLE": 1.0}}))
        .await;
    for _ in 0..3 {
        let r = org.get("/limits").await;
        assert_eq!((r.status, error_code(&r.body)), (503, "SERVER_UNAVAILABLE"));
        assert!(r.headers.contains_key("sforce-limit-info"));
    }
    org.faults(
        json!({"error_rates": {"SERVER_UNAVAILABLE": 0.0}, "fail_next": {"UNABLE_TO_LOCK_ROW": 2}}),
    )
    .await;
    for _ in 0..2 {
        let r = org.get("/limits").await;
        assert_eq!((r.status, error_code(&r.body)), (400, "UNABLE_TO_LOCK_ROW"));
    }
    assert_eq!(org.get("/limits").await.status, 200);
    org.faults(json!({"fail_next": {"500": 1}})).await;
    assert_eq!(org.get("/limits").await.status, 500);
    let stats = org.stats().await;
    assert_eq!(stats["faults_injected"]["SERVER_UNAVAILABLE"], 3);
    assert_eq!(stats["faults_injected"]["UNABLE_TO_LOCK_ROW"], 2);
    // Bad fault bodies are refused clearly.
    let r = org
        .admin(
            Method::POST,
            "/faults",
            Some(json!({"error_rates": {"X": 2.0}})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = org
        .admin(Method::POST, "/faults", Some(json!({"nope": 1})))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body[0]["message"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn outage_answers_503_everywhere_until_lifted() {
    let org = Org::start().await;
    org.faults(json!({"outage": true})).await;
    assert_eq!(org.get("/limits").await.status, 503);
    assert_eq!(org.token_request(&password_form()).await.status, 503);
    let r = to_resp(
        org.http
            .get(format!("{}/services/data/", org.base()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    org.faults(json!({"outage": false})).await;
    assert_eq!(org.get("/limits").await.status, 200);
}

#[tokio::test]
async fn daily_limit_exhaustion_gives_request_limit_exceeded() {
    let org = Org::start().await;
    org.faults(json!({"daily_limit_remaining": 2})).await;
    assert_eq!(
        org.get("/limits").await.body["DailyApiRequests"]["Remaining"],
        1
    );
    assert_eq!(org.get("/limits").await.status, 200);
    let r = org.get("/limits").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body,
        json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    );
    assert_eq!(r.headers["sforce-limit-info"], "api-usage=15000/15000");
    assert_eq!(org.stats().await["rejected"]["REQUEST_LIMIT_EXCEEDED"], 1);
}

#[tokio::test]
async fn locked_records_fail_writes_with_unable_to_lock_row() {
    let org = Org::start().await;
    let a = org.account("A", "C-1").await;
    org.account("B", "C-2").await;
    org.faults(json!({"lock_records": [{"key": "C-1", "times": 2}, {"key": a.clone()}]}))
        .await;
    // Rule 1 matches by external id twice, then rule 2 (by Id, unlimited) keeps it locked.
    for _ in 0..3 {
        let r = org
            .patch(&format!("/sobjects/Account/{a}"), json!({"Phone": "1"}))
            .await;
        assert_eq!((r.status, error_code(&r.body)), (400, "UNABLE_TO_LOCK_ROW"));
    }
    // Children of a locked parent cannot be inserted; other records are unaffected.
    let r = org
        .post(
            "/sobjects/Contact",
            json!({"LastName": "x", "AccountId": a}),
        )
        .await;
    assert_eq!(error_code(&r.body), "UNABLE_TO_LOCK_ROW");
    // In Collections the lock is per record.
    let r = org
        .patch(
            "/composite/sobjects/Account/External_Id__c",
            json!({"records": [
                {"attributes": {"type": "Account"}, "External_Id__c": "C-1", "Name": "A2"},
                {"attributes": {"type": "Account"}, "External_Id__c": "C-2", "Name": "B2"}
            ]}),
        )
        .await;
    assert_eq!(r.body[0]["errors"][0]["statusCode"], "UNABLE_TO_LOCK_ROW");
    assert_eq!(r.body[1]["success"], true);
    org.admin(Method::DELETE, "/faults", None).await;
    assert_eq!(
        org.patch(&format!("/sobjects/Account/{a}"), json!({"Phone": "1"}))
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn reset_and_seed() {
    let org = Org::start().await;
    org.account("A", "C-1").await;
    org.faults(json!({"outage": true})).await;
    let r = org.admin(Method::POST, "/reset", None).await;
    assert_eq!(r.status, 200);
    let stats = org.stats().await;
    assert_eq!(stats["records"]["Account"], 0);
    assert_eq!(
        stats["records"]["Pricebook2"], 1,
        "the standard price book is back"
    );
    assert_eq!(stats["api_calls_total"], 0);
    // Sessions survive a reset; faults do not.
    assert_eq!(org.get("/limits").await.status, 200);

    let seed = json!({
        "pricebooks": [{"Name": "EU"}],
        "products": [{"Name": "Widget", "ProductCode": "W-1", "prices": {"EU": 12}}],
        "records": {"Account": [{"Name": "Seeded", "External_Id__c": "S-1"}]}
    });
    let r = org.admin(Method::POST, "/seed", Some(seed)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let entries = &r.body["products"]["W-1"]["entries"];
    assert!(entries["EU"].is_string());
    assert!(
        entries["Standard Price Book"].is_string(),
        "standard price added automatically: {entries}"
    );
    let q = org
        .query("SELECT UnitPrice, Pricebook2.Name FROM PricebookEntry ORDER BY UnitPrice")
        .await;
    assert_eq!(q.body["totalSize"], 2);
    assert_eq!(
        org.get("/sobjects/Account/External_Id__c/S-1").await.status,
        200
    );
    // A failing seed applies nothing and says where it failed.
    let r = org
        .admin(
            Method::POST,
            "/seed",
            Some(json!({"pricebooks": [{"Name": "Ok"}], "products": [{"ProductCode": "no-name"}]})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("products[0]"),
        "{}",
        r.body
    );
    assert_eq!(org.stats().await["records"]["Pricebook2"], 2);
    let r = org
        .admin(Method::POST, "/seed", Some(json!({"bogus": []})))
        .await;
    assert_eq!(r.status, 400);
}

/// A web page in a developer's browser can post a form, `text/plain` or an empty body to
/// 127.0.0.1 without a CORS preflight: none of those may change the emulator.
#[tokio::test]
async fn admin_writes_are_json_only() {
    let org = Org::start().await;
    let url = |p: &str| format!("{}/__admin{p}", org.base());
    let attempts = [
        org.http
            .post(url("/faults"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("outage=true"),
        org.http
            .post(url("/faults"))
            .header("content-type", "text/plain")
            .body(r#"{"outage":true}"#),
        org.http
            .post(url("/faults"))
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x--"),
        org.http.post(url("/faults")).body(r#"{"outage":true}"#),
        org.http.post(url("/reset")),
    ];
    org.account("A", "C-1").await;
    for req in attempts {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], "UNSUPPORTED_MEDIA_TYPE", "{body}");
    }
    // Nothing changed: no outage, the record is still there.
    assert_eq!(org.get("/limits").await.status, 200);
    assert_eq!(org.stats().await["records"]["Account"], 1);
    // JSON (with a charset parameter) is accepted.
    let r = org
        .http
        .post(url("/faults"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"latency_ms":0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_admin_token_guards_every_admin_request() {
    let config = EmulatorConfig {
        admin_token: Some(secrecy::SecretString::from("s3cret-admin")),
        ..EmulatorConfig::ephemeral()
    };
    let org = Org::start_with(config).await;
    let stats = format!("{}/__admin/stats", org.base());
    for auth in [None, Some("Bearer wrong"), Some("s3cret-admin")] {
        let mut req = org.http.get(&stats);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
    }
    let r = org
        .http
        .get(&stats)
        .bearer_auth("s3cret-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = org
        .http
        .post(format!("{}/__admin/faults", org.base()))
        .json(&json!({"outage": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a JSON write without the token");
    // The Salesforce API itself is not affected by the admin token.
    assert_eq!(org.get("/limits").await.status, 200);
}
