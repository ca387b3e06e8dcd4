//! The transactional outbox: an event is written in the same transaction as the change it
//! announces, and a relay publishes it to the broker after commit.
//!
//! Callers pass their open transaction as the executor, which is what makes the write atomic
//! with theirs.

use orderbridge_domain::Envelope;
use serde_json::{Value, json};
use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

/// The Postgres channel the outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "orderbridge_outbox";

/// Appends an event to the outbox. The stored payload is the whole envelope, exactly as it will
/// be published; `headers` carry what the relay copies into message headers.
pub async fn enqueue<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: Uuid,
    envelope: &Envelope<Value>,
) -> Result<(), sqlx::Error> {
    enqueue_many(executor, aggregate_type, &[(aggregate_id, envelope)]).await
}

/// Appends events to the outbox in one statement, in the order given (so `position` follows
/// it, as it would for events written one after another).
pub async fn enqueue_many<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    events: &[(Uuid, &Envelope<Value>)],
) -> Result<(), sqlx::Error> {
    let mut event_ids = Vec::with_capacity(events.len());
    let mut aggregate_ids = Vec::with_capacity(events.len());
    let mut event_types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut headers = Vec::with_capacity(events.len());
    for (aggregate_id, envelope) in events {
        event_ids.push(envelope.id.get());
        aggregate_ids.push(*aggregate_id);
        event_types.push(envelope.event_type.as_str());
        payloads.push(Json(*envelope));
        headers.push(json!({
            "correlation_id": envelope.correlation_id,
            "schema_version": envelope.version,
        }));
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
         SELECT e, $1, a, t, p, h
         FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[])
              WITH ORDINALITY AS x(e, a, t, p, h, n)
         ORDER BY n",
    )
    .bind(aggregate_type)
    .bind(&event_ids)
    .bind(&aggregate_ids)
    .bind(&event_types)
    .bind(&payloads)
    .bind(&headers)
    .execute(executor)
    .await?;
    Ok(())
}
