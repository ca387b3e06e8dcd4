//! Idempotency keys: the response remembered for `(client, Idempotency-Key)`, so a retried
//! request replays it instead of creating a second order. Written by [`crate::create`] in the
//! order's own transaction; purged in small batches by the API.

use chrono::{DateTime, Utc};
use orderbridge_domain::{ClientId, OrderId};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A remembered response to an Idempotency-Key.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub response_status: i16,
    pub response_body: Vec<u8>,
    order_id: Uuid,
}

impl StoredResponse {
    /// The order the remembered response created.
    pub fn order_id(&self) -> OrderId {
        OrderId::from_uuid(self.order_id)
    }
}

/// Takes the transaction-scoped advisory lock on (client, key): `false` when another transaction
/// holds it, i.e. a request with the same key is in flight. Released at commit or rollback.
pub async fn try_lock_key(
    conn: &mut PgConnection,
    client_id: ClientId,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("idempotency:{client_id}:{key}"))
        .fetch_one(&mut *conn)
        .await
}

/// The unexpired response stored for (client, key). An expired one is deleted in the same
/// statement (one round trip on the hot path), so the key can be used afresh.
pub async fn take_idempotent_response(
    conn: &mut PgConnection,
    client_id: ClientId,
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
    .bind(client_id.get())
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
}

/// Remembers the response to (client, key) until `expires_at`.
pub async fn store_idempotent_response<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
    key: &str,
    request_hash: &[u8],
    response: (u16, &[u8]),
    order_id: OrderId,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys
             (client_id, key, request_hash, response_status, response_body, order_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(client_id.get())
    .bind(key)
    .bind(request_hash)
    .bind(response.0 as i16)
    .bind(response.1)
    .bind(order_id.get())
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
