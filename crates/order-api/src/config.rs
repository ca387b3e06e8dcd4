//! The order API's settings: every one a flag and an environment variable with a default.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use orderbridge_domain::status_map::StatusMap;
use orderbridge_mapping::Targets;
use orderbridge_webhook::Webhook;

/// HTTP server settings for `order-api serve`.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Address the API listens on.
    #[arg(long, env = "ORDER_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Address of the admin HTTP server (`/health/live`, `/health/ready`, `/metrics`), apart from
    /// the API so metrics are never public.
    #[arg(long, env = "ORDER_API_ADMIN_ADDR", default_value = "127.0.0.1:9105")]
    pub admin_addr: SocketAddr,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "ORDER_API_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Longest a whole request may take before the API answers 503.
    #[arg(long, env = "ORDER_API_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest the client may take to send the request body (slow senders get 408).
    #[arg(long, env = "ORDER_API_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Requests per second each API client may make, sustained.
    #[arg(long, env = "ORDER_API_RATE_LIMIT", default_value = "1000")]
    pub rate_limit: NonZeroU32,
    /// Requests each API client may make in a burst above the sustained rate.
    #[arg(long, env = "ORDER_API_RATE_BURST", default_value = "2000")]
    pub rate_burst: NonZeroU32,
    /// Failed authentications per second each peer address may make, sustained; past its
    /// burst a peer gets 429 without its key being looked up.
    #[arg(long, env = "ORDER_API_AUTH_FAILURE_RATE", default_value = "5")]
    pub auth_failure_rate: NonZeroU32,
    /// Failed authentications each peer address may make in a burst.
    #[arg(long, env = "ORDER_API_AUTH_FAILURE_BURST", default_value = "20")]
    pub auth_failure_burst: NonZeroU32,
    /// How long a valid API key is remembered without a database lookup: a revoked key stops
    /// working within this time. `0s` looks every key up on every request.
    #[arg(long, env = "ORDER_API_KEY_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub key_cache_ttl: Duration,
    /// Resyncs per minute each API client may request, sustained (each can cost Salesforce
    /// calls); a resync of an order already on its way is free but counted too.
    #[arg(long, env = "ORDER_API_RESYNC_RATE", default_value = "60")]
    pub resync_rate: NonZeroU32,
    /// Resyncs each API client may request in a burst.
    #[arg(long, env = "ORDER_API_RESYNC_BURST", default_value = "20")]
    pub resync_burst: NonZeroU32,
    /// How long an Idempotency-Key is remembered; a reuse after that creates a new order.
    #[arg(long, env = "ORDER_API_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,
    /// How long in-flight requests may finish after SIGTERM before the server exits anyway.
    /// Idle connections and requests whose head is not complete are closed at once.
    #[arg(long, env = "ORDER_API_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's head (request line and headers), counted
    /// from the connection's start or its first byte after an idle keep-alive pause; then the
    /// connection is closed without an answer.
    #[arg(long, env = "ORDER_API_HEADER_TIMEOUT", default_value = "5s", value_parser = orderbridge_runtime::parse_interval)]
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may sit idle between requests before it is closed.
    #[arg(long, env = "ORDER_API_IDLE_TIMEOUT", default_value = "60s", value_parser = orderbridge_runtime::parse_interval)]
    pub idle_timeout: Duration,
    /// Most client connections served at once. Beyond it the oldest connection without a
    /// request in progress is closed to make room; if every one is busy, new connections wait
    /// in the listen backlog until one ends.
    #[arg(long, env = "ORDER_API_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroU32,
    /// Longest a long-poll (`GET` with `If-None-Match` and `Prefer: wait=<s>`) waits for the
    /// order to change; larger waits are clamped to it. Comes on top of the request timeout.
    /// `0s` turns long-polls off (such requests are answered at once).
    #[arg(long, env = "ORDER_API_LONG_POLL_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub long_poll_max: Duration,
    /// Interval of the heartbeat comments on a quiet event stream (`/v1/orders/{id}/events`),
    /// so proxies and load balancers do not close it as idle.
    #[arg(long, env = "ORDER_API_SSE_HEARTBEAT", default_value = "15s", value_parser = orderbridge_runtime::parse_interval)]
    pub sse_heartbeat: Duration,
    /// Longest an event stream stays open; clients reconnect with `Last-Event-ID`. Bounds what
    /// one stream can hold (a connection, a stream slot) and spreads streams across instances
    /// after a deploy.
    #[arg(long, env = "ORDER_API_SSE_MAX_DURATION", default_value = "30m", value_parser = orderbridge_runtime::parse_interval)]
    pub sse_max_duration: Duration,
    /// Most event streams open at once in this process; beyond, 503 with `Retry-After`. Each
    /// holds a connection busy: keep it below `ORDER_API_MAX_CONNECTIONS`.
    #[arg(long, env = "ORDER_API_SSE_MAX_STREAMS", default_value_t = 512)]
    pub sse_max_streams: usize,
    /// The sync worker's field mapping or targets file (the same file, and the same variable,
    /// as the worker's; unset: the built-in mapping). Its declared field limits decide what
    /// intake refuses because Salesforce could not hold it exactly (under the order's target,
    /// with several), and an order no target takes is refused; the worker checks the limits
    /// against the org.
    #[arg(long = "mapping-file", env = "WORKER_MAPPING_FILE", default_value = "", hide_default_value = true, value_parser = load_mapping)]
    pub mapping: Arc<Targets>,
    /// The key(s) fulfilment callbacks (`POST /v1/fulfilment/callback`) are signed with, the
    /// same as the fulfilment worker's: `whsec_<base64>` or text of at least 24 bytes,
    /// comma-separated during a rotation. Unset: the callback endpoint is off (404).
    #[arg(long = "fulfilment-signing-secret", env = "FULFILMENT_SIGNING_SECRET", hide_env_values = true, value_parser = parse_webhook)]
    pub fulfilment_webhook: Option<Arc<Webhook>>,
    /// Path of the Salesforce outbound-message endpoint. Salesforce cannot send an API key, so
    /// put a secret segment in it (`/v1/salesforce/outbound-messages/<random>`) and in the
    /// outbound message's endpoint URL.
    #[arg(long, env = "ORDER_API_OUTBOUND_MESSAGE_PATH", default_value = "/v1/salesforce/outbound-messages", value_parser = parse_route_path)]
    pub outbound_message_path: String,
    /// The Salesforce org whose outbound messages are accepted (15- or 18-character id; the
    /// first 15 characters are compared). The default is the local emulator's org.
    #[arg(long, env = "SF_ORG_ID", default_value = "00D5g0000000001EAA", value_parser = parse_org_id)]
    pub sf_org_id: String,
    /// Salesforce Status value → order status for outbound messages, as the subscriber's (same
    /// variable, same rule): `Draft=submitted,Activated=activated` are the defaults; other values
    /// are lower-cased with spaces turned into `_`.
    #[arg(long, env = "SUBSCRIBER_STATUS_MAP", default_value = "")]
    pub status_map: StatusMap,
    /// A Salesforce Order Status value whose arrival in an outbound message requests fulfilment
    /// (the same variable and rule as the subscriber's for change events). Empty: off.
    #[arg(long, env = "SUBSCRIBER_PROVISION_ON_STATUS", default_value = "", value_parser = parse_status_value)]
    pub provision_on_status: String,
}

/// Checks the signing secret once, at start-up; the keys are kept only as keyed MACs, and the
/// value never appears in `Debug` output or errors.
fn parse_webhook(secrets: &str) -> Result<Arc<Webhook>, String> {
    Webhook::from_secrets(secrets)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// A fixed route path: starts with `/`, no `{}` captures or wildcards, no spaces.
fn parse_route_path(path: &str) -> Result<String, String> {
    let ok = path.len() > 1
        && path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    ok.then(|| path.to_owned()).ok_or_else(|| {
        "must start with `/`, not end with one, and hold only letters, digits and `/-_.~`".into()
    })
}

fn parse_status_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err("a Status value is at most 255 characters, without control characters".into());
    }
    Ok(value.to_owned())
}

fn parse_org_id(id: &str) -> Result<String, String> {
    let id = id.trim();
    ((id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_owned())
        .ok_or_else(|| "must be a 15- or 18-character Salesforce org id".into())
}

/// Reads and checks the mapping (or targets) once, at start-up: a broken file stops the API
/// from starting.
fn load_mapping(path: &str) -> Result<Arc<Targets>, String> {
    let path = (!path.is_empty()).then(|| Path::new(path));
    Targets::load(path).map(Arc::new).map_err(|e| e.to_string())
}

impl Default for ApiConfig {
    fn default() -> Self {
        // The same defaults the command line documents, for tests and embedding.
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            api: ApiConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["order-api"]).api
    }
}
