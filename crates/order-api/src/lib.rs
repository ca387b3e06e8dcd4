//! The orderbridge order intake API.
//!
//! ```text
//! client ──HTTP──► request id ─► trace ─► head limits ─► timeouts/limits ─► auth + rate limit ─► handler
//!                                                                                  │
//!                              one transaction: order + lines + outbox event + idempotency key
//!                                                                                  ▼
//!                                                                               Postgres
//! ```
//!
//! [`app`] builds the router apart from [`serve::serve`] (connections, their timeouts and cap,
//! shutdown), so tests drive it with `oneshot` and a per-test database.
//!
//! Waiting for an order to change (long-polls on `GET /v1/orders/{id}`, the event stream
//! `GET /v1/orders/{id}/events`) rests on one `LISTEN` per process ([`watch`], started by
//! [`spawn_listener`]); [`until_shutdown`] ends every wait when the server begins to stop.

pub mod auth;
pub mod body_deadline;
pub mod config;
pub mod detail;
pub mod error;
pub mod events;
pub mod extract;
pub mod field_limits;
pub mod fulfilment_callback;
pub mod health;
pub mod key_cache;
pub mod limits;
pub mod log_text;
pub mod metrics;
pub mod openapi;
pub mod orders;
pub mod outbound;
pub mod portal;
pub mod prefer;
pub mod problem_fallback;
pub mod provision;
pub mod rate_limit;
pub mod request_id;
pub mod serve;
pub mod store;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::http::header::{AUTHORIZATION, IF_NONE_MATCH};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_swagger_ui::SwaggerUi;

pub use config::ApiConfig;
use error::ApiError;
use events::StreamSlots;
use key_cache::KeyCache;
use rate_limit::{AuthFailures, RateLimiter};
use request_id::RequestId;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<ApiConfig>,
    pub rate_limiter: RateLimiter,
    pub resync_limiter: RateLimiter,
    pub auth_failures: AuthFailures,
    pub key_cache: KeyCache,
    /// The orders requests wait on, woken by the process's one `LISTEN` ([`spawn_listener`]).
    pub watch: watch::OrderWatch,
    /// The cap on open event streams (`ORDER_API_SSE_MAX_STREAMS`).
    pub streams: StreamSlots,
    /// What the admin port's `/metrics` shows.
    pub metrics: Arc<metrics::ApiMetrics>,
    /// Turns true when the server begins to stop: waits end at once.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn new(pool: PgPool, config: ApiConfig) -> Self {
        Self {
            rate_limiter: RateLimiter::new(config.rate_limit, config.rate_burst),
            resync_limiter: RateLimiter::with_quota(
                governor::Quota::per_minute(config.resync_rate).allow_burst(config.resync_burst),
            ),
            auth_failures: AuthFailures::new(config.auth_failure_rate, config.auth_failure_burst),
            key_cache: KeyCache::new(config.key_cache_ttl),
            watch: watch::OrderWatch::default(),
            streams: StreamSlots::new(config.sse_max_streams),
            metrics: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            config: Arc::new(config),
            pool,
        }
    }

    /// Ends every wait: event streams close and waiting long-polls answer at once. Called when
    /// the server begins to stop ([`until_shutdown`]), before connections are drained, so no
    /// stream holds the shutdown until its grace runs out.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves (via `wait_for(|s| *s)`) once [`AppState::begin_shutdown`] was called.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }
}

/// The shutdown future to hand to [`serve::serve`]: `signal`, then [`AppState::begin_shutdown`].
pub async fn until_shutdown(state: AppState, signal: impl Future<Output = ()>) {
    signal.await;
    state.begin_shutdown();
}

/// Starts the process's one `LISTEN order_versions` (see [`watch`]); it runs until the pool is
/// closed or the task is aborted.
pub fn spawn_listener(state: &AppState) -> tokio::task::JoinHandle<()> {
    watch::spawn_listener(state.pool.clone(), state.watch.clone())
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let config = state.config.clone();
    let metrics = state.metrics.clone();
    Router::new()
        .route(
            "/v1/orders",
            axum::routing::post(orders::create_order).get(orders::list_orders),
        )
        .route("/v1/orders/{id}", get(orders::get_order))
        .route("/v1/orders/{id}/events", get(events::order_events))
        .route(
            "/v1/orders/{id}/resync",
            axum::routing::post(orders::resync_order),
        )
        .route(
            "/v1/orders/{id}/provision",
            axum::routing::post(provision::provision_order),
        )
        .route(
            "/v1/fulfilment/callback",
            axum::routing::post(fulfilment_callback::fulfilment_callback),
        )
        .route(
            &config.outbound_message_path,
            axum::routing::post(outbound::receive),
        )
        .route("/portal", get(portal::index))
        .route("/portal/portal.js", get(portal::script))
        .route("/portal/portal.css", get(portal::style))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::document(&config.mapping)))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(middleware::from_fn_with_state(
            config.body_timeout,
            body_deadline::limit_body_time,
        ))
        .layer(middleware::from_fn_with_state(
            config.clone(),
            request_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn(limits::check_head))
        .layer(middleware::from_fn(problem_fallback::ensure_problem))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let request_id = req
                        .extensions()
                        .get::<RequestId>()
                        .map(|r| r.0.as_str())
                        .unwrap_or_default();
                    // Client-supplied: bounded and recorded as a string (see `log_text`).
                    let path = log_text::bounded(req.uri().path());
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = path.as_ref(),
                        request_id,
                        client = tracing::field::Empty,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        .layer(middleware::from_fn(request_id::assign))
        // Outermost, so timeouts, panics and refusals by the layers above are counted too.
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
}

/// Bounds the whole request by `ORDER_API_REQUEST_TIMEOUT`; a long-poll gets the wait it asked
/// for (clamped as its handler clamps it) on top, since waiting is not working. An event
/// stream's body is not covered: its handler answers at once, and the stream has bounds of its
/// own.
async fn request_timeout(
    State(config): State<Arc<ApiConfig>>,
    req: Request,
    next: Next,
) -> Response {
    let mut limit = config.request_timeout;
    if req.method() == Method::GET && req.headers().contains_key(IF_NONE_MATCH) {
        limit += prefer::requested_wait(req.headers(), config.long_poll_max).unwrap_or_default();
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Periodic clean-up: expired idempotency keys, idle rate-limit entries and stale cached keys. Runs until the
/// returned task is aborted.
pub fn spawn_housekeeping(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            state.rate_limiter.housekeeping();
            state.resync_limiter.housekeeping();
            state.auth_failures.housekeeping();
            state.key_cache.housekeeping();
            // Small batches until none are left, so no delete holds locks for long.
            loop {
                match orderbridge_db::idempotency::purge_expired_idempotency_keys(&state.pool, 1000)
                    .await
                {
                    Ok(1000) => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(deleted = n, "purged expired idempotency keys");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot purge expired idempotency keys");
                        break;
                    }
                }
            }
        }
    })
}
