//! Business status: applying a status Salesforce decided to the order ([`apply`],
//! [`apply_by_salesforce_id`]) and reading an order's status history ([`history`]).
//!
//! Changes can arrive late, twice, or out of order (change events replayed after a subscriber
//! restart, two subscribers overlapping during a deploy, or two streams: the provisioning event
//! overtaking the `Activated` change event), so applying one is idempotent and monotonic in
//! time: the same status again changes nothing, and a status decided before the current one was
//! never replaces it. Such a late status still happened, so it joins the history (once: a replay
//! of one already there changes nothing), which reads in the order statuses were decided. Every
//! change that writes bumps the order's version (the `orders_bump_version` trigger), so the ETag
//! changes and waiters are notified (`orders_notify_version`).

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
    /// The change was decided before the current status was, and was not in the history yet:
    /// added to the history, the current status untouched; `version` is the order's new version.
    Late { version: i64 },
    /// The change was decided before the current status was and is in the history already
    /// (a replay), or before the order was created: nothing written.
    Stale,
    /// No such order.
    UnknownOrder,
}

/// Applies a business status to the order the Salesforce Order `salesforce_id` was synced to:
/// appends history, sets orders.status, bumps version and updated_at (the ETag changes).
/// Same status as now → Unchanged (nothing written); `at` older than the current status's
/// time → Late (history gets it, status untouched), or Stale when the history has it already or
/// it predates the order (nothing written); no order with that id → UnknownOrder.
pub async fn apply_by_salesforce_id(
    conn: &mut PgConnection,
    salesforce_id: &str,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let outcome = apply_by_salesforce_id_in(&mut tx, salesforce_id, change).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// [`apply_by_salesforce_id`] inside a transaction the caller holds (the subscriber's batch):
/// no savepoint of its own, two round trips fewer per change. An error leaves the caller's
/// transaction aborted, as it would have to roll back anyway.
pub async fn apply_by_salesforce_id_in(
    tx: &mut PgConnection,
    salesforce_id: &str,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    // Locks the order, so concurrent appliers of the same order serialize and each judges the
    // change against the status the previous one left. The oldest order wins should two ever
    // carry the same Salesforce id (a record restored from the recycle bin, say).
    let current: Option<Current> = sqlx::query_as(
        "SELECT id, status, coalesce(status_at, created_at) AS status_at, created_at FROM orders
         WHERE salesforce_id = $1 ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .bind(salesforce_id)
    .fetch_optional(&mut *tx)
    .await?;
    apply_locked(tx, current, change).await
}

/// [`apply_by_salesforce_id`] for an order known by its own id.
pub async fn apply(
    conn: &mut PgConnection,
    order_id: OrderId,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let current: Option<Current> = sqlx::query_as(
        "SELECT id, status, coalesce(status_at, created_at) AS status_at, created_at FROM orders
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
    created_at: DateTime<Utc>,
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
        return late(conn, &current, change).await;
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

/// A change decided before the order's current status: into the history unless it is there
/// already (same status decided at the same time), the status left as it is. One decided before
/// the order existed (clocks apart) has no place in its history: stale.
async fn late(
    conn: &mut PgConnection,
    current: &Current,
    change: StatusChange<'_>,
) -> Result<StatusApplied, sqlx::Error> {
    if change.at < current.created_at {
        return Ok(StatusApplied::Stale);
    }
    let inserted = sqlx::query(
        "INSERT INTO order_status_history (order_id, status, at, source)
         SELECT $1, $2, $3, $4
         WHERE NOT EXISTS (SELECT 1 FROM order_status_history
                           WHERE order_id = $1 AND status = $2 AND at = $3)",
    )
    .bind(current.id)
    .bind(change.status)
    .bind(change.at)
    .bind(change.source)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(StatusApplied::Stale);
    }
    // The history is part of the order's representation: a new version (the trigger adds one
    // to the old; setting it here only makes the row differ so the trigger fires).
    let version: i64 = sqlx::query_scalar(
        "UPDATE orders SET version = version + 1 WHERE id = $1 RETURNING version",
    )
    .bind(current.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(StatusApplied::Late { version })
}

/// The order's business statuses in the order they were decided, oldest first (empty for an
/// unknown order). A late status (see [`StatusApplied::Late`]) sits where it was decided.
pub async fn history<'e>(
    executor: impl PgExecutor<'e>,
    order_id: OrderId,
) -> Result<Vec<StatusEntry>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT status, at, source FROM order_status_history WHERE order_id = $1
         ORDER BY at, id",
    )
    .bind(order_id.get())
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(status, at, source)| StatusEntry { status, at, source })
        .collect())
}
