//! Orders as stored: reading one back as the domain's [`Order`] ([`get_order`], [`OrderRow`],
//! [`load_lines`]) and starting an order over for a resync ([`queue_resync`]), shared by the API
//! (`POST /v1/orders/{id}/resync`) and `orderbridge reconcile --fix`, so both do exactly the same.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use orderbridge_domain::{
    Address, ClientId, Customer, Order, OrderEvent, OrderId, OrderLine, SyncError, SyncInfo,
    SyncState,
};
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{clients, outbox};

/// An `orders` row as selected with [`ORDER_COLUMNS`]; [`OrderRow::into_order`] adds the lines.
#[derive(sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
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

/// The column list [`OrderRow`] is read from.
pub const ORDER_COLUMNS: &str =
    "id, client_ref, customer, billing_address, shipping_address, currency,
    notes, total, status, sync_state, salesforce_id, sync_attempts, last_error_code,
    last_error_message, synced_at, version, created_at, updated_at";

impl OrderRow {
    /// The domain order, with `lines` (from [`load_lines`]).
    pub fn into_order(self, lines: Vec<OrderLine>) -> Result<Order, sqlx::Error> {
        let state: SyncState = self
            .sync_state
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let last_error = self.last_error_code.map(|code| SyncError {
            code,
            message: self.last_error_message.unwrap_or_default(),
        });
        Ok(Order {
            id: OrderId::from_uuid(self.id),
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

/// The lines of these orders, by order, in line order.
pub async fn load_lines(
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

/// One order with its lines. With `client_id`, only that client's order: another client's order
/// is `None`, exactly like a missing one, so ids cannot be probed.
pub async fn get_order(
    conn: &mut PgConnection,
    id: OrderId,
    client_id: Option<ClientId>,
) -> Result<Option<Order>, sqlx::Error> {
    let id = id.get();
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2)"
    ))
    .bind(id)
    .bind(client_id.map(ClientId::get))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut lines = load_lines(conn, &[id]).await?;
    row.into_order(lines.remove(&id).unwrap_or_default())
        .map(Some)
}

/// Why a resync could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The version trigger no longer bumps by exactly one: the event would announce a version
    /// the order does not have. The caller must not commit.
    #[error("resync of order {order_id}: version {version} != sync_event_version {event_version}")]
    VersionMismatch {
        order_id: OrderId,
        version: i64,
        event_version: i64,
    },
}

/// When [`queue_resync`] queues a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncWhen {
    /// Only when the order's sync has settled (`synced` or `failed`): an order whose event is
    /// still on its way (`pending`, `published`, `retrying`) is left alone, so repeated resyncs
    /// cost Salesforce nothing (the API).
    Settled,
    /// Always, whatever the state (reconcile's `--fix`, which acts on what Salesforce lacks).
    Always,
}

/// What [`queue_resync`] did.
#[derive(Debug, Clone)]
pub enum Resync {
    /// A new event is in the outbox; the order as now stored.
    Queued(Order),
    /// Nothing: the order's event is still on its way ([`ResyncWhen::Settled`]).
    AlreadyUnderway(Order),
}

impl Resync {
    pub fn order(&self) -> &Order {
        match self {
            Self::Queued(o) | Self::AlreadyUnderway(o) => o,
        }
    }

    pub fn into_order(self) -> Order {
        match self {
            Self::Queued(o) | Self::AlreadyUnderway(o) => o,
        }
    }
}

/// Starts an order over for a resync, inside the caller's transaction: sync state back to
/// `pending` and a fresh `order.submitted` event (the order as it now is) in the outbox. Returns
/// the order as now stored, or `None` when there is no such order (with `client_id`: no such
/// order of that client). The row stays locked until the transaction ends; nothing is valid
/// until the caller commits, and on an error it must roll back (drop the transaction).
///
/// Attempts and last error are cleared; the Salesforce id and `synced_at` are kept (the record
/// may exist; the worker finds it by external id). `sync_event_version` becomes the order's new
/// version, which the event carries as `data.version`: from then on, reports about older events
/// are stale. The `orders_bump_version` trigger sets the new version to the old one plus one,
/// hence `version + 1` (checked: [`ResyncError::VersionMismatch`]); the row always changes (the
/// event version never exceeds the version), so the trigger always fires. `sync_reported_at` is
/// reset: it orders reports within one event version only.
pub async fn queue_resync(
    tx: &mut Transaction<'_, Postgres>,
    order_id: OrderId,
    client_id: Option<ClientId>,
    correlation_id: Option<String>,
    when: ResyncWhen,
) -> Result<Option<Resync>, ResyncError> {
    if when == ResyncWhen::Settled {
        // Locks the row first, so two concurrent resyncs cannot both see it settled.
        let state: Option<String> = sqlx::query_scalar(
            "SELECT sync_state FROM orders
             WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2) FOR UPDATE",
        )
        .bind(order_id.get())
        .bind(client_id.map(ClientId::get))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(state) = state else {
            return Ok(None);
        };
        if !matches!(state.as_str(), "synced" | "failed") {
            return Ok(get_order(tx, order_id, client_id)
                .await?
                .map(Resync::AlreadyUnderway));
        }
    }
    let event_version: Option<i64> = sqlx::query_scalar(
        "UPDATE orders SET sync_state = 'pending', sync_attempts = 0, last_error_code = NULL,
             last_error_message = NULL, sync_reported_at = NULL,
             sync_event_version = version + 1
         WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2)
         RETURNING sync_event_version",
    )
    .bind(order_id.get())
    .bind(client_id.map(ClientId::get))
    .fetch_optional(&mut **tx)
    .await?;
    let Some(event_version) = event_version else {
        return Ok(None);
    };
    let Some(order) = get_order(tx, order_id, client_id).await? else {
        return Ok(None);
    };
    if order.version != event_version {
        return Err(ResyncError::VersionMismatch {
            order_id,
            version: order.version,
            event_version,
        });
    }
    // The client as it is now (its prefix may have been changed since the order was accepted,
    // e.g. to move to scoped keys): the fresh event is written with today's keys.
    let client = clients::scope_of_order(&mut **tx, order_id.get())
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let envelope = OrderEvent::submitted(order.clone(), client)
        .into_envelope(order.updated_at, correlation_id);
    outbox::enqueue(&mut **tx, "order", order.id.get(), &envelope).await?;
    Ok(Some(Resync::Queued(order)))
}
