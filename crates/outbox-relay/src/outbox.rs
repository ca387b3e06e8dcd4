//! The relay's SQL against the `outbox` table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Key of the session advisory lock that makes one relay the publisher when the outbox is not
/// partitioned (`RELAY_PARTITIONS=1`, the default): the key relays have always used, so a relay
/// of this version and an older one running side by side still exclude each other. Advisory
/// locks are per database, so relays of different deployments (or tests) never contend.
pub const LEADER_LOCK_KEY: i64 = 0x6f62_5f72_656c_6179; // "ob_relay"

/// Most partitions `RELAY_PARTITIONS` accepts: far more relays than one Postgres would serve,
/// and small enough for the leadership to fit one `u64` bitmask in the metrics.
pub const MAX_PARTITIONS: u16 = 64;

/// First int4 of the two-key advisory locks of partitioned relays; the second int4 is the
/// partition. The partition count is part of the first key (`PARTITION_CLASS + n`), so relays
/// configured with different counts can see each other's locks and refuse to publish side by
/// side (their partitions would overlap, and per-order order would break).
pub const PARTITION_CLASS: i32 = 0x6f62_7000; // "obp\0"
/// Shared lock `(MEMBER_CLASS, n)` held by every relay that can publish with n partitions: the
/// number of holders is how many relays share the partitions. Session locks vanish with their
/// connection, so a relay that dies leaves the membership at once, with no heartbeat to expire.
pub const MEMBER_CLASS: i32 = 0x6f62_6d00; // "obm\0"
/// Transaction lock that serialises rebalancing, so two relays never decide at the same time.
pub const REBALANCE_CLASS: i32 = 0x6f62_6700; // "obg\0"

/// The partition of an aggregate: its id's last 32 bits modulo `partitions`. Must match the
/// SQL function `outbox_partition` (migration `20261203000600`), which the relay's reads use.
pub fn partition_of(aggregate_id: Uuid, partitions: u16) -> u16 {
    let b = aggregate_id.as_bytes();
    let tail = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    // The remainder is below `partitions`, a u16.
    u16::try_from(tail % u32::from(partitions.max(1))).unwrap_or(0)
}

/// One granted advisory lock in this database, as `pg_locks` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct AdvisoryLock {
    /// For a bigint key, its high 32 bits; for a two-int4 key, the first key.
    pub classid: i64,
    /// For a bigint key, its low 32 bits; for a two-int4 key, the second key.
    pub objid: i64,
    /// 1 for a bigint key, 2 for a two-int4 key.
    pub objsubid: i16,
    /// Held by this connection.
    pub own: bool,
}

/// Every granted advisory lock in this database.
pub async fn advisory_locks(conn: &mut PgConnection) -> Result<Vec<AdvisoryLock>, sqlx::Error> {
    sqlx::query_as(
        "SELECT classid::int8 AS classid, objid::int8 AS objid, objsubid::int2 AS objsubid,
                pid = pg_backend_pid() AS own
         FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(conn)
    .await
}

/// Waits for the rebalancing lock, held until the caller's transaction ends.
pub async fn lock_rebalancing(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(REBALANCE_CLASS)
        .execute(conn)
        .await?;
    Ok(())
}

/// Joins the relays that share `partitions` partitions (a session lock: it outlives the
/// rebalancing transaction it is taken in).
pub async fn join_members(conn: &mut PgConnection, partitions: u16) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock_shared($1, $2)")
        .bind(MEMBER_CLASS)
        .bind(i32::from(partitions))
        .fetch_one(conn)
        .await
}

/// Tries to take partition `p` of `partitions` on this connection; the lock lives as long as the
/// connection, or until [`unlock_partition`] or [`unlock_all`]. One partition is the historical
/// single leader lock ([`LEADER_LOCK_KEY`]).
pub async fn try_lock_partition(
    conn: &mut PgConnection,
    partitions: u16,
    p: u16,
) -> Result<bool, sqlx::Error> {
    if partitions <= 1 {
        return sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK_KEY)
            .fetch_one(conn)
            .await;
    }
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(PARTITION_CLASS + i32::from(partitions))
        .bind(i32::from(p))
        .fetch_one(conn)
        .await
}

/// Gives partition `p` up without closing the connection.
pub async fn unlock_partition(
    conn: &mut PgConnection,
    partitions: u16,
    p: u16,
) -> Result<bool, sqlx::Error> {
    if partitions <= 1 {
        return sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(LEADER_LOCK_KEY)
            .fetch_one(conn)
            .await;
    }
    sqlx::query_scalar("SELECT pg_advisory_unlock($1, $2)")
        .bind(PARTITION_CLASS + i32::from(partitions))
        .bind(i32::from(p))
        .fetch_one(conn)
        .await
}

/// Gives up every partition and the membership, keeping the connection.
pub async fn unlock_all(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(conn)
        .await?;
    Ok(())
}

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

/// The oldest unpublished rows, by position.
///
/// No "after position N" cursor: every call reads all unpublished rows visible now, so a row
/// whose transaction took its position early but committed late is read as soon as it commits
/// (in commit order, at batch granularity) instead of being skipped. The partial index
/// `outbox_unpublished_idx` keeps this cheap however long the table is.
///
/// Rows of the aggregates in `skip` (parked after the broker refused one of their rows) are left
/// out, and so are rows outside `mine`, the partitions (of `partitions`) this relay holds; with
/// one partition nothing more is filtered.
pub async fn read_batch(
    conn: &mut PgConnection,
    limit: u32,
    skip: &[Uuid],
    partitions: u16,
    mine: &[u16],
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if partitions <= 1 {
        return sqlx::query_as(
            "SELECT position, event_id, aggregate_type, aggregate_id, event_type,
                    payload::text AS payload, headers, created_at
             FROM outbox WHERE published_at IS NULL AND NOT (aggregate_id = ANY($2))
             ORDER BY position LIMIT $1",
        )
        .bind(i64::from(limit))
        .bind(skip)
        .fetch_all(conn)
        .await;
    }
    let mine: Vec<i32> = mine.iter().map(|&p| i32::from(p)).collect();
    sqlx::query_as(
        "SELECT position, event_id, aggregate_type, aggregate_id, event_type,
                payload::text AS payload, headers, created_at
         FROM outbox WHERE published_at IS NULL AND NOT (aggregate_id = ANY($2))
           AND outbox_partition(aggregate_id, $3) = ANY($4)
         ORDER BY position LIMIT $1",
    )
    .bind(i64::from(limit))
    .bind(skip)
    .bind(i32::from(partitions))
    .bind(&mine)
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
