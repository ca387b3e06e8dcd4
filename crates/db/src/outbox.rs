//! The transactional outbox: an event is written in the same transaction as the change it
//! announces, and a relay publishes it to the broker after commit.
//!
//! Callers pass their open transaction as the executor, which is what makes the write atomic
//! with theirs.

use orderbridge_domain::Envelope;
use serde_json::{Value, json};
use sqlx::PgExecutor;
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
    let headers = json!({
        "correlation_id": envelope.correlation_id,
        "schema_version": envelope.version,
    });
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.id)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(&envelope.event_type)
    .bind(sqlx::types::Json(envelope))
    .bind(headers)
    .execute(executor)
    .await?;
    Ok(())
}
