//! `POST /v1/orders/{id}/provision`: an operator's (or the application's) retry of fulfilment,
//! beside re-publishing `OrderProvisionRequested__e` from Salesforce. The request is opened by
//! `orderbridge_db::fulfilment::request_for_order`, so the same rules hold whichever way a retry
//! comes: an order already provisioned is a no-op, an open request is not doubled, a failed one
//! is tried again under a fresh key (a retry is a new request for the fulfilment system).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use orderbridge_db::fulfilment::{self, Requested};
use orderbridge_domain::fulfilment::{Trigger, idem_key};
use orderbridge_domain::{ClientId, OrderId};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Client;
use crate::error::ApiError;
use crate::extract::OrderPath;
use crate::orders::location;
use crate::request_id::RequestId;

/// What a provisioning request did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProvisionAnswer {
    /// `true` when a new fulfilment request was queued; `false` when one is already open or the
    /// order is provisioned.
    pub queued: bool,
    /// The request that now stands for the order (absent when it was provisioned already).
    pub request_id: Option<Uuid>,
    /// `queued`, `open` (a request already on its way) or `provisioned`.
    #[schema(example = "queued")]
    pub outcome: &'static str,
}

/// Provision an order (again).
///
/// Asks the fulfilment system to provision the order, as an approval in Salesforce does: a
/// fulfilment request is queued (status `provisioning`), and the order moves to `provisioned` or
/// `provisioning_failed` as the fulfilment system answers; its detail shows the request under
/// `fulfilment`. Use it to retry after `provisioning_failed`. An order already provisioned is
/// left alone (200); a request already on its way is not doubled (202, `queued: false`). The
/// order must be in Salesforce (sync state `synced`): the result is written back there.
/// Rate-limited with resyncs (`ORDER_API_RESYNC_RATE`).
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/provision",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("X-Request-Id" = Option<String>, Header, description = "Correlation id; generated when absent and echoed back. Carried to the fulfilment system."),
    ),
    responses(
        (status = 202, description = "A fulfilment request was queued (`queued: true`) or one is already on its way (`queued: false`).", body = ProvisionAnswer,
            headers(("Location" = String, description = "URL of the order"))),
        (status = 200, description = "The order is provisioned already: nothing done.", body = ProvisionAnswer),
        (status = 401, description = "Missing or invalid API key.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order for this client.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not in Salesforce yet.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit (requests or resyncs) exceeded; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected error.", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable or request timed out; see Retry-After.", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn provision_order(
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
    let task = tokio::spawn(request(state.pool.clone(), client.id, id, request_id));
    let requested = task
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("provision task failed: {e}")))??;
    tracing::info!(order_id = %id, ?requested, "provisioning asked for through the API");
    let (status, answer) = match requested {
        Requested::Queued { id: request_id, .. } => (
            StatusCode::ACCEPTED,
            ProvisionAnswer {
                queued: true,
                request_id: Some(request_id),
                outcome: "queued",
            },
        ),
        Requested::Duplicate { id: request_id } => (
            StatusCode::ACCEPTED,
            ProvisionAnswer {
                queued: false,
                request_id: Some(request_id),
                outcome: "open",
            },
        ),
        Requested::AlreadyProvisioned { .. } => (
            StatusCode::OK,
            ProvisionAnswer {
                queued: false,
                request_id: None,
                outcome: "provisioned",
            },
        ),
        Requested::UnknownOrder => return Err(ApiError::NotFound),
        Requested::NotSynced { .. } => return Err(ApiError::NotSynced),
    };
    Ok((status, [(LOCATION, location(id))], Json(answer)).into_response())
}

async fn request(
    pool: PgPool,
    client_id: ClientId,
    id: OrderId,
    correlation_id: String,
) -> Result<Requested, ApiError> {
    let mut conn = pool.acquire().await?;
    let key = idem_key::api(Uuid::now_v7());
    Ok(fulfilment::request_for_order(
        &mut conn,
        id,
        Some(client_id),
        &key,
        Trigger::API,
        Some(&correlation_id),
    )
    .await?)
}
