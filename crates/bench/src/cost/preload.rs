//! The preloaded history and the tables' sizes.
//!
//! Orders are written as the drain writes its backlog, in bulk SQL, but with nothing sent per
//! line: the bench sends each chunk's ids, numbers and `created_at`s as arrays, Postgres
//! unnests them and makes each order's 3 lines with `generate_series`, with the workload's
//! values (`workload::order_request`: SKUs, quantities, prices, customers), so an order reads
//! back through the API as one posted with the same number would. Each chunk is one
//! transaction; as a superuser the chunk runs with `session_replication_role = replica`: the
//! rows are consistent by construction, so the foreign-key checks are skipped, and the insert
//! trigger's `NOTIFY order_versions` would send order-api's listener one notification per
//! preloaded order.

use std::time::Instant;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use orderbridge_domain::StatusSource;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::{NoContext, Timestamp, Uuid};

use super::CostArgs;
use crate::workload;

/// What the preload wrote and how long it took.
pub struct Preloaded {
    pub orders: u64,
    /// Writing the orders, lines and history rows, s.
    pub written_in: f64,
    /// The `VACUUM (ANALYZE)` after it, s.
    pub vacuumed_in: f64,
    /// The span of the preloaded `created_at`s.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// With `--prewarm`: bytes read into `shared_buffers`, and how long it took (s).
    pub prewarmed: Option<(i64, f64)>,
}

impl Preloaded {
    pub fn orders_per_s(&self) -> f64 {
        crate::common::per_second(self.orders as usize, self.written_in)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "orders": self.orders,
            "lines": self.orders * workload::LINES as u64,
            "written_s": self.written_in,
            "orders_per_s": self.orders_per_s(),
            "vacuum_analyze_s": self.vacuumed_in,
            "created_from": self.from,
            "created_to": self.to,
            "prewarmed_bytes": self.prewarmed.map(|(bytes, _)| bytes),
            "prewarm_s": self.prewarmed.map(|(_, s)| s),
        })
    }
}

/// Whether the bench's connection may checkpoint and set `session_replication_role`.
pub async fn is_superuser(pool: &PgPool) -> Result<bool> {
    let on: String = sqlx::query_scalar("SELECT current_setting('is_superuser')")
        .fetch_one(pool)
        .await?;
    Ok(on == "on")
}

/// The id order-api would have given an order created at `created`: a UUIDv7 carrying its
/// millisecond (`store.rs`'s `created_after` bound relies on ids never being older than that).
fn v7_at(created: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(created.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        secs,
        created.timestamp_subsec_nanos(),
    ))
}

/// `created_at` of the `n`-th of `total` orders spread evenly over `[from, to)`, in
/// microseconds as Postgres keeps them.
fn created_at(from: DateTime<Utc>, to: DateTime<Utc>, n: u64, total: u64) -> DateTime<Utc> {
    let span = i128::from((to - from).num_microseconds().unwrap_or(0));
    let offset = span * i128::from(n) / i128::from(total.max(1));
    from + TimeDelta::microseconds(i64::try_from(offset).unwrap_or(0))
}

/// Writes `--preload` orders (3 lines and one status-history row each, synced long ago) for
/// the client, oldest first, `--chunk` a transaction; then `VACUUM (ANALYZE)`.
pub async fn preload(
    pool: &PgPool,
    args: &CostArgs,
    client_id: Uuid,
    superuser: bool,
) -> Result<Preloaded> {
    let total = args.preload;
    // Whole microseconds, and an hour before anything the run posts.
    let to = Utc
        .timestamp_micros((Utc::now() - TimeDelta::hours(1)).timestamp_micros())
        .single()
        .ok_or_else(|| anyhow!("cannot represent the current time"))?;
    let from = to - TimeDelta::days(i64::from(args.history_days));
    // The workload's customers and address, serialized as order-api stores them.
    let sample = workload::stored_order("preload", 0, Uuid::nil(), to)?;
    let shipping = Json(serde_json::to_value(&sample.shipping_address)?);
    let customers = (0..workload::CUSTOMERS)
        .map(|c| {
            let order = workload::stored_order("preload", c, Uuid::nil(), to)?;
            Ok(Json(serde_json::to_value(&order.customer)?))
        })
        .collect::<Result<Vec<_>>>()?;

    let started = Instant::now();
    let chunk = u64::from(args.chunk.max(1));
    let mut logged = Instant::now();
    let mut n = 0;
    while n < total {
        let end = (n + chunk).min(total);
        let numbers: Vec<i64> = (n..end).map(|i| i as i64).collect();
        let created: Vec<DateTime<Utc>> =
            (n..end).map(|i| created_at(from, to, i, total)).collect();
        let ids: Vec<Uuid> = created.iter().map(|c| v7_at(*c)).collect();
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        if superuser {
            sqlx::query("SET LOCAL session_replication_role = replica")
                .execute(&mut *tx)
                .await?;
        }
        insert_chunk(
            &mut tx, client_id, &customers, &shipping, &ids, &numbers, &created,
        )
        .await?;
        tx.commit().await?;
        n = end;
        if logged.elapsed().as_secs() >= 10 || n == total {
            logged = Instant::now();
            let s = started.elapsed().as_secs_f64();
            tracing::info!(
                written = n,
                total,
                orders_per_s = (n as f64 / s.max(1e-9)).round(),
                "preloading"
            );
        }
    }
    let written_in = started.elapsed().as_secs_f64();
    let vacuuming = Instant::now();
    sqlx::query("VACUUM (ANALYZE) orders, order_lines, order_status_history")
        .execute(pool)
        .await?;
    let vacuumed_in = vacuuming.elapsed().as_secs_f64();
    let prewarmed = if args.prewarm {
        let started = Instant::now();
        let bytes = prewarm(pool).await?;
        Some((bytes, started.elapsed().as_secs_f64()))
    } else {
        None
    };
    Ok(Preloaded {
        orders: total,
        written_in,
        vacuumed_in,
        from,
        to,
        prewarmed,
    })
}

/// Reads the three order tables and all their indexes into `shared_buffers`; returns the bytes
/// read. What does not fit is simply evicted again (the newest reads win).
async fn prewarm(pool: &PgPool) -> Result<i64> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        .execute(pool)
        .await?;
    let bytes: i64 = sqlx::query_scalar(
        "WITH tables(rel) AS (
             VALUES ('orders'::regclass), ('order_lines'::regclass),
                    ('order_status_history'::regclass))
         SELECT coalesce(sum(pg_prewarm(rel)), 0)::bigint
                * current_setting('block_size')::bigint FROM (
             SELECT rel FROM tables
             UNION ALL
             SELECT indexrelid::regclass FROM pg_index WHERE indrelid IN (SELECT rel FROM tables)
         ) r",
    )
    .fetch_one(pool)
    .await?;
    Ok(bytes)
}

/// One chunk: orders, lines, first status-history rows, from the arrays.
async fn insert_chunk(
    tx: &mut sqlx::PgConnection,
    client_id: Uuid,
    customers: &[Json<Value>],
    shipping: &Json<Value>,
    ids: &[Uuid],
    numbers: &[i64],
    created: &[DateTime<Utc>],
) -> Result<()> {
    // Synced 2 s after creation: version 3 (pending → published → synced), a Salesforce id,
    // one attempt. The total is the sum of the lines written below.
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, shipping_address, currency,
             total, status, sync_state, salesforce_id, sync_attempts, synced_at,
             sync_reported_at, version, created_at, updated_at, status_at)
         SELECT t.id, $1, 'history-' || lpad(t.n::text, 9, '0'),
             ($2::jsonb[])[(t.n % $3)::int + 1], $4, 'EUR',
             (SELECT sum((1 + (t.n + k) % 3) * ((1 + (t.n + k) % 20) + 0.99))
              FROM generate_series(0, $5 - 1) AS k),
             'submitted', 'synced', '801' || lpad(to_hex(t.n), 15, '0'), 1,
             t.created + interval '2 seconds', t.created + interval '2 seconds', 3,
             t.created, t.created + interval '2 seconds', t.created
         FROM UNNEST($6::uuid[], $7::bigint[], $8::timestamptz[]) AS t(id, n, created)",
    )
    .bind(client_id)
    .bind(customers)
    .bind(workload::CUSTOMERS as i64)
    .bind(shipping)
    .bind(workload::LINES as i32)
    .bind(ids)
    .bind(numbers)
    .bind(created)
    .execute(&mut *tx)
    .await?;
    // workload::order_request's lines: SKU-001 … SKU-020, 1–3 of each at x.99.
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_number, sku, name, quantity, unit_price,
             line_total)
         SELECT t.id, k + 1, 'SKU-' || lpad(((t.n * $3 + k) % 20 + 1)::text, 3, '0'),
             'Bench item ' || (k + 1), 1 + (t.n + k) % 3, p.price,
             p.price * (1 + (t.n + k) % 3)
         FROM UNNEST($1::uuid[], $2::bigint[]) AS t(id, n)
         CROSS JOIN generate_series(0, $3 - 1) AS k
         CROSS JOIN LATERAL (SELECT (1 + (t.n + k) % 20) + 0.99 AS price) AS p",
    )
    .bind(ids)
    .bind(numbers)
    .bind(workload::LINES as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_status_history (order_id, status, at, source, recorded_at)
         SELECT id, 'submitted', created, $3, created
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS t(id, created)",
    )
    .bind(ids)
    .bind(created)
    .bind(StatusSource::API)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Bytes on disk of the order tables (heap, TOAST and indexes) and of each index of `orders`.
pub struct Sizes {
    /// (table, total bytes, index bytes).
    pub tables: Vec<(String, i64, i64)>,
    /// (index of `orders`, bytes).
    pub order_indexes: Vec<(String, i64)>,
}

const TABLES: [&str; 3] = ["orders", "order_lines", "order_status_history"];

pub async fn sizes(pool: &PgPool) -> Result<Sizes> {
    let mut tables = Vec::new();
    for t in TABLES {
        let (total, indexes): (i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size($1::regclass), pg_indexes_size($1::regclass)",
        )
        .bind(t)
        .fetch_one(pool)
        .await?;
        tables.push((t.to_owned(), total, indexes));
    }
    let order_indexes = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
         FROM pg_index WHERE indrelid = 'orders'::regclass ORDER BY 2 DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(Sizes {
        tables,
        order_indexes,
    })
}

impl Sizes {
    pub fn total(&self) -> i64 {
        self.tables.iter().map(|t| t.1).sum()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tables": self.tables.iter().map(|(t, total, idx)| {
                (t.clone(), json!({"total_bytes": total, "index_bytes": idx}))
            }).collect::<serde_json::Map<_, _>>(),
            "orders_indexes": self.order_indexes.iter().map(|(i, b)| (i.clone(), json!(b)))
                .collect::<serde_json::Map<_, _>>(),
            "total_bytes": self.total(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_millisecond_of_created_at() {
        let from = Utc.timestamp_micros(1_700_000_000_123_456).unwrap();
        let to = from + TimeDelta::days(1);
        for n in [0, 1, 999, 1000] {
            let c = created_at(from, to, n, 1000);
            assert!(c >= from && c < to || n == 1000);
            let id = v7_at(c);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!(
                secs * 1000 + u64::from(nanos) / 1_000_000,
                c.timestamp_millis() as u64
            );
        }
        // Later orders get larger ids (UUIDv7 sorts by time).
        assert!(v7_at(created_at(from, to, 1, 2)) > v7_at(created_at(from, to, 0, 2)));
    }
}
