#![allow(clippy::unwrap_used)]
//! The `fulfilment-receiver` binary as a child process: signed requests provisioned, bad and
//! stale signatures refused, injected errors then recovery, and one key provisioned once.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orderbridge_testkit::{ChildGuard, free_port};
use orderbridge_webhook::{DEV_SECRET, Webhook};
use serde_json::{Value, json};

struct Receiver {
    _child: ChildGuard,
    base: String,
    http: reqwest::Client,
}

async fn start() -> Receiver {
    let port = free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fulfilment-receiver"))
        .env("RECEIVER_ADDR", format!("127.0.0.1:{port}"))
        .env("FULFILMENT_SIGNING_SECRET", DEV_SECRET)
        .env("RECEIVER_DELAY", "0ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let r = Receiver {
        _child: ChildGuard(child),
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    // Ready once it answers (bounded: a receiver that never starts fails the test).
    for _ in 0..300 {
        if r.http
            .get(format!("{}/__admin/stats", r.base))
            .send()
            .await
            .is_ok()
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the receiver did not start");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Receiver {
    async fn provision_with(
        &self,
        wh: &Webhook,
        timestamp: u64,
        request_id: &str,
        key: &str,
    ) -> (u16, Value) {
        let body = json!({"request_id": request_id, "idem_key": key}).to_string();
        let signed = wh.sign(request_id, timestamp, body.as_bytes());
        let mut req = self
            .http
            .post(format!("{}/provision", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key);
        for (name, value) in signed.pairs() {
            req = req.header(name, value);
        }
        let res = req.body(body).send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn provision(&self, request_id: &str, key: &str) -> (u16, Value) {
        let wh = Webhook::from_secrets(DEV_SECRET).unwrap();
        self.provision_with(&wh, now(), request_id, key).await
    }

    async fn behaviour(&self, b: Value) -> u16 {
        self.http
            .post(format!("{}/__admin/behaviour", self.base))
            .json(&b)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn admin(&self, what: &str) -> Value {
        self.http
            .get(format!("{}/__admin/{what}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_signed_request_is_provisioned() {
    let r = start().await;
    let (status, body) = r.provision("req-1", "event:e-1").await;
    assert_eq!((status, body), (200, json!({"status": "provisioned"})));
    let requests = r.admin("requests").await;
    assert_eq!(requests[0]["id"], "req-1");
    assert_eq!(requests[0]["idem_key"], "event:e-1");
    assert_eq!(requests[0]["signature_ok"], true);
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(r.admin("stats").await["provisioned"], 1);
}

#[tokio::test]
async fn bad_and_stale_signatures_are_refused() {
    let r = start().await;
    let forger = Webhook::from_secrets("someone-elses-secret-of-24-bytes+").unwrap();
    let (status, _) = r.provision_with(&forger, now(), "req-1", "k-1").await;
    assert_eq!(status, 401);
    let dev = Webhook::from_secrets(DEV_SECRET).unwrap();
    let (status, body) = r.provision_with(&dev, now() - 3600, "req-2", "k-2").await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("ago"), "{body}");
    // Unsigned.
    let res = r
        .http
        .post(format!("{}/provision", r.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let requests = r.admin("requests").await;
    assert_eq!(requests.as_array().unwrap().len(), 3);
    assert!(
        requests
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["signature_ok"] == false)
    );
    assert_eq!(r.admin("stats").await["provisioned"], 0);
}

#[tokio::test]
async fn injected_errors_then_provisioned() {
    let r = start().await;
    assert_eq!(
        r.behaviour(json!({"mode": "error", "status": 500, "times": 2}))
            .await,
        200
    );
    assert_eq!(r.provision("req-1", "k-1").await.0, 500);
    assert_eq!(r.provision("req-1", "k-1").await.0, 500);
    assert_eq!(
        r.provision("req-1", "k-1").await,
        (200, json!({"status": "provisioned"}))
    );
    assert_eq!(r.admin("stats").await["provisioned"], 1);

    // Told to fail: a failed answer with the reason, not remembered for the key.
    r.behaviour(json!({"mode": "fail", "reason": "no stock"}))
        .await;
    assert_eq!(
        r.provision("req-2", "k-2").await,
        (200, json!({"status": "failed", "reason": "no stock"}))
    );
    r.behaviour(json!({"mode": "provision"})).await;
    assert_eq!(r.provision("req-2", "k-2").await.1["status"], "provisioned");
    // Nonsense behaviours are refused.
    assert_eq!(r.behaviour(json!({"mode": "explode"})).await, 422);
    assert_eq!(
        r.behaviour(json!({"mode": "error", "status": 200})).await,
        422
    );
}

#[tokio::test]
async fn the_same_key_twice_is_provisioned_once() {
    let r = start().await;
    let first = r.provision("req-1", "IDEM-1").await;
    let second = r.provision("req-1", "IDEM-1").await;
    assert_eq!(first, (200, json!({"status": "provisioned"})));
    assert_eq!(second, first, "the same key gets the same answer");
    assert_eq!(r.admin("stats").await["provisioned"], 1);
    let requests = r.admin("requests").await;
    let dup: Vec<bool> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(dup, [false, true]);
}

#[tokio::test]
async fn an_accepted_request_gets_one_signed_callback() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;

    // The callback endpoint: verifies like order-api does and hands the body over.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Value, String>>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let wh = Webhook::from_secrets(DEV_SECRET).unwrap();
                let h = |n: &str| headers.get(n).map(|v| v.as_bytes());
                let verified = wh.verify(
                    orderbridge_webhook::Headers {
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                    },
                    &body,
                );
                let _ = tx.send(
                    verified
                        .map(|_| serde_json::from_slice(&body).unwrap())
                        .map_err(|e| e.to_string()),
                );
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let r = start().await;
    let status = r
        .behaviour(
            json!({"mode": "accept", "callback_url": format!("http://{cb_addr}/cb"),
            "callback_after": "10ms", "then": "fail", "reason": "no stock"}),
        )
        .await;
    assert_eq!(status, 200);
    let first = r.provision("req-9", "k-9").await;
    assert_eq!(first, (202, json!({"status": "accepted"})));
    // The same key again: the same 202, and no second callback.
    assert_eq!(r.provision("req-9", "k-9").await, first);

    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a callback within 10 s")
        .unwrap();
    assert_eq!(
        got,
        Ok(json!({"request_id": "req-9", "status": "failed", "reason": "no stock"}))
    );
    // A request with another key brings the second callback; none came in between for k-9.
    r.provision("req-10", "k-10").await;
    let next = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a callback within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next["request_id"], "req-10");
}
