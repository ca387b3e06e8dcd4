//! Bulk API 2.0 query: one SOQL query answered as CSV by an asynchronous job, in result pages
//! of up to `maxRecords` rows, for a handful of calls however many records match.
//!
//! ```text
//!  POST /jobs/query {operation, query} ─► job (UploadComplete)
//!  GET  /jobs/query/{id} until JobComplete | Failed | Aborted (backoff, as ingest jobs)
//!  GET  /jobs/query/{id}/results?maxRecords=N[&locator=L] ─► CSV page
//!        Sforce-Locator: next page's locator, or "null" after the last
//!        Sforce-NumberOfRecords: rows in this page (checked against the body)
//! ```
//!
//! Against the REST query (`/query` + `nextRecordsUrl`, 2,000 records a page at most), a
//! million records are ~20 result pages of 50,000 instead of 500 pages. The price: Salesforce
//! does not keep any order without `ORDER BY`, and documents `ORDER BY` as disabling the
//! chunking that makes large jobs fast, so a caller that needs an order sorts the rows itself.
//! In the CSV, null and an empty text are the same empty cell.

pub use csv::StringRecord;
use reqwest::Method;
use serde_json::json;

use crate::bulk::{JobInfo, JobState, Poll};
use crate::client::{Client, RawResponse, Target};
use crate::error::Error;

/// Which records a query job reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOperation {
    Query,
    /// Deleted and archived records too.
    QueryAll,
}

/// Rows per result page Salesforce allows at most is not documented as a number; past
/// ~100,000 rows a page risks the request timeout, so callers stay well below it.
pub const MAX_RESULT_ROWS: u32 = 100_000;

/// One page of a job's results.
#[derive(Debug, Clone)]
pub struct ResultPage {
    /// The CSV header: the selected fields, as the query names them.
    pub columns: Vec<String>,
    /// The rows, each with one cell per column (an empty cell is null or empty text).
    pub rows: Vec<StringRecord>,
    /// The next page's locator; `None` after the last page.
    pub next: Option<String>,
}

impl ResultPage {
    /// The index of `column` (API names are case-insensitive).
    pub fn column(&self, column: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
    }
}

impl Client {
    /// Creates a query job; Salesforce starts it at once (state `UploadComplete`).
    pub async fn create_query_job(
        &self,
        soql: &str,
        operation: QueryOperation,
    ) -> Result<JobInfo, Error> {
        let operation = match operation {
            QueryOperation::Query => "query",
            QueryOperation::QueryAll => "queryAll",
        };
        let body = json!({
            "operation": operation,
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        self.request(
            Method::POST,
            Target::Data(&["jobs", "query"]),
            &[],
            Some(&body),
        )
        .await?
        .json()
    }

    /// A query job's current information.
    pub async fn query_job(&self, id: &str) -> Result<JobInfo, Error> {
        self.request(Method::GET, Target::Data(&["jobs", "query", id]), &[], None)
            .await?
            .json()
    }

    /// Polls a query job until it is final (see [`Client::wait_for_job`]).
    pub async fn wait_for_query_job(&self, id: &str, poll: Poll) -> Result<JobInfo, Error> {
        let (info, _) = self
            .wait_until_final(id, poll, |id| self.query_job(id))
            .await?;
        Ok(info)
    }

    /// Aborts a query job that is not final yet.
    pub async fn abort_query_job(&self, id: &str) -> Result<JobInfo, Error> {
        self.request(
            Method::PATCH,
            Target::Data(&["jobs", "query", id]),
            &[],
            Some(&json!({ "state": "Aborted" })),
        )
        .await?
        .json()
    }

    /// Deletes a final query job and its results.
    pub async fn delete_query_job(&self, id: &str) -> Result<(), Error> {
        self.request(
            Method::DELETE,
            Target::Data(&["jobs", "query", id]),
            &[],
            None,
        )
        .await?;
        Ok(())
    }

    /// Creates a query job and waits for it: its information once `JobComplete`, an
    /// [`Error::BulkQueryFailed`] when it failed or was aborted. A call that fails on the way
    /// aborts the job when it can.
    pub async fn bulk_query(
        &self,
        soql: &str,
        operation: QueryOperation,
        poll: Poll,
    ) -> Result<JobInfo, Error> {
        let job = self.create_query_job(soql, operation).await?;
        let info = match self.wait_for_query_job(&job.id, poll).await {
            Ok(info) => info,
            Err(e) => {
                if let Err(abort) = self.abort_query_job(&job.id).await {
                    tracing::warn!(job = %job.id, error = %abort, "could not abort the bulk query job");
                }
                return Err(e);
            }
        };
        if info.state == JobState::JobComplete {
            return Ok(info);
        }
        Err(Error::BulkQueryFailed {
            id: info.id,
            state: format!("{:?}", info.state),
            message: info
                .error_message
                .unwrap_or_else(|| "no error message".to_owned()),
        })
    }

    /// One page of a complete job's results: the first when `locator` is `None`, at most
    /// `max_records` rows (1 to [`MAX_RESULT_ROWS`]).
    pub async fn query_job_results(
        &self,
        id: &str,
        locator: Option<&str>,
        max_records: u32,
    ) -> Result<ResultPage, Error> {
        if !(1..=MAX_RESULT_ROWS).contains(&max_records) {
            return Err(Error::InvalidRequest(format!(
                "maxRecords must be 1 to {MAX_RESULT_ROWS}, not {max_records}"
            )));
        }
        let max = max_records.to_string();
        let mut query = vec![("maxRecords", max.as_str())];
        if let Some(locator) = locator {
            query.push(("locator", locator));
        }
        let response = self
            .request_csv(Target::Data(&["jobs", "query", id, "results"]), &query)
            .await?;
        read_page(&response)
    }
}

/// Reads a result page: the CSV, the next locator, and the row count the header announces.
fn read_page(response: &RawResponse) -> Result<ResultPage, Error> {
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // Salesforce writes the literal `null` when there is no next page.
    let next = header("sforce-locator")
        .filter(|l| !l.is_empty() && *l != "null")
        .map(str::to_owned);
    let announced = match header("sforce-numberofrecords") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            response.invalid(format!("Sforce-NumberOfRecords {n:?} is not a number"))
        })?),
        None => None,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(response.body.as_slice());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| response.invalid(format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::with_capacity(announced.unwrap_or(0));
    for record in reader.records() {
        rows.push(record.map_err(|e| response.invalid(format!("cannot read the CSV: {e}")))?);
    }
    if let Some(n) = announced
        && n != rows.len()
    {
        return Err(response.invalid(format!(
            "Sforce-NumberOfRecords says {n} rows, the page holds {}",
            rows.len()
        )));
    }
    Ok(ResultPage {
        columns,
        rows,
        next,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn response(body: &str, headers: &[(&'static str, &str)]) -> RawResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        RawResponse {
            status: 200,
            body: body.as_bytes().to_vec(),
            method: Method::GET,
            path: "/services/data/v62.0/jobs/query/750x/results".into(),
            headers: map,
        }
    }

    #[test]
    fn a_page_is_read_with_quoted_cells_and_its_locator() {
        let page = read_page(&response(
            "\"Id\",\"Name\"\n\"001A\",\"a, \"\"b\"\"\nc\"\n\"001B\",\"\"\n",
            &[
                ("sforce-locator", "MjAwMDA"),
                ("sforce-numberofrecords", "2"),
            ],
        ))
        .unwrap();
        assert_eq!(page.columns, ["Id", "Name"]);
        assert_eq!(page.column("name"), Some(1));
        assert_eq!(&page.rows[0][1], "a, \"b\"\nc");
        assert_eq!(&page.rows[1][1], "");
        assert_eq!(page.next.as_deref(), Some("MjAwMDA"));
    }

    #[test]
    fn the_last_page_says_null_and_counts_are_checked() {
        let last = read_page(&response(
            "\"Id\"\n\"001A\"\n",
            &[("sforce-locator", "null"), ("sforce-numberofrecords", "1")],
        ))
        .unwrap();
        assert_eq!(last.next, None);
        let short = read_page(&response(
            "\"Id\"\n\"001A\"\n",
            &[("sforce-locator", "null"), ("sforce-numberofrecords", "2")],
        ))
        .unwrap_err();
        assert!(short.to_string().contains("says 2 rows"), "{short}");
        let ragged = read_page(&response("\"Id\",\"Name\"\n\"001A\"\n", &[])).unwrap_err();
        assert!(
            ragged.to_string().contains("cannot read the CSV"),
            "{ragged}"
        );
    }
}
