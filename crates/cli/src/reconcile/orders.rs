//! Which orders a run covers ([`Scope`]) and reading them from Postgres: the count for the
//! progress bar, the orders themselves in keyset pages by id ([`OrderPages`]), and which
//! leftover ids exist at all. The queries are here and the comparison is not; a run holds one
//! page at a time.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{ORDER_COLUMNS, OrderRow, load_lines};
use orderbridge_domain::events::submitted_data;
use orderbridge_domain::{ClientId, ClientScope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::salesforce::SharedBar;

/// How a run walks the orders: `page_size` orders a keyset page (what a range holds at a time,
/// with the Salesforce records sorting among them), in `parallel` ranges of ids merged at once
/// (each with its own two Salesforce queries: Salesforce answers one query's pages one after
/// another, so ranges are what makes a large org's read faster). With `bulk`, Salesforce is
/// read by Bulk API 2.0 query jobs instead, sorted on local disk (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page_size: u32,
    pub parallel: u32,
    pub bulk: bool,
}

/// Orders per page unless the run says otherwise (`--page-size`).
pub const DEFAULT_PAGE_SIZE: u32 = 5_000;
/// Ranges merged at once unless the run says otherwise (`--parallel`): 2 queries each, and a
/// Salesforce user may hold 10 query cursors open.
pub const DEFAULT_PARALLEL: u32 = 4;

impl Default for Paging {
    fn default() -> Self {
        Self {
            page_size: DEFAULT_PAGE_SIZE,
            parallel: DEFAULT_PARALLEL,
            bulk: false,
        }
    }
}
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

/// How much of each order [`OrderPages`] hands over besides its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Details {
    None,
    /// The order as the API returns it (the field comparison).
    Order,
    /// And its client, as `order.submitted` carries it (the routing rules of several targets).
    WithClient,
}

/// The orders a run covers: created in `scope` and before `started_at`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    created_after: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
}

impl Bounds {
    pub(crate) fn new(scope: &Scope, started_at: DateTime<Utc>) -> Self {
        Self {
            created_after: scope.created_after,
            until: scope
                .created_before
                .map_or(started_at, |b| b.min(started_at)),
        }
    }

    /// How many orders (the progress bar's total, and the log's).
    pub(crate) async fn count(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM orders
             WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND created_at < $2",
        )
        .bind(self.created_after)
        .bind(self.until)
        .fetch_one(pool)
        .await
    }

    /// Up to `parts` ranges of order ids holding about as many orders each, covering the
    /// whole key space (the first open below, the last above), so that records of no order
    /// fall in one of them too. One part, or no orders: the one open range.
    pub(crate) async fn split(
        &self,
        pool: &PgPool,
        parts: u32,
    ) -> Result<Vec<(Option<Uuid>, Option<Uuid>)>, sqlx::Error> {
        let starts: Vec<Uuid> = if parts > 1 {
            sqlx::query_scalar(
                "SELECT DISTINCT ON (part) id FROM (
                     SELECT id, ntile($3) OVER (ORDER BY id) AS part FROM orders
                     WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND created_at < $2
                 ) t ORDER BY part, id",
            )
            .bind(self.created_after)
            .bind(self.until)
            .bind(i32::try_from(parts).unwrap_or(i32::MAX))
            .fetch_all(pool)
            .await?
        } else {
            Vec::new()
        };
        // The first part starts at the bottom of the key space, not at its first order.
        let cuts: Vec<Uuid> = starts.into_iter().skip(1).collect();
        let mut ranges = Vec::with_capacity(cuts.len() + 1);
        let mut from = None;
        for cut in cuts {
            ranges.push((from, Some(cut)));
            from = Some(cut);
        }
        ranges.push((from, None));
        Ok(ranges)
    }
}

/// The orders of [`Bounds`] in one range of ids, by id, a keyset page at a time, each with (per
/// [`Details`]) the whole order as the API returns it.
pub(crate) struct OrderPages<'a> {
    pool: &'a PgPool,
    bounds: Bounds,
    /// Ids below this are another range's.
    until_id: Option<Uuid>,
    details: Details,
    page_size: i64,
    /// The least id the next page may hold.
    from: Uuid,
    done: bool,
    bar: SharedBar,
}

impl<'a> OrderPages<'a> {
    /// Starts before the first order of `range` (`[from, to)`).
    pub(crate) fn open(
        pool: &'a PgPool,
        bounds: Bounds,
        (from, to): (Option<Uuid>, Option<Uuid>),
        details: Details,
        page_size: u32,
        bar: SharedBar,
    ) -> Self {
        Self {
            pool,
            bounds,
            until_id: to,
            details,
            page_size: i64::from(page_size.max(1)),
            from: from.unwrap_or_else(Uuid::nil),
            done: false,
            bar,
        }
    }

    /// The next page, in id order; `None` after the last.
    pub(crate) async fn next(
        &mut self,
    ) -> Result<Option<Vec<(StoredOrder, Option<Value>)>>, sqlx::Error> {
        if self.done {
            return Ok(None);
        }
        let page: Vec<StoredOrder> = sqlx::query_as(
            "SELECT o.id, o.sync_state, o.salesforce_id, o.last_error_code, o.last_error_message,
                    o.created_at,
                    (SELECT count(*) FROM order_lines l WHERE l.order_id = o.id) AS lines
             FROM orders o
             WHERE o.id >= $1 AND ($5::uuid IS NULL OR o.id < $5)
               AND ($2::timestamptz IS NULL OR o.created_at >= $2) AND o.created_at < $3
             ORDER BY o.id
             LIMIT $4",
        )
        .bind(self.from)
        .bind(self.bounds.created_after)
        .bind(self.bounds.until)
        .bind(self.page_size)
        .bind(self.until_id)
        .fetch_all(self.pool)
        .await?;
        let Some(last) = page.last() else {
            self.done = true;
            return Ok(None);
        };
        // The keyset moves to the id after the last (ids are 128-bit numbers); after the
        // greatest possible id there is nothing.
        match last.id.as_u128().checked_add(1) {
            Some(next) => self.from = Uuid::from_u128(next),
            None => self.done = true,
        }
        self.bar.inc(page.len() as u64);
        let mut full = match self.details {
            Details::None => HashMap::new(),
            Details::Order => whole_orders(self.pool, &page, false).await?,
            Details::WithClient => whole_orders(self.pool, &page, true).await?,
        };
        Ok(Some(
            page.into_iter()
                .map(|o| {
                    let order = full.remove(&o.id);
                    (o, order)
                })
                .collect(),
        ))
    }
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
