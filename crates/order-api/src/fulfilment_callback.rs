//! `POST /v1/fulfilment/callback`: the fulfilment system's later answer to a request it took
//! with 202 (issue 14). Authenticated by its Standard Webhooks signature
//! (`FULFILMENT_SIGNING_SECRET`, see `orderbridge_webhook`), not by an API key: the fulfilment
//! system is not an API client. Without a configured secret the endpoint does not exist (404).
//!
//! In one transaction the outcome is recorded (`orderbridge_db::fulfilment::record_outcome`:
//! request decided, local status `provisioned` / `provisioning_failed` with history) and an
//! outbox event `fulfilment.result` is written, so the worker writes the result back to the
//! Salesforce order. A callback for a request decided before is answered 200 and changes
//! nothing: senders retry until they get a 2xx.

use std::net::SocketAddr;

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use orderbridge_db::fulfilment::{self, Outcome, Recorded};
use orderbridge_domain::fulfilment::RequestState;
use orderbridge_webhook::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Headers};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::request_id::RequestId;

/// Largest callback body read (bytes): a request id, a status and a reason.
pub const CALLBACK_BODY_LIMIT: usize = 16 * 1024;

/// The callback's body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallbackBody {
    /// The id of the fulfilment request (the `webhook-id` and `request_id` it was sent with).
    pub request_id: Uuid,
    /// The decision.
    pub status: CallbackStatus,
    /// Why it failed (`failed` only); cut to 1000 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the fulfilment system decided.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    Provisioned,
    Failed,
}

/// The answer to a callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackResponse {
    pub request_id: Uuid,
    /// The request's state now: `provisioned` or `failed` (for a request decided before, what
    /// it was decided as, which may differ from this callback's status).
    #[schema(value_type = String, example = "provisioned")]
    pub state: RequestState,
    /// False when the request had been decided before and this callback changed nothing.
    pub recorded: bool,
}

/// Fulfilment result callback.
///
/// The fulfilment system's result for a request it answered with 202 `accepted`. Signed with
/// the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp` within 300 s,
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`) under
/// `FULFILMENT_SIGNING_SECRET`; no API key. Records the outcome on the request and the order
/// (status `provisioned` or `provisioning_failed`) and queues the write-back to Salesforce, in
/// one transaction. Idempotent: a request decided before answers 200 with `recorded: false`.
/// The endpoint is 404 when no secret is configured. Bad signatures count against the
/// sender's address like failed API-key authentications (`ORDER_API_AUTH_FAILURE_RATE`).
#[utoipa::path(
    post,
    path = "/v1/fulfilment/callback",
    tag = "fulfilment",
    request_body(content = CallbackBody, content_type = "application/json"),
    params(
        ("webhook-id" = String, Header, description = "Message id."),
        ("webhook-timestamp" = String, Header, description = "Unix time (seconds) of signing; within 300 s of the server's clock."),
        ("webhook-signature" = String, Header, description = "`v1,<base64 signature>`, several space-separated during a key rotation."),
    ),
    responses(
        (status = 200, description = "Recorded (or decided before: `recorded: false`).", body = CallbackResponse),
        (status = 401, description = "Missing, malformed, stale or non-matching signature.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such request, or callbacks are not configured.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 16 KiB.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is not a callback.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many bad signatures from this address; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn fulfilment_callback(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(webhook) = state.config.fulfilment_webhook.clone() else {
        return Err(ApiError::NotFound);
    };
    // A peer that keeps sending bad signatures is throttled like one guessing API keys.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        state.auth_failures.check(peer)?;
    }
    let (parts, body) = req.into_parts();
    let headers: HeaderMap = parts.headers;
    let bytes = to_bytes(body, CALLBACK_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(CALLBACK_BODY_LIMIT))?;
    let received = Headers {
        id: headers.get(HEADER_ID).map(|v| v.as_bytes()),
        timestamp: headers.get(HEADER_TIMESTAMP).map(|v| v.as_bytes()),
        signature: headers.get(HEADER_SIGNATURE).map(|v| v.as_bytes()),
    };
    let verified = webhook.verify(received, &bytes).map_err(|e| {
        tracing::warn!(code = e.code(), error = %e, "fulfilment callback refused");
        match peer.map(|p| state.auth_failures.failed(p)) {
            Some(throttled @ ApiError::AuthThrottled { .. }) => throttled,
            _ => ApiError::BadSignature(e),
        }
    })?;
    let callback: CallbackBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Unprocessable(format!("not a fulfilment callback: {e}")))?;
    let outcome = match callback.status {
        CallbackStatus::Provisioned => Outcome::Provisioned,
        CallbackStatus::Failed => Outcome::Failed {
            reason: callback
                .reason
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "the fulfilment system gave no reason".to_owned()),
        },
    };
    // Its own task, as for orders: a disconnect or timeout never abandons the transaction.
    let task = tokio::spawn(record(
        state.pool.clone(),
        callback.request_id,
        outcome,
        request_id,
    ));
    let recorded = task.await.map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("fulfilment callback task failed: {e}"))
    })??;
    let (state_now, fresh) = match recorded {
        Recorded::Recorded { state, .. } => (state, true),
        Recorded::AlreadyDecided { state, .. } => (state, false),
        Recorded::UnknownRequest => return Err(ApiError::NotFound),
    };
    tracing::info!(
        fulfilment_request_id = %callback.request_id,
        webhook_id = %verified.id,
        state = %state_now,
        recorded = fresh,
        "fulfilment callback"
    );
    Ok((
        StatusCode::OK,
        Json(CallbackResponse {
            request_id: callback.request_id,
            state: state_now,
            recorded: fresh,
        }),
    )
        .into_response())
}

async fn record(
    pool: PgPool,
    id: Uuid,
    outcome: Outcome,
    correlation_id: String,
) -> Result<Recorded, ApiError> {
    let mut tx = pool.begin().await?;
    let recorded = fulfilment::record_outcome(&mut tx, id, outcome).await?;
    if let Recorded::Recorded { order_id, .. } = recorded {
        fulfilment::queue_result(&mut tx, id, order_id, Some(&correlation_id)).await?;
    }
    tx.commit().await?;
    Ok(recorded)
}
