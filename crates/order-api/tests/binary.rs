#![allow(clippy::unwrap_used)]
//! The real `order-api` binary, as a user runs it: a fresh database created on first start,
//! `create-api-key`, `serve`, the README's curl walk-through done with an HTTP client, a clean
//! exit on SIGTERM; then schemathesis, a public tool, fuzzing it from its OpenAPI document.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orderbridge_testkit::{ChildGuard, FreshDatabase, free_port, python_tool};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_order-api");

fn create_key(db: &FreshDatabase, client: &str) -> String {
    let out = Command::new(BIN)
        .args(["create-api-key", "--name", client])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        key.starts_with("obk_"),
        "stdout must hold only the key, got {key:?}"
    );
    key
}

/// Starts `order-api` on a free port and waits until it is ready.
async fn start_server(db: &FreshDatabase) -> (ChildGuard, String) {
    start_server_with(db, &[]).await
}

/// [`start_server`] with extra environment.
async fn start_server_with(db: &FreshDatabase, env: &[(&str, &str)]) -> (ChildGuard, String) {
    let port = free_port().unwrap();
    let server = ChildGuard(
        Command::new(BIN)
            .env("DATABASE_URL", &db.url)
            .env("ORDER_API_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "ORDER_API_ADMIN_ADDR",
                format!("127.0.0.1:{}", free_port().unwrap()),
            )
            .env("LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .map(|r| r.status());
        if status.ok() == Some(reqwest::StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, base)
}

#[tokio::test]
async fn walk_through_as_in_the_readme() {
    let db = FreshDatabase::new("orderbridge_bin");
    let key = create_key(&db, "portal");
    let (mut server, base) = start_server(&db).await;
    let http = reqwest::Client::new();

    let order = json!({
        "client_ref": "PO-1001",
        "customer": {"external_id": "CUST-42", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"},
            {"sku": "SKU-TEA", "name": "Green tea", "quantity": 1, "unit_price": "4.99"}
        ]
    });
    let created = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "walk-1")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = created.json().await.unwrap();
    assert_eq!(body["total"], json!("29.99"));

    let fetched = http
        .get(format!("{base}{location}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let etag = fetched.headers()["etag"].to_str().unwrap().to_owned();
    let polled = http
        .get(format!("{base}{location}"))
        .bearer_auth(&key)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), 304);

    // SIGTERM: a graceful, successful exit.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

/// The served binary knows each request's peer: bad keys from one address are throttled.
#[tokio::test]
async fn failed_authentications_are_throttled_by_the_served_binary() {
    let db = FreshDatabase::new("orderbridge_bin_auth");
    let key = create_key(&db, "portal");
    let (_server, base) = start_server_with(
        &db,
        &[
            ("ORDER_API_AUTH_FAILURE_RATE", "1"),
            ("ORDER_API_AUTH_FAILURE_BURST", "3"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let list = |key: String| {
        http.get(format!("{base}/v1/orders"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(list(key.clone()).await.unwrap().status(), 200);
    for _ in 0..3 {
        assert_eq!(list("obk_x_y".into()).await.unwrap().status(), 401);
    }
    let throttled = list("obk_x_y".into()).await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));
    assert_eq!(
        throttled.headers()["content-type"],
        "application/problem+json"
    );
}

/// Schemathesis generates valid and invalid requests from the served OpenAPI document and checks
/// every answer: no 5xx, status codes and content types as documented, bodies matching their
/// schemas, invalid input rejected. `positive_data_acceptance` is excluded because the API's
/// business rules (active ISO 4217 codes, email shape, no control characters) are deliberately
/// stricter than a JSON schema can say.
#[tokio::test]
async fn schemathesis_finds_no_failure() {
    let schemathesis = tokio::task::spawn_blocking(|| python_tool("schemathesis"))
        .await
        .unwrap()
        .expect("cannot install the pinned Python test tools (tools/requirements-test.txt)");
    let db = FreshDatabase::new("orderbridge_st");
    let key = create_key(&db, "schemathesis");
    // Short waits: schemathesis reads every event stream to its end and holds long-polls for
    // their whole wait, which at the defaults (30 min, 30 s) would make this run for hours.
    let (_server, base) = start_server_with(
        &db,
        &[
            ("ORDER_API_SSE_MAX_DURATION", "1s"),
            ("ORDER_API_LONG_POLL_MAX", "1s"),
            // The fulfilment callback is on (and so fuzzed against the real verifier).
            ("FULFILMENT_SIGNING_SECRET", orderbridge_webhook::DEV_SECRET),
            // schemathesis is one peer sending thousands of deliberately unauthenticated
            // requests (missing keys, bad callback signatures): with the default per-peer budget
            // the throttle rightly answers 429 where the document promises 401. The throttle
            // has its own tests (`auth.rs`, `failed_authentications_are_throttled_…` here).
            ("ORDER_API_AUTH_FAILURE_BURST", "1000000"),
        ],
    )
    .await;

    let out = tokio::process::Command::new(schemathesis)
        .args(["run", &format!("{base}/openapi.json"), "--url", &base])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "40", "--seed", "20261124", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}

/// The served binary's metrics are on its admin port, by route template (never the path a
/// client sent), and not on the public API port.
#[tokio::test]
async fn metrics_are_on_the_admin_port_only() {
    let db = FreshDatabase::new("orderbridge_bin");
    let key = create_key(&db, "portal");
    let admin_port = free_port().unwrap().to_string();
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let (_server, base) = start_server_with(&db, &[("ORDER_API_ADMIN_ADDR", &admin_addr)]).await;
    let admin = format!("http://{admin_addr}");
    let http = reqwest::Client::new();

    let order = json!({
        "client_ref": "PO-METRICS-1",
        "customer": {"external_id": "CUST-42", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"}]
    });
    for _ in 0..2 {
        // The second is an idempotent replay: one order accepted, two requests answered.
        let r = http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(&key)
            .header("Idempotency-Key", "metrics-1")
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = http
        .get(format!(
            "{base}/v1/orders/0192f0a2-7c41-7b3e-9d55-2f1c0e6a1b11"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/no/such/path/{}", "x".repeat(200)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "metrics must not be public"
    );

    assert_eq!(
        http.get(format!("{admin}/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "order_api_orders_created_total 1",
        "order_api_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"201\"} 2",
        "order_api_requests_total{route=\"/v1/orders/{id}\",method=\"GET\",status=\"404\"} 1",
        "order_api_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 2",
        "order_api_db_up 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(
        !text.contains("xxxx"),
        "a client's path became a label:\n{text}"
    );
    assert!(text.contains("order_api_request_seconds_count "), "{text}");
}
