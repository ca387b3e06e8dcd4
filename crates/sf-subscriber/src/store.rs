//! The subscriber's tables (migration `20261203000200_pubsub_subscriber.sql`): cursors, the
//! inbox, dead letters and gaps. Every function takes the connection (or transaction) to run on,
//! so a batch's inbox rows, effects and cursor commit together.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// Where a topic's stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Cursor {
    pub replay_id: Option<Vec<u8>>,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// The stored cursor of `topic` (`None`: never subscribed).
pub async fn cursor(pool: &PgPool, topic: &str) -> Result<Option<Cursor>, sqlx::Error> {
    sqlx::query_as("SELECT replay_id, last_event_at FROM pubsub_cursors WHERE topic = $1")
        .bind(topic)
        .fetch_optional(pool)
        .await
}

/// Records a batch's event ids as handled, in one statement; returns those that were not yet
/// (the others are duplicate deliveries). An id given twice is returned once: its first
/// occurrence is the event, the second a duplicate.
pub async fn insert_inbox(
    conn: &mut PgConnection,
    event_ids: &[String],
    topic: &str,
) -> Result<HashSet<String>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO pubsub_inbox (event_id, topic) SELECT e, $2 FROM UNNEST($1::text[]) AS e
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(event_ids)
    .bind(topic)
    .fetch_all(conn)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// An event that could not be handled.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub topic: &'a str,
    pub schema_id: &'a str,
    pub replay_id: &'a [u8],
    pub event_id: &'a str,
    pub payload: &'a [u8],
    pub reason: &'a str,
}

pub async fn dead_letter(conn: &mut PgConnection, d: &DeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pubsub_dead_letters (topic, schema_id, replay_id, event_id, payload, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(d.topic)
    .bind(d.schema_id)
    .bind(d.replay_id)
    .bind(d.event_id)
    .bind(d.payload)
    .bind(d.reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the cursor: `replay_id` to resume after (unchanged when `None`), the server's latest
/// replay id, and `last_event_at` = now when the batch had events.
pub async fn advance(
    conn: &mut PgConnection,
    topic: &str,
    replay_id: Option<&[u8]>,
    latest_replay_id: &[u8],
    had_events: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pubsub_cursors (topic, replay_id, latest_replay_id, last_event_at, updated_at)
         VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END, now())
         ON CONFLICT (topic) DO UPDATE SET
             replay_id = coalesce(EXCLUDED.replay_id, pubsub_cursors.replay_id),
             latest_replay_id = EXCLUDED.latest_replay_id,
             last_event_at = CASE WHEN $4 THEN now() ELSE pubsub_cursors.last_event_at END,
             updated_at = now()",
    )
    .bind(topic)
    .bind(replay_id)
    .bind(latest_replay_id)
    .bind(had_events)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored replay id was refused as expired: records the window that may have been missed
/// and forgets the id (so the next start does not trip over it again), in one transaction.
/// Returns the gap's id.
pub async fn record_gap(
    pool: &PgPool,
    topic: &str,
    stored: &Cursor,
    fallback: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO pubsub_gaps (topic, stored_replay_id, missed_from, fallback)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(topic)
    .bind(stored.replay_id.as_deref())
    .bind(stored.last_event_at)
    .bind(fallback)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE pubsub_cursors SET replay_id = NULL, updated_at = now() WHERE topic = $1")
        .bind(topic)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Deletes inbox rows older than `before`, a bounded number at a time; returns how many.
pub async fn purge_inbox(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM pubsub_inbox WHERE event_id IN (
             SELECT event_id FROM pubsub_inbox WHERE received_at < $1 LIMIT 5000)",
    )
    .bind(before)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
