//! What Postgres says of the pipeline as a whole: the outbox backlog, the Salesforce
//! subscriber's streams and gaps, and fulfilment requests under way. Every query reads a partial
//! index or a small table, so it stays cheap with millions of orders.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Unpublished outbox events.
#[derive(Debug, Clone, Serialize)]
pub struct Outbox {
    pub unpublished: i64,
    pub oldest_at: Option<DateTime<Utc>>,
}

/// One Pub/Sub topic the subscriber follows.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Topic {
    pub topic: String,
    pub last_event_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// The Salesforce subscriber's state.
#[derive(Debug, Clone, Serialize)]
pub struct Subscriber {
    pub topics: Vec<Topic>,
    /// Windows the subscriber may have missed (its stored position had expired), not yet closed
    /// by `orderbridge reconcile statuses`.
    pub open_gaps: i64,
    pub oldest_gap_from: Option<DateTime<Utc>>,
    /// Events it could not read (kept with their bytes in `pubsub_dead_letters`).
    pub dead_letters: i64,
}

/// Fulfilment requests not finished.
#[derive(Debug, Clone, Serialize)]
pub struct Fulfilment {
    /// Queued or accepted, waiting for the fulfilment system.
    pub open: i64,
    pub oldest_open_at: Option<DateTime<Utc>>,
    /// Decided, the result not yet written to Salesforce.
    pub unwritten: i64,
}

/// Everything Postgres says.
#[derive(Debug, Clone, Serialize)]
pub struct Database {
    pub outbox: Outbox,
    pub subscriber: Subscriber,
    pub fulfilment: Fulfilment,
}

pub async fn read(pool: &PgPool) -> Result<Database, sqlx::Error> {
    let (unpublished, oldest_at): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?;
    let topics: Vec<Topic> = sqlx::query_as(
        "SELECT topic, last_event_at, updated_at FROM pubsub_cursors ORDER BY topic",
    )
    .fetch_all(pool)
    .await?;
    let (open_gaps, oldest_gap_from): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), min(coalesce(missed_from, detected_at)) FROM pubsub_gaps
         WHERE closed_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM pubsub_dead_letters")
        .fetch_one(pool)
        .await?;
    let (open, oldest_open_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), min(updated_at) FROM fulfilment_requests
         WHERE state IN ('queued', 'accepted')",
    )
    .fetch_one(pool)
    .await?;
    let unwritten: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fulfilment_requests
         WHERE state IN ('provisioned', 'failed') AND written_back_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Database {
        outbox: Outbox {
            unpublished,
            oldest_at,
        },
        subscriber: Subscriber {
            topics,
            open_gaps,
            oldest_gap_from,
            dead_letters,
        },
        fulfilment: Fulfilment {
            open,
            oldest_open_at,
            unwritten,
        },
    })
}
