//! Order persistence. Functions take `impl PgExecutor` (or a connection) so callers decide the
//! transaction: creating an order writes the order, its lines, the outbox event and the
//! idempotency record through the same one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use orderbridge_domain::{Address, Customer, Order, OrderLine, SyncError, SyncInfo, SyncState};
use rust_decimal::Decimal;
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

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    client_ref: String,
    customer: Json<Customer>,
    billing_address: Option<Json<Address>>,
    shipping_address: Option<Json<Address>>,
    currency: String,
    notes: Option<String>,
    total: Decimal,
    status: String,
    sync_state: String,
    salesforce_id: Option<String>,
    sync_attempts: i32,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    synced_at: Option<DateTime<Utc>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str = "id, client_ref, customer, billing_address, shipping_address, currency,
    notes, total, status, sync_state, salesforce_id, sync_attempts, last_error_code,
    last_error_message, synced_at, version, created_at, updated_at";

impl OrderRow {
    fn into_order(self, lines: Vec<OrderLine>) -> Result<Order, sqlx::Error> {
        let state: SyncState = self
            .sync_state
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let last_error = self.last_error_code.map(|code| SyncError {
            code,
            message: self.last_error_message.unwrap_or_default(),
        });
        Ok(Order {
            id: self.id,
            client_ref: self.client_ref,
            customer: self.customer.0,
            billing_address: self.billing_address.map(|a| a.0),
            shipping_address: self.shipping_address.map(|a| a.0),
            currency: self.currency,
            lines,
            notes: self.notes,
            total: self.total,
            status: self.status,
            sync: SyncInfo {
                state,
                salesforce_id: self.salesforce_id,
                attempts: self.sync_attempts,
                last_error,
                synced_at: self.synced_at,
            },
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LineRow {
    order_id: Uuid,
    line_number: i32,
    sku: String,
    name: String,
    quantity: i32,
    unit_price: Decimal,
    line_total: Decimal,
}

async fn load_lines(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<OrderLine>>, sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, line_number, sku, name, quantity, unit_price, line_total
         FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, line_number",
    )
    .bind(order_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_order: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
    for r in rows {
        by_order.entry(r.order_id).or_default().push(OrderLine {
            // CHECK constraints keep both positive.
            line_number: u32::try_from(r.line_number).unwrap_or_default(),
            quantity: u32::try_from(r.quantity).unwrap_or_default(),
            sku: r.sku,
            name: r.name,
            unit_price: r.unit_price,
            line_total: r.line_total,
        });
    }
    Ok(by_order)
}

/// One of the client's orders, with its lines. Another client's order is `None`, exactly like a
/// missing one, so ids cannot be probed.
pub async fn get_order(
    conn: &mut PgConnection,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND client_id = $2"
    ))
    .bind(id)
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut lines = load_lines(conn, &[id]).await?;
    row.into_order(lines.remove(&id).unwrap_or_default())
        .map(Some)
}

/// Starts the client's order over for a resync. Returns the order as now stored and its new
/// `sync_event_version`, or `None` if the client has no such order. The row stays locked until
/// the caller's transaction ends.
///
/// Sync state back to `pending`, attempts and last error cleared, the Salesforce id and
/// `synced_at` kept (the record exists; the resync updates it). `sync_event_version` becomes the
/// order's new version, which the event the caller enqueues carries as `data.version`: from
/// then on, reports about older events are stale. The `orders_bump_version` trigger sets the new
/// version to the old one plus one, hence `version + 1` (the caller checks the two agree); the
/// row always changes (the event version never exceeds the version), so the trigger always
/// fires. `sync_reported_at` is reset: it orders reports within one event version only.
pub async fn start_resync(
    conn: &mut PgConnection,
    client_id: Uuid,
    id: Uuid,
) -> Result<Option<(Order, i64)>, sqlx::Error> {
    let event_version: Option<i64> = sqlx::query_scalar(
        "UPDATE orders SET sync_state = 'pending', sync_attempts = 0, last_error_code = NULL,
             last_error_message = NULL, sync_reported_at = NULL,
             sync_event_version = version + 1
         WHERE id = $1 AND client_id = $2
         RETURNING sync_event_version",
    )
    .bind(id)
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(event_version) = event_version else {
        return Ok(None);
    };
    Ok(get_order(conn, client_id, id)
        .await?
        .map(|order| (order, event_version)))
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
