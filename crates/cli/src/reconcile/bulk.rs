//! Reading Salesforce through Bulk API 2.0 query jobs (`--bulk`): one job per object for the
//! whole scope, its result pages (50,000 rows each) sorted on local disk into each range's
//! order ([`spill`](super::spill)), then handed to the merge as the REST streams would be.
//!
//! ```text
//!  POST /jobs/query (orders)  ─► poll ─► result pages ─► Sorter ─┐
//!  POST /jobs/query (items)   ─► poll ─► result pages ─► Sorter ─┤  both objects at once
//!                                                                ▼
//!  range i: RecordStream ◄── Sorted::reader(i) (k-way merge of the runs) ── merge with Postgres
//! ```
//!
//! Why: the REST query answers 2,000 records a page, one page after another per query, so a
//! large org's read is a long chain of round trips (BENCHMARKS.md, "Reconcile at scale"). A
//! query job answers the same records in a few large pages. Salesforce keeps no order in a job's
//! results (`ORDER BY` disables the chunking that makes large jobs fast), hence the local sort.
//! The whole download finishes before Postgres is read, which keeps the invariant the module
//! documentation gives (records are read before their orders are looked up).

use orderbridge_salesforce::Client;
use orderbridge_salesforce::bulk::Poll;
use orderbridge_salesforce::bulk_query::{QueryOperation, ResultPage};
use serde_json::Value;
use tokio::sync::mpsc;

use super::ReconcileError;
use super::classify::{FieldKind, Fields};
use super::orders::Scope;
use super::salesforce::{Kind, Objects, Range, RecordStream, Row, SharedBar, select};
use super::spill::{Sorted, Sorter};

/// Rows asked per result page: ~5 MB of CSV for our records, well below the request timeout.
pub(crate) const RESULT_ROWS: u32 = 50_000;
/// Rows per page handed to the merge (as the REST query's largest page).
const MERGE_PAGE: usize = 2_000;

/// Each object's records, sorted per range.
pub(crate) struct Staged {
    pub(crate) orders: Sorted,
    pub(crate) items: Option<Sorted>,
}

/// Runs both objects' query jobs at once and sorts their results into `ranges`.
pub(crate) async fn download(
    client: &Client,
    objects: &Objects,
    (fields, scope, ranges): (&Fields, &Scope, &[Range]),
    (orders_bar, items_bar): (&SharedBar, Option<&SharedBar>),
) -> Result<Staged, ReconcileError> {
    let started = std::time::Instant::now();
    let kinds = |f: &[(String, FieldKind)]| f.iter().map(|(_, k)| *k).collect::<Vec<_>>();
    let (order_kinds, item_kinds) = (kinds(&fields.order), kinds(&fields.item));
    let orders = read_object(
        client,
        Kind::Order,
        (
            &objects.order_object,
            &objects.order_field,
            &objects.order_fields,
            &order_kinds,
        ),
        (scope, ranges),
        orders_bar,
    );
    let items = async {
        match (&objects.items, items_bar) {
            (Some((object, field)), Some(bar)) => read_object(
                client,
                Kind::Item,
                (object, field, &objects.item_fields, &item_kinds),
                (scope, ranges),
                bar,
            )
            .await
            .map(Some),
            _ => Ok(None),
        }
    };
    let (orders, items) = tokio::try_join!(orders, items)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "Salesforce read through Bulk query jobs and sorted; merging with Postgres"
    );
    Ok(Staged { orders, items })
}

/// One object: its job, then its result pages one after another, each sorted in (off the
/// runtime's threads) while the next is fetched.
async fn read_object(
    client: &Client,
    kind: Kind,
    (object, field, fields, kinds): (&str, &str, &[String], &[FieldKind]),
    (scope, ranges): (&Scope, &[Range]),
    bar: &SharedBar,
) -> Result<Sorted, ReconcileError> {
    let err = |source| ReconcileError::Salesforce {
        object: object.to_owned(),
        source: Box::new(source),
    };
    let soql = select((object, field, fields), scope);
    let job = client
        .bulk_query(&soql, QueryOperation::Query, Poll::default())
        .await
        .map_err(err)?;
    let total = job.number_records_processed;
    bar.add_total(total);
    tracing::info!(job = %job.id, object, records = total, "Bulk query job complete");

    let mut sorter = Sorter::new(kind, ranges.to_vec());
    let mut page = client
        .query_job_results(&job.id, None, RESULT_ROWS)
        .await
        .map_err(err)?;
    let mut read = 0_u64;
    loop {
        let rows =
            rows(&page, field, (fields, kinds)).map_err(|detail| err(invalid(&job.id, detail)))?;
        read += page.rows.len() as u64;
        bar.inc(page.rows.len() as u64);
        // A server that keeps handing out locators would loop forever: the job said how many.
        if read > total || (page.rows.is_empty() && page.next.is_some()) {
            return Err(err(invalid(
                &job.id,
                format!("result pages hold more rows than the job's {total}"),
            )));
        }
        let sort = tokio::task::spawn_blocking(move || sorter.push(rows).map(|()| sorter));
        let next = async {
            match page.next.as_deref() {
                Some(locator) => client
                    .query_job_results(&job.id, Some(locator), RESULT_ROWS)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (sorted, next) = tokio::join!(sort, next);
        sorter = sorted
            .map_err(|e| ReconcileError::Spill(std::io::Error::other(e)))?
            .map_err(ReconcileError::Spill)?;
        match next.map_err(err)? {
            Some(next) => page = next,
            None => break,
        }
    }
    if read != total {
        return Err(err(invalid(
            &job.id,
            format!("result pages hold {read} rows, the job processed {total}"),
        )));
    }
    tokio::task::spawn_blocking(move || sorter.finish())
        .await
        .map_err(|e| ReconcileError::Spill(std::io::Error::other(e)))?
        .map_err(ReconcileError::Spill)
}

/// A page's rows as the merge takes them: (external id, record id, compared values), rows
/// without both ids left out as the REST read does. An empty cell is null: the CSV does not
/// tell null from empty text, and Salesforce keeps an empty text as null anyway. A number
/// field's cell becomes a JSON number, as the REST query answers it, so a report reads the
/// same whichever way Salesforce was read.
fn rows(
    page: &ResultPage,
    field: &str,
    (fields, kinds): (&[String], &[FieldKind]),
) -> Result<Vec<Row>, String> {
    let column = |name: &str| {
        page.column(name)
            .ok_or_else(|| format!("the results have no {name} column"))
    };
    let (id_at, ext_at) = (column("Id")?, column(field)?);
    let value_at = fields
        .iter()
        .map(|f| column(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(page.rows.len());
    for record in &page.rows {
        let (Some(ext), Some(id)) = (record.get(ext_at), record.get(id_at)) else {
            continue;
        };
        if ext.is_empty() || id.is_empty() {
            continue;
        }
        let values = value_at
            .iter()
            .zip(kinds)
            .map(|(&at, kind)| match record.get(at) {
                None | Some("") => Value::Null,
                Some(v) => match kind {
                    FieldKind::Number { .. } => v
                        .parse::<serde_json::Number>()
                        .map_or_else(|_| Value::String(v.to_owned()), Value::Number),
                    _ => Value::String(v.to_owned()),
                },
            })
            .collect();
        out.push((ext.to_owned(), id.to_owned(), values));
    }
    Ok(out)
}

fn invalid(job: &str, detail: String) -> orderbridge_salesforce::Error {
    orderbridge_salesforce::Error::InvalidResponse {
        method: "GET".into(),
        path: format!("jobs/query/{job}/results"),
        status: 200,
        detail,
    }
}

/// A stream over range `range` of `sorted`, fed by a blocking task that reads the runs.
pub(crate) fn stream(sorted: &Sorted, kind: Kind, object: &str, range: usize) -> RecordStream {
    let (tx, pages) = mpsc::channel(2);
    let total = sorted.count(range);
    let mut merged = sorted.reader(range);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut page = Vec::with_capacity(MERGE_PAGE);
            while page.len() < MERGE_PAGE {
                match merged.next_row() {
                    Ok(Some(row)) => page.push(row),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(ReconcileError::Spill(e)));
                        return;
                    }
                }
            }
            let last = page.len() < MERGE_PAGE;
            if !page.is_empty() && tx.blocking_send(Ok((total, page))).is_err() {
                return;
            }
            if last {
                return;
            }
        }
    });
    // The download fed the progress bar already.
    RecordStream::from_pages(kind, object, pages, SharedBar::silent())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use orderbridge_salesforce::bulk_query::StringRecord;

    use super::*;

    #[test]
    fn rows_read_columns_by_name_and_empty_cells_as_null() {
        let page = ResultPage {
            columns: vec![
                "Id".into(),
                "EXT__C".into(),
                "Amount__c".into(),
                "Zip".into(),
            ],
            rows: vec![
                StringRecord::from(vec!["001A", "ext-1", "12.5", "01234"]),
                StringRecord::from(vec!["001B", "", "1", "x"]),
                StringRecord::from(vec!["001C", "ext-3", "", ""]),
            ],
            next: None,
        };
        let fields = ["amount__c".to_owned(), "zip".to_owned()];
        let kinds = [FieldKind::Number { scale: Some(2) }, FieldKind::Text];
        let rows = rows(&page, "Ext__c", (&fields, &kinds)).unwrap();
        assert_eq!(
            rows,
            [
                (
                    "ext-1".into(),
                    "001A".into(),
                    vec![serde_json::json!(12.5), Value::String("01234".into())]
                ),
                (
                    "ext-3".into(),
                    "001C".into(),
                    vec![Value::Null, Value::Null]
                ),
            ]
        );
        let missing = super::rows(&page, "Other__c", (&[], &[])).unwrap_err();
        assert!(missing.contains("no Other__c column"), "{missing}");
    }
}
