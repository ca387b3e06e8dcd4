//! The orders a run sends: 3 lines each, SKUs from the emulator's seed catalogue, customers
//! from a pool (so a batch upserts a realistic number of distinct Accounts); and the backlog
//! written straight into Postgres in the shape order-api writes.

use anyhow::{Result, anyhow};
use chrono::{DateTime, SubsecRound, Utc};
use orderbridge_domain::{NewOrder, NewOrderRequest, Order, OrderEvent};
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

/// Column arrays for one multi-row insert of orders, lines and outbox rows.
#[derive(Default)]
struct Chunk {
    ids: Vec<Uuid>,
    client_refs: Vec<String>,
    customers: Vec<String>,
    billing: Vec<Option<String>>,
    shipping: Vec<Option<String>>,
    currencies: Vec<String>,
    notes: Vec<Option<String>>,
    totals: Vec<String>,
    statuses: Vec<String>,
    sync_states: Vec<String>,
    versions: Vec<i64>,
    created: Vec<DateTime<Utc>>,
    line_order: Vec<Uuid>,
    line_numbers: Vec<i32>,
    line_skus: Vec<String>,
    line_names: Vec<String>,
    line_quantities: Vec<i32>,
    line_prices: Vec<String>,
    line_totals: Vec<String>,
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    payloads: Vec<String>,
    headers: Vec<String>,
}

impl Chunk {
    fn push(&mut self, order: &Order, correlation_id: String) -> Result<()> {
        self.ids.push(order.id);
        self.client_refs.push(order.client_ref.clone());
        self.customers.push(to_json(&order.customer)?);
        self.billing
            .push(order.billing_address.as_ref().map(to_json).transpose()?);
        self.shipping
            .push(order.shipping_address.as_ref().map(to_json).transpose()?);
        self.currencies.push(order.currency.clone());
        self.notes.push(order.notes.clone());
        self.totals.push(order.total.to_string());
        self.statuses.push(order.status.clone());
        self.sync_states.push(order.sync.state.as_str().to_owned());
        self.versions.push(order.version);
        self.created.push(order.created_at);
        for l in &order.lines {
            self.line_order.push(order.id);
            self.line_numbers.push(i32::try_from(l.line_number)?);
            self.line_skus.push(l.sku.clone());
            self.line_names.push(l.name.clone());
            self.line_quantities.push(i32::try_from(l.quantity)?);
            self.line_prices.push(l.unit_price.to_string());
            self.line_totals.push(l.line_total.to_string());
        }
        // As order-api does: the envelope of the whole order, and the headers
        // `orderbridge_db::outbox::enqueue` writes.
        let envelope = OrderEvent::Submitted(Box::new(order.clone()))
            .into_envelope(order.created_at, Some(correlation_id));
        self.event_ids.push(envelope.id);
        self.event_types.push(envelope.event_type.clone());
        self.headers.push(
            json!({"correlation_id": envelope.correlation_id, "schema_version": envelope.version})
                .to_string(),
        );
        self.payloads.push(serde_json::to_string(&envelope)?);
        Ok(())
    }

    /// One transaction: the orders, their lines, their outbox rows (in order, so `position`
    /// follows creation as it does for orders posted one after another).
    async fn insert(self, pool: &PgPool, client_id: Uuid) -> Result<()> {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO orders (id, client_id, client_ref, customer, billing_address,
                 shipping_address, currency, notes, total, status, sync_state, version,
                 created_at, updated_at)
             SELECT id, $1, client_ref, customer::jsonb, billing::jsonb, shipping::jsonb,
                 currency, notes, total::numeric, status, sync_state, version, created, created
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                         $13::timestamptz[])
                  AS t(id, client_ref, customer, billing, shipping, currency, notes, total,
                       status, sync_state, version, created)",
        )
        .bind(client_id)
        .bind(&self.ids)
        .bind(&self.client_refs)
        .bind(&self.customers)
        .bind(&self.billing)
        .bind(&self.shipping)
        .bind(&self.currencies)
        .bind(&self.notes)
        .bind(&self.totals)
        .bind(&self.statuses)
        .bind(&self.sync_states)
        .bind(&self.versions)
        .bind(&self.created)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_number, sku, name, quantity, unit_price,
                 line_total)
             SELECT o, n, s, nm, q, p::numeric, t::numeric
             FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[],
                         $7::text[]) AS x(o, n, s, nm, q, p, t)",
        )
        .bind(&self.line_order)
        .bind(&self.line_numbers)
        .bind(&self.line_skus)
        .bind(&self.line_names)
        .bind(&self.line_quantities)
        .bind(&self.line_prices)
        .bind(&self.line_totals)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload,
                 headers)
             SELECT e, 'order', a, t, p::jsonb, h::jsonb
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                  WITH ORDINALITY AS x(e, a, t, p, h, n)
             ORDER BY n",
        )
        .bind(&self.event_ids)
        .bind(&self.ids)
        .bind(&self.event_types)
        .bind(&self.payloads)
        .bind(&self.headers)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value)
}

/// Writes `n` orders with their lines and `order.submitted` outbox rows, `chunk` per
/// transaction, as if posted through the API (without idempotency keys, which only the API's
/// replay path reads).
pub async fn insert_backlog(
    pool: &PgPool,
    client_id: Uuid,
    run: &str,
    n: usize,
    chunk: usize,
) -> Result<()> {
    let chunk = chunk.max(1);
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        // Postgres keeps microseconds; order-api truncates the same way.
        let now = Utc::now().trunc_subsecs(6);
        let mut rows = Chunk::default();
        for i in start..end {
            let order = stored_order(run, i, Uuid::now_v7(), now)?;
            rows.push(&order, format!("{run}-{i}"))?;
        }
        rows.insert(pool, client_id).await?;
        start = end;
    }
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
        let env = OrderEvent::Submitted(Box::new(a.clone())).into_envelope(now, None);
        let bytes = serde_json::to_vec(&env).unwrap();
        let decoded = OrderEvent::decode(&bytes).unwrap();
        assert_eq!(decoded.data, OrderEvent::Submitted(Box::new(a)));
    }
}
