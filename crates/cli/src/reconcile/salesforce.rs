//! Reading Salesforce: one SOQL query per object for every record with the external id set,
//! **sorted by the external id**, followed page by page through `nextRecordsUrl` by a task that
//! keeps at most [`PAGES_AHEAD`] pages ready ([`RecordStream`]). The run takes records from it up
//! to a key ([`RecordStream::take_through`]) into a [`SalesforceSide`]: ids and the values of
//! the compared fields, for the orders of one Postgres page. Only SOQL and the REST client, so it
//! runs against the emulator and a real org alike.
//!
//! Why sorted: Postgres pages come by order id, and an external id sorts as its order id does
//! (an order's is the hyphenated UUID; an item's starts with it, so an order's items come
//! together, in their order's place). Both sides can then be merged a page at a time and
//! nothing is held for the whole org: memory is bounded by the page sizes, whatever the count.
//! The order is checked as records arrive: a server that does not keep it stops the run with an
//! error rather than reporting false missing orders.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orderbridge_salesforce::Client;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::ReconcileError;
use super::keys::{parse_item_key, parse_order_key};
use super::orders::Scope;
use crate::progress::PhaseProgress;

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

/// What Salesforce holds for the orders being compared (a page of them in a run), reduced to
/// ids and compared values; the counters cover every record taken so far.
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
pub(crate) type Row = (String, String, Vec<Value>);

/// Pages read ahead of the comparison per object: the memory a stream holds is this many pages
/// (2,000 records each) plus the one being taken from.
const PAGES_AHEAD: usize = 2;

/// Which of our two shapes of external id a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Order,
    Item,
}

impl Kind {
    /// The order id a record's external id names, `None` when it is not one of ours.
    pub(crate) fn order_of(self, external_id: &str) -> Option<Uuid> {
        match self {
            Kind::Order => parse_order_key(external_id),
            Kind::Item => parse_item_key(external_id).map(|(order, _)| order),
        }
    }
}

/// One object's records, sorted by external id, read ahead by a task and taken in order.
pub(crate) struct RecordStream {
    kind: Kind,
    object: String,
    pages: mpsc::Receiver<Result<(u64, Vec<Row>), ReconcileError>>,
    /// The page being taken from, each record with the order id its external id names.
    buffer: VecDeque<(Option<Uuid>, Row)>,
    exhausted: bool,
    /// Whether the query's total size was added to the bar's.
    counted: bool,
    /// The last order id taken: the next must not sort before it.
    last: Option<Uuid>,
    bar: SharedBar,
}

/// Order ids `[from, to)`, open where `None`: the part of the key space one merge covers.
pub(crate) type Range = (Option<Uuid>, Option<Uuid>);

/// One progress bar fed by several streams (a run's ranges), each adding its query's total.
#[derive(Clone)]
pub(crate) struct SharedBar {
    bar: Arc<dyn PhaseProgress>,
    total: Arc<AtomicU64>,
}

impl SharedBar {
    pub(crate) fn new(bar: Box<dyn PhaseProgress>) -> Self {
        Self {
            bar: Arc::from(bar),
            total: Arc::default(),
        }
    }

    /// A bar that shows nothing (what is counted elsewhere).
    pub(crate) fn silent() -> Self {
        Self::new(Box::new(crate::progress::NoProgress))
    }

    pub(crate) fn add_total(&self, n: u64) {
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        self.bar.set_total(total);
    }

    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}

impl RecordStream {
    /// Starts reading `object` (`field` its external id, `fields` the compared ones) sorted by
    /// the external id, only the records naming an order in `range` (`[from, to)`, open where
    /// `None`), with the scope's pre-filter ([`select`]).
    pub(crate) fn open(
        client: &Client,
        kind: Kind,
        (object, field, fields): (&str, &str, &[String]),
        (scope, range): (&Scope, Range),
        bar: SharedBar,
    ) -> Self {
        // An item's external id starts with its order's: `>= 'from'` takes the items of `from`
        // and `< 'to'` leaves those of `to` to the next range. Uuids are safe in SOQL text.
        let from = range
            .0
            .map(|id| format!(" AND {field} >= '{id}'"))
            .unwrap_or_default();
        let to = range
            .1
            .map(|id| format!(" AND {field} < '{id}'"))
            .unwrap_or_default();
        let soql = format!(
            "{}{from}{to} ORDER BY {field}",
            select((object, field, fields), scope)
        );
        let (tx, pages) = mpsc::channel(PAGES_AHEAD);
        tokio::spawn(read_pages(
            client.clone(),
            soql,
            object.to_owned(),
            field.to_owned(),
            fields.to_vec(),
            tx,
        ));
        Self::from_pages(kind, object, pages, bar)
    }

    pub(crate) fn from_pages(
        kind: Kind,
        object: &str,
        pages: mpsc::Receiver<Result<(u64, Vec<Row>), ReconcileError>>,
        bar: SharedBar,
    ) -> Self {
        Self {
            kind,
            object: object.to_owned(),
            pages,
            buffer: VecDeque::new(),
            exhausted: false,
            counted: false,
            last: None,
            bar,
        }
    }

    /// Moves every record whose external id names an order up to `through` (and the records
    /// that are not ours on the way) into `side`.
    pub(crate) async fn take_through(
        &mut self,
        through: Uuid,
        side: &mut SalesforceSide,
    ) -> Result<(), ReconcileError> {
        loop {
            if self.buffer.is_empty() && !self.fill().await? {
                return Ok(());
            }
            while let Some((order, _)) = self.buffer.front() {
                if order.is_some_and(|o| o > through) {
                    return Ok(());
                }
                self.take_front(side)?;
            }
        }
    }

    /// The greatest order id in the next page (taking what is not ours on the way), or `None`
    /// when the stream has no record left: after the last Postgres page, the run takes the
    /// rest a page at a time up to this.
    pub(crate) async fn next_bound(
        &mut self,
        side: &mut SalesforceSide,
    ) -> Result<Option<Uuid>, ReconcileError> {
        loop {
            if self.buffer.is_empty() && !self.fill().await? {
                return Ok(None);
            }
            if let Some(bound) = self.buffer.iter().rev().find_map(|(order, _)| *order) {
                return Ok(Some(bound));
            }
            while !self.buffer.is_empty() {
                self.take_front(side)?;
            }
        }
    }

    /// Waits for the next page; `false` when there is none.
    async fn fill(&mut self) -> Result<bool, ReconcileError> {
        if self.exhausted {
            return Ok(false);
        }
        match self.pages.recv().await {
            Some(Ok((total, rows))) => {
                if !std::mem::replace(&mut self.counted, true) {
                    self.bar.add_total(total);
                }
                self.bar.inc(rows.len() as u64);
                let kind = self.kind;
                self.buffer
                    .extend(rows.into_iter().map(|row| (kind.order_of(&row.0), row)));
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.exhausted = true;
                Ok(false)
            }
        }
    }

    fn take_front(&mut self, side: &mut SalesforceSide) -> Result<(), ReconcileError> {
        let Some((order, (ext, id, values))) = self.buffer.pop_front() else {
            return Ok(());
        };
        if let Some(order) = order {
            if self.last.is_some_and(|last| order < last) {
                return Err(ReconcileError::Salesforce {
                    object: self.object.clone(),
                    source: Box::new(invalid(&format!(
                        "records are not sorted by external id ({ext} after {})",
                        self.last.unwrap_or_default()
                    ))),
                });
            }
            self.last = Some(order);
            side.add_values(id.clone(), values);
        }
        match self.kind {
            Kind::Order => side.add_order(&ext, id),
            Kind::Item => side.add_item(&ext, id),
        }
        Ok(())
    }
}

/// `SELECT Id, <ext>, <fields> FROM <object> WHERE <ext> != null`, with the `CreatedDate`
/// pre-filter when the scope has a lower bound: Salesforce cannot filter by our `created_at`,
/// so only `CreatedDate` narrows the read; the scope itself is applied by the comparison.
pub(crate) fn select((object, field, fields): (&str, &str, &[String]), scope: &Scope) -> String {
    let since = scope
        .created_after
        .map(|t| {
            let from = t - chrono::Duration::seconds(CREATED_DATE_MARGIN_SECS);
            format!(" AND CreatedDate >= {}", from.format("%Y-%m-%dT%H:%M:%SZ"))
        })
        .unwrap_or_default();
    let extra: String = fields.iter().map(|f| format!(", {f}")).collect();
    format!("SELECT Id, {field}{extra} FROM {object} WHERE {field} != null{since}")
}

/// The read-ahead task: the query's pages (with its total size), reduced to [`Row`]s, sent as
/// they come; the first error ends it. It also ends when the stream is dropped (a send fails).
async fn read_pages(
    client: Client,
    soql: String,
    object: String,
    field: String,
    fields: Vec<String>,
    tx: mpsc::Sender<Result<(u64, Vec<Row>), ReconcileError>>,
) {
    let err = |source| ReconcileError::Salesforce {
        object: object.clone(),
        source: Box::new(source),
    };
    let mut page = match client.query::<Map<String, Value>>(&soql).await {
        Ok(page) => page,
        Err(e) => {
            let _ = tx.send(Err(err(e))).await;
            return;
        }
    };
    for _ in 0..MAX_PAGES {
        let rows = rows(std::mem::take(&mut page.records), &field, &fields);
        if tx.send(Ok((page.total_size, rows))).await.is_err() || page.done {
            return;
        }
        let Some(next) = page.next_records_url.take() else {
            let _ = tx
                .send(Err(err(invalid(
                    "done is false but there is no nextRecordsUrl",
                ))))
                .await;
            return;
        };
        page = match client.query_more(&next).await {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(err(e))).await;
                return;
            }
        };
    }
    let _ = tx
        .send(Err(err(invalid(
            "query still not done after too many pages",
        ))))
        .await;
}

/// (external id, record id, values of `fields`) of each record with both ids.
fn rows(records: Vec<Map<String, Value>>, field: &str, fields: &[String]) -> Vec<Row> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
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
    out
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
    use crate::progress::NoProgress;

    fn stream(kind: Kind, pages: Vec<Vec<&str>>) -> RecordStream {
        let (tx, rx) = mpsc::channel(pages.len().max(1));
        for page in pages {
            let rows = page
                .into_iter()
                .enumerate()
                .map(|(n, ext)| (ext.to_owned(), format!("rec{ext}{n}"), vec![]))
                .collect();
            tx.try_send(Ok((0, rows))).unwrap();
        }
        RecordStream::from_pages(kind, "Order", rx, SharedBar::new(Box::new(NoProgress)))
    }

    const A: &str = "01900000-0000-7000-8000-00000000000a";
    const B: &str = "01900000-0000-7000-8000-00000000000b";
    const C: &str = "01900000-0000-7000-8000-00000000000c";

    #[tokio::test]
    async fn takes_up_to_a_key_across_pages_and_ours_only() {
        let mut s = stream(Kind::Order, vec![vec![A, "not-ours"], vec![B, C]]);
        let mut side = SalesforceSide::default();
        s.take_through(B.parse().unwrap(), &mut side).await.unwrap();
        let mut keys: Vec<_> = side.orders.keys().map(Uuid::to_string).collect();
        keys.sort();
        assert_eq!(keys, [A, B]);
        assert_eq!((side.order_records, side.ignored), (3, 1));
        assert_eq!(
            s.next_bound(&mut side).await.unwrap(),
            Some(C.parse().unwrap())
        );
        s.take_through(C.parse().unwrap(), &mut side).await.unwrap();
        assert_eq!(s.next_bound(&mut side).await.unwrap(), None);
        assert_eq!(side.order_records, 4);
    }

    #[tokio::test]
    async fn items_sort_with_their_order() {
        let (a1, a10, b2) = (format!("{A}-1"), format!("{A}-10"), format!("{B}-2"));
        let mut s = stream(Kind::Item, vec![vec![&a1, &a10, &b2]]);
        let mut side = SalesforceSide::default();
        s.take_through(A.parse().unwrap(), &mut side).await.unwrap();
        assert_eq!(side.items.len(), 1);
        assert_eq!(side.items[&A.parse::<Uuid>().unwrap()].len(), 2);
    }

    #[tokio::test]
    async fn an_answer_out_of_order_stops_the_run() {
        let mut s = stream(Kind::Order, vec![vec![B, A]]);
        let mut side = SalesforceSide::default();
        let err = s
            .take_through(C.parse().unwrap(), &mut side)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not sorted by external id"),
            "{err}"
        );
    }
}
