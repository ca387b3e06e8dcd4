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

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use orderbridge_db::orders::{ResyncError, queue_resync};
use orderbridge_salesforce::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use sync_worker::mapping::{Mapping, Scope as MappingScope};
use uuid::Uuid;

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

    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.created_after.is_none_or(|a| t >= a) && self.created_before.is_none_or(|b| t < b)
    }
}

/// The Salesforce object a record belongs to, in the mapping's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// The mapping's `order` object (`Order` by default).
    Order,
    /// The mapping's `items` object (`OrderItem` by default).
    Item,
}

/// An accepted order with no Salesforce record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub order_id: Uuid,
    /// `pending`, `published`, `retrying`: possibly still on its way; `synced`: lost after being
    /// reported written (deleted in Salesforce?); `failed`: dead-lettered, see `error_code`.
    pub sync_state: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Several Salesforce records with one external id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub object: ObjectKind,
    pub external_id: String,
    pub order_id: Uuid,
    pub salesforce_ids: Vec<String>,
}

/// What differs between an order and its Salesforce record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// `orders.salesforce_id` is none of the records with the order's external id.
    SalesforceId {
        stored: String,
        in_salesforce: Vec<String>,
    },
    /// Distinct item external ids of the order in Salesforce ≠ the order's lines.
    ItemCount { lines: u32, items: u32 },
    /// The record exists but the order's sync state is not `synced`.
    NotSynced,
}

/// An order whose Salesforce record exists but differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub order_id: Uuid,
    pub sync_state: String,
    pub problems: Vec<Problem>,
}

/// A Salesforce record whose external id is an order id (or `<order id>-<line>`) of no order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub object: ObjectKind,
    pub external_id: String,
    pub salesforce_ids: Vec<String>,
}

/// How much was compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Orders in scope in Postgres.
    pub orders: u64,
    /// Records of the order object read from Salesforce (before scoping).
    pub salesforce_orders: u64,
    /// Records of the items object read from Salesforce (before scoping).
    pub salesforce_items: u64,
    /// Records read whose external id is not one of ours (not a UUID, or not `<UUID>-<line>`).
    pub ignored_records: u64,
}

/// The outcome of a run. Every list is sorted (by order id, then external id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub scope: Scope,
    /// Postgres's clock when the run started: later orders are not checked.
    pub started_at: DateTime<Utc>,
    pub order_object: String,
    pub item_object: Option<String>,
    pub counts: Counts,
    /// Accepted, not in Salesforce, not `failed`: lost if the pipeline is quiet.
    pub missing: Vec<Missing>,
    /// Not in Salesforce and `failed` (dead-lettered with the reason).
    pub missing_failed: Vec<Missing>,
    pub duplicated: Vec<Duplicate>,
    pub mismatched: Vec<Mismatch>,
    pub orphaned: Vec<Orphan>,
}

impl Report {
    /// Nothing missing (failed or not), duplicated, mismatched or orphaned.
    pub fn is_clean(&self) -> bool {
        self.anomalies() == 0
    }

    /// Entries over all classes.
    pub fn anomalies(&self) -> usize {
        self.missing.len()
            + self.missing_failed.len()
            + self.duplicated.len()
            + self.mismatched.len()
            + self.orphaned.len()
    }

    /// Orders `--fix` resyncs: the missing and the mismatched ones; those in state `failed`
    /// only with `include_failed` (they failed for a reason a resync repeats until it is
    /// fixed). Returns (to resync, skipped because failed), each sorted.
    pub fn resync_targets(&self, include_failed: bool) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut targets: Vec<Uuid> = self.missing.iter().map(|m| m.order_id).collect();
        let mut skipped = Vec::new();
        let failed = self.missing_failed.iter().map(|m| m.order_id).chain(
            self.mismatched
                .iter()
                .filter(|m| m.sync_state == "failed")
                .map(|m| m.order_id),
        );
        if include_failed {
            targets.extend(failed);
        } else {
            skipped.extend(failed);
        }
        targets.extend(
            self.mismatched
                .iter()
                .filter(|m| m.sync_state != "failed")
                .map(|m| m.order_id),
        );
        targets.sort_unstable();
        targets.dedup();
        skipped.sort_unstable();
        skipped.dedup();
        (targets, skipped)
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

/// An order's external id: a hyphenated UUID (what the worker writes), in any case.
pub fn parse_order_key(s: &str) -> Option<Uuid> {
    if s.len() == 36 {
        Uuid::try_parse(s).ok()
    } else {
        None
    }
}

/// An item's external id: `<order id>-<line number>`.
pub fn parse_item_key(s: &str) -> Option<(Uuid, u32)> {
    let (head, tail) = s.split_at_checked(36)?;
    let digits = tail.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parse_order_key(head)?, digits.parse().ok()?))
}

/// When a UUIDv7 was made (what order ids are); `None` for other versions.
fn uuid_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
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

/// The comparison itself, free of I/O: fed Salesforce's side, then each order in scope, then
/// told which leftover ids exist in Postgres at all.
pub struct Classifier {
    sf: SalesforceSide,
    check_items: bool,
    orders: u64,
    missing: Vec<Missing>,
    missing_failed: Vec<Missing>,
    duplicated: Vec<Duplicate>,
    mismatched: Vec<Mismatch>,
}

/// The classes a [`Classifier`] found.
pub struct Classes {
    pub counts: Counts,
    pub missing: Vec<Missing>,
    pub missing_failed: Vec<Missing>,
    pub duplicated: Vec<Duplicate>,
    pub mismatched: Vec<Mismatch>,
    pub orphaned: Vec<Orphan>,
}

impl Classifier {
    /// `check_items`: the mapping writes items, so their count is compared.
    pub fn new(sf: SalesforceSide, check_items: bool) -> Self {
        Self {
            sf,
            check_items,
            orders: 0,
            missing: Vec::new(),
            missing_failed: Vec::new(),
            duplicated: Vec::new(),
            mismatched: Vec::new(),
        }
    }

    /// Compares one order in scope and takes its records out of the Salesforce side.
    pub fn order(&mut self, o: StoredOrder) {
        self.orders += 1;
        let records = self.sf.orders.remove(&o.id);
        let items = self.sf.items.remove(&o.id).unwrap_or_default();
        let Some(records) = records else {
            let failed = o.sync_state == "failed";
            let missing = Missing {
                order_id: o.id,
                sync_state: o.sync_state,
                created_at: o.created_at,
                error_code: o.last_error_code,
                error_message: o.last_error_message,
            };
            if failed {
                self.missing_failed.push(missing);
            } else {
                self.missing.push(missing);
            }
            return;
        };
        let mut problems = Vec::new();
        if let Some(stored) = &o.salesforce_id
            && !records.iter().any(|r| same_id(r, stored))
        {
            problems.push(Problem::SalesforceId {
                stored: stored.clone(),
                in_salesforce: records.clone(),
            });
        }
        if records.len() > 1 {
            self.duplicated.push(Duplicate {
                object: ObjectKind::Order,
                external_id: o.id.to_string(),
                order_id: o.id,
                salesforce_ids: records,
            });
        }
        if self.check_items {
            let (distinct, dups) = group_items(o.id, items);
            self.duplicated.extend(dups);
            let lines = u32::try_from(o.lines).unwrap_or(u32::MAX);
            if distinct != lines {
                problems.push(Problem::ItemCount {
                    lines,
                    items: distinct,
                });
            }
        }
        if o.sync_state != "synced" {
            problems.push(Problem::NotSynced);
        }
        if !problems.is_empty() {
            self.mismatched.push(Mismatch {
                order_id: o.id,
                sync_state: o.sync_state,
                problems,
            });
        }
    }

    /// Order ids Salesforce still holds records for: no order in scope matched them.
    pub fn leftovers(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .sf
            .orders
            .keys()
            .chain(self.sf.items.keys())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The leftovers naming an order in `existing` are out of scope; the others are orphans if
    /// `scope` covers the time in their id.
    pub fn finish(mut self, existing: &HashSet<Uuid>, scope: &Scope) -> Classes {
        let in_scope =
            |id: &Uuid| !existing.contains(id) && uuid_time(*id).is_none_or(|t| scope.contains(t));
        let mut orphaned = Vec::new();
        for (id, records) in std::mem::take(&mut self.sf.orders) {
            if !in_scope(&id) {
                continue;
            }
            if records.len() > 1 {
                self.duplicated.push(Duplicate {
                    object: ObjectKind::Order,
                    external_id: id.to_string(),
                    order_id: id,
                    salesforce_ids: records.clone(),
                });
            }
            orphaned.push(Orphan {
                object: ObjectKind::Order,
                external_id: id.to_string(),
                salesforce_ids: records,
            });
        }
        for (id, items) in std::mem::take(&mut self.sf.items) {
            if !in_scope(&id) {
                continue;
            }
            let mut by_line: HashMap<u32, Vec<String>> = HashMap::new();
            for (line, record) in items {
                by_line.entry(line).or_default().push(record);
            }
            for (line, records) in by_line {
                let external_id = format!("{id}-{line}");
                if records.len() > 1 {
                    self.duplicated.push(Duplicate {
                        object: ObjectKind::Item,
                        external_id: external_id.clone(),
                        order_id: id,
                        salesforce_ids: records.clone(),
                    });
                }
                orphaned.push(Orphan {
                    object: ObjectKind::Item,
                    external_id,
                    salesforce_ids: records,
                });
            }
        }
        // Postgres pages come by id, so missing and mismatched are already sorted.
        self.duplicated.sort_by(|a, b| {
            (a.order_id, a.object, &a.external_id).cmp(&(b.order_id, b.object, &b.external_id))
        });
        orphaned.sort_by(|a, b| (a.object, &a.external_id).cmp(&(b.object, &b.external_id)));
        Classes {
            counts: Counts {
                orders: self.orders,
                salesforce_orders: self.sf.order_records,
                salesforce_items: self.sf.item_records,
                ignored_records: self.sf.ignored,
            },
            missing: self.missing,
            missing_failed: self.missing_failed,
            duplicated: self.duplicated,
            mismatched: self.mismatched,
            orphaned,
        }
    }
}

/// Salesforce ids compare case-sensitively in their 15-character form; the 18-character form
/// adds a case-insensitive checksum, so either form of one id matches.
fn same_id(a: &str, b: &str) -> bool {
    a == b || (a.len() >= 15 && b.len() >= 15 && a.get(..15) == b.get(..15))
}

/// (distinct lines, duplicates) of one order's items.
fn group_items(order_id: Uuid, mut items: Vec<(u32, String)>) -> (u32, Vec<Duplicate>) {
    items.sort_unstable();
    let mut distinct = 0u32;
    let mut dups = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let line = items[i].0;
        let mut j = i + 1;
        while j < items.len() && items[j].0 == line {
            j += 1;
        }
        distinct += 1;
        if j - i > 1 {
            dups.push(Duplicate {
                object: ObjectKind::Item,
                external_id: format!("{order_id}-{line}"),
                order_id,
                salesforce_ids: items[i..j].iter().map(|(_, id)| id.clone()).collect(),
            });
        }
        i = j;
    }
    (distinct, dups)
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

/// Options of [`fix`].
#[derive(Debug, Clone)]
pub struct FixOptions {
    /// Also resync orders in state `failed`.
    pub include_failed: bool,
    /// Correlation id of the resync events (one per run, so they can be found in logs).
    pub correlation_id: String,
}

/// What [`fix`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixOutcome {
    /// Orders put back to `pending` with a fresh `order.submitted` event.
    pub queued: Vec<Uuid>,
    /// Failed orders left alone (no `include_failed`).
    pub skipped_failed: Vec<Uuid>,
    /// Orders deleted since the report.
    pub not_found: Vec<Uuid>,
}

/// Queues a resync for each of the report's missing and mismatched orders, exactly as
/// `POST /v1/orders/{id}/resync` does ([`queue_resync`]), one transaction per order. Duplicates
/// and orphans are left to a person: deleting Salesforce records is not for a tool to decide.
pub async fn fix(
    pool: &PgPool,
    report: &Report,
    options: &FixOptions,
    progress: &dyn Progress,
) -> Result<FixOutcome, ReconcileError> {
    let (targets, skipped_failed) = report.resync_targets(options.include_failed);
    let bar = progress.phase("resyncs queued");
    bar.set_total(targets.len() as u64);
    let mut outcome = FixOutcome {
        skipped_failed,
        ..FixOutcome::default()
    };
    for id in targets {
        let mut tx = pool.begin().await?;
        match queue_resync(&mut tx, id, None, Some(options.correlation_id.clone())).await? {
            Some(_) => {
                tx.commit().await?;
                outcome.queued.push(id);
            }
            None => outcome.not_found.push(id),
        }
        bar.inc(1);
    }
    bar.finish();
    tracing::info!(
        queued = outcome.queued.len(),
        correlation_id = %options.correlation_id,
        "resyncs queued"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stored(id: Uuid, state: &str, sf_id: Option<&str>, lines: i64) -> StoredOrder {
        StoredOrder {
            id,
            sync_state: state.into(),
            salesforce_id: sf_id.map(Into::into),
            last_error_code: (state == "failed").then(|| "UNKNOWN_SKU".into()),
            last_error_message: (state == "failed").then(|| "no such SKU".into()),
            created_at: Utc::now(),
            lines,
        }
    }

    #[test]
    fn keys_parse_only_in_our_shapes() {
        let id = Uuid::now_v7();
        assert_eq!(parse_order_key(&id.to_string()), Some(id));
        assert_eq!(
            parse_order_key(&id.to_string().to_uppercase()),
            Some(id),
            "Salesforce matches external ids case-insensitively"
        );
        assert_eq!(parse_order_key(&id.simple().to_string()), None);
        assert_eq!(parse_order_key("ORD-1"), None);
        assert_eq!(parse_item_key(&format!("{id}-3")), Some((id, 3)));
        assert_eq!(parse_item_key(&format!("{id}-12")), Some((id, 12)));
        for bad in [
            format!("{id}"),
            format!("{id}-"),
            format!("{id}-x"),
            format!("{id}-+1"),
            format!("{id}--1"),
            format!("{id}-99999999999"),
            "é".repeat(20),
        ] {
            assert_eq!(parse_item_key(&bad), None, "{bad}");
        }
    }

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

    /// Every class from one Salesforce side; duplicates included, which the emulator's unique
    /// external id fields prevent (the integration test uses a schema without uniqueness).
    #[test]
    fn classifies_every_anomaly() {
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        let [ok, lost, failed, dup, wrong_id, short, in_flight, orphan] = ids[..] else {
            unreachable!()
        };
        let deleted_long_ago = Uuid::now_v7();
        let out_of_scope = Uuid::now_v7();
        let mut sf = SalesforceSide::default();
        // The random end of the UUID: ids made in one millisecond share their start.
        let rec = |o: Uuid| format!("801{}", &o.simple().to_string()[17..]);
        for o in [ok, dup, wrong_id, short, in_flight, orphan, out_of_scope] {
            sf.add_order(&o.to_string(), rec(o));
            for line in 1..=3 {
                if o == short && line == 3 {
                    continue;
                }
                sf.add_item(&format!("{o}-{line}"), format!("802-{o}-{line}"));
            }
        }
        sf.add_order(&dup.to_string(), "801SECOND".into());
        sf.add_item(&format!("{dup}-2"), "802SECOND".into());
        sf.add_order("ORD-1", "801FOREIGN".into());
        sf.add_item("ORD-1-1", "802FOREIGN".into());

        let mut c = Classifier::new(sf, true);
        c.order(stored(ok, "synced", Some(&rec(ok)), 3));
        c.order(stored(lost, "synced", Some("801LOST"), 3));
        c.order(stored(failed, "failed", None, 3));
        c.order(stored(dup, "synced", Some(&rec(dup)), 3));
        c.order(stored(wrong_id, "synced", Some("801xx000003GZ8bAAG"), 3));
        c.order(stored(short, "synced", Some(&rec(short)), 3));
        c.order(stored(in_flight, "published", None, 3));
        let mut leftovers = c.leftovers();
        leftovers.sort();
        let mut want = vec![orphan, out_of_scope];
        want.sort();
        assert_eq!(leftovers, want);
        let existing = HashSet::from([out_of_scope, deleted_long_ago]);
        let classes = c.finish(&existing, &Scope::all());

        assert_eq!(classes.counts.orders, 7);
        assert_eq!(classes.counts.salesforce_orders, 9);
        assert_eq!(classes.counts.salesforce_items, 7 * 3 - 1 + 2);
        assert_eq!(classes.counts.ignored_records, 2);
        assert_eq!(
            classes
                .missing
                .iter()
                .map(|m| (m.order_id, m.sync_state.as_str()))
                .collect::<Vec<_>>(),
            vec![(lost, "synced")]
        );
        assert_eq!(classes.missing_failed.len(), 1);
        assert_eq!(classes.missing_failed[0].order_id, failed);
        assert_eq!(
            classes.missing_failed[0].error_code.as_deref(),
            Some("UNKNOWN_SKU")
        );
        assert_eq!(
            classes
                .duplicated
                .iter()
                .map(|d| (d.object, d.external_id.clone(), d.salesforce_ids.len()))
                .collect::<Vec<_>>(),
            vec![
                (ObjectKind::Order, dup.to_string(), 2),
                (ObjectKind::Item, format!("{dup}-2"), 2)
            ]
        );
        let mismatched: Vec<(Uuid, Vec<Problem>)> = classes
            .mismatched
            .iter()
            .map(|m| (m.order_id, m.problems.clone()))
            .collect();
        assert_eq!(
            mismatched,
            vec![
                (
                    wrong_id,
                    vec![Problem::SalesforceId {
                        stored: "801xx000003GZ8bAAG".into(),
                        in_salesforce: vec![rec(wrong_id)]
                    }]
                ),
                (short, vec![Problem::ItemCount { lines: 3, items: 2 }]),
                (in_flight, vec![Problem::NotSynced]),
            ],
            "a duplicate item does not count twice; the dup's stored id is one of its records"
        );
        assert_eq!(
            classes
                .orphaned
                .iter()
                .map(|o| (o.object, o.external_id.clone()))
                .collect::<Vec<_>>(),
            vec![
                (ObjectKind::Order, orphan.to_string()),
                (ObjectKind::Item, format!("{orphan}-1")),
                (ObjectKind::Item, format!("{orphan}-2")),
                (ObjectKind::Item, format!("{orphan}-3")),
            ]
        );
    }

    #[test]
    fn orphans_are_scoped_by_the_time_in_their_uuid() {
        let old = Uuid::parse_str("01800000-0000-7000-8000-000000000001").unwrap(); // 2022
        let new = Uuid::now_v7();
        let v4 = Uuid::new_v4();
        let mut sf = SalesforceSide::default();
        for o in [old, new, v4] {
            sf.add_order(&o.to_string(), format!("801-{o}"));
        }
        let scope = Scope {
            created_after: Some(Utc::now() - chrono::Duration::hours(1)),
            created_before: None,
        };
        let classes = Classifier::new(sf, true).finish(&HashSet::new(), &scope);
        let mut got: Vec<String> = classes
            .orphaned
            .into_iter()
            .map(|o| o.external_id)
            .collect();
        got.sort();
        let mut want = vec![new.to_string(), v4.to_string()];
        want.sort();
        assert_eq!(got, want, "a UUID without a time is always in scope");
    }

    #[test]
    fn without_items_the_item_count_is_not_compared() {
        let id = Uuid::now_v7();
        let mut sf = SalesforceSide::default();
        sf.add_order(&id.to_string(), "5001".into());
        let mut c = Classifier::new(sf, false);
        c.order(stored(id, "synced", Some("5001"), 3));
        let classes = c.finish(&HashSet::new(), &Scope::all());
        assert!(classes.mismatched.is_empty());
        assert!(classes.orphaned.is_empty());
    }

    #[test]
    fn fix_targets_skip_failed_orders_unless_asked() {
        let [a, b, c, d] = [0; 4].map(|_| Uuid::now_v7());
        let m = |id, state: &str| Missing {
            order_id: id,
            sync_state: state.into(),
            created_at: Utc::now(),
            error_code: None,
            error_message: None,
        };
        let report = Report {
            scope: Scope::all(),
            started_at: Utc::now(),
            order_object: "Order".into(),
            item_object: None,
            counts: Counts::default(),
            missing: vec![m(a, "published")],
            missing_failed: vec![m(b, "failed")],
            duplicated: vec![],
            mismatched: vec![
                Mismatch {
                    order_id: c,
                    sync_state: "synced".into(),
                    problems: vec![Problem::ItemCount { lines: 3, items: 2 }],
                },
                Mismatch {
                    order_id: d,
                    sync_state: "failed".into(),
                    problems: vec![Problem::NotSynced],
                },
            ],
            orphaned: vec![],
        };
        assert!(!report.is_clean());
        assert_eq!(report.anomalies(), 4);
        let mut want = vec![a, c];
        want.sort();
        let mut skipped = vec![b, d];
        skipped.sort();
        assert_eq!(report.resync_targets(false), (want, skipped));
        let mut all = vec![a, b, c, d];
        all.sort();
        assert_eq!(report.resync_targets(true), (all, vec![]));
        // The JSON form round-trips.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mismatched"][0]["problems"][0]["kind"], "item_count");
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);
    }
}
