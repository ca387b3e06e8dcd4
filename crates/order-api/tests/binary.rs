#![allow(clippy::unwrap_used)]
//! The real `order-api` binary, as a user runs it: a fresh database created on first start,
//! `create-api-key`, `serve`, the README's curl walk-through done with an HTTP client, and a
//! clean exit on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_order-api");

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/orderbridge".into())
}

/// A database URL on the same server with a unique, not yet existing database.
fn fresh_database_url() -> (String, String) {
    let name = format!("orderbridge_bin_{}", uuid::Uuid::new_v4().simple());
    let base = server_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    (format!("{server}/{name}"), name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn walk_through_as_in_the_readme() {
    let (database_url, db_name) = fresh_database_url();

    let out = Command::new(BIN)
        .args(["create-api-key", "--name", "portal"])
        .env("DATABASE_URL", &database_url)
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

    let port = free_port();
    let mut server = Server(
        Command::new(BIN)
            .env("DATABASE_URL", &database_url)
            .env("ORDER_API_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .map(|r| r.status())
        .ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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

    drop_database(&db_name).await;
}

async fn drop_database(name: &str) {
    use sqlx::Connection;
    let base = server_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
