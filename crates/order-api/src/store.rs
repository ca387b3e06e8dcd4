//! Order persistence. Functions take `impl PgExecutor` (or a connection) so callers decide the
//! transaction: creating an order writes the order, its lines, the outbox event and the
//! idempotency record through the same one.

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{self, ORDER_COLUMNS, OrderRow, load_lines};
use orderbridge_domain::{Order, SyncState};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Inserts a new order and its lines.
pub async fn insert_order(
    conn: &mut PgConnection,
    client_id: Uuid,
    order: &Order,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, billing_address,
             shipping_address, currency, notes, total, status, sync_state, version,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(order.id)
    .bind(client_id)
    .bind(&order.client_ref)
    .bind(Json(&order.customer))
    .bind(order.billing_address.as_ref().map(Json))
    .bind(order.shipping_address.as_ref().map(Json))
    .bind(&order.currency)
    .bind(&order.notes)
    .bind(order.total)
    .bind(&order.status)
    .bind(order.sync.state.as_str())
    .bind(order.version)
    .bind(order.created_at)
    .bind(order.updated_at)
    .execute(&mut *conn)
    .await?;

    // One statement for all lines (up to 500): arrays unnested server-side.
    let mut numbers = Vec::with_capacity(order.lines.len());
    let mut skus = Vec::with_capacity(order.lines.len());
    let mut names = Vec::with_capacity(order.lines.len());
    let mut quantities = Vec::with_capacity(order.lines.len());
    let mut prices = Vec::with_capacity(order.lines.len());
    let mut totals = Vec::with_capacity(order.lines.len());
    for l in &order.lines {
        numbers.push(l.line_number as i32);
        skus.push(l.sku.as_str());
        names.push(l.name.as_str());
        quantities.push(l.quantity as i32);
        prices.push(l.unit_price);
        totals.push(l.line_total);
    }
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_number, sku, name, quantity, unit_price, line_total)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::int[], $6::numeric[], $7::numeric[])",
    )
    .bind(order.id)
    .bind(&numbers)
    .bind(&skus)
    .bind(&names)
    .bind(&quantities)
    .bind(&prices)
    .bind(&totals)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The id of the client's order with this `client_ref`, if any.
pub async fn find_by_client_ref<'e>(
    executor: impl PgExecutor<'e>,
    client_id: Uuid,
    client_ref: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM orders WHERE client_id = $1 AND client_ref = $2")
        .bind(client_id)
        .bind(client_ref)
        .fetch_optional(executor)
        .await
}

/// The current version of one of the client's orders: all a conditional GET needs.
pub async fn order_version<'e>(
    executor: impl PgExecutor<'e>,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM orders WHERE id = $1 AND client_id = $2")
        .bind(id)
        .bind(client_id)
        .fetch_optional(executor)
        .await
}

/// One of the client's orders, with its lines. Another client's order is `None`, exactly like a
/// missing one, so ids cannot be probed.
pub async fn get_order(
    conn: &mut PgConnection,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    orders::get_order(conn, id, Some(client_id)).await
}

/// Filters for [`list_orders`].
#[derive(Debug, Default)]
pub struct ListFilter {
    pub sync_state: Option<SyncState>,
    pub client_ref: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    /// Only orders older (smaller UUIDv7) than this one: the page cursor.
    pub before: Option<Uuid>,
}

/// The client's orders, newest first, at most `limit`.
pub async fn list_orders(
    conn: &mut PgConnection,
    client_id: Uuid,
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
    .bind(client_id)
    .bind(filter.sync_state.map(SyncState::as_str))
    .bind(filter.client_ref.as_deref())
    .bind(filter.created_after)
    .bind(filter.before)
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

/// A remembered response to an Idempotency-Key.
#[derive(sqlx::FromRow)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub response_status: i16,
    pub response_body: Vec<u8>,
    pub order_id: Uuid,
}

/// The unexpired response stored for (client, key). An expired one is deleted in the same
/// statement (one round trip on the hot path), so the key can be used afresh.
pub async fn take_idempotent_response(
    conn: &mut PgConnection,
    client_id: Uuid,
    key: &str,
) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "WITH expired AS (
             DELETE FROM idempotency_keys
             WHERE client_id = $1 AND key = $2 AND expires_at <= now()
         )
         SELECT request_hash, response_status, response_body, order_id
         FROM idempotency_keys
         WHERE client_id = $1 AND key = $2 AND expires_at > now()",
    )
    .bind(client_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
}

/// Remembers the response to (client, key) until `expires_at`.
pub async fn store_idempotent_response<'e>(
    executor: impl PgExecutor<'e>,
    client_id: Uuid,
    key: &str,
    request_hash: &[u8],
    response: (u16, &[u8]),
    order_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys
             (client_id, key, request_hash, response_status, response_body, order_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(client_id)
    .bind(key)
    .bind(request_hash)
    .bind(response.0 as i16)
    .bind(response.1)
    .bind(order_id)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes expired idempotency keys, a bounded batch at a time so it never holds long locks.
pub async fn purge_expired_idempotency_keys<'e>(
    executor: impl PgExecutor<'e>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (
             SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
    )
    .bind(batch)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}
