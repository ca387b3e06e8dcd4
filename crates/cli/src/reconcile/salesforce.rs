//! Reading Salesforce: one SOQL query per object for every record with the external id set,
//! followed page by page through `nextRecordsUrl`, and reduced at once to ids and the values of
//! the compared fields ([`SalesforceSide`]). Only SOQL and the REST client, so it runs against
//! the emulator and a real org alike.

use std::collections::HashMap;

use orderbridge_salesforce::Client;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ReconcileError;
use super::keys::{parse_item_key, parse_order_key};
use super::orders::Scope;
use crate::progress::{PhaseProgress, Progress};

/// Salesforce pages followed per query at most: 2,000 records a page makes 200 million records;
/// it only stops a server that keeps answering `done: false` from looping forever.
const MAX_PAGES: usize = 100_000;
/// The `CreatedDate` pre-filter starts this long before `since`: Salesforce's clock and ours
/// may differ, and a record is never created before its order, so a margin only costs reading.
const CREATED_DATE_MARGIN_SECS: i64 = 3_600;

/// The object and external-id field names the run queries, taken from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objects {
    pub order_object: String,
    pub order_field: String,
    /// `None` when the mapping writes no items.
    pub items: Option<(String, String)>,
    /// The order object's fields compared with the orders (read with the ids).
    pub order_fields: Vec<String>,
    /// The items object's compared fields.
    pub item_fields: Vec<String>,
}

/// What Salesforce holds, reduced to ids and compared values.
#[derive(Debug, Default)]
pub struct SalesforceSide {
    /// Order external id → record ids.
    pub orders: HashMap<Uuid, Vec<String>>,
    /// Order id → (line number, record id) of its items.
    pub items: HashMap<Uuid, Vec<(u32, String)>>,
    /// Record id → the values of the compared fields of its object, in [`Objects`]' order.
    pub values: HashMap<String, Vec<Value>>,
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

    /// Records the compared fields' values of the record `id` (of ours: others are not kept).
    pub fn add_values(&mut self, id: String, values: Vec<Value>) {
        if !values.is_empty() {
            self.values.insert(id, values);
        }
    }
}

/// One record as read: external id, record id, compared values.
type Row = (String, String, Vec<Value>);

/// Reads both objects at once (each with its own progress bar) into one [`SalesforceSide`].
/// Salesforce cannot filter by our `created_at`, so with a lower bound only `CreatedDate` narrows
/// the read; the scope itself is applied later, by the comparison.
pub(crate) async fn read(
    client: &Client,
    objects: &Objects,
    scope: &Scope,
    progress: &dyn Progress,
) -> Result<SalesforceSide, ReconcileError> {
    let since_filter = scope.created_after.map(|t| {
        let from = t - chrono::Duration::seconds(CREATED_DATE_MARGIN_SECS);
        format!(" AND CreatedDate >= {}", from.format("%Y-%m-%dT%H:%M:%SZ"))
    });
    let since_filter = since_filter.as_deref().unwrap_or("");
    let mut sf = SalesforceSide::default();
    let mut order_records = Vec::new();
    let mut item_records = Vec::new();
    let orders_bar = progress.phase(&format!("Salesforce {}", objects.order_object));
    let order_read = read_records(
        client,
        &objects.order_object,
        &objects.order_field,
        &objects.order_fields,
        since_filter,
        orders_bar.as_ref(),
        &mut order_records,
    );
    match &objects.items {
        Some((object, field)) => {
            let items_bar = progress.phase(&format!("Salesforce {object}"));
            let item_read = read_records(
                client,
                object,
                field,
                &objects.item_fields,
                since_filter,
                items_bar.as_ref(),
                &mut item_records,
            );
            tokio::try_join!(order_read, item_read)?;
        }
        None => order_read.await?,
    }
    for (ext, id, values) in order_records {
        if parse_order_key(&ext).is_some() {
            sf.add_values(id.clone(), values);
        }
        sf.add_order(&ext, id);
    }
    for (ext, id, values) in item_records {
        if parse_item_key(&ext).is_some() {
            sf.add_values(id.clone(), values);
        }
        sf.add_item(&ext, id);
    }
    Ok(sf)
}

/// Reads (external id, record id, values of `fields`) of every record of `object` with the
/// external id set, following `nextRecordsUrl`.
async fn read_records(
    client: &Client,
    object: &str,
    field: &str,
    fields: &[String],
    filter: &str,
    bar: &dyn PhaseProgress,
    out: &mut Vec<Row>,
) -> Result<(), ReconcileError> {
    let extra: String = fields.iter().map(|f| format!(", {f}")).collect();
    let soql = format!("SELECT Id, {field}{extra} FROM {object} WHERE {field} != null{filter}");
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
                let values = fields
                    .iter()
                    .map(|f| {
                        record
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(f))
                            .map_or(Value::Null, |(_, v)| v.clone())
                    })
                    .collect();
                out.push((ext.to_owned(), id.to_owned(), values));
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
