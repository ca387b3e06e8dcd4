//! The relay's SQL against the `outbox` table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Key of the session advisory lock that makes one relay the publisher (the leader). Advisory
/// locks are per database, so relays of different deployments (or tests) never contend.
pub const LEADER_LOCK_KEY: i64 = 0x6f62_5f72_656c_6179; // "ob_relay"

/// One unpublished outbox row, as it will be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub event_type: String,
    /// The stored envelope as JSON text: the message body.
    pub payload: String,
    pub headers: sqlx::types::Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// Tries to become the leader on this connection; the lock lives as long as the connection.
pub async fn try_lock_leader(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// Gives up leadership without closing the connection.
pub async fn unlock_leader(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// The oldest unpublished rows, by position.
///
/// No "after position N" cursor: every call reads all unpublished rows visible now, so a row
/// whose transaction took its position early but committed late is read as soon as it commits
/// (in commit order, at batch granularity) instead of being skipped. The partial index
/// `outbox_unpublished_idx` keeps this cheap however long the table is.
///
/// Rows of the aggregates in `skip` (parked after the broker refused one of their rows) are left
/// out.
pub async fn read_batch(
    conn: &mut PgConnection,
    limit: u32,
    skip: &[Uuid],
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, event_id, aggregate_type, aggregate_id, event_type,
                payload::text AS payload, headers, created_at
         FROM outbox WHERE published_at IS NULL AND NOT (aggregate_id = ANY($2))
         ORDER BY position LIMIT $1",
    )
    .bind(i64::from(limit))
    .bind(skip)
    .fetch_all(conn)
    .await
}

/// Marks rows published and, in the same statement, moves their orders' sync state from
/// `pending` to `published` (never from a later state: a fast worker may already have reported
/// `retrying`, `synced` or `failed`, which the status applier wrote). The `orders_bump_version`
/// trigger bumps the order's version, so its ETag changes. Returns the rows marked.
///
/// The orders are locked in id order first, as the status applier locks its batch's orders:
/// two statements that each lock several orders in the same order never deadlock.
pub async fn mark_published(
    conn: &mut PgConnection,
    positions: &[i64],
) -> Result<u64, sqlx::Error> {
    let marked: i64 = sqlx::query_scalar(
        "WITH marked AS (
             UPDATE outbox SET published_at = now()
             WHERE position = ANY($1) AND published_at IS NULL
             RETURNING aggregate_type, aggregate_id
         ), locked AS MATERIALIZED (
             SELECT o.id FROM orders o
             WHERE o.id IN (SELECT aggregate_id FROM marked WHERE aggregate_type = 'order')
               AND o.sync_state = 'pending'
             ORDER BY o.id
             FOR UPDATE
         ), moved AS (
             UPDATE orders o
             SET sync_state = 'published'  -- the orders trigger bumps version and updated_at
             FROM locked l
             WHERE o.id = l.id AND o.sync_state = 'pending'
             RETURNING o.id
         )
         SELECT count(*) FROM marked",
    )
    .bind(positions)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(marked).unwrap_or(0))
}

/// Deletes at most `limit` rows published more than `older_than` ago. Rows another session is
/// deleting are skipped, so two relays' retention never wait on each other.
pub async fn delete_published(
    pool: &PgPool,
    older_than: Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM outbox WHERE position IN (
             SELECT position FROM outbox
             WHERE published_at IS NOT NULL AND published_at < now() - $1 * interval '1 second'
             ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(older_than.as_secs_f64())
    .bind(i64::from(limit))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Unpublished rows and the age of the oldest, in seconds.
pub async fn backlog(pool: &PgPool) -> Result<(u64, f64), sqlx::Error> {
    let (rows, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        u64::try_from(rows).unwrap_or(0),
        age.unwrap_or(0.0).max(0.0),
    ))
}
