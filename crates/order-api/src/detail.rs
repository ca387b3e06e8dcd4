//! One order as `GET /v1/orders/{id}` and its event stream return it: the stored order and its
//! business status history (`status_history`), read so that the two agree.

use chrono::{DateTime, Utc};
use orderbridge_db::fulfilment::FulfilmentRequest;
use orderbridge_db::{fulfilment, orders, status};
use orderbridge_domain::{ClientId, Order, OrderId, StatusEntry};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;

use crate::store;

/// How often [`load`] reads again when a change committed between reading the order and its
/// history; after that it answers with the last pair (the next change notification follows).
const CONSISTENT_READ_ATTEMPTS: usize = 3;

/// An order with its business status history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderDetail {
    #[serde(flatten)]
    pub order: Order,
    /// Every business status the order has had, in the order they were decided (a change that
    /// arrived late sits where it was decided), oldest first; the last one is `status`.
    #[schema(value_type = Vec<StatusEntrySchema>)]
    pub status_history: Vec<StatusEntry>,
    /// The order's latest fulfilment request, once provisioning was asked for (an approval in
    /// Salesforce, `POST /v1/orders/{id}/provision`); absent before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<Fulfilment>,
}

/// Where the order's provisioning stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Fulfilment {
    pub request_id: uuid::Uuid,
    /// `queued` (on its way to the fulfilment system), `accepted` (it answered 202; the result
    /// comes by callback), `provisioned` or `failed`.
    #[schema(example = "provisioned")]
    pub state: String,
    /// Why it failed, as the fulfilment system (or orderbridge, after its retries) said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Calls made to the fulfilment system for this request.
    pub attempts: i32,
    /// What asked for it: `platform_event`, `status_change`, `outbound_message` or `api`.
    #[schema(example = "platform_event")]
    pub trigger: String,
    /// Whether the result has been written to the Salesforce order.
    pub written_back: bool,
    pub updated_at: DateTime<Utc>,
}

impl From<FulfilmentRequest> for Fulfilment {
    fn from(r: FulfilmentRequest) -> Self {
        Self {
            request_id: r.id,
            state: r.state.as_str().to_owned(),
            reason: r.reason,
            attempts: r.attempts,
            trigger: r.trigger,
            written_back: r.written_back_at.is_some(),
            updated_at: r.updated_at,
        }
    }
}

/// One business status an order had.
// The schema of `orderbridge_domain::StatusEntry`, described here so the domain crate's type
// carries no API documentation.
#[derive(ToSchema)]
#[schema(as = StatusEntry)]
#[allow(dead_code)] // only describes the JSON
pub struct StatusEntrySchema {
    /// The status, as Salesforce names it (`submitted` is orderbridge's own, at creation).
    #[schema(example = "Activated")]
    status: String,
    /// When the status was decided: the order's creation, or the Salesforce change's commit.
    at: DateTime<Utc>,
    /// Who set it: `api` (creation), `salesforce` (change events), `outbound_message`,
    /// `reconcile` or `fulfilment`.
    #[schema(example = "salesforce")]
    source: String,
}

/// The client's order with its history, or `None` when the client has no such order.
pub async fn load(
    conn: &mut PgConnection,
    client_id: ClientId,
    id: OrderId,
) -> Result<Option<OrderDetail>, sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(order) = orders::get_order(conn, id, Some(client_id)).await? else {
            return Ok(None);
        };
        let status_history = status::history(&mut *conn, id).await?;
        let fulfilment = fulfilment::latest_for_order(&mut *conn, id)
            .await?
            .map(Fulfilment::from);
        // Versions only grow, and a status change writes its history row and the new version
        // in one transaction: if the version is still the order's after reading the history,
        // nothing committed in between and the history is exactly the order's.
        let version = store::order_version(&mut *conn, client_id, id).await?;
        if version == Some(order.version) || attempt >= CONSISTENT_READ_ATTEMPTS {
            return Ok(Some(OrderDetail {
                order,
                status_history,
                fulfilment,
            }));
        }
    }
}
