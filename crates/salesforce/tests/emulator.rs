//! The client against the real emulator (`sf-emulator`, in-process on port 0): every flow and
//! operation, single-flight re-login, error classes from real faults, chunking, paging, limits.
//! The emulator is driven through its public admin API (`/__admin/…`), as a user would.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use orderbridge_salesforce::{
    AuthFlowKind, Client, Composite, Error, ErrorClass, SalesforceConfig, SubrequestOutcome,
};
use serde_json::{Value, json};
use sf_emulator::{EmulatorConfig, RunningEmulator};

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An emulator with its own default dev credentials (and accepting JWTs signed with the test
/// key), plus the client's default settings pointing at it: the defaults of the two must match,
/// so nothing needs setting locally.
async fn start_with(config: EmulatorConfig) -> (RunningEmulator, SalesforceConfig) {
    let dev = SalesforceConfig::default();
    let emulator = sf_emulator::spawn(EmulatorConfig {
        jwt_public_key_file: Some(fixture_path("jwt_test_cert.pem")),
        ..config
    })
    .await
    .unwrap();
    let client = SalesforceConfig {
        login_url: emulator.base_url.clone(),
        request_timeout: Duration::from_secs(10),
        ..dev
    };
    (emulator, client)
}

async fn start() -> (RunningEmulator, SalesforceConfig) {
    start_with(EmulatorConfig::ephemeral()).await
}

async fn admin(emulator: &RunningEmulator, method: &str, path: &str, body: Option<Value>) -> Value {
    let http = reqwest::Client::new();
    let url = format!("{}/__admin/{path}", emulator.base_url);
    let request = match method {
        "GET" => http.get(url),
        _ => http.post(url).json(&body.unwrap_or(json!({}))),
    };
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "admin {path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn stats(emulator: &RunningEmulator) -> Value {
    admin(emulator, "GET", "stats", None).await
}

async fn faults(emulator: &RunningEmulator, patch: Value) {
    admin(emulator, "POST", "faults", Some(patch)).await;
}

#[tokio::test]
async fn every_flow_logs_in_and_calls_the_api() {
    let (emulator, dev) = start().await;
    let flows = [
        SalesforceConfig {
            auth_flow: AuthFlowKind::Password,
            ..dev.clone()
        },
        SalesforceConfig {
            auth_flow: AuthFlowKind::ClientCredentials,
            ..dev.clone()
        },
        SalesforceConfig {
            auth_flow: AuthFlowKind::Jwt,
            private_key_file: Some(fixture_path("jwt_test_key.pem")),
            ..dev.clone()
        },
        SalesforceConfig {
            auth_flow: AuthFlowKind::RefreshToken,
            refresh_token: Some(sf_emulator::config::DEV_REFRESH_TOKEN.into()),
            ..dev.clone()
        },
    ];
    for config in flows {
        let client = Client::new(&config).unwrap();
        let instance = client.login().await.unwrap();
        assert_eq!(instance.as_str().trim_end_matches('/'), emulator.base_url);
        let limits = client.limits().await.unwrap();
        assert!(
            limits.get("DailyApiRequests").is_some(),
            "{:?}",
            config.auth_flow
        );
        let versions = client.versions().await.unwrap();
        assert!(versions.iter().any(|v| v.version == "62.0"));
    }
    let tokens = &stats(&emulator).await["token_requests"];
    for grant in [
        "password",
        "client_credentials",
        "jwt_bearer",
        "refresh_token",
    ] {
        assert_eq!(tokens[grant], 1, "{grant}: {tokens}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_reported_with_what_to_fix() {
    let (_emulator, dev) = start().await;
    let wrong_password = SalesforceConfig {
        security_token: "stale".into(),
        ..dev.clone()
    };
    let e = Client::new(&wrong_password)
        .unwrap()
        .login()
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config);
    let msg = e.to_string();
    assert!(
        msg.contains("invalid_grant")
            && msg.contains("security token")
            && msg.contains("SF_AUTH_FLOW=jwt"),
        "{msg}"
    );

    let wrong_client = SalesforceConfig {
        client_id: "nope".into(),
        ..dev.clone()
    };
    let e = Client::new(&wrong_client)
        .unwrap()
        .login()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Auth(a) if a.oauth_error() == Some("invalid_client_id")),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Config);

    let wrong_secret = SalesforceConfig {
        auth_flow: AuthFlowKind::ClientCredentials,
        client_secret: "nope".into(),
        ..dev.clone()
    };
    let e = Client::new(&wrong_secret)
        .unwrap()
        .login()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Auth(a) if a.oauth_error() == Some("invalid_client")),
        "{e}"
    );

    // A key whose certificate the org does not have: the signature does not verify.
    let jwt = SalesforceConfig {
        auth_flow: AuthFlowKind::Jwt,
        private_key_file: Some(fixture_path("jwt_other_key.pem")),
        ..dev.clone()
    };
    let e = Client::new(&jwt).unwrap().login().await.unwrap_err();
    assert!(e.to_string().contains("certificate uploaded"), "{e}");
    assert_eq!(e.class(), ErrorClass::Config);

    let refresh = SalesforceConfig {
        auth_flow: AuthFlowKind::RefreshToken,
        refresh_token: Some("revoked".into()),
        ..dev
    };
    let e = Client::new(&refresh).unwrap().login().await.unwrap_err();
    assert!(e.to_string().contains("new SF_REFRESH_TOKEN"), "{e}");
}

#[tokio::test]
async fn crud_upsert_and_external_id_relationships() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();

    let id = client
        .create("Account", &json!({"Name": "Acme", "External_Id__c": "C-1"}))
        .await
        .unwrap();
    assert!(id.starts_with("001") && id.len() == 18, "{id}");
    let account: Value = client
        .get("Account", &id, &["Name", "External_Id__c"])
        .await
        .unwrap();
    assert_eq!(account["Name"], "Acme");
    client
        .update("Account", &id, &json!({"Name": "Acme Ltd"}))
        .await
        .unwrap();
    let account: Value = client
        .get_by_external_id("Account", "External_Id__c", "C-1", &[])
        .await
        .unwrap();
    assert_eq!(
        (account["Id"].as_str(), account["Name"].as_str()),
        (Some(id.as_str()), Some("Acme Ltd"))
    );

    let created = client
        .upsert("Account", "External_Id__c", "C-2", &json!({"Name": "Beta"}))
        .await
        .unwrap();
    assert!(created.created && created.id.is_some());
    let updated = client
        .upsert(
            "Account",
            "External_Id__c",
            "C-2",
            &json!({"Name": "Beta 2"}),
        )
        .await
        .unwrap();
    assert!(!updated.created);
    assert_eq!(updated.id, created.id);
    let e = client
        .update_by_external_id("Account", "External_Id__c", "C-404", &json!({"Name": "x"}))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");

    // An Order linked to its Account by external id, no lookup query.
    let order = client
        .upsert(
            "Order",
            "External_Id__c",
            "O-1",
            &json!({"Account": {"External_Id__c": "C-1"}, "EffectiveDate": "2026-11-24", "Status": "Draft"}),
        )
        .await
        .unwrap();
    let order_id = order.id.unwrap();
    assert!(order_id.starts_with("801"));
    let stored: Value = client
        .get("Order", &order_id, &["AccountId"])
        .await
        .unwrap();
    assert_eq!(stored["AccountId"], id.as_str());

    client.delete("Order", &order_id).await.unwrap();
    let e = client
        .get::<Value>("Order", &order_id, &[])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    let records = admin(&emulator, "GET", "records/Account", None).await;
    assert_eq!(records["totalSize"], 2);
}

#[tokio::test]
async fn several_external_id_matches_are_an_error() {
    // A schema where Contact.External_Id__c is an external id without the unique flag.
    let schema: Value = serde_json::from_str(sf_emulator::schema::DEFAULT_SCHEMA_JSON).unwrap();
    let mut schema = schema;
    for object in schema["objects"].as_array_mut().unwrap() {
        if object["name"] == "Contact" {
            for field in object["fields"].as_array_mut().unwrap() {
                if field["name"] == "External_Id__c" {
                    field["unique"] = false.into();
                }
            }
        }
    }
    let path = std::env::temp_dir().join(format!("sf-client-schema-{}.json", std::process::id()));
    std::fs::write(&path, schema.to_string()).unwrap();
    let (_emulator, dev) = start_with(EmulatorConfig {
        schema_file: Some(path),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let client = Client::new(&dev).unwrap();
    for _ in 0..2 {
        client
            .create(
                "Contact",
                &json!({"LastName": "Twin", "External_Id__c": "K-1"}),
            )
            .await
            .unwrap();
    }
    match client
        .upsert(
            "Contact",
            "External_Id__c",
            "K-1",
            &json!({"LastName": "Which"}),
        )
        .await
        .unwrap_err()
    {
        Error::MultipleMatches { urls, .. } => assert_eq!(urls.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn error_classes_from_the_emulator() {
    let (emulator, dev) = start().await;
    let client = Client::new(&SalesforceConfig {
        max_api_usage_share: 1.0,
        ..dev
    })
    .unwrap();
    let code_and_class = |e: &Error| (e.codes().first().map(|c| (*c).to_owned()), e.class());

    let e = client
        .create("Account", &json!({"Phone": "1"}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_class(&e),
        (Some("REQUIRED_FIELD_MISSING".into()), ErrorClass::Permanent),
        "{e}"
    );
    let e = client
        .create("Account", &json!({"Name": "x", "Bogus__c": 1}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_class(&e),
        (Some("INVALID_FIELD".into()), ErrorClass::Permanent),
        "{e}"
    );
    let e = client
        .get::<Value>("Account", "not-an-id", &[])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    client
        .create("Account", &json!({"Name": "a", "External_Id__c": "D-1"}))
        .await
        .unwrap();
    let e = client
        .create("Account", &json!({"Name": "b", "External_Id__c": "D-1"}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_class(&e),
        (Some("DUPLICATE_VALUE".into()), ErrorClass::Permanent),
        "{e}"
    );
    let e = client
        .create("Order", &json!({"Account": {"External_Id__c": "D-1"}, "EffectiveDate": "2026-11-24", "Status": "Bogus"}))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");

    // A locked row: retryable, and the retry succeeds once the lock is gone.
    faults(
        &emulator,
        json!({"lock_records": [{"key": "D-1", "times": 1}]}),
    )
    .await;
    let e = client
        .upsert("Account", "External_Id__c", "D-1", &json!({"Name": "c"}))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_class(&e),
        (Some("UNABLE_TO_LOCK_ROW".into()), ErrorClass::Retryable),
        "{e}"
    );
    client
        .upsert("Account", "External_Id__c", "D-1", &json!({"Name": "c"}))
        .await
        .unwrap();

    // Outage: 503 SERVER_UNAVAILABLE, retryable.
    faults(&emulator, json!({"outage": true})).await;
    let e = client
        .get::<Value>("Account", "001000000000000AAA", &[])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(matches!(e, Error::Api { status: 503, .. }), "{e:?}");
    faults(&emulator, json!({"outage": false})).await;

    // Daily allocation used up: REQUEST_LIMIT_EXCEEDED, rate-limited.
    faults(&emulator, json!({"daily_limit_remaining": 0})).await;
    let e = client.limits().await.unwrap_err();
    assert_eq!(
        code_and_class(&e),
        (
            Some("REQUEST_LIMIT_EXCEEDED".into()),
            ErrorClass::RateLimited
        ),
        "{e}"
    );
    faults(&emulator, json!({"daily_limit_remaining": 10000})).await;

    // Injected server errors by code.
    faults(&emulator, json!({"fail_next": {"SERVER_UNAVAILABLE": 1}})).await;
    let e = client.limits().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    client.limits().await.unwrap();

    // Latency beyond the request timeout: a timeout, retryable, for data calls and logins.
    let impatient = client_with_short_timeout(&emulator);
    impatient.login().await.unwrap();
    faults(&emulator, json!({"latency_ms": 2500})).await;
    let e = impatient.limits().await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);
    let e = client_with_short_timeout(&emulator)
        .login()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);
}

fn client_with_short_timeout(emulator: &RunningEmulator) -> Client {
    Client::new(&SalesforceConfig {
        login_url: emulator.base_url.clone(),
        request_timeout: Duration::from_secs(1),
        ..SalesforceConfig::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_sessions_are_renewed_once_for_concurrent_requests() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();
    let id = client
        .create("Account", &json!({"Name": "Shared"}))
        .await
        .unwrap();
    faults(&emulator, json!({"expire_sessions": true})).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let client = client.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            client.get::<Value>("Account", &id, &["Name"]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap()["Name"], "Shared");
    }
    let stats = stats(&emulator).await;
    assert_eq!(
        stats["token_requests"]["password"], 2,
        "one login, one re-login: {stats}"
    );
    assert!(stats["rejected"]["INVALID_SESSION_ID"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn collections_chunk_at_200_with_per_record_results() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();
    let before = stats(&emulator).await["api_calls_total"].as_u64().unwrap();
    let records: Vec<Value> = (0..450)
        .map(|n| json!({"Name": format!("Bulk {n}"), "External_Id__c": format!("B-{n}")}))
        .collect();
    let results = client
        .upsert_records("Account", "External_Id__c", &records, false)
        .await
        .unwrap();
    assert_eq!(results.len(), 450);
    assert!(results.iter().all(|r| r.success && r.created == Some(true)));
    let after = stats(&emulator).await["api_calls_total"].as_u64().unwrap();
    assert_eq!(after - before, 3, "450 records in 3 API calls");

    // Again: all updates; one record invalid, one locked.
    let mut again = records.clone();
    again[5]["Name"] = Value::Null;
    faults(&emulator, json!({"lock_records": [{"key": "B-300"}]})).await;
    let results = client
        .upsert_records("Account", "External_Id__c", &again, false)
        .await
        .unwrap();
    assert_eq!(results[0].created, Some(false));
    assert_eq!(
        results[5].error_class(),
        Some(ErrorClass::Permanent),
        "{:?}",
        results[5]
    );
    assert_eq!(results[5].errors[0].code, "REQUIRED_FIELD_MISSING");
    assert_eq!(
        results[300].error_class(),
        Some(ErrorClass::Retryable),
        "{:?}",
        results[300]
    );
    assert_eq!(results[300].errors[0].code, "UNABLE_TO_LOCK_ROW");
    assert_eq!(results.iter().filter(|r| r.success).count(), 448);
    faults(&emulator, json!({"clear": true})).await;

    // Create and update collections.
    let contacts: Vec<Value> = (0..250)
        .map(|n| json!({"LastName": format!("C{n}")}))
        .collect();
    let created = client
        .create_records("Contact", &contacts, true)
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.success));
    let updates: Vec<Value> = created
        .iter()
        .map(|r| json!({"Id": r.id.clone().unwrap(), "FirstName": "Ada"}))
        .collect();
    let updated = client
        .update_records("Contact", &updates, false)
        .await
        .unwrap();
    assert!(updated.iter().all(|r| r.success));
    let contact: Value = client
        .get("Contact", created[249].id.as_ref().unwrap(), &["FirstName"])
        .await
        .unwrap();
    assert_eq!(contact["FirstName"], "Ada");
}

#[tokio::test]
async fn query_pages_through_next_records_url() {
    let (_emulator, dev) = start().await;
    let client = Client::new(&SalesforceConfig {
        query_batch_size: Some(200),
        ..dev
    })
    .unwrap();
    let records: Vec<Value> = (0..450)
        .map(|n| json!({"Name": format!("Q {n:03}"), "External_Id__c": format!("Q-{n}")}))
        .collect();
    client
        .upsert_records("Account", "External_Id__c", &records, false)
        .await
        .unwrap();
    let soql = "SELECT Id, Name FROM Account WHERE Name != 'nobody' ORDER BY Name";
    let first = client.query::<Value>(soql).await.unwrap();
    assert_eq!(
        (first.total_size, first.done, first.records.len()),
        (450, false, 200)
    );
    assert!(first.next_records_url.is_some());
    let all: Vec<Value> = client.query_collect(soql).await.unwrap();
    assert_eq!(all.len(), 450);
    assert_eq!(all[0]["Name"], "Q 000");
    assert_eq!(all[449]["Name"], "Q 449");
    let e = client.query::<Value>("SELEKT nonsense").await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
}

#[tokio::test]
async fn composite_is_one_call_with_typed_results() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();
    client
        .create("Account", &json!({"Name": "Pre", "External_Id__c": "P-0"}))
        .await
        .unwrap();
    let before = stats(&emulator).await["api_calls_total"].as_u64().unwrap();

    let mut c = Composite::new().all_or_none(false);
    let acct = c
        .upsert(
            "acct",
            "Account",
            "External_Id__c",
            "P-1",
            json!({"Name": "Composite Co"}),
        )
        .unwrap();
    c.create(
        "order",
        "Order",
        json!({"AccountId": acct.id(), "EffectiveDate": "2026-11-24", "Status": "Draft"}),
    )
    .unwrap();
    c.upsert_collection(
        "contacts",
        "Contact",
        "External_Id__c",
        &[
            json!({"LastName": "One", "External_Id__c": "K-1"}),
            json!({"External_Id__c": "K-2"}),
        ],
        false,
    )
    .unwrap();
    c.query(
        "check",
        "SELECT Id, Name FROM Account WHERE External_Id__c = 'P-0'",
    )
    .unwrap();
    c.get("read", "Account", &acct.id(), &["Name"]).unwrap();
    c.update(
        "rename",
        "Account",
        &acct.id(),
        json!({"Name": "Renamed Co"}),
    )
    .unwrap();
    c.create("bad", "Account", json!({"Phone": "no name"}))
        .unwrap();
    let response = client.composite(&c).await.unwrap();
    let after = stats(&emulator).await["api_calls_total"].as_u64().unwrap();
    assert_eq!(after - before, 1, "a composite is one API call");

    let SubrequestOutcome::Upserted {
        id: Some(acct_id),
        created: true,
    } = &response.get("acct").unwrap().outcome
    else {
        panic!("{:?}", response.get("acct"))
    };
    let SubrequestOutcome::Created { id: order_id } = &response.get("order").unwrap().outcome
    else {
        panic!("{:?}", response.get("order"))
    };
    let order: Value = client.get("Order", order_id, &["AccountId"]).await.unwrap();
    assert_eq!(&order["AccountId"], acct_id.as_str());
    let SubrequestOutcome::Collection(contacts) = &response.get("contacts").unwrap().outcome else {
        panic!()
    };
    assert!(contacts[0].success && !contacts[1].success);
    let SubrequestOutcome::Query(q) = &response.get("check").unwrap().outcome else {
        panic!()
    };
    assert_eq!(q.records[0]["Name"], "Pre");
    let SubrequestOutcome::Record(read) = &response.get("read").unwrap().outcome else {
        panic!()
    };
    assert_eq!(read["Name"], "Composite Co");
    assert_eq!(
        response.get("rename").unwrap().outcome,
        SubrequestOutcome::Done
    );
    match &response.get("bad").unwrap().outcome {
        SubrequestOutcome::Failed { errors, class, .. } => {
            assert_eq!(errors[0].code, "REQUIRED_FIELD_MISSING");
            assert_eq!(*class, ErrorClass::Permanent);
        }
        other => panic!("{other:?}"),
    }
    assert!(!response.all_succeeded());
}

#[tokio::test]
async fn limit_header_usage_and_the_share_guard() {
    let (emulator, dev) = start().await;
    let client = Client::new(&SalesforceConfig {
        max_api_usage_share: 0.9,
        ..dev
    })
    .unwrap();
    client.limits().await.unwrap();
    for _ in 0..3 {
        client
            .query::<Value>("SELECT Id FROM Account")
            .await
            .unwrap();
    }
    let usage = client.usage().unwrap();
    let stats_usage = &stats(&emulator).await["api_usage"];
    assert_eq!(usage.used, stats_usage["used"].as_u64().unwrap());
    assert_eq!(usage.max, 15_000);
    let limits = client.limits().await.unwrap();
    let daily = limits.get("DailyApiRequests").unwrap();
    assert_eq!(daily.max, 15_000);

    // 14,900 of 15,000 used: the next call still goes (and reports it); then the guard refuses.
    faults(&emulator, json!({"daily_limit_remaining": 100})).await;
    client
        .query::<Value>("SELECT Id FROM Account")
        .await
        .unwrap();
    assert!(client.usage().unwrap().share() > 0.9);
    let calls = stats(&emulator).await["api_calls_total"].as_u64().unwrap();
    let e = client
        .query::<Value>("SELECT Id FROM Account")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UsageShareExceeded { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(
        stats(&emulator).await["api_calls_total"].as_u64().unwrap(),
        calls,
        "nothing was sent"
    );
}

#[tokio::test]
async fn platform_events_publish() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();
    let r = client
        .publish_event(
            "Order_Status__e",
            &json!({"Order_Id__c": "O-1", "Status__c": "Activated"}),
        )
        .await
        .unwrap();
    assert!(r.id.is_some());
    assert!(r.notices.iter().all(|n| n.code == "OPERATION_ENQUEUED"));
    let events = admin(&emulator, "GET", "records/Order_Status__e", None).await;
    assert_eq!(events["totalSize"], 1);
    // Every call carried the client name.
    assert!(client.usage().is_some());
}

#[tokio::test]
async fn https_emulator_with_its_self_signed_ca() {
    let ca = std::env::temp_dir().join(format!("sf-client-emulator-ca-{}.pem", std::process::id()));
    let (emulator, dev) = start_with(EmulatorConfig {
        tls_self_signed: true,
        tls_ca_out: Some(ca.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    assert!(
        emulator.base_url.starts_with("https://"),
        "{}",
        emulator.base_url
    );
    // Without the CA the certificate is refused, with a hint naming the setting.
    let e = Client::new(&dev).unwrap().login().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("SF_CA_CERT_FILE"), "{e}");

    let client = Client::new(&SalesforceConfig {
        ca_cert_file: Some(ca),
        ..dev
    })
    .unwrap();
    let r = client
        .upsert(
            "Account",
            "External_Id__c",
            "TLS-1",
            &json!({"Name": "Secure"}),
        )
        .await
        .unwrap();
    assert!(r.created);
    assert!(
        client
            .instance_url()
            .unwrap()
            .as_str()
            .starts_with("https://")
    );
}

#[tokio::test]
async fn logout_revokes_the_token_and_the_next_call_logs_in_again() {
    let (emulator, dev) = start().await;
    let client = Client::new(&dev).unwrap();
    client.limits().await.unwrap();
    assert_eq!(stats(&emulator).await["sessions"], 1);
    client.logout().await.unwrap();
    assert_eq!(stats(&emulator).await["sessions"], 0);
    // Logging out twice is harmless; the next call logs in afresh.
    client.logout().await.unwrap();
    client.limits().await.unwrap();
    let stats = stats(&emulator).await;
    assert_eq!(stats["token_requests"]["password"], 2, "{stats}");
    assert_eq!(
        stats["rejected"]["INVALID_SESSION_ID"],
        Value::Null,
        "no call used the revoked token"
    );
}
