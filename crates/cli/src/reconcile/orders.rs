//! Which orders a run covers ([`Scope`]) and reading them from Postgres: the count for the
//! progress bar, the orders themselves in keyset pages, and which leftover ids exist at all.
//! The queries are here and the comparison is not, so each page is handed on as it arrives and
//! Postgres is streamed, never held.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{ORDER_COLUMNS, OrderRow, load_lines};
use orderbridge_domain::events::submitted_data;
use orderbridge_domain::{ClientId, ClientScope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::progress::Progress;

/// Orders read from Postgres per keyset page.
const PG_PAGE: i64 = 5_000;
/// Ids per `= ANY($1)` lookup when checking leftovers for existence.
const EXISTS_CHUNK: usize = 5_000;

/// Which orders a run covers, by `created_at`. Salesforce records are in scope when their
/// order is; orphans (no order) when the time in their UUIDv7 external id is, or always when the
/// id carries no time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Orders created at or after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Orders created before this instant.
    pub created_before: Option<DateTime<Utc>>,
}

impl Scope {
    /// Every order.
    pub fn all() -> Self {
        Self::default()
    }

    pub(crate) fn contains(&self, t: DateTime<Utc>) -> bool {
        self.created_after.is_none_or(|a| t >= a) && self.created_before.is_none_or(|b| t < b)
    }
}

/// One order as Postgres has it: what the comparison needs, no more.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredOrder {
    pub id: Uuid,
    pub sync_state: String,
    pub salesforce_id: Option<String>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub lines: i64,
}

/// Postgres's clock, read before Salesforce: orders created after it are out of the run.
pub(crate) async fn now(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

/// Hands every order in `scope` created before `started_at` to `each`, by id, with (when
/// `details`) the whole order as the API returns it, for the field comparison. Returns the
/// count taken up front (the progress bar's total), which the run logs.
/// How much of each order [`for_each_order`] hands over besides its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Details {
    None,
    /// The order as the API returns it (the field comparison).
    Order,
    /// And its client, as `order.submitted` carries it (the routing rules of several targets).
    WithClient,
}

pub(crate) async fn for_each_order(
    pool: &PgPool,
    scope: &Scope,
    started_at: DateTime<Utc>,
    progress: &dyn Progress,
    details: Details,
    mut each: impl FnMut(StoredOrder, Option<Value>),
) -> Result<i64, sqlx::Error> {
    let until = scope
        .created_before
        .map_or(started_at, |b| b.min(started_at));
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND created_at < $2",
    )
    .bind(scope.created_after)
    .bind(until)
    .fetch_one(pool)
    .await?;
    let bar = progress.phase("Postgres orders");
    bar.set_total(u64::try_from(total).unwrap_or(0));
    let mut after = Uuid::nil();
    loop {
        let page: Vec<StoredOrder> = sqlx::query_as(
            "SELECT o.id, o.sync_state, o.salesforce_id, o.last_error_code, o.last_error_message,
                    o.created_at,
                    (SELECT count(*) FROM order_lines l WHERE l.order_id = o.id) AS lines
             FROM orders o
             WHERE o.id > $1 AND ($2::timestamptz IS NULL OR o.created_at >= $2)
               AND o.created_at < $3
             ORDER BY o.id
             LIMIT $4",
        )
        .bind(after)
        .bind(scope.created_after)
        .bind(until)
        .bind(PG_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let n = page.len() as u64;
        let mut full = match details {
            Details::None => HashMap::new(),
            Details::Order => whole_orders(pool, &page, false).await?,
            Details::WithClient => whole_orders(pool, &page, true).await?,
        };
        for o in page {
            let order = full.remove(&o.id);
            each(o, order);
        }
        bar.inc(n);
    }
    bar.finish();
    Ok(total)
}

/// The page's orders as the API returns them (JSON), with their lines: what the mapping's
/// fields are evaluated on. Two queries a page.
async fn whole_orders(
    pool: &PgPool,
    page: &[StoredOrder],
    with_client: bool,
) -> Result<HashMap<Uuid, Value>, sqlx::Error> {
    let ids: Vec<Uuid> = page.iter().map(|o| o.id).collect();
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    let mut lines = load_lines(&mut conn, &ids).await?;
    let mut clients: HashMap<Uuid, ClientScope> = if with_client {
        let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT o.id, c.id, c.external_id_prefix
             FROM orders o JOIN api_clients c ON c.id = o.client_id WHERE o.id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|(order, id, external_id_prefix)| {
                let id = ClientId::from_uuid(id);
                (
                    order,
                    ClientScope {
                        id,
                        external_id_prefix,
                    },
                )
            })
            .collect()
    } else {
        HashMap::new()
    };
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let id = row.id;
        let order = row.into_order(lines.remove(&id).unwrap_or_default())?;
        let client = clients.remove(&id);
        out.insert(id, submitted_data(&order, client.as_ref()));
    }
    Ok(out)
}

/// Which of `ids` are orders in Postgres, whatever their `created_at`: a leftover Salesforce
/// record naming one is out of scope, not an orphan.
pub(crate) async fn existing(pool: &PgPool, ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut existing = HashSet::new();
    for chunk in ids.chunks(EXISTS_CHUNK) {
        let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1)")
            .bind(chunk)
            .fetch_all(pool)
            .await?;
        existing.extend(found);
    }
    Ok(existing)
}
