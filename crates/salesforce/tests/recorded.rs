//! The client against recorded Salesforce responses (tests/fixtures, shapes from the reference),
//! served by a small in-test HTTP server. Covers the UNCONFIRMED alternatives (200/204 on upsert,
//! array/object errors, OPERATION_ENQUEUED), every auth flow and error class, single-flight
//! re-login, chunking, paging, limits and the usage guard.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orderbridge_salesforce::{
    AuthFlowKind, Client, Composite, Error, ErrorClass, JwtClaims, SalesforceConfig,
    SubrequestOutcome, UsagePolicy,
};
use serde_json::{Value, json};
use support::{FixtureServer, Reply, fixture, fixture_path};

fn not_found(_: &support::Recorded) -> Reply {
    Reply::fixture(404, "error_not_found.json")
}

#[tokio::test]
async fn password_flow_logs_in_and_uses_instance_url_version_and_call_options() {
    let server = FixtureServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/services/data/v62.0/sobjects/Account/") => {
            Reply::fixture(201, "create_success.json")
        }
        _ => not_found(r),
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let id = client
        .create("Account", &json!({"Name": "Acme"}))
        .await
        .unwrap();
    assert_eq!(id, "0015g00000XyZabAAB");

    let forms = server.token_forms();
    assert_eq!(forms.len(), 1);
    let form = &forms[0];
    assert_eq!(form["grant_type"], "password");
    assert_eq!(form["client_id"], "orderbridge-dev-client-id");
    assert_eq!(form["client_secret"], "orderbridge-dev-client-secret");
    assert_eq!(form["username"], "integration@orderbridge.dev");
    // The security token is appended to the password.
    assert_eq!(
        form["password"],
        "orderbridge-dev-passwordorderbridgedevtoken"
    );

    let call = &server.calls()[0];
    assert_eq!(call.headers["sforce-call-options"], "client=orderbridge");
    assert!(call.headers["authorization"].starts_with("Bearer 00Dxx"));
    assert_eq!(call.body, json!({"Name": "Acme"}));
    assert_eq!(
        client
            .instance_url()
            .unwrap()
            .as_str()
            .trim_end_matches('/'),
        server.url
    );
    assert_eq!(
        client.identity_url().unwrap(),
        "https://login.salesforce.com/id/00D5g000004ABCDEAA/0055g00000ABCDEAAA"
    );
    assert_eq!(client.issued_at_ms(), Some(1278448832702));
}

#[tokio::test]
async fn jwt_bearer_assertion_is_rs256_with_the_right_claims() {
    let server = FixtureServer::start(|r| match r.path.as_str() {
        "/services/data/v62.0/limits" => Reply::fixture(200, "limits.json"),
        _ => not_found(r),
    })
    .await;
    let config = SalesforceConfig {
        auth_flow: AuthFlowKind::Jwt,
        client_id: "3MVG9-consumer-key".into(),
        username: "integration@example.com".into(),
        private_key_file: Some(fixture_path("jwt_test_key.pem")),
        ..server.config()
    };
    let client = Client::new(&config).unwrap();
    client.limits().await.unwrap();

    let form = &server.token_forms()[0];
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert!(!form.contains_key("client_secret") && !form.contains_key("password"));
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(fixture("jwt_test_key.pub.pem").as_bytes())
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[server.url.as_str()]);
    let token = jsonwebtoken::decode::<JwtClaims>(&form["assertion"], &key, &validation).unwrap();
    assert_eq!(token.header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(token.claims.iss, "3MVG9-consumer-key");
    assert_eq!(token.claims.sub, "integration@example.com");
    assert_eq!(token.claims.aud, server.url);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        token.claims.exp > now && token.claims.exp <= now + 180,
        "short expiry"
    );

    // An explicit audience (My Domain login URL, production audience) wins.
    let config = SalesforceConfig {
        jwt_audience: Some("https://login.salesforce.com".into()),
        ..config
    };
    Client::new(&config).unwrap().limits().await.unwrap();
    let assertion = &server.token_forms()[1]["assertion"];
    validation.set_audience(&["https://login.salesforce.com"]);
    assert!(jsonwebtoken::decode::<JwtClaims>(assertion, &key, &validation).is_ok());
}

#[tokio::test]
async fn client_credentials_and_refresh_token_flows_send_their_fields() {
    let server = FixtureServer::start(|r| match r.path.as_str() {
        "/services/data/v62.0/limits" => Reply::fixture(200, "limits.json"),
        _ => not_found(r),
    })
    .await;
    let config = SalesforceConfig {
        auth_flow: AuthFlowKind::ClientCredentials,
        ..server.config()
    };
    Client::new(&config).unwrap().limits().await.unwrap();
    let form = &server.token_forms()[0];
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], "orderbridge-dev-client-id");
    assert_eq!(form["client_secret"], "orderbridge-dev-client-secret");
    assert!(!form.contains_key("username"));

    let config = SalesforceConfig {
        auth_flow: AuthFlowKind::RefreshToken,
        refresh_token: Some("5Aep861-refresh".into()),
        ..server.config()
    };
    Client::new(&config).unwrap().limits().await.unwrap();
    let form = &server.token_forms()[1];
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], "5Aep861-refresh");
    assert_eq!(form["client_id"], "orderbridge-dev-client-id");
    assert_eq!(form["client_secret"], "orderbridge-dev-client-secret");

    // Missing settings are reported before any network call.
    let missing = SalesforceConfig {
        auth_flow: AuthFlowKind::RefreshToken,
        ..server.config()
    };
    let e = Client::new(&missing).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(e.to_string().contains("SF_REFRESH_TOKEN"), "{e}");
    let missing = SalesforceConfig {
        auth_flow: AuthFlowKind::Jwt,
        ..server.config()
    };
    assert!(
        Client::new(&missing)
            .unwrap_err()
            .to_string()
            .contains("SF_PRIVATE_KEY_FILE")
    );
    let bad_key = SalesforceConfig {
        auth_flow: AuthFlowKind::Jwt,
        private_key_file: Some(fixture_path("jwt_test_cert.pem")),
        ..server.config()
    };
    let e = Client::new(&bad_key).unwrap_err();
    assert!(e.to_string().contains("not a PEM RSA private key"), "{e}");
}

/// Logs in with the given flow against a token endpoint answering `reply`.
async fn login_error(flow: AuthFlowKind, reply: Reply) -> Error {
    let server = FixtureServer::start(not_found).await;
    server.set_token_reply(Some(reply));
    let config = SalesforceConfig {
        auth_flow: flow,
        private_key_file: Some(fixture_path("jwt_test_key.pem")),
        refresh_token: Some("5Aep861-refresh".into()),
        ..server.config()
    };
    Client::new(&config).unwrap().login().await.unwrap_err()
}

#[tokio::test]
async fn auth_errors_say_what_to_fix() {
    let e = login_error(
        AuthFlowKind::Password,
        Reply::fixture(400, "token_invalid_grant.json"),
    )
    .await;
    let msg = e.to_string();
    assert_eq!(e.class(), ErrorClass::Config);
    for needle in [
        "invalid_grant",
        "Summer '23",
        "security token",
        "IP",
        "SF_AUTH_FLOW=jwt",
        "client_credentials",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // Secrets never end up in the message.
    assert!(
        !msg.contains("orderbridge-dev-password")
            && !msg.contains("orderbridgedevtoken")
            && !msg.contains("dev-client-secret")
    );

    let e = login_error(
        AuthFlowKind::Jwt,
        Reply::fixture(400, "token_not_approved.json"),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::Config);
    assert!(e.to_string().contains("pre-authorized"), "{e}");
    let e = login_error(
        AuthFlowKind::Jwt,
        Reply::fixture(400, "token_audience.json"),
    )
    .await;
    assert!(e.to_string().contains("SF_JWT_AUDIENCE"), "{e}");

    let e = login_error(
        AuthFlowKind::ClientCredentials,
        Reply::fixture(400, "token_invalid_grant.json"),
    )
    .await;
    assert!(e.to_string().contains("Run As"), "{e}");
    let e = login_error(
        AuthFlowKind::RefreshToken,
        Reply::fixture(400, "token_expired_refresh.json"),
    )
    .await;
    assert!(e.to_string().contains("new SF_REFRESH_TOKEN"), "{e}");
    let e = login_error(
        AuthFlowKind::ClientCredentials,
        Reply::fixture(400, "token_invalid_client_id.json"),
    )
    .await;
    assert!(e.to_string().contains("consumer key"), "{e}");
    assert_eq!(e.class(), ErrorClass::Config);

    let e = login_error(
        AuthFlowKind::Password,
        Reply::fixture(400, "token_rate_limit.json"),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::RateLimited);
    let e = login_error(
        AuthFlowKind::Password,
        Reply::fixture(503, "error_html_503.html"),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    match &e {
        Error::Auth(a) => assert_eq!(a.oauth_error(), None),
        other => panic!("{other:?}"),
    }

    // Nothing listening: a connection error, retryable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = SalesforceConfig {
        login_url: url,
        ..SalesforceConfig::default()
    };
    let e = Client::new(&config).unwrap().login().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(e.to_string().contains("sf-emulator"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_session_is_refreshed_once_for_many_concurrent_requests() {
    let server = FixtureServer::start(|r| match r.path.as_str() {
        p if p.starts_with("/services/data/v62.0/sobjects/Account/") => {
            Reply::fixture(200, "account_get.json")
        }
        _ => not_found(r),
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    client.login().await.unwrap();
    assert_eq!(server.token_calls(), 1);
    server.expire_sessions();
    *server.state.token_delay.lock().unwrap() = Duration::from_millis(200);

    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get::<Value>("Account", &format!("0015g00000XyZ{i:03}AAB"), &[])
                .await
        }));
    }
    for task in tasks {
        let record = task.await.unwrap().unwrap();
        assert_eq!(record["Name"], "Acme");
    }
    assert_eq!(server.token_calls(), 2, "one re-login for all 40 requests");
    assert_eq!(client.logins(), 2);
    // Each request was answered once, with the new token; those that went out with the stale
    // one (normally all 40, fewer if a task started after the re-login) were replayed.
    let calls = server.calls();
    let stale = calls
        .iter()
        .filter(|c| c.headers["authorization"].ends_with("token-1"))
        .count();
    assert!((1..=40).contains(&stale), "{stale}");
    assert_eq!(calls.len(), 40 + stale);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.headers["authorization"].ends_with("token-2"))
            .count(),
        40
    );
}

#[tokio::test]
async fn a_session_refused_after_re_login_is_a_session_error_not_a_loop() {
    let server = FixtureServer::start(|_| Reply::fixture(200, "account_get.json")).await;
    server
        .state
        .reject_all_sessions
        .store(true, Ordering::SeqCst);
    let client = Client::new(&server.config()).unwrap();
    let e = client
        .get::<Value>("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Session);
    assert_eq!(e.codes(), ["INVALID_SESSION_ID"]);
    assert_eq!(
        server.token_calls(),
        2,
        "first login and exactly one re-login"
    );
    assert_eq!(server.calls().len(), 2, "the request is replayed once");
}

#[tokio::test]
async fn upsert_accepts_201_200_and_204_and_reports_300_and_404() {
    let server = FixtureServer::start(|r| {
        assert_eq!(r.method, "PATCH");
        match r.path.rsplit('/').next().unwrap() {
            "NEW" => Reply::fixture(201, "upsert_created.json"),
            "OLD" => Reply::fixture(200, "upsert_updated.json"),
            // API versions before 46 answer an update with 204 and no body.
            "OLD204" => Reply::empty(204),
            "DUP" => Reply::fixture(300, "upsert_multiple.json"),
            _ => not_found(r),
        }
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let body = json!({"Name": "Acme"});
    let r = client
        .upsert("Account", "External_Id__c", "NEW", &body)
        .await
        .unwrap();
    assert_eq!(
        (r.id.as_deref(), r.created),
        (Some("0015g00000XyZabAAB"), true)
    );
    let r = client
        .upsert("Account", "External_Id__c", "OLD", &body)
        .await
        .unwrap();
    assert_eq!(
        (r.id.as_deref(), r.created),
        (Some("0015g00000XyZabAAB"), false)
    );
    let r = client
        .upsert("Account", "External_Id__c", "OLD204", &body)
        .await
        .unwrap();
    assert_eq!((r.id, r.created), (None, false));

    match client
        .upsert("Account", "External_Id__c", "DUP", &body)
        .await
        .unwrap_err()
    {
        e @ Error::MultipleMatches { .. } => {
            assert_eq!(e.class(), ErrorClass::Permanent);
            let Error::MultipleMatches { urls, .. } = e else {
                unreachable!()
            };
            assert_eq!(urls.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let e = client
        .upsert("Account", "No_Such__c", "X", &body)
        .await
        .unwrap_err();
    assert_eq!(e.codes(), ["NOT_FOUND"]);
    assert_eq!(e.class(), ErrorClass::Permanent);

    // updateOnly and path encoding of awkward external ids.
    let _ = client
        .update_by_external_id("Account", "External_Id__c", "A/B C", &body)
        .await;
    let last = server.calls().pop().unwrap();
    assert_eq!(
        last.path,
        "/services/data/v62.0/sobjects/Account/External_Id__c/A%2FB%20C"
    );
    assert_eq!(last.query["updateOnly"], "true");
}

#[tokio::test]
async fn connections_are_reused_across_calls() {
    let server = FixtureServer::start(|_| Reply::fixture(200, "account_get.json")).await;
    let client = Client::new(&server.config()).unwrap();
    for _ in 0..20 {
        let _: Value = client
            .get("Account", "0015g00000XyZabAAB", &[])
            .await
            .unwrap();
    }
    // Login plus 20 calls over (at most) a couple of kept-alive connections, not 21.
    let connections = server.state.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "{connections} connections for 21 requests"
    );
}

#[tokio::test]
async fn https_with_an_extra_trusted_ca() {
    let server = FixtureServer::start_tls(|r| match r.path.as_str() {
        "/services/data/v62.0/limits" => Reply::fixture(200, "limits.json"),
        _ => not_found(r),
    })
    .await;
    assert!(server.url.starts_with("https://"));
    // The test CA is not a system root: the certificate is refused, a configuration error.
    let e = Client::new(&server.config())
        .unwrap()
        .login()
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Config, "{e}");
    assert!(e.to_string().contains("SF_CA_CERT_FILE"), "{e}");
    assert_eq!(server.token_calls(), 0);

    let trusted = SalesforceConfig {
        ca_cert_file: Some(fixture_path("tls_ca.pem")),
        ..server.config()
    };
    let client = Client::new(&trusted).unwrap();
    let limits = client.limits().await.unwrap();
    assert_eq!(limits.get("DailyApiRequests").unwrap().max, 15000);
    assert_eq!(server.token_calls(), 1);
    assert!(
        client
            .instance_url()
            .unwrap()
            .as_str()
            .starts_with("https://")
    );

    // A file with no certificate in it is a configuration error.
    let bad = SalesforceConfig {
        ca_cert_file: Some(fixture_path("limits.json")),
        ..server.config()
    };
    assert_eq!(Client::new(&bad).unwrap_err().class(), ErrorClass::Config);
}

#[tokio::test]
async fn crud_and_versions() {
    let server = FixtureServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/services/data/") => Reply::fixture(200, "versions.json"),
        ("GET", "/services/data/v62.0/sobjects/Account/0015g00000XyZabAAB") => {
            Reply::fixture(200, "account_get.json")
        }
        ("GET", "/services/data/v62.0/sobjects/Account/External_Id__c/CUST-42") => {
            Reply::fixture(200, "account_get.json")
        }
        ("PATCH" | "DELETE", "/services/data/v62.0/sobjects/Account/0015g00000XyZabAAB") => {
            Reply::empty(204)
        }
        _ => not_found(r),
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let versions = client.versions().await.unwrap();
    assert!(
        versions
            .iter()
            .any(|v| v.version == "62.0" && v.url == "/services/data/v62.0")
    );
    let record: Value = client
        .get("Account", "0015g00000XyZabAAB", &["Id", "Name"])
        .await
        .unwrap();
    assert_eq!(record["External_Id__c"], "CUST-42");
    assert_eq!(server.calls().last().unwrap().query["fields"], "Id,Name");
    let record: Value = client
        .get_by_external_id("Account", "External_Id__c", "CUST-42", &[])
        .await
        .unwrap();
    assert_eq!(record["Id"], "0015g00000XyZabAAB");
    client
        .update("Account", "0015g00000XyZabAAB", &json!({"Name": "Acme 2"}))
        .await
        .unwrap();
    client
        .delete("Account", "0015g00000XyZabAAB")
        .await
        .unwrap();
    let e = client
        .delete("Account", "0015g00000XyZzzAAB")
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(matches!(
        client.get::<Value>("Account", "", &[]).await,
        Err(Error::InvalidRequest(_))
    ));
}

/// Answers every REST call with one fixture, for the classification table below.
async fn error_for(reply: Reply) -> Error {
    let server = FixtureServer::start(move |_| reply.clone()).await;
    let config = SalesforceConfig {
        request_timeout: Duration::from_secs(1),
        ..server.config()
    };
    let client = Client::new(&config).unwrap();
    client
        .update(
            "Order",
            "8015g00000Ord01AAB",
            &json!({"Status": "Activated"}),
        )
        .await
        .unwrap_err()
}

#[tokio::test]
async fn every_error_class_from_error_bodies() {
    let table: &[(u16, &str, &str, ErrorClass)] = &[
        (
            400,
            "error_lock_row.json",
            "UNABLE_TO_LOCK_ROW",
            ErrorClass::Retryable,
        ),
        (
            503,
            "error_server_unavailable.json",
            "SERVER_UNAVAILABLE",
            ErrorClass::Retryable,
        ),
        (
            403,
            "error_request_limit.json",
            "REQUEST_LIMIT_EXCEEDED",
            ErrorClass::RateLimited,
        ),
        (
            400,
            "error_required_field.json",
            "REQUIRED_FIELD_MISSING",
            ErrorClass::Permanent,
        ),
        (
            400,
            "error_invalid_field.json",
            "INVALID_FIELD",
            ErrorClass::Permanent,
        ),
        (
            400,
            "error_duplicate_value.json",
            "DUPLICATE_VALUE",
            ErrorClass::Permanent,
        ),
        (
            400,
            "error_custom_validation.json",
            "FIELD_CUSTOM_VALIDATION_EXCEPTION",
            ErrorClass::Permanent,
        ),
        (
            400,
            "error_malformed_id.json",
            "MALFORMED_ID",
            ErrorClass::Permanent,
        ),
        (
            404,
            "error_not_found.json",
            "NOT_FOUND",
            ErrorClass::Permanent,
        ),
        // UNCONFIRMED shape: a single object instead of an array.
        (
            400,
            "error_single_object.json",
            "REQUIRED_FIELD_MISSING",
            ErrorClass::Permanent,
        ),
        // A proxy's HTML page: classified by status.
        (
            502,
            "error_html_503.html",
            "HTTP_502",
            ErrorClass::Retryable,
        ),
        (
            500,
            "error_html_503.html",
            "HTTP_500",
            ErrorClass::Retryable,
        ),
    ];
    for (status, name, code, class) in table {
        let e = error_for(Reply::fixture(*status, name)).await;
        assert_eq!(e.codes(), [*code], "{name}: {e}");
        assert_eq!(e.class(), *class, "{name}: {e}");
        match &e {
            Error::Api {
                status: s, path, ..
            } => {
                assert_eq!(s, status);
                assert_eq!(
                    path,
                    "/services/data/v62.0/sobjects/Order/8015g00000Ord01AAB"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let e = error_for(Reply::fixture(400, "error_required_field.json")).await;
    let Error::Api { errors, .. } = &e else {
        panic!()
    };
    assert_eq!(errors[0].fields, ["EffectiveDate"]);
    assert!(e.to_string().contains("Required fields are missing"));

    // Timeouts are retryable.
    let e = error_for(Reply::empty(204).delayed(Duration::from_secs(3))).await;
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);

    // Connection errors on the instance are retryable too.
    let server = FixtureServer::start(not_found).await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *server.state.instance_url.lock().unwrap() =
        Some(format!("http://{}", closed.local_addr().unwrap()));
    drop(closed);
    let e = Client::new(&server.config())
        .unwrap()
        .delete("Account", "0015g00000XyZabAAB")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Retryable);
}

#[tokio::test]
async fn collections_chunk_at_200_and_keep_per_record_results_in_order() {
    let server = FixtureServer::start(|r| {
        let records = r.body["records"].as_array().unwrap();
        let results: Vec<Value> = records
            .iter()
            .map(|rec| {
                let n: usize = rec["External_Id__c"].as_str().unwrap()[2..].parse().unwrap();
                if n == 7 {
                    json!({"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [Name]", "fields": ["Name"]}]})
                } else {
                    json!({"id": format!("001{n:015}"), "success": true, "errors": [], "created": n.is_multiple_of(2)})
                }
            })
            .collect();
        Reply::json(200, Value::from(results).to_string())
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let records: Vec<Value> = (0..450)
        .map(|n| json!({"Name": format!("A{n}"), "External_Id__c": format!("A-{n}")}))
        .collect();
    let results = client
        .upsert_records("Account", "External_Id__c", &records, false)
        .await
        .unwrap();
    assert_eq!(results.len(), 450);
    for (n, r) in results.iter().enumerate() {
        if n == 7 {
            assert!(!r.success);
            assert_eq!(r.errors[0].code, "REQUIRED_FIELD_MISSING");
            assert_eq!(r.error_class(), Some(ErrorClass::Permanent));
        } else {
            assert_eq!(r.id.as_deref(), Some(format!("001{n:015}").as_str()));
            assert_eq!(r.created, Some(n.is_multiple_of(2)));
            assert_eq!(r.error_class(), None);
        }
    }
    let calls = server.calls();
    assert_eq!(calls.len(), 3, "450 records -> 3 calls");
    let sizes: Vec<usize> = calls
        .iter()
        .map(|c| c.body["records"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [200, 200, 50]);
    for c in &calls {
        assert_eq!(
            (c.method.as_str(), c.path.as_str()),
            (
                "PATCH",
                "/services/data/v62.0/composite/sobjects/Account/External_Id__c"
            )
        );
        assert_eq!(c.body["allOrNone"], false);
        assert_eq!(c.body["records"][0]["attributes"]["type"], "Account");
    }
    assert!(
        client
            .upsert_records(
                "Account",
                "External_Id__c",
                &[json!({"Name": "no ext id"})],
                false
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn collection_create_update_paths_mixed_results_and_partial_failure() {
    let server = FixtureServer::start(|r| {
        let n = r.body["records"].as_array().map_or(0, Vec::len);
        if n == 3 {
            return Reply::fixture(200, "collection_mixed.json");
        }
        // Second chunk of a large create fails as a whole.
        if r.body["records"][0]["Name"] == "C200" {
            return Reply::fixture(503, "error_server_unavailable.json");
        }
        let results: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("003{i:015}"), "success": true, "errors": []}))
            .collect();
        Reply::json(200, Value::from(results).to_string())
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let three: Vec<Value> = (0..3)
        .map(|i| json!({"Id": format!("001{i:015}"), "Name": "x"}))
        .collect();
    let results = client
        .update_records("Account", &three, true)
        .await
        .unwrap();
    let classes: Vec<_> = results.iter().map(|r| r.error_class()).collect();
    assert_eq!(
        classes,
        [
            None,
            Some(ErrorClass::Permanent),
            Some(ErrorClass::Retryable)
        ]
    );
    let call = server.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("PATCH", "/services/data/v62.0/composite/sobjects")
    );
    assert_eq!(call.body["allOrNone"], true);
    assert!(
        client
            .update_records("Account", &[json!({"Name": "no id"})], false)
            .await
            .is_err()
    );

    let many: Vec<Value> = (0..300)
        .map(|i| json!({"LastName": "L", "Name": format!("C{i}")}))
        .collect();
    match client
        .create_records("Contact", &many, false)
        .await
        .unwrap_err()
    {
        e @ Error::PartialCollection { .. } => {
            assert_eq!(e.class(), ErrorClass::Retryable);
            let Error::PartialCollection { completed, .. } = e else {
                unreachable!()
            };
            assert_eq!(completed.len(), 200, "the first chunk's results are kept");
        }
        other => panic!("{other:?}"),
    }
    let call = server.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/services/data/v62.0/composite/sobjects")
    );
    assert_eq!(call.body["records"][0]["attributes"]["type"], "Contact");
    assert!(
        client
            .create_records("Contact", &[json!({"Id": "003000000000000AAA"})], false)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn query_follows_next_records_url() {
    let server = FixtureServer::start(|r| match r.path.as_str() {
        "/services/data/v62.0/query" => {
            assert_eq!(
                r.query["q"],
                "SELECT Id, Name FROM Account WHERE Name != 'x'"
            );
            Reply::fixture(200, "query_page1.json")
        }
        "/services/data/v62.0/query/01gD0000002HU6KIAW-2000" => {
            Reply::fixture(200, "query_page2.json")
        }
        _ => not_found(r),
    })
    .await;
    let config = SalesforceConfig {
        query_batch_size: Some(200),
        ..server.config()
    };
    let client = Client::new(&config).unwrap();
    let soql = "SELECT Id, Name FROM Account WHERE Name != 'x'";
    let page = client.query::<Value>(soql).await.unwrap();
    assert_eq!(
        (page.total_size, page.done, page.records.len()),
        (3, false, 2)
    );
    let all: Vec<Value> = client.query_collect(soql).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Test 1", "Test 2", "Test 3"]);
    assert!(
        server
            .calls()
            .iter()
            .all(|c| c.headers["sforce-query-options"] == "batchSize=200")
    );
    // A nextRecordsUrl off the REST API is refused rather than followed.
    assert!(
        client
            .query_more::<Value>("https://evil.example/x")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn limits_endpoint_and_limit_header_on_every_response() {
    let server = FixtureServer::start(|r| match r.path.as_str() {
        "/services/data/v62.0/limits" => Reply::fixture(200, "limits.json"),
        _ => Reply::fixture(200, "account_get.json"),
    })
    .await;
    server.set_usage(10_000, 100_000);
    let client = Client::new(&server.config()).unwrap();
    assert_eq!(client.usage(), None);
    let _: Value = client
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();
    let usage = client.usage().unwrap();
    assert_eq!((usage.used, usage.max), (10_001, 100_000));
    let _: Value = client
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();
    assert_eq!(client.usage().unwrap().used, 10_002);
    // Even error answers carry the header.
    server.set_usage(20_000, 100_000);
    let _ = client.query::<Value>("SELECT Id FROM Nope").await;
    assert_eq!(client.usage().unwrap().used, 20_003);

    let limits = client.limits().await.unwrap();
    let daily = limits.get("DailyApiRequests").unwrap();
    assert_eq!((daily.max, daily.remaining), (15000, 14998));
    assert_eq!(limits.get("DataStorageMB").unwrap().max, 5);
    // /limits is the freshest reading.
    let usage = client.usage().unwrap();
    assert_eq!((usage.used, usage.max), (2, 15000));
}

#[tokio::test]
async fn usage_share_guard_refuses_then_probes_when_the_reading_is_stale() {
    let server = FixtureServer::start(|_| Reply::fixture(200, "account_get.json")).await;
    server.set_usage(13_999, 15_000);
    let config = SalesforceConfig {
        max_api_usage_share: 0.9,
        api_usage_recheck: Duration::from_millis(300),
        ..server.config()
    };
    let client = Client::new(&config).unwrap();
    // No reading yet: the call goes, and reports 14000/15000 (93 %).
    let _: Value = client
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();
    let e = client
        .get::<Value>("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::UsageShareExceeded {
                used: 14_000,
                max: 15_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(
        server.api_calls(),
        1,
        "the refused call never reached Salesforce"
    );

    // The rolling window moved on; once the reading is stale one probe goes and learns it.
    server.set_usage(0, 15_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client
            .get::<Value>("Account", "0015g00000XyZabAAB", &[])
            .await
        {
            Ok(_) => break,
            Err(Error::UsageShareExceeded { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(server.api_calls(), 2);
    let _: Value = client
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();

    // The delay policy waits instead of failing.
    server.set_usage(14_500, 15_000);
    let delaying = Client::new(&SalesforceConfig {
        api_usage_policy: UsagePolicy::Delay,
        ..config
    })
    .unwrap();
    let _: Value = delaying
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();
    server.set_usage(0, 15_000);
    let _: Value = delaying
        .get("Account", "0015g00000XyZabAAB", &[])
        .await
        .unwrap();
    assert!(delaying.usage().unwrap().used < 100);
}

#[tokio::test]
async fn platform_event_success_is_read_from_success() {
    let server = FixtureServer::start(|r| match r.body["Order_Id__c"].as_str() {
        Some("enqueued") => Reply::fixture(201, "event_enqueued.json"),
        Some("plain") => Reply::fixture(201, "event_success_no_errors.json"),
        _ => Reply::fixture(201, "event_failed.json"),
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let r = client
        .publish_event("Order_Status__e", &json!({"Order_Id__c": "enqueued"}))
        .await
        .unwrap();
    assert_eq!(r.id.as_deref(), Some("e00xx0000000001AAA"));
    assert_eq!(r.notices[0].code, "OPERATION_ENQUEUED");
    assert_eq!(
        server.calls()[0].path,
        "/services/data/v62.0/sobjects/Order_Status__e/"
    );
    let r = client
        .publish_event("Order_Status__e", &json!({"Order_Id__c": "plain"}))
        .await
        .unwrap();
    assert!(r.notices.is_empty());
    let e = client
        .publish_event("Order_Status__e", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Record { .. }));
    assert_eq!(e.codes(), ["REQUIRED_FIELD_MISSING"]);
    assert_eq!(e.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn composite_sends_one_call_and_types_each_result() {
    let seen = Arc::new(std::sync::Mutex::new(Value::Null));
    let seen2 = seen.clone();
    let server = FixtureServer::start(move |r| {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/services/data/v62.0/composite")
        );
        *seen2.lock().unwrap() = r.body.clone();
        Reply::fixture(200, "composite_response.json")
    })
    .await;
    let client = Client::new(&server.config()).unwrap();
    let mut c = Composite::new().all_or_none(false);
    let acct = c
        .upsert(
            "acct",
            "Account",
            "External_Id__c",
            "C-1",
            json!({"Name": "Acme"}),
        )
        .unwrap();
    c.upsert_collection(
        "lines",
        "OrderItem",
        "External_Id__c",
        &[
            json!({"External_Id__c": "L-1", "Quantity": 1}),
            json!({"External_Id__c": "L-2"}),
        ],
        false,
    )
    .unwrap();
    let order = c
        .create(
            "order",
            "Order",
            json!({"AccountId": acct.id(), "Status": "Draft"}),
        )
        .unwrap();
    c.update(
        "activate",
        "Order",
        &order.id(),
        json!({"Status": "Activated"}),
    )
    .unwrap();
    c.query(
        "check",
        &format!("SELECT Id FROM Account WHERE Id = '{}'", acct.id()),
    )
    .unwrap();
    c.delete("bad", "Case", "bogus").unwrap();
    let response = client.composite(&c).await.unwrap();
    assert_eq!(server.api_calls(), 1, "one API call");

    let body = seen.lock().unwrap().clone();
    let reqs = body["compositeRequest"].as_array().unwrap();
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[2]["url"], "/services/data/v62.0/sobjects/Order/");
    assert_eq!(reqs[2]["body"]["AccountId"], "@{acct.id}");
    assert_eq!(
        reqs[3]["url"],
        "/services/data/v62.0/sobjects/Order/@{order.id}"
    );
    assert_eq!(
        reqs[1]["body"]["records"][0]["attributes"]["type"],
        "OrderItem"
    );

    assert_eq!(
        response.get("acct").unwrap().outcome,
        SubrequestOutcome::Upserted {
            id: Some("0015g00000XyZabAAB".into()),
            created: true
        }
    );
    let SubrequestOutcome::Collection(lines) = &response.get("lines").unwrap().outcome else {
        panic!()
    };
    assert_eq!(lines.len(), 2);
    assert!(lines[0].success && !lines[1].success);
    assert_eq!(
        response.get("order").unwrap().outcome,
        SubrequestOutcome::Created {
            id: "8015g00000Ord01AAB".into()
        }
    );
    assert_eq!(
        response.get("activate").unwrap().outcome,
        SubrequestOutcome::Done
    );
    let SubrequestOutcome::Query(q) = &response.get("check").unwrap().outcome else {
        panic!()
    };
    assert_eq!(q.total_size, 1);
    match &response.get("bad").unwrap().outcome {
        SubrequestOutcome::Failed {
            status,
            errors,
            class,
        } => {
            assert_eq!(
                (*status, errors[0].code.as_str(), *class),
                (400, "MALFORMED_ID", ErrorClass::Permanent)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!response.all_succeeded());
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = SalesforceConfig {
        refresh_token: Some("5Aep861-very-secret-refresh".into()),
        private_key_file: Some(fixture_path("jwt_test_key.pem")),
        ..SalesforceConfig::default()
    };
    let debug = format!("{config:?}");
    for secret in [
        "orderbridge-dev-password",
        "orderbridge-dev-client-secret",
        "orderbridgedevtoken",
        "5Aep861-very-secret-refresh",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
    assert!(
        debug.contains("orderbridge-dev-client-id"),
        "non-secrets stay visible: {debug}"
    );
    for flow in [
        AuthFlowKind::Password,
        AuthFlowKind::Jwt,
        AuthFlowKind::ClientCredentials,
        AuthFlowKind::RefreshToken,
    ] {
        let client = Client::new(&SalesforceConfig {
            auth_flow: flow,
            ..config.clone()
        })
        .unwrap();
        let debug = format!("{client:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("password") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }
}

#[test]
fn config_parses_from_env_style_flags_with_emulator_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sf: SalesforceConfig,
    }
    let cli = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(cli.sf.login_url, "http://127.0.0.1:8089");
    assert_eq!(cli.sf.auth_flow, AuthFlowKind::Password);
    assert_eq!(cli.sf.api_version, "62.0");
    let cli = Cli::try_parse_from([
        "x",
        "--sf-auth-flow",
        "client_credentials",
        "--sf-api-version",
        "61.0",
        "--sf-request-timeout",
        "5s",
        "--sf-max-api-usage-share",
        "0.5",
    ])
    .unwrap();
    assert_eq!(cli.sf.auth_flow, AuthFlowKind::ClientCredentials);
    assert_eq!(cli.sf.request_timeout, Duration::from_secs(5));
    assert!(Cli::try_parse_from(["x", "--sf-auth-flow", "kerberos"]).is_err());
    let bad = SalesforceConfig {
        api_version: "v62".into(),
        ..SalesforceConfig::default()
    };
    assert_eq!(Client::new(&bad).unwrap_err().class(), ErrorClass::Config);
    let bad = SalesforceConfig {
        max_api_usage_share: 1.5,
        ..SalesforceConfig::default()
    };
    assert!(Client::new(&bad).is_err());
}

#[test]
fn client_and_errors_cross_threads_and_fit_anyhow() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Client>();
    shareable::<Error>();
    let e: anyhow::Error = Error::InvalidRequest("x".into()).into();
    assert!(e.to_string().contains("invalid request"));
}
