//! A tiny HTTP server answering with recorded Salesforce responses (tests/fixtures), on port 0.
//!
//! It plays both the login server (`/services/oauth2/token`) and the instance: tokens it issues
//! carry its own address as `instance_url`. Each test supplies a responder for the REST calls;
//! the server itself checks the bearer token (401 `INVALID_SESSION_ID` when stale), counts token
//! calls and API calls, and sends `Sforce-Limit-Info` on every answer.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use orderbridge_salesforce::SalesforceConfig;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A canned answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub content_type: &'static str,
}

impl Reply {
    pub fn fixture(status: u16, name: &str) -> Self {
        let content_type = if name.ends_with(".html") {
            "text/html"
        } else {
            "application/json"
        };
        Self {
            status,
            body: fixture(name),
            delay: Duration::ZERO,
            content_type,
        }
    }

    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            content_type: "application/json",
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            delay: Duration::ZERO,
            content_type: "application/json",
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A REST call the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct ServerState {
    pub token_calls: AtomicUsize,
    pub api_calls: AtomicU64,
    /// Added to `api_calls` in `Sforce-Limit-Info`.
    pub usage_base: AtomicU64,
    pub usage_max: AtomicU64,
    /// The one access token accepted; `expire_sessions` replaces it.
    pub valid_token: Mutex<String>,
    /// When set, the token endpoint answers this instead of a token.
    pub token_reply: Mutex<Option<Reply>>,
    /// When set, the token answer names this instance URL instead of the server's own.
    pub instance_url: Mutex<Option<String>>,
    /// Refuse every token (even fresh ones) with 401: a session the org keeps rejecting.
    pub reject_all_sessions: std::sync::atomic::AtomicBool,
    pub token_delay: Mutex<Duration>,
    pub token_forms: Mutex<Vec<HashMap<String, String>>>,
    pub calls: Mutex<Vec<Recorded>>,
    pub base_url: String,
    /// TCP connections accepted, to check that the client reuses them.
    pub connections: Arc<AtomicUsize>,
    responder: Responder,
}

/// Counts accepted connections.
struct CountingListener {
    inner: tokio::net::TcpListener,
    count: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok(accepted) = self.inner.accept().await {
                self.count.fetch_add(1, Ordering::SeqCst);
                return accepted;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub struct FixtureServer {
    pub url: String,
    pub state: Arc<ServerState>,
}

impl FixtureServer {
    pub async fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_inner(responder, false).await
    }

    /// The same over HTTPS, with a certificate for 127.0.0.1 issued by `fixtures/tls_ca.pem`.
    pub async fn start_tls(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_inner(responder, true).await
    }

    async fn start_inner(
        responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        tls: bool,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(ServerState {
            token_calls: AtomicUsize::new(0),
            api_calls: AtomicU64::new(0),
            usage_base: AtomicU64::new(0),
            usage_max: AtomicU64::new(15000),
            valid_token: Mutex::new("never-issued".into()),
            token_reply: Mutex::new(None),
            instance_url: Mutex::new(None),
            reject_all_sessions: Default::default(),
            token_delay: Mutex::new(Duration::ZERO),
            token_forms: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            base_url: url.clone(),
            connections: Arc::new(AtomicUsize::new(0)),
            responder: Arc::new(responder),
        });
        let app = Router::new()
            .route("/services/oauth2/token", post(token))
            .fallback(rest)
            .with_state(state.clone());
        let count = state.connections.clone();
        if tls {
            let listener = TlsListener {
                inner: listener,
                acceptor: tls_acceptor(),
                count,
            };
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        } else {
            let listener = CountingListener {
                inner: listener,
                count,
            };
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        Self { url, state }
    }

    /// Settings pointing at this server with the given flow defaults.
    pub fn config(&self) -> SalesforceConfig {
        SalesforceConfig {
            login_url: self.url.clone(),
            request_timeout: Duration::from_secs(5),
            ..SalesforceConfig::default()
        }
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn api_calls(&self) -> u64 {
        self.state.api_calls.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn token_forms(&self) -> Vec<HashMap<String, String>> {
        self.state.token_forms.lock().unwrap().clone()
    }

    /// Invalidates the current access token, as a session timeout would.
    pub fn expire_sessions(&self) {
        *self.state.valid_token.lock().unwrap() = "expired".into();
    }

    pub fn set_token_reply(&self, reply: Option<Reply>) {
        *self.state.token_reply.lock().unwrap() = reply;
    }

    pub fn set_usage(&self, base: u64, max: u64) {
        self.state.usage_base.store(base, Ordering::SeqCst);
        self.state.usage_max.store(max, Ordering::SeqCst);
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture_path("tls_server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture_path("tls_server.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Accepts TCP connections and completes the TLS handshake; failed handshakes (a client that
/// does not trust the certificate) are dropped.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    count: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else {
                continue;
            };
            let handshake =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await;
            if let Ok(Ok(tls)) = handshake {
                self.count.fetch_add(1, Ordering::SeqCst);
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Minimal application/x-www-form-urlencoded decoding (the test needs no more).
pub fn decode_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn respond(reply: Reply, extra: Option<(&'static str, String)>) -> Response {
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    let headers = response.headers_mut();
    if !response_is_empty(reply.status) {
        headers.insert("content-type", reply.content_type.parse().unwrap());
    }
    if let Some((name, value)) = extra {
        headers.insert(name, value.parse().unwrap());
    }
    response
}

fn response_is_empty(status: u16) -> bool {
    status == 204
}

async fn token(State(state): State<Arc<ServerState>>, body: Bytes) -> Response {
    let n = state.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    state.token_forms.lock().unwrap().push(decode_form(&body));
    let delay = *state.token_delay.lock().unwrap();
    // Widens the window in which concurrent requests pile up behind one login.
    tokio::time::sleep(delay).await;
    if let Some(reply) = state.token_reply.lock().unwrap().clone() {
        return respond(reply, None);
    }
    let access_token = format!("00Dxx0000001gEF!AQ-token-{n}");
    *state.valid_token.lock().unwrap() = access_token.clone();
    let mut body: serde_json::Value = serde_json::from_str(&fixture("token_success.json")).unwrap();
    body["access_token"] = access_token.into();
    body["instance_url"] = state
        .instance_url
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| state.base_url.clone())
        .into();
    respond(Reply::json(200, body.to_string()), None)
}

async fn rest(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri
            .query()
            .map(|q| decode_form(q.as_bytes()))
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        },
    };
    let expected = format!("Bearer {}", state.valid_token.lock().unwrap());
    let authorised = recorded.headers.get("authorization") == Some(&expected)
        && !state.reject_all_sessions.load(Ordering::SeqCst);
    state.calls.lock().unwrap().push(recorded.clone());
    if !authorised {
        return respond(Reply::fixture(401, "error_session.json"), None);
    }
    let used = state.api_calls.fetch_add(1, Ordering::SeqCst)
        + 1
        + state.usage_base.load(Ordering::SeqCst);
    let max = state.usage_max.load(Ordering::SeqCst);
    let reply = (state.responder)(&recorded);
    tokio::time::sleep(reply.delay).await;
    respond(
        reply,
        Some(("sforce-limit-info", format!("api-usage={used}/{max}"))),
    )
}
