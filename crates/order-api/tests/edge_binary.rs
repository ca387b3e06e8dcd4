#![allow(clippy::unwrap_used)]
//! The connection edge of the real `order-api` binary, as an operator sees it: what SIGTERM does
//! with a half-sent request and with a request in progress, and what its log lines hold when
//! clients send hostile data.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use orderbridge_testkit::{ChildGuard, FreshDatabase, free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_order-api");

fn create_key(db: &FreshDatabase) -> String {
    let out = Command::new(BIN)
        .args(["create-api-key", "--name", "edge"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Running {
    server: ChildGuard,
    addr: String,
    log: PathBuf,
}

impl Running {
    /// Starts `order-api` with `env` on a free port, its stderr in a file, and waits until ready.
    async fn start(db: &FreshDatabase, env: &[(&str, &str)]) -> Self {
        let port = free_port().unwrap();
        let addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("order-api-edge-{}.log", uuid::Uuid::now_v7()));
        let mut cmd = Command::new(BIN);
        cmd.env("DATABASE_URL", &db.url)
            .env("ORDER_API_ADDR", &addr)
            .env(
                "ORDER_API_ADMIN_ADDR",
                format!("127.0.0.1:{}", free_port().unwrap()),
            )
            .env("LOG_FORMAT", "json")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let server = ChildGuard(cmd.spawn().unwrap());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("http://{addr}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { server, addr, log }
    }

    fn sigterm(&self) -> Instant {
        let pid = self.server.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        Instant::now()
    }

    /// Waits for the process to exit, at most `within`.
    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.server.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn sigterm_with_a_half_sent_request_exits_at_once() {
    let db = FreshDatabase::new("orderbridge_edge");
    // A header timeout far beyond the test: what ends the connection must be the shutdown.
    let mut running = Running::start(&db, &[("ORDER_API_HEADER_TIMEOUT", "60s")]).await;
    let mut half = TcpStream::connect(&running.addr).await.unwrap();
    half.write_all(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = running.sigterm();
    let status = running
        .exit_within(Duration::from_secs(5))
        .await
        .expect("a half-sent request kept SIGTERM waiting (the grace is 20 s)");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_progress_finish() {
    let db = FreshDatabase::new("orderbridge_edge");
    let key = create_key(&db);
    let mut running = Running::start(&db, &[]).await;
    let body = json!({
        "client_ref": "PO-TERM",
        "customer": {"external_id": "C-1", "name": "Acme", "email": "a@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": "S-1", "name": "Mug", "quantity": 1, "unit_price": "1.00"}]
    })
    .to_string();
    let (first, rest) = body.as_bytes().split_at(10);
    let mut conn = TcpStream::connect(&running.addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    running.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running.server.0.try_wait().unwrap().is_none(),
        "the server exited with a request in progress"
    );
    conn.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("no answer to the request in progress")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    let status = running
        .exit_within(Duration::from_secs(5))
        .await
        .expect("the server did not exit after its last request");
    assert!(status.success(), "exit status {status}");
}

/// A client_ref that would forge a field and a second line if written unescaped.
const FORGING_CLIENT_REF: &str = "PO 1\" request_id=\"forged\nFORGED-LINE WARN x=y";

/// Sends what hostile or careless clients send: a 60 KB path, a forging `client_ref`, a body
/// trickled byte by byte. Returns the server's log lines.
async fn hostile_requests(format: &str) -> Vec<String> {
    let db = FreshDatabase::new("orderbridge_edge");
    let key = create_key(&db);
    let mut running = Running::start(
        &db,
        &[
            ("LOG_FORMAT", format),
            ("ORDER_API_BODY_TIMEOUT", "1s"),
            ("ORDER_API_REQUEST_TIMEOUT", "30s"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.addr);

    let huge_path = http
        .get(format!("{base}/v1/orders/{}", "p".repeat(60 * 1024)))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(huge_path.status().is_client_error());

    let order = json!({
        "client_ref": FORGING_CLIENT_REF,
        "customer": {"external_id": "C-1", "name": "Acme", "email": "a@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": "S-1", "name": "Mug", "quantity": 1, "unit_price": "1.00"}]
    });
    let created = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&key)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // A body at 10 bytes/s: 408 at the 1 s body timeout, a client's fault, not an error.
    let body = order.to_string();
    let mut conn = TcpStream::connect(&running.addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = conn.split();
    let trickle = async {
        for b in body.as_bytes() {
            if write.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut answer = Vec::new();
    tokio::select! {
        _ = read.read_to_end(&mut answer) => {}
        () = trickle => {}
        () = tokio::time::sleep(Duration::from_secs(20)) => panic!("no answer to the slow body"),
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    running.sigterm();
    running
        .exit_within(Duration::from_secs(10))
        .await
        .expect("no exit after SIGTERM");
    running.log_lines()
}

/// No log line carries more than a bounded share of what a client sent.
fn assert_bounded(lines: &[String]) {
    for line in lines {
        assert!(
            line.len() < 2048,
            "a log line of {} bytes: {}…",
            line.len(),
            line.chars().take(200).collect::<String>()
        );
    }
}

#[tokio::test]
async fn human_log_lines_are_bounded_and_client_data_cannot_forge_fields_or_lines() {
    let lines = hostile_requests("pretty").await;
    assert_bounded(&lines);
    let accepted = lines
        .iter()
        .find(|l| l.contains("order accepted"))
        .expect("no `order accepted` line");
    assert!(
        accepted.contains(r#"client_ref="PO 1\" request_id=\"forged\nFORGED-LINE WARN x=y""#),
        "client_ref is not quoted and escaped: {accepted}"
    );
    for line in &lines {
        assert!(
            !line.contains(r#" request_id="forged"#),
            "a forged field: {line}"
        );
        assert!(!line.starts_with("FORGED-LINE"), "a forged line: {line}");
        // The level is the second word of a line; a slow client is not an error.
        assert_ne!(line.split_whitespace().nth(1), Some("ERROR"), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains('…') && l.contains("ppppp")),
        "the huge path was not logged truncated with a marker"
    );
}

#[tokio::test]
async fn json_log_lines_are_bounded_and_keep_client_data_exact() {
    let lines = hostile_requests("json").await;
    assert_bounded(&lines);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let accepted = events
        .iter()
        .find(|e| e["message"] == "order accepted")
        .expect("no `order accepted` event");
    assert_eq!(accepted["client_ref"], json!(FORGING_CLIENT_REF));
    assert!(events.iter().all(|e| e["level"] != "ERROR"), "{lines:#?}");
    let path = events
        .iter()
        .find_map(|e| e["span"]["path"].as_str().filter(|p| p.contains("ppppp")))
        .expect("the huge path's request was not logged");
    assert!(path.len() <= 300 && path.ends_with('…'), "{path}");
}
