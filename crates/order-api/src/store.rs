//! The API's order reads: an order's version (conditional GET) and the order list (one order is
//! `orderbridge_db::orders::get_order`, shared with the CLI).
//! Functions take `impl PgExecutor` (or a connection) so callers decide the transaction. Writes
//! live in `orderbridge_db` (`create`, `orders::queue_resync`), which the CLI and the
//! benchmarks share.

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{ORDER_COLUMNS, OrderRow, load_lines};
use orderbridge_domain::{ClientId, Order, OrderId, SyncState};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The current version of one of the client's orders: all a conditional GET needs.
pub async fn order_version<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
    id: OrderId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM orders WHERE id = $1 AND client_id = $2")
        .bind(id.get())
        .bind(client_id.get())
        .fetch_optional(executor)
        .await
}

/// Filters for [`list_orders`].
#[derive(Debug, Default)]
pub struct ListFilter {
    pub sync_state: Option<SyncState>,
    pub client_ref: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    /// Only orders older (smaller UUIDv7) than this one: the page cursor.
    pub before: Option<OrderId>,
}

/// The client's orders, newest first, at most `limit`.
pub async fn list_orders(
    conn: &mut PgConnection,
    client_id: ClientId,
    filter: &ListFilter,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE client_id = $1
           AND ($2::text IS NULL OR sync_state = $2)
           AND ($3::text IS NULL OR client_ref = $3)
           AND ($4::timestamptz IS NULL OR created_at > $4)
           AND ($5::uuid IS NULL OR id < $5)
         ORDER BY id DESC
         LIMIT $6"
    ))
    .bind(client_id.get())
    .bind(filter.sync_state.map(SyncState::as_str))
    .bind(filter.client_ref.as_deref())
    .bind(filter.created_after)
    .bind(filter.before.map(OrderId::get))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines = load_lines(conn, &ids).await?;
    rows.into_iter()
        .map(|r| {
            let l = lines.remove(&r.id).unwrap_or_default();
            r.into_order(l)
        })
        .collect()
}
