//! What Postgres knows of one order: the row, its business status history, its outbox events
//! (and how many unpublished events are ahead of the first one still waiting), and its newest
//! fulfilment request.

use chrono::{DateTime, Utc};
use orderbridge_domain::{OrderId, StatusEntry};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The order's row, as much of it as says where the order is.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub client_id: Uuid,
    pub client_ref: String,
    pub status: String,
    pub sync_state: String,
    pub salesforce_id: Option<String>,
    pub sync_attempts: i32,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub synced_at: Option<DateTime<Utc>>,
    /// The `data.version` of the event the sync state is about.
    pub sync_event_version: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One outbox row of the order.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub position: i64,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

/// The outbox ahead of the order's first unpublished event.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    /// Unpublished events (of any order) written before it.
    pub ahead: i64,
    /// When the oldest unpublished event was written.
    pub oldest_at: Option<DateTime<Utc>>,
}

/// The order's newest fulfilment request.
#[derive(Debug, Clone, Serialize)]
pub struct Fulfilment {
    pub id: Uuid,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: i32,
    pub written_back_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// Everything Postgres says about the order.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub order: OrderRow,
    pub history: Vec<StatusEntry>,
    /// Oldest first. Published rows are deleted after the relay's retention (`RELAY_RETENTION`),
    /// so an old order may have none.
    pub events: Vec<OutboxEvent>,
    /// Set when one of the events is unpublished.
    pub backlog: Option<Backlog>,
    pub fulfilment: Option<Fulfilment>,
}

impl Stored {
    /// The order's event ids: what its broker messages carry as `message_id`.
    pub fn event_ids(&self) -> Vec<String> {
        self.events.iter().map(|e| e.event_id.to_string()).collect()
    }
}

/// Reads the order; `None` when there is no such order.
pub async fn load(pool: &PgPool, id: OrderId) -> Result<Option<Stored>, sqlx::Error> {
    let order: Option<OrderRow> = sqlx::query_as(
        "SELECT id, client_id, client_ref, status, sync_state, salesforce_id, sync_attempts,
                last_error_code, last_error_message, synced_at, sync_event_version, version,
                created_at, updated_at
         FROM orders WHERE id = $1",
    )
    .bind(id.get())
    .fetch_optional(pool)
    .await?;
    let Some(order) = order else {
        return Ok(None);
    };
    let history = orderbridge_db::status::history(pool, id).await?;
    // The outbox has no index on aggregate_id (it would cost every intake); an event is never
    // published before its order was created, so the two partial indexes (unpublished rows,
    // and rows by published_at) bound the scan to what was published since then.
    let events: Vec<OutboxEvent> = sqlx::query_as(
        "SELECT event_id, event_type, position, created_at, published_at FROM outbox
         WHERE aggregate_id = $1 AND (published_at IS NULL OR published_at >= $2)
         ORDER BY position",
    )
    .bind(id.get())
    .bind(order.created_at)
    .fetch_all(pool)
    .await?;
    let backlog = match events.iter().find(|e| e.published_at.is_none()) {
        Some(first) => {
            let (ahead, oldest_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE position < $1), min(created_at)
                 FROM outbox WHERE published_at IS NULL",
            )
            .bind(first.position)
            .fetch_one(pool)
            .await?;
            Some(Backlog { ahead, oldest_at })
        }
        None => None,
    };
    let fulfilment = orderbridge_db::fulfilment::latest_for_order(pool, id)
        .await?
        .map(|r| Fulfilment {
            id: r.id,
            state: r.state.as_str().to_owned(),
            reason: r.reason,
            attempts: r.attempts,
            written_back_at: r.written_back_at,
            created_at: r.created_at,
            decided_at: r.decided_at,
        });
    Ok(Some(Stored {
        order,
        history,
        events,
        backlog,
        fulfilment,
    }))
}

/// The order as the routing rules read it: as the API returns it, with its client
/// (`{"id", "external_id_prefix"}`), as `order.submitted` carries it. `None` when there is no
/// such order.
pub async fn routing_view(
    pool: &PgPool,
    id: OrderId,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let Some(order) = orderbridge_db::orders::get_order(&mut conn, id, None).await? else {
        return Ok(None);
    };
    let client = orderbridge_db::clients::scope_of_order(&mut *conn, id.get()).await?;
    Ok(Some(orderbridge_domain::events::submitted_data(
        &order,
        client.as_ref(),
    )))
}
