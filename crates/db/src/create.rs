//! Creating orders: the one transaction that accepts an order (advisory lock on the idempotency
//! key, key lookup, order + lines + first status-history row + `order.submitted` outbox event +
//! remembered response), used by `POST /v1/orders` and by the intake benchmark's direct-Postgres
//! baseline alike, and the row writers it is made of ([`insert_orders`]), which the benchmarks
//! also use to lay down a backlog many orders per statement.

use chrono::{DateTime, Utc};
use orderbridge_domain::{ClientId, ClientScope, Order, OrderEvent, OrderId, StatusSource};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::idempotency::{self, StoredResponse};
use crate::outbox;

/// The HTTP status remembered for a created order (what an Idempotency-Key replays).
pub const CREATED_STATUS: u16 = 201;

/// The Idempotency-Key of a create request.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the canonical request body: the same key with another body is refused.
    pub fingerprint: [u8; 32],
    pub expires_at: DateTime<Utc>,
}

/// What [`create_order`] did.
#[derive(Debug)]
pub enum Created {
    /// The new order and its serialized response body (the bytes an Idempotency-Key replays).
    New { order: Box<Order>, body: Vec<u8> },
    /// The key was used before with the same body: the response stored then.
    Replayed(StoredResponse),
}

/// Why an order was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another transaction holds the key's lock: its request is still running.
    #[error("a request with this Idempotency-Key is in flight")]
    KeyInFlight,
    /// The key was used before with another body.
    #[error("the Idempotency-Key was used with another request body")]
    KeyReused,
    /// The client already has an order with this `client_ref`.
    #[error("an order with client_ref {client_ref:?} exists")]
    DuplicateClientRef {
        client_ref: String,
        /// The existing order's id (`None` if it vanished in between).
        existing: Option<OrderId>,
    },
    #[error("cannot serialize the order: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Accepts `order` for `client` in one transaction: either the order, its lines, its
/// `order.submitted` event and the idempotency record all exist afterwards, or none does. The
/// event carries `client` (its id and external-id prefix), which scopes the order's Salesforce
/// keys.
///
/// Callers run it in a task of its own when they may be cancelled (a request handler): dropping
/// the future mid-`BEGIN` would hand a connection back to the pool inside a transaction
/// (sqlx #4393).
pub async fn create_order(
    pool: &PgPool,
    client: &ClientScope,
    idempotency: Option<&Idempotency>,
    order: Order,
    correlation_id: Option<String>,
) -> Result<Created, CreateError> {
    let client_id = client.id;
    let mut tx = pool.begin().await?;
    if let Some(idem) = idempotency {
        // Held until commit; a concurrent request with the same key fails to take it.
        if !idempotency::try_lock_key(&mut tx, client_id, &idem.key).await? {
            return Err(CreateError::KeyInFlight);
        }
        if let Some(stored) =
            idempotency::take_idempotent_response(&mut tx, client_id, &idem.key).await?
        {
            // Ended here, not by drop: a dropped transaction's ROLLBACK is only sent when the
            // connection is next used, and until then the key's lock is held, so an
            // immediate retry of the same key would be told it is still in flight.
            tx.rollback().await?;
            return if stored.request_hash == idem.fingerprint {
                Ok(Created::Replayed(stored))
            } else {
                Err(CreateError::KeyReused)
            };
        }
    }

    if let Err(e) = insert_order(&mut tx, client_id, &order).await {
        if is_constraint(&e, "orders_client_ref_key") {
            tx.rollback().await?;
            let existing = find_by_client_ref(pool, client_id, &order.client_ref).await?;
            return Err(CreateError::DuplicateClientRef {
                client_ref: order.client_ref,
                existing,
            });
        }
        return Err(e.into());
    }
    let envelope = OrderEvent::submitted(order.clone(), client.clone())
        .into_envelope(order.created_at, correlation_id);
    outbox::enqueue(&mut *tx, "order", order.id.get(), &envelope).await?;
    let body = serde_json::to_vec(&order)?;
    if let Some(idem) = idempotency {
        idempotency::store_idempotent_response(
            &mut *tx,
            client_id,
            &idem.key,
            &idem.fingerprint,
            (CREATED_STATUS, &body),
            order.id,
            idem.expires_at,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Created::New {
        order: Box::new(order),
        body,
    })
}

fn is_constraint(e: &sqlx::Error, name: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(name))
}

/// The id of the client's order with this `client_ref`, if any.
pub async fn find_by_client_ref<'e>(
    executor: impl PgExecutor<'e>,
    client_id: ClientId,
    client_ref: &str,
) -> Result<Option<OrderId>, sqlx::Error> {
    let id: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE client_id = $1 AND client_ref = $2")
            .bind(client_id.get())
            .bind(client_ref)
            .fetch_optional(executor)
            .await?;
    Ok(id.map(OrderId::from_uuid))
}

/// Inserts one new order and its lines (in the caller's transaction).
pub async fn insert_order(
    conn: &mut PgConnection,
    client_id: ClientId,
    order: &Order,
) -> Result<(), sqlx::Error> {
    insert_orders(conn, client_id, std::slice::from_ref(order)).await
}

/// Inserts new orders, their lines and their first status-history rows: three statements whatever
/// their number (arrays unnested server-side), so a backlog of thousands costs what one order
/// does.
pub async fn insert_orders(
    conn: &mut PgConnection,
    client_id: ClientId,
    orders: &[Order],
) -> Result<(), sqlx::Error> {
    let n = orders.len();
    let mut ids = Vec::with_capacity(n);
    let mut client_refs = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut billing = Vec::with_capacity(n);
    let mut shipping = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut notes = Vec::with_capacity(n);
    let mut totals = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut sync_states = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let lines = orders.iter().map(|o| o.lines.len()).sum();
    let mut line_orders = Vec::with_capacity(lines);
    let mut numbers = Vec::with_capacity(lines);
    let mut skus = Vec::with_capacity(lines);
    let mut names = Vec::with_capacity(lines);
    let mut quantities = Vec::with_capacity(lines);
    let mut prices = Vec::with_capacity(lines);
    let mut line_totals = Vec::with_capacity(lines);
    for order in orders {
        ids.push(order.id.get());
        client_refs.push(order.client_ref.as_str());
        customers.push(Json(&order.customer));
        billing.push(order.billing_address.as_ref().map(Json));
        shipping.push(order.shipping_address.as_ref().map(Json));
        currencies.push(order.currency.as_str());
        notes.push(order.notes.as_deref());
        totals.push(order.total);
        statuses.push(order.status.as_str());
        sync_states.push(order.sync.state.as_str());
        versions.push(order.version);
        created.push(order.created_at);
        updated.push(order.updated_at);
        for l in &order.lines {
            // The order model bounds both far below i32::MAX (500 lines, quantities ≤ 1e6).
            line_orders.push(order.id.get());
            numbers.push(l.line_number as i32);
            skus.push(l.sku.as_str());
            names.push(l.name.as_str());
            quantities.push(l.quantity as i32);
            prices.push(l.unit_price);
            line_totals.push(l.line_total);
        }
    }
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, billing_address,
             shipping_address, currency, notes, total, status, sync_state, version,
             created_at, updated_at, status_at)
         SELECT id, $1, client_ref, customer, billing, shipping, currency, notes, total, status,
             sync_state, version, created, updated, created
         FROM UNNEST($2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::text[],
                     $8::text[], $9::numeric[], $10::text[], $11::text[], $12::bigint[],
                     $13::timestamptz[], $14::timestamptz[])
              AS t(id, client_ref, customer, billing, shipping, currency, notes, total,
                   status, sync_state, version, created, updated)",
    )
    .bind(client_id.get())
    .bind(&ids)
    .bind(&client_refs)
    .bind(&customers)
    .bind(&billing)
    .bind(&shipping)
    .bind(&currencies)
    .bind(&notes)
    .bind(&totals)
    .bind(&statuses)
    .bind(&sync_states)
    .bind(&versions)
    .bind(&created)
    .bind(&updated)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_number, sku, name, quantity, unit_price, line_total)
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[],
                              $6::numeric[], $7::numeric[])",
    )
    .bind(&line_orders)
    .bind(&numbers)
    .bind(&skus)
    .bind(&names)
    .bind(&quantities)
    .bind(&prices)
    .bind(&line_totals)
    .execute(&mut *conn)
    .await?;
    // Each order's first status, so its history is never empty; the order of `ids` keeps
    // history ids in creation order.
    sqlx::query(
        "INSERT INTO order_status_history (order_id, status, at, source)
         SELECT order_id, status, at, $4
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS t(order_id, status, at)",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&created)
    .bind(StatusSource::API)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
