//! `GET /v1/orders/{id}/events`: the order as a server-sent event stream. On connect one `order`
//! event with the current state, then one on every version change; `id:` is the version, so a
//! client reconnecting with `Last-Event-ID` gets the current state only if it is newer.
//!
//! Streams are bounded in number (`ORDER_API_SSE_MAX_STREAMS`, beyond → 503) and in lifetime
//! (`ORDER_API_SSE_MAX_DURATION`; clients reconnect with `Last-Event-ID`), send heartbeat
//! comments (`ORDER_API_SSE_HEARTBEAT`) so proxies keep them open, and end at shutdown. A stream
//! reads the order only when the process's one `LISTEN` (`crate::watch`) says it may have
//! changed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use orderbridge_domain::{ClientId, OrderId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Client;
use crate::detail::{self, OrderDetail};
use crate::error::ApiError;
use crate::extract::OrderPath;
use crate::watch::Subscription;

pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The SSE event name of an order's state.
pub const ORDER_EVENT: &str = "order";
/// What a client that was refused a stream should wait before trying again.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// One event of the stream, as an SSE parser (`EventSource`) hands it over. Heartbeats are
/// comments, not events.
#[derive(ToSchema)]
#[allow(dead_code)] // only describes the stream
pub struct OrderStreamEvent {
    /// Always `order`.
    #[schema(example = "order")]
    event: String,
    /// The order's version: send it back as `Last-Event-ID` when reconnecting.
    #[schema(example = "4")]
    id: String,
    /// The order as `GET /v1/orders/{id}` returns it (an `OrderDetail`), as JSON text.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The cap on concurrent streams, shared by the process's handlers.
#[derive(Clone)]
pub struct StreamSlots(Arc<Semaphore>);

impl StreamSlots {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }
}

/// Stream an order's changes.
///
/// A `text/event-stream` of `order` events, each with `id:` the order's version and `data:` the
/// order exactly as `GET /v1/orders/{id}` returns it (with `status` and `status_history`). The
/// first event is the current state; then one follows every change. Send `Last-Event-ID` (the
/// last `id:` you received) when reconnecting: the current state is sent only if it is newer.
/// Comments (`: heartbeat`) keep the connection alive every `ORDER_API_SSE_HEARTBEAT` (15 s by
/// default). A stream ends after `ORDER_API_SSE_MAX_DURATION` (30 minutes by default) or when
/// the server shuts down; reconnect with `Last-Event-ID`. At most `ORDER_API_SSE_MAX_STREAMS`
/// streams (512 by default) are open at once: beyond, 503 with `Retry-After`. Another client's
/// order is 404.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/events",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id (order version) received; the current state is sent only if newer."),
    ),
    responses(
        (status = 200, description = "An event stream of `order` events (`id:` the version, `data:` the order as GET returns it), with heartbeat comments.",
            content_type = "text/event-stream", body = OrderStreamEvent),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order for this client.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams, or the database is unavailable; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn order_events(
    State(state): State<AppState>,
    client: Client,
    OrderPath(id): OrderPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let slot =
        state
            .streams
            .0
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                retry_after: STREAM_RETRY_AFTER,
            })?;
    // Before the first read, so no change falls between it and the wait.
    let subscription = state.watch.subscribe(id.get());
    let current = {
        let mut conn = state.pool.acquire().await?;
        detail::load(&mut conn, client.id, id)
            .await?
            .ok_or(ApiError::NotFound)?
    };
    // A malformed Last-Event-ID is no resume point: the client gets the current state.
    let last_event_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let (first, last_sent) = match last_event_id {
        Some(seen) if seen >= current.order.version => (None, seen),
        _ => (Some(current.clone()), current.order.version),
    };
    let config = &state.config;
    let streaming = Streaming {
        deadline: Instant::now() + config.sse_max_duration,
        stopping: state.stopping(),
        subscription,
        first,
        last_sent,
        client_id: client.id,
        id,
        state: state.clone(),
        _slot: slot,
    };
    let sse = Sse::new(events(streaming)).keep_alive(
        KeepAlive::new()
            .interval(config.sse_heartbeat)
            .text("heartbeat"),
    );
    // Proxies must pass events through as they come (nginx buffers otherwise).
    Ok((
        [
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        sse,
    )
        .into_response())
}

/// What one open stream holds: its slot, its subscription, and how far the client is.
struct Streaming {
    state: AppState,
    client_id: ClientId,
    id: OrderId,
    subscription: Subscription,
    /// The state to send before waiting (the current one on connect).
    first: Option<OrderDetail>,
    /// The version the client has.
    last_sent: i64,
    deadline: Instant,
    stopping: tokio::sync::watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

fn events(streaming: Streaming) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(streaming, |mut s| async move {
        if let Some(first) = s.first.take() {
            return Some((Ok(order_event(&first)), s));
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(s.deadline) => return None,
                _ = s.stopping.wait_for(|stopping| *stopping) => return None,
                () = s.subscription.changed() => {}
            }
            let mut conn = match s.state.pool.acquire().await {
                Ok(conn) => conn,
                Err(e) => {
                    // The client reconnects with Last-Event-ID and misses nothing.
                    tracing::warn!(error = %e, "ending an event stream: database unavailable");
                    return None;
                }
            };
            match detail::load(&mut conn, s.client_id, s.id).await {
                Ok(Some(d)) if d.order.version > s.last_sent => {
                    s.last_sent = d.order.version;
                    return Some((Ok(order_event(&d)), s));
                }
                // Woken for a change we already sent (or every waiter was woken).
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "ending an event stream: cannot read the order");
                    return None;
                }
            }
        }
    })
}

fn order_event(d: &OrderDetail) -> Event {
    let event = Event::default()
        .event(ORDER_EVENT)
        .id(d.order.version.to_string());
    match serde_json::to_string(d) {
        Ok(json) => event.data(json),
        // Cannot happen for our own types; a comment keeps the stream well-formed.
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an order event");
            Event::default().comment("unserializable order")
        }
    }
}
