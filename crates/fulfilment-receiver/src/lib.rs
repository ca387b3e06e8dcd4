//! The reference fulfilment system (issue 14), for local runs and tests: what the fulfilment
//! worker calls at `FULFILMENT_URL`.
//!
//! ```text
//! POST /provision ─► body ≤ 64 KiB ─► signature + replay window (401) ─► Idempotency-Key seen?
//!                      └─ same answer again (counted once) ◄─ yes      no ─► behaviour decides
//!                                                                           ─► wait RECEIVER_DELAY ─► answer
//! POST /__admin/behaviour   how to answer from now on (JSON, see `behaviour::Behaviour`)
//! GET  /__admin/requests    every request received: id, idempotency key, signature ok, answer
//! GET  /__admin/stats       {"provisioned": distinct keys provisioned, "received": n}
//! ```
//!
//! Only `provisioned` and `accepted` answers are remembered per key; a `failed` or error answer
//! is not, so a retry under the same key is decided again (as a real system that ran out of
//! stock would, once stock is back).

pub mod behaviour;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use behaviour::{Behaviour, Then};
use clap::Args;
use orderbridge_webhook::{
    HEADER_ID, HEADER_IDEMPOTENCY_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, Headers, Webhook,
};
use serde::Serialize;
use serde_json::{Value, json};

/// Largest request body read (bytes).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a sender may take to send the body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests kept for `GET /__admin/requests` (the oldest are dropped).
const MAX_RECORDS: usize = 10_000;

/// The receiver's settings.
#[derive(Debug, Clone, Args)]
pub struct ReceiverConfig {
    /// Address to listen on.
    #[arg(long, env = "RECEIVER_ADDR", default_value = "127.0.0.1:8095")]
    pub addr: SocketAddr,
    /// The key(s) requests are signed with (the worker's `FULFILMENT_SIGNING_SECRET`); also
    /// signs the callbacks of accepted requests.
    #[arg(long = "signing-secret", env = "FULFILMENT_SIGNING_SECRET", hide_env_values = true, value_parser = parse_webhook)]
    pub webhook: Arc<Webhook>,
    /// How long each answer takes (a real system's latency).
    #[arg(long, env = "RECEIVER_DELAY", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
}

fn parse_webhook(s: &str) -> Result<Arc<Webhook>, String> {
    Webhook::from_secrets(s)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// One request as received, for `GET /__admin/requests`.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// `webhook-id` (empty when absent or unreadable).
    pub id: String,
    pub idem_key: Option<String>,
    pub signature_ok: bool,
    /// Why the signature was refused.
    pub signature_error: Option<String>,
    /// HTTP status answered (`null` while hanging).
    pub status: Option<u16>,
    pub answer: Value,
    /// Answered from the remembered answer of its idempotency key.
    pub duplicate: bool,
}

#[derive(Default)]
struct Inner {
    behaviour: Option<Behaviour>,
    /// Remembered answers by idempotency key.
    answers: HashMap<String, (StatusCode, Value)>,
    received: Vec<Received>,
    provisioned: u64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ReceiverState {
    config: Arc<ReceiverConfig>,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    /// Wakes hanging requests when the server stops, so a hang never holds the shutdown.
    release: Arc<tokio::sync::Notify>,
}

impl ReceiverState {
    pub fn new(config: ReceiverConfig) -> Self {
        Self {
            config: Arc::new(config),
            inner: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            release: Arc::default(),
        }
    }

    /// Ends every hanging request (called when the server begins to stop).
    pub fn release_hangs(&self) {
        self.release.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The HTTP application.
pub fn app(state: ReceiverState) -> Router {
    Router::new()
        .route("/provision", post(provision))
        .route("/__admin/behaviour", post(set_behaviour))
        .route("/__admin/requests", get(requests))
        .route("/__admin/stats", get(stats))
        .with_state(state)
}

fn record(inner: &mut Inner, r: Received) {
    if inner.received.len() >= MAX_RECORDS {
        inner.received.remove(0);
    }
    inner.received.push(r);
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

async fn provision(State(state): State<ReceiverState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
    };
    let headers = &parts.headers;
    let id = header(headers, HEADER_ID)
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned())
        .unwrap_or_default();
    let idem_key = header(headers, HEADER_IDEMPOTENCY_KEY)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(|s| s.chars().take(255).collect::<String>());
    let verified = state.config.webhook.verify(
        Headers {
            id: header(headers, HEADER_ID),
            timestamp: header(headers, HEADER_TIMESTAMP),
            signature: header(headers, HEADER_SIGNATURE),
        },
        &bytes,
    );
    if let Err(e) = verified {
        tracing::warn!(code = e.code(), error = %e, "request refused");
        let answer = json!({"error": e.to_string()});
        record(
            &mut state.lock(),
            Received {
                id,
                idem_key,
                signature_ok: false,
                signature_error: Some(e.to_string()),
                status: Some(401),
                answer: answer.clone(),
                duplicate: false,
            },
        );
        return (StatusCode::UNAUTHORIZED, Json(answer)).into_response();
    }
    let request: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let request_id = request
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::to_owned);

    // Decided under the lock, so two requests with the same key at once get one decision.
    let decided = {
        let mut inner = state.lock();
        decide(&mut inner, idem_key.as_deref())
    };
    let (status, answer, duplicate, callback) = match decided {
        Decision::Answer {
            status,
            answer,
            duplicate,
            callback,
        } => (status, answer, duplicate, callback),
        Decision::Hang => {
            record(
                &mut state.lock(),
                Received {
                    id,
                    idem_key,
                    signature_ok: true,
                    signature_error: None,
                    status: None,
                    answer: Value::Null,
                    duplicate: false,
                },
            );
            state.release.notified().await;
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
    };
    record(
        &mut state.lock(),
        Received {
            id,
            idem_key,
            signature_ok: true,
            signature_error: None,
            status: Some(status.as_u16()),
            answer: answer.clone(),
            duplicate,
        },
    );
    if let (Some(cb), Some(request_id)) = (callback, request_id) {
        tokio::spawn(send_callback(state.clone(), cb, request_id));
    }
    tokio::time::sleep(state.config.delay).await;
    (status, Json(answer)).into_response()
}

struct Callback {
    url: String,
    after: Duration,
    then: Then,
    reason: String,
}

enum Decision {
    Answer {
        status: StatusCode,
        answer: Value,
        duplicate: bool,
        callback: Option<Callback>,
    },
    Hang,
}

fn decide(inner: &mut Inner, idem_key: Option<&str>) -> Decision {
    if let Some((status, answer)) = idem_key.and_then(|k| inner.answers.get(k)) {
        return Decision::Answer {
            status: *status,
            answer: answer.clone(),
            duplicate: true,
            callback: None,
        };
    }
    let behaviour = inner.behaviour.clone().unwrap_or(Behaviour::Provision);
    let (status, answer, remember, callback) = match behaviour {
        Behaviour::Provision => {
            inner.provisioned += 1;
            (StatusCode::OK, json!({"status": "provisioned"}), true, None)
        }
        Behaviour::Fail { reason } => (
            StatusCode::OK,
            json!({"status": "failed", "reason": reason}),
            false,
            None,
        ),
        Behaviour::Error { status, times } => {
            inner.behaviour = (times > 1).then_some(Behaviour::Error {
                status,
                times: times - 1,
            });
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, json!({"error": "injected failure"}), false, None)
        }
        Behaviour::Accept {
            callback_url,
            callback_after,
            then,
            reason,
        } => (
            StatusCode::ACCEPTED,
            json!({"status": "accepted"}),
            true,
            Some(Callback {
                url: callback_url,
                after: callback_after,
                then,
                reason,
            }),
        ),
        Behaviour::Hang => return Decision::Hang,
    };
    if remember && let Some(k) = idem_key {
        inner.answers.insert(k.to_owned(), (status, answer.clone()));
    }
    Decision::Answer {
        status,
        answer,
        duplicate: false,
        callback,
    }
}

/// The signed callback of an accepted request, after its delay; retried a few times while the
/// API does not answer 2xx (it is idempotent).
async fn send_callback(state: ReceiverState, cb: Callback, request_id: String) {
    tokio::time::sleep(cb.after).await;
    let body = match cb.then {
        Then::Provision => json!({"request_id": request_id, "status": "provisioned"}),
        Then::Fail => json!({"request_id": request_id, "status": "failed", "reason": cb.reason}),
    }
    .to_string();
    if cb.then == Then::Provision {
        state.lock().provisioned += 1;
    }
    for attempt in 1..=5u32 {
        let signed = state
            .config
            .webhook
            .sign_now(&format!("cb_{}", uuid::Uuid::now_v7()), body.as_bytes());
        let mut req = state
            .http
            .post(&cb.url)
            .header("content-type", "application/json");
        for (name, value) in signed.pairs() {
            req = req.header(name, value);
        }
        match req.body(body.clone()).send().await {
            Ok(res) if res.status().is_success() => {
                tracing::info!(%request_id, "callback delivered");
                return;
            }
            Ok(res) => {
                tracing::warn!(%request_id, status = %res.status(), attempt, "callback refused")
            }
            Err(e) => tracing::warn!(%request_id, error = %e, attempt, "callback failed"),
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
    }
}

async fn set_behaviour(State(state): State<ReceiverState>, body: Body) -> Response {
    let Ok(bytes) = to_bytes(body, BODY_LIMIT).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let behaviour: Behaviour = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    if let Err(e) = behaviour.validate() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &e);
    }
    tracing::info!(?behaviour, "behaviour set");
    state.lock().behaviour = Some(behaviour);
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
}

async fn requests(State(state): State<ReceiverState>) -> Json<Vec<Received>> {
    Json(state.lock().received.clone())
}

async fn stats(State(state): State<ReceiverState>) -> Json<Value> {
    let inner = state.lock();
    Json(json!({"provisioned": inner.provisioned, "received": inner.received.len()}))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
