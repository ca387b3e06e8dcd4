//! API clients as the rest of the pipeline sees them: the [`ClientScope`] every
//! `order.submitted` event carries (the client's id and the external-id prefix that keeps its
//! Salesforce keys apart from every other client's; see `orderbridge_domain::tenant`).

use orderbridge_domain::{ClientId, ClientScope};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The client's scope, or `None` for an unknown client.
pub async fn scope<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
) -> Result<Option<ClientScope>, sqlx::Error> {
    let prefix: Option<String> =
        sqlx::query_scalar("SELECT external_id_prefix FROM api_clients WHERE id = $1")
            .bind(client_id.get())
            .fetch_optional(executor)
            .await?;
    Ok(prefix.map(|external_id_prefix| ClientScope {
        id: client_id,
        external_id_prefix,
    }))
}

/// The scope of the client that owns `order_id`, or `None` for an unknown order.
pub async fn scope_of_order<'e>(
    executor: impl PgExecutor<'e>,
    order_id: Uuid,
) -> Result<Option<ClientScope>, sqlx::Error> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT c.id, c.external_id_prefix
         FROM orders o JOIN api_clients c ON c.id = o.client_id WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(id, external_id_prefix)| ClientScope {
        id: ClientId::from_uuid(id),
        external_id_prefix,
    }))
}

/// Sets a client's prefix (the migration path of README "Tenant isolation": e.g. the empty
/// prefix for the client whose accounts were written before prefixes existed). Returns whether
/// the client exists. The database refuses a malformed prefix (check constraint) and one
/// another client has (unique index), as `sqlx::Error::Database`.
pub async fn set_prefix<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
    prefix: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_clients SET external_id_prefix = $2 WHERE id = $1")
        .bind(client_id.get())
        .bind(prefix)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() == 1)
}
