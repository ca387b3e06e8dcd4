//! The orders a run sends: 3 lines each, SKUs from the emulator's seed catalogue, customers
//! from a pool (so a batch upserts a realistic number of distinct Accounts); and the backlog
//! written straight into Postgres in the shape order-api writes.

use anyhow::{Result, anyhow};
use chrono::{DateTime, SubsecRound, Utc};
use orderbridge_db::{clients, create, outbox};
use orderbridge_domain::{ClientScope, Envelope, NewOrder, NewOrderRequest, Order, OrderEvent};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Distinct customers (Accounts) the orders are spread over.
pub const CUSTOMERS: usize = 200;
/// Lines per order, as in the issue's targets.
pub const LINES: usize = 3;

/// The external id of customer `i`'s Account (the orders' `customer.external_id`).
pub fn customer_external_id(i: usize) -> String {
    format!("BENCH-CUST-{i:03}")
}

/// The body of `POST /v1/orders` for the run's `i`-th order. `run` makes `client_ref`s unique.
pub fn order_request(run: &str, i: usize) -> Value {
    let customer = i % CUSTOMERS;
    // SKU-001 … SKU-020 are in config/sf-emulator-seed.json.
    let lines: Vec<Value> = (0..LINES)
        .map(|k| {
            json!({
                "sku": format!("SKU-{:03}", (i * LINES + k) % 20 + 1),
                "name": format!("Bench item {}", k + 1),
                "quantity": 1 + (i + k) % 3,
                "unit_price": format!("{}.99", 1 + (i + k) % 20),
            })
        })
        .collect();
    json!({
        "client_ref": format!("{run}-{i}"),
        "customer": {
            "external_id": customer_external_id(customer),
            "name": format!("Bench customer {customer}"),
            "email": format!("buyer{customer}@bench.example"),
        },
        "shipping_address": {"line1": "Hauptstrasse 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "currency": "EUR",
        "lines": lines,
    })
}

/// The `i`-th order as order-api would store it: parsed and validated by the domain crate.
pub fn stored_order(run: &str, i: usize, id: Uuid, now: DateTime<Utc>) -> Result<Order> {
    let req: NewOrderRequest = serde_json::from_value(order_request(run, i))?;
    let new = NewOrder::parse(req).map_err(|v| anyhow!("bench order is invalid: {v:?}"))?;
    Ok(new.into_order(id, now))
}

/// The `order.submitted` event of `order` as order-api enqueues it for `client`, correlated by
/// the order's idempotency key `key`.
pub fn submitted(order: &Order, client: &ClientScope, key: String) -> Envelope<Value> {
    OrderEvent::submitted(order.clone(), client.clone()).into_envelope(order.created_at, Some(key))
}

/// The client's scope as order-api puts it into events (read once per phase, not per order).
pub async fn client_scope(pool: &PgPool, client_id: Uuid) -> Result<ClientScope> {
    clients::scope(pool, client_id.into())
        .await?
        .ok_or_else(|| anyhow!("no API client {client_id}"))
}

/// Writes `n` orders with their lines and `order.submitted` outbox rows, `chunk` per
/// transaction, as if posted through the API (without idempotency keys, which only the API's
/// replay path reads): the API's own row writers, many orders per statement.
pub async fn insert_backlog(
    pool: &PgPool,
    client_id: Uuid,
    run: &str,
    n: usize,
    chunk: usize,
) -> Result<()> {
    let chunk = chunk.max(1);
    let client = client_scope(pool, client_id).await?;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        // Postgres keeps microseconds; order-api truncates the same way.
        let now = Utc::now().trunc_subsecs(6);
        let orders = (start..end)
            .map(|i| stored_order(run, i, Uuid::now_v7(), now))
            .collect::<Result<Vec<_>>>()?;
        let envelopes: Vec<_> = orders
            .iter()
            .zip(start..end)
            .map(|(order, i)| submitted(order, &client, format!("{run}-{i}")))
            .collect();
        let events: Vec<_> = orders.iter().map(|o| o.id.get()).zip(&envelopes).collect();
        // One transaction: the orders, their lines, their outbox rows in order (so `position`
        // follows creation as it does for orders posted one after another).
        let mut tx = pool.begin().await?;
        create::insert_orders(&mut tx, client_id.into(), &orders).await?;
        outbox::enqueue_many(&mut *tx, "order", &events).await?;
        tx.commit().await?;
        start = end;
    }
    Ok(())
}

/// Fresh planner statistics after a backlog was written, so the relay's and the progress
/// queries' plans fit the tables' new size.
pub async fn analyze(pool: &PgPool) -> Result<()> {
    sqlx::query("ANALYZE orders, order_lines, outbox")
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_valid_and_distinct() {
        let now = Utc::now();
        let a = stored_order("r", 0, Uuid::now_v7(), now).unwrap();
        let b = stored_order("r", 1, Uuid::now_v7(), now).unwrap();
        assert_eq!(a.lines.len(), LINES);
        assert_ne!(a.client_ref, b.client_ref);
        assert!(a.lines.iter().all(|l| l.sku.starts_with("SKU-0")));
        // The envelope a backlog row carries decodes as the worker decodes it.
        let client = ClientScope {
            id: Uuid::now_v7().into(),
            external_id_prefix: "bench:".into(),
        };
        let env = submitted(&a, &client, "k".into());
        let bytes = serde_json::to_vec(&env).unwrap();
        let decoded = OrderEvent::decode(&bytes).unwrap();
        assert_eq!(decoded.data, OrderEvent::submitted(a, client));
    }
}
