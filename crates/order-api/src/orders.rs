//! `/v1/orders`: create, read (and long-poll), list and resync orders.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use orderbridge_db::create::{self, Created, Idempotency};
use orderbridge_db::orders::{self, Resync, ResyncError, ResyncWhen};
use orderbridge_domain::{ClientId, NewOrder, NewOrderRequest, Order, OrderId, SyncState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Client;
use crate::detail::{self, OrderDetail};
use crate::error::ApiError;
use crate::extract::{JsonBody, OrderPath, QueryParams};
use crate::prefer::{self, PREFERENCE_APPLIED};
use crate::request_id::RequestId;
use crate::store::{self, ListFilter};
use crate::watch::Subscription;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// On a resync's 202: whether a new event was queued.
pub const RESYNC_QUEUED: HeaderName = HeaderName::from_static("resync-queued");
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// Create an order.
///
/// Validates the order, stores it with its `order.submitted` event in one transaction, and
/// answers 201 with the stored order. Send an `Idempotency-Key` to retry safely: the same key with
/// the same body replays the first response (with `Idempotent-Replayed: true`), the same key with a
/// different body is rejected with 422, and a key whose first request is still running gets 409.
/// Keys are remembered for 24 hours by default (`ORDER_API_IDEMPOTENCY_TTL`).
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$",
            description = "Client-chosen key (1-255 printable ASCII characters) that makes retries safe."),
        ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent and echoed back."),
    ),
    request_body(content = NewOrderRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Order created (or replayed for a repeated Idempotency-Key).", body = Order,
            headers(
                ("Location" = String, description = "URL of the new order"),
                ("ETag" = String, description = "Entity tag of the order"),
                ("Idempotent-Replayed" = String, description = "`true` when this is a stored response replayed for a repeated Idempotency-Key"),
            )),
        (status = 400, description = "Malformed JSON or Idempotency-Key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body was not received in time.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Duplicate `client_ref`, or a request with this Idempotency-Key is in flight.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the limit.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Validation failed (field-level `errors`), or Idempotency-Key reused with another body.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or request timed out; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_order(
    State(state): State<AppState>,
    client: Client,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: JsonBody<NewOrderRequest>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&headers)?;
    let new_order = NewOrder::parse(body.value)?;
    let client_scope = client.scope();
    let idempotency = idempotency.map(|key| Idempotency {
        fingerprint: fingerprint(&body.document),
        key,
        expires_at: Utc::now()
            + chrono::Duration::from_std(state.config.idempotency_ttl)
                .unwrap_or(chrono::Duration::MAX),
    });
    // Postgres keeps microseconds: truncate so the response equals what a later GET returns.
    let now = Utc::now().trunc_subsecs(6);
    let order = new_order.into_order(OrderId::new_v7(), now);
    crate::field_limits::check(&state.config.mapping, &order, &client_scope)?;

    // The transaction runs in its own task: if the client disconnects or the request times
    // out, it still commits or rolls back as a whole, never abandoned mid-BEGIN (sqlx #4393).
    let pool = state.pool.clone();
    let task = tokio::spawn(async move {
        create::create_order(
            &pool,
            &client_scope,
            idempotency.as_ref(),
            order,
            Some(request_id),
        )
        .await
    });
    let created = task
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("order creation task failed: {e}")))??;

    match created {
        Created::New { order, body } => {
            state
                .metrics
                .orders_created_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                order_id = %order.id,
                client_ref = crate::log_text::bounded(&order.client_ref).as_ref(),
                "order accepted"
            );
            let headers = [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (LOCATION, location(order.id)),
                (ETAG, etag(order.version)),
            ];
            Ok((StatusCode::CREATED, headers, body).into_response())
        }
        Created::Replayed(stored) => {
            let status = u16::try_from(stored.response_status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::CREATED);
            let mut response = (
                status,
                [
                    (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (LOCATION, location(stored.order_id())),
                    (IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
                ],
            )
                .into_response();
            // The original 201's ETag was the version in the body it sent, which is the body
            // replayed here: the same tag, even if the order has changed since.
            if let Some(version) = stored_version(&stored.response_body) {
                response.headers_mut().insert(ETAG, etag(version));
            }
            *response.body_mut() = axum::body::Body::from(stored.response_body);
            Ok(response)
        }
    }
}

/// The order version in a stored 201 body (always there; `None` only for a body this version
/// of the API did not write).
fn stored_version(body: &[u8]) -> Option<i64> {
    #[derive(Deserialize)]
    struct Versioned {
        version: i64,
    }
    serde_json::from_slice::<Versioned>(body)
        .ok()
        .map(|v| v.version)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len())
                && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// SHA-256 of the body in canonical form (object keys sorted, no insignificant whitespace), so
/// the same order sent with its keys in another order is still "the same request".
fn fingerprint(document: &serde_json::Value) -> [u8; 32] {
    fn write(v: &serde_json::Value, h: &mut Sha256) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    write(&serde_json::Value::String(k.clone()), h);
                    h.update(b":");
                    write(&map[k], h);
                    h.update(b",");
                }
                h.update(b"}");
            }
            serde_json::Value::Array(items) => {
                h.update(b"[");
                for item in items {
                    write(item, h);
                    h.update(b",");
                }
                h.update(b"]");
            }
            scalar => h.update(scalar.to_string().as_bytes()),
        }
    }
    let mut h = Sha256::new();
    write(document, &mut h);
    h.finalize().into()
}

pub(crate) fn location(id: OrderId) -> HeaderValue {
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(&format!("/v1/orders/{id}"))
        .unwrap_or(HeaderValue::from_static("/v1/orders"))
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"v{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// RFC 9110 If-None-Match: a list of tags or `*`; comparison is weak (a `W/` prefix is ignored).
fn etag_matches(if_none_match: &HeaderValue, version: i64) -> bool {
    let current = format!("\"v{version}\"");
    if_none_match.to_str().is_ok_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
    })
}

/// Get an order.
///
/// Returns the order with its sync state, its business `status` and `status_history` (every
/// status it has had, in the order they were decided: `submitted` at creation, then what
/// Salesforce and the fulfilment system decide). Send
/// the `ETag` back as `If-None-Match` to poll cheaply: while nothing changed the answer is 304
/// with no body. Another client's order is 404.
///
/// Long-poll: with `If-None-Match` and `Prefer: wait=<seconds>`, a matching ETag does not answer
/// 304 at once but waits until the order changes (200 with the new order) or the wait ends
/// (304). The wait is clamped to `ORDER_API_LONG_POLL_MAX` (30 s by default) and reported in
/// `Preference-Applied: wait=<seconds>`; a malformed `wait` is ignored.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("If-None-Match" = Option<String>, Header, description = "ETag from an earlier response"),
        ("Prefer" = Option<String>, Header, example = "wait=25",
            description = "`wait=<seconds>` with `If-None-Match`: wait up to that long for a change (long-poll), at most ORDER_API_LONG_POLL_MAX."),
    ),
    responses(
        (status = 200, description = "The order.", body = OrderDetail, headers(
            ("ETag" = String, description = "Entity tag of the order"),
            ("Preference-Applied" = Option<String>, description = "`wait=<seconds>`: the long-poll wait applied"),
        )),
        (status = 304, description = "Not modified since the given ETag (for a long-poll: not within the wait).", headers(
            ("ETag" = String, description = "Entity tag of the order"),
            ("Preference-Applied" = Option<String>, description = "`wait=<seconds>`: the long-poll wait applied"),
        )),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order for this client.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_order(
    State(state): State<AppState>,
    client: Client,
    OrderPath(id): OrderPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let no_cache = (CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    let mut applied = None;
    if let Some(inm) = headers.get(IF_NONE_MATCH) {
        let wait = prefer::requested_wait(&headers, state.config.long_poll_max);
        applied = wait.map(|w| {
            [(
                PREFERENCE_APPLIED,
                HeaderValue::from_str(&format!("wait={}", w.as_secs()))
                    .unwrap_or(HeaderValue::from_static("wait=0")),
            )]
        });
        // Before the first read, so a change committed after it wakes the wait.
        let mut subscription = wait.map(|_| state.watch.subscribe(id.get()));
        // The cheap path for pollers: one indexed lookup of a single column.
        let version = store::order_version(&state.pool, client.id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        if etag_matches(inm, version) {
            let unchanged = match (wait, subscription.as_mut()) {
                (Some(wait), Some(subscription)) => {
                    wait_for_change(&state, subscription, client.id, id, inm, wait).await?
                }
                _ => Some(version),
            };
            if let Some(version) = unchanged {
                return Ok((
                    StatusCode::NOT_MODIFIED,
                    [(ETAG, etag(version)), no_cache],
                    applied,
                    (),
                )
                    .into_response());
            }
        }
    }
    let mut conn = state.pool.acquire().await?;
    let order = detail::load(&mut conn, client.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((
        [(ETAG, etag(order.order.version)), no_cache],
        applied,
        Json(order),
    )
        .into_response())
}

/// Waits up to `wait` for the order's ETag to stop matching `inm`: `None` once it changed,
/// `Some(version)` (still matching) when the wait ended or the server began to stop. Reads the
/// version only when the listener says the order may have changed.
async fn wait_for_change(
    state: &AppState,
    subscription: &mut Subscription,
    client_id: ClientId,
    id: OrderId,
    inm: &HeaderValue,
    wait: Duration,
) -> Result<Option<i64>, ApiError> {
    let deadline = Instant::now() + wait;
    let mut stopping = state.stopping();
    loop {
        let woken = tokio::select! {
            () = tokio::time::sleep_until(deadline) => false,
            _ = stopping.wait_for(|stopping| *stopping) => false,
            () = subscription.changed() => true,
        };
        let version = store::order_version(&state.pool, client_id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        if !etag_matches(inm, version) {
            return Ok(None);
        }
        if !woken {
            return Ok(Some(version));
        }
    }
}

/// Resync an order.
///
/// Sends the order to Salesforce again, e.g. after it `failed` and the cause was fixed there.
/// In one transaction the order goes back to sync state `pending` (attempts and last error
/// cleared; `salesforce_id` and `synced_at` kept) and a new `order.submitted` event carrying the
/// order as it now is joins the outbox. Answers 202 with the order; its sync fields then move
/// as for a new order. Reports about earlier events that arrive later are ignored. Another
/// client's order is 404.
///
/// An order whose sync has not settled yet (`pending`, `published`, `retrying`) already has an
/// event on its way: the resync is then a no-op, answered 202 with `Resync-Queued: false`, so
/// repeating a resync never costs Salesforce calls. Resyncs are rate-limited per client
/// (`ORDER_API_RESYNC_RATE` per minute).
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/resync",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent and echoed back."),
    ),
    responses(
        (status = 202, description = "Resync accepted: the order, back in sync state `pending` (or, with `Resync-Queued: false`, unchanged because its sync is still under way).", body = Order,
            headers(
                ("Location" = String, description = "URL of the order"),
                ("ETag" = String, description = "Entity tag of the order"),
                ("Resync-Queued" = String, description = "`true` when a new event was queued, `false` when the order's sync was still under way and nothing was queued"),
            )),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order for this client.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit (requests or resyncs) exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or request timed out; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn resync_order(
    State(state): State<AppState>,
    client: Client,
    OrderPath(id): OrderPath,
    RequestId(request_id): RequestId,
) -> Result<Response, ApiError> {
    state
        .resync_limiter
        .check(client.id)
        .map_err(|retry_after| ApiError::ResyncRateLimited { retry_after })?;
    // Its own task, as for create: a disconnect or timeout never abandons the transaction.
    let task = tokio::spawn(resync_in_transaction(
        state.pool.clone(),
        client.id,
        id,
        request_id,
    ));
    let resync = task
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("order resync task failed: {e}")))??;
    let queued = matches!(resync, Resync::Queued(_));
    let order = resync.into_order();
    if queued {
        tracing::info!(order_id = %order.id, version = order.version, "order resync accepted");
    } else {
        tracing::info!(order_id = %order.id, sync_state = ?order.sync.state, "order resync not needed: its sync is under way");
    }
    let headers = [
        (LOCATION, location(order.id)),
        (ETAG, etag(order.version)),
        (
            RESYNC_QUEUED,
            HeaderValue::from_static(if queued { "true" } else { "false" }),
        ),
    ];
    Ok((StatusCode::ACCEPTED, headers, Json(order)).into_response())
}

async fn resync_in_transaction(
    pool: PgPool,
    client_id: ClientId,
    id: OrderId,
    correlation_id: String,
) -> Result<Resync, ApiError> {
    let mut tx = pool.begin().await?;
    let resync = orders::queue_resync(
        &mut tx,
        id,
        Some(client_id),
        Some(correlation_id),
        ResyncWhen::Settled,
    )
    .await
    .map_err(|e| match e {
        ResyncError::Db(e) => ApiError::from(e),
        // Nothing is committed: the transaction is dropped, so rolled back.
        e @ ResyncError::VersionMismatch { .. } => ApiError::Internal(e.into()),
    })?
    .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok(resync)
}

/// Filters and paging for listing orders.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only orders in this sync state.
    sync_state: Option<SyncState>,
    /// Only the order with this client reference.
    client_ref: Option<String>,
    /// Only orders created after this instant (RFC 3339).
    created_after: Option<DateTime<Utc>>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page (opaque).
    #[param(pattern = "^AQ[A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$")]
    cursor: Option<String>,
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List orders.
///
/// The client's orders, newest first, filtered and paged with an opaque cursor.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders.", body = OrderPage),
        (status = 400, description = "Invalid filter, limit or cursor.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_orders(
    State(state): State<AppState>,
    client: Client,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if params
        .client_ref
        .as_deref()
        .is_some_and(|r| r.chars().any(char::is_control))
    {
        // No stored client_ref has one (validation refuses them), and Postgres would reject
        // a NUL: the filter simply matches nothing.
        return Ok(Json(OrderPage {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let before = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = ListFilter {
        sync_state: params.sync_state,
        client_ref: params.client_ref,
        created_after: params.created_after,
        before,
    };
    let mut conn = state.pool.acquire().await?;
    // One extra row tells whether another page exists.
    let mut items = store::list_orders(&mut conn, client.id, &filter, i64::from(limit) + 1).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|o| encode_cursor(o.id))
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}

// Cursors are opaque to clients; a version byte leaves room to change what they hold.
const CURSOR_V1: u8 = 1;

fn encode_cursor(id: OrderId) -> String {
    let mut raw = Vec::with_capacity(17);
    raw.push(CURSOR_V1);
    raw.extend_from_slice(id.get().as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Result<OrderId, ApiError> {
    let invalid = || ApiError::BadRequest("cursor is not a valid next_cursor value".into());
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    match raw.split_first() {
        Some((&CURSOR_V1, id)) => Uuid::from_slice(id)
            .map(OrderId::from_uuid)
            .map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = OrderId::new_v7();
        let cursor = encode_cursor(id);
        assert_eq!(decode_cursor(&cursor).ok(), Some(id));
        // The pattern published in the OpenAPI document: AQ (version 1), 20 free characters,
        // and a last character whose two low bits are zero (17 bytes in 23 base64 characters).
        assert_eq!(cursor.len(), 23);
        assert!(cursor.starts_with("AQ"));
        assert!("AEIMQUYcgkosw048".contains(&cursor[22..]));
        assert!(decode_cursor(&format!("AQ{}w", "_".repeat(20))).is_ok());
        assert!(decode_cursor("not base64!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode([9u8; 17])).is_err());
        assert!(decode_cursor("").is_err());
    }

    #[test]
    fn fingerprint_ignores_key_order_but_not_values() {
        let a = serde_json::json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"b": {"d": "x", "c": [1, 2]}, "a": 1}"#).unwrap_or_default();
        let c = serde_json::json!({"a": 1, "b": {"c": [2, 1], "d": "x"}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let m = |s: &'static str| etag_matches(&HeaderValue::from_static(s), 3);
        assert!(m("\"v3\""));
        assert!(m("W/\"v3\""));
        assert!(m("\"v1\", \"v3\""));
        assert!(m("*"));
        assert!(!m("\"v2\""));
        assert!(!m("v3"));
    }
}
