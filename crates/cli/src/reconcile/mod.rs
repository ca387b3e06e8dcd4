//! Reconciliation: every accepted order in Postgres against the Salesforce records written for
//! it, by external id (see the crate README for the classes and their meaning).
//!
//! How it reads, and why in this order:
//! 1. Postgres's clock (`now()`): orders created after it are out of this run.
//! 2. Salesforce, both objects at once, paged by `nextRecordsUrl`: `SELECT Id, <ext> FROM <object>
//!    WHERE <ext> != null` (plus `CreatedDate >= since - 1 h` with a lower bound). Only ids are
//!    kept: external id → record ids.
//! 3. Postgres, in keyset pages of ids: each order in scope is compared with what Salesforce
//!    holds and the matched entries are taken out, so Postgres is streamed, never held.
//! 4. What is left of Salesforce names no order in scope: those naming an existing order (out of
//!    scope, or created during the run) are dropped, the rest are orphans.
//!
//! Salesforce is read before Postgres because a record is written only after its order was
//! committed: any record read in step 2 finds its order in step 3 or 4, so a busy pipeline
//! cannot produce false orphans. It can produce orders reported missing that were synced while
//! the run read Salesforce; their sync state (`pending`, `published`, `retrying`) says so.

mod classify;
mod fix;
mod keys;
mod report;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use orderbridge_db::orders::ResyncError;
use orderbridge_salesforce::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use sync_worker::mapping::{Mapping, Scope as MappingScope};
use uuid::Uuid;

pub use classify::{Classes, Classifier};
pub use fix::{FixOptions, FixOutcome, fix};
pub use keys::{parse_item_key, parse_order_key};
pub use report::{Counts, Duplicate, Mismatch, Missing, ObjectKind, Orphan, Problem, Report};

use crate::progress::{PhaseProgress, Progress};

/// Orders read from Postgres per keyset page.
const PG_PAGE: i64 = 5_000;
/// Ids per `= ANY($1)` lookup when checking leftovers for existence.
const EXISTS_CHUNK: usize = 5_000;
/// Salesforce pages followed per query at most: 2,000 records a page makes 200 million records;
/// it only stops a server that keeps answering `done: false` from looping forever.
const MAX_PAGES: usize = 100_000;
/// The `CreatedDate` pre-filter starts this long before `since`: Salesforce's clock and ours
/// may differ, and a record is never created before its order, so a margin only costs reading.
const CREATED_DATE_MARGIN_SECS: i64 = 3_600;

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

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconcile cannot use this mapping: {0}")]
    UnsupportedMapping(String),
    #[error("reading {object} records from Salesforce failed: {source}")]
    Salesforce {
        object: String,
        #[source]
        source: Box<orderbridge_salesforce::Error>,
    },
    #[error("reading orders from Postgres failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queueing a resync failed: {0}")]
    Resync(#[from] ResyncError),
}

/// The object and external-id field names the run queries, taken from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objects {
    pub order_object: String,
    pub order_field: String,
    /// `None` when the mapping writes no items.
    pub items: Option<(String, String)>,
}

/// Checks that the mapping keys records the way reconcile reads them (the order by its id, an
/// item by `<order id>-<line number>`, as the built-in mapping does) by evaluating its keys on a
/// probe order, and that the names are plain SOQL identifiers.
pub fn objects(mapping: &Mapping) -> Result<Objects, ReconcileError> {
    const PROBE: &str = "0190f0a2-7c41-7b3e-9d55-2f1c0e6a1b11";
    let order = json!({ "id": PROBE });
    let key = mapping.order.object.key(MappingScope {
        order: &order,
        line: None,
    });
    if key.as_deref() != Some(PROBE) {
        return Err(ReconcileError::UnsupportedMapping(
            "`order.key` must be the order id (`\"key\": \"id\"`)".into(),
        ));
    }
    let order_object = identifier("order.sobject", &mapping.order.object.sobject)?;
    let order_field = identifier(
        "order.external_id_field",
        &mapping.order.object.external_id_field,
    )?;
    let items = match &mapping.items {
        None => None,
        Some(items) => {
            let line = json!({ "line_number": 7 });
            let key = items.object.key(MappingScope {
                order: &order,
                line: Some(&line),
            });
            if key.as_deref() != Some(&format!("{PROBE}-7")) {
                return Err(ReconcileError::UnsupportedMapping(
                    "`items.key` must be `{\"template\": \"{order.id}-{line_number}\"}`".into(),
                ));
            }
            Some((
                identifier("items.sobject", &items.object.sobject)?,
                identifier("items.external_id_field", &items.object.external_id_field)?,
            ))
        }
    };
    Ok(Objects {
        order_object,
        order_field,
        items,
    })
}

/// Names go into SOQL text: only letters, digits and underscores (custom and namespaced names
/// included), so a mapping cannot change the query.
fn identifier(place: &str, name: &str) -> Result<String, ReconcileError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name.to_owned())
    } else {
        Err(ReconcileError::UnsupportedMapping(format!(
            "{place} `{name}` is not a Salesforce API name"
        )))
    }
}

/// What Salesforce holds, reduced to ids.
#[derive(Debug, Default)]
pub struct SalesforceSide {
    /// Order external id → record ids.
    pub orders: HashMap<Uuid, Vec<String>>,
    /// Order id → (line number, record id) of its items.
    pub items: HashMap<Uuid, Vec<(u32, String)>>,
    pub order_records: u64,
    pub item_records: u64,
    pub ignored: u64,
}

impl SalesforceSide {
    /// Adds an order-object record.
    pub fn add_order(&mut self, external_id: &str, id: String) {
        self.order_records += 1;
        match parse_order_key(external_id) {
            Some(key) => self.orders.entry(key).or_default().push(id),
            None => self.ignored += 1,
        }
    }

    /// Adds an items-object record.
    pub fn add_item(&mut self, external_id: &str, id: String) {
        self.item_records += 1;
        match parse_item_key(external_id) {
            Some((order, line)) => self.items.entry(order).or_default().push((line, id)),
            None => self.ignored += 1,
        }
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
/// Compares Postgres with Salesforce over `scope`, without a progress display.
pub async fn reconcile(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    scope: Scope,
) -> Result<Report, ReconcileError> {
    reconcile_with_progress(pool, client, mapping, scope, &crate::progress::NoProgress).await
}

/// [`reconcile`], reporting progress per phase.
pub async fn reconcile_with_progress(
    pool: &PgPool,
    client: &Client,
    mapping: &Mapping,
    scope: Scope,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    let objects = objects(mapping)?;
    let run = std::time::Instant::now();
    let started_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;

    let since_filter = scope.created_after.map(|t| {
        let from = t - chrono::Duration::seconds(CREATED_DATE_MARGIN_SECS);
        format!(" AND CreatedDate >= {}", from.format("%Y-%m-%dT%H:%M:%SZ"))
    });
    let since_filter = since_filter.as_deref().unwrap_or("");
    let mut sf = SalesforceSide::default();
    let mut order_records = Vec::new();
    let mut item_records = Vec::new();
    let orders_bar = progress.phase(&format!("Salesforce {}", objects.order_object));
    let order_read = read_ids(
        client,
        &objects.order_object,
        &objects.order_field,
        since_filter,
        orders_bar.as_ref(),
        &mut order_records,
    );
    match &objects.items {
        Some((object, field)) => {
            let items_bar = progress.phase(&format!("Salesforce {object}"));
            let item_read = read_ids(
                client,
                object,
                field,
                since_filter,
                items_bar.as_ref(),
                &mut item_records,
            );
            tokio::try_join!(order_read, item_read)?;
        }
        None => order_read.await?,
    }
    tracing::debug!(
        orders = order_records.len(),
        items = item_records.len(),
        elapsed = ?run.elapsed(),
        "read Salesforce"
    );
    for (ext, id) in order_records {
        sf.add_order(&ext, id);
    }
    for (ext, id) in item_records {
        sf.add_item(&ext, id);
    }

    let mut classifier = Classifier::new(sf, objects.items.is_some());
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
        for o in page {
            classifier.order(o);
        }
        bar.inc(n);
    }
    bar.finish();
    tracing::debug!(orders = total, elapsed = ?run.elapsed(), "read Postgres");

    let leftovers = classifier.leftovers();
    let mut existing = HashSet::new();
    for chunk in leftovers.chunks(EXISTS_CHUNK) {
        let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1)")
            .bind(chunk)
            .fetch_all(pool)
            .await?;
        existing.extend(found);
    }
    let classes = classifier.finish(&existing, &scope);
    tracing::debug!(leftovers = leftovers.len(), elapsed = ?run.elapsed(), "reconciled");
    Ok(Report {
        scope,
        started_at,
        order_object: objects.order_object,
        item_object: objects.items.map(|(o, _)| o),
        counts: classes.counts,
        missing: classes.missing,
        missing_failed: classes.missing_failed,
        duplicated: classes.duplicated,
        mismatched: classes.mismatched,
        orphaned: classes.orphaned,
    })
}

/// Reads (external id, record id) of every record of `object` with the external id set,
/// following `nextRecordsUrl`.
async fn read_ids(
    client: &Client,
    object: &str,
    field: &str,
    filter: &str,
    bar: &dyn PhaseProgress,
    out: &mut Vec<(String, String)>,
) -> Result<(), ReconcileError> {
    let soql = format!("SELECT Id, {field} FROM {object} WHERE {field} != null{filter}");
    let err = |source| ReconcileError::Salesforce {
        object: object.to_owned(),
        source: Box::new(source),
    };
    let mut page = client
        .query::<Map<String, Value>>(&soql)
        .await
        .map_err(err)?;
    bar.set_total(page.total_size);
    for _ in 0..MAX_PAGES {
        bar.inc(page.records.len() as u64);
        for record in std::mem::take(&mut page.records) {
            // Salesforce answers with the field's canonical spelling, which the mapping may not
            // use (API names are case-insensitive).
            let ext = record
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(field))
                .and_then(|(_, v)| v.as_str());
            let id = record.get("Id").and_then(Value::as_str);
            if let (Some(ext), Some(id)) = (ext, id) {
                out.push((ext.to_owned(), id.to_owned()));
            }
        }
        if page.done {
            bar.finish();
            return Ok(());
        }
        let Some(next) = page.next_records_url.take() else {
            return Err(err(invalid("done is false but there is no nextRecordsUrl")));
        };
        page = client.query_more(&next).await.map_err(err)?;
    }
    Err(err(invalid("query still not done after too many pages")))
}

fn invalid(detail: &str) -> orderbridge_salesforce::Error {
    orderbridge_salesforce::Error::InvalidResponse {
        method: "GET".into(),
        path: "query".into(),
        status: 200,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_default_mapping_is_supported_and_others_are_explained() {
        let objects = objects(&Mapping::load(None).unwrap()).unwrap();
        assert_eq!(
            objects,
            Objects {
                order_object: "Order".into(),
                order_field: "External_Id__c".into(),
                items: Some(("OrderItem".into(), "External_Id__c".into())),
            }
        );
        let by_ref = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": "client_ref"}}"#,
            "test",
        )
        .unwrap();
        assert!(matches!(
            objects_err(&by_ref),
            ReconcileError::UnsupportedMapping(m) if m.contains("order.key")
        ));
        let case = Mapping::parse(
            r#"{"order": {"sobject": "Case", "external_id_field": "Order_Id__c", "key": "id"}}"#,
            "test",
        )
        .unwrap();
        assert_eq!(super::objects(&case).unwrap().items, None);
        // The mapping checks API names itself; reconcile checks again before writing SOQL.
        assert!(identifier("x", "ns__Order_Id__c").is_ok());
        assert!(identifier("x", "Case WHERE Id != null").is_err());
        assert!(identifier("x", "").is_err());
    }

    fn objects_err(m: &Mapping) -> ReconcileError {
        match super::objects(m) {
            Err(e) => e,
            Ok(o) => panic!("accepted {o:?}"),
        }
    }
}
