//! Business status: applying a status Salesforce decided to the order ([`apply`],
//! [`apply_by_salesforce_id`]) and reading an order's status history ([`history`]).
//!
//! Changes can arrive late, twice, or out of order (change events replayed after a subscriber
//! restart, two subscribers overlapping during a deploy), so applying one is idempotent and
//! monotonic in time: the same status again changes nothing, and a status decided before the
//! current one was is dropped. Every applied change bumps the order's version (the
//! `orders_bump_version` trigger), so the ETag changes and waiters are notified
//! (`orders_notify_version`).

use chrono::{DateTime, Utc};
use orderbridge_domain::{OrderId, StatusEntry};
use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

/// A business status to apply.
#[derive(Debug, Clone, Copy)]
pub struct StatusChange<'a> {
    /// The status name, kept as Salesforce spells it.
    pub status: &'a str,
    /// When the status was decided (for Salesforce: the change event's commit timestamp).
    pub at: DateTime<Utc>,
    /// Who decided it (`orderbridge_domain::StatusSource`).
    pub source: &'a str,
}

/// What applying a [`StatusChange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusApplied {
    /// The order has the new status; `version` is its new version.
    Applied { version: i64 },
    /// The order already has this status: nothing written.
    Unchanged,
    /// The change was decided before the current status was: nothing written.
    Stale,
    /// No such order.
    UnknownOrder,
}

/// Applies a business status to the order the Salesforce Order `salesforce_id` was synced to:
/// appends history, sets orders.status, bumps version and updated_at (the ETag changes).
/// Same status as now → Unchanged (nothing written); `at` older than the current status's
/// time → Stale (history gets nothing, status untouched); no order with that id → UnknownOrder.
pub async fn apply_by_salesforce_id(
    conn: &mut PgConnection,
    salesforce_id: &str,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // Locks the order, so concurrent appliers of the same order serialize and each judges the
    // change against the status the previous one left. The oldest order wins should two ever
    // carry the same Salesforce id (a record restored from the recycle bin, say).
    let current: Option<Current> = sqlx::query_as(
        "SELECT id, status, coalesce(status_at, created_at) AS status_at FROM orders
         WHERE salesforce_id = $1 ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .bind(salesforce_id)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = apply_locked(&mut tx, current, change).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// [`apply_by_salesforce_id`] for an order known by its own id.
pub async fn apply(
    conn: &mut PgConnection,
    order_id: OrderId,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let current: Option<Current> = sqlx::query_as(
        "SELECT id, status, coalesce(status_at, created_at) AS status_at FROM orders
         WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id.get())
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = apply_locked(&mut tx, current, change).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The locked order's current status.
#[derive(sqlx::FromRow)]
struct Current {
    id: Uuid,
    status: String,
    status_at: DateTime<Utc>,
}

async fn apply_locked(
    conn: &mut PgConnection,
    current: Option<Current>,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    let Some(current) = current else {
        return Ok(StatusApplied::UnknownOrder);
    };
    if current.status == change.status {
        return Ok(StatusApplied::Unchanged);
    }
    if change.at < current.status_at {
        return Ok(StatusApplied::Stale);
    }
    sqlx::query(
        "INSERT INTO order_status_history (order_id, status, at, source) VALUES ($1, $2, $3, $4)",
    )
    .bind(current.id)
    .bind(change.status)
    .bind(change.at)
    .bind(change.source)
    .execute(&mut *conn)
    .await?;
    // The orders_bump_version trigger bumps version and updated_at; the status differs, so the
    // row changes and the trigger always fires.
    let version: i64 = sqlx::query_scalar(
        "UPDATE orders SET status = $2, status_at = $3 WHERE id = $1 RETURNING version",
    )
    .bind(current.id)
    .bind(change.status)
    .bind(change.at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(StatusApplied::Applied { version })
}

/// The order's business statuses, oldest first (empty for an unknown order).
pub async fn history<'e>(
    executor: impl PgExecutor<'e>,
    order_id: OrderId,
) -> Result<Vec<StatusEntry>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT status, at, source FROM order_status_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id.get())
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(status, at, source)| StatusEntry { status, at, source })
        .collect())
}
