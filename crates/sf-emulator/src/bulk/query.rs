//! Bulk API 2.0 query jobs: a SOQL query checked when the job is created, evaluated in the
//! background, its results read as CSV pages.
//!
//! ```text
//!  POST  /jobs/query            {operation: query|queryAll, query, [contentType, columnDelimiter,
//!                                lineEnding]} ─► SOQL checked now (400 as REST answers it) ─► job
//!                                (UploadComplete) ─► spawn
//!                                 └► InProgress: the query runs in one turn of the state lock;
//!                                    the job keeps the matched ids, in result order ─► JobComplete
//!  GET   /jobs/query/{id}       state, numberRecordsProcessed, errorMessage
//!  GET   /jobs/query             every query job
//!  GET   /jobs/query/{id}/results?maxRecords=N&locator=L
//!                               text/csv, Sforce-NumberOfRecords, Sforce-Locator (or "null");
//!                               rows rendered from the records as they are when the page is
//!                               read, a chunk per turn of the lock (deleted ones left out)
//!  PATCH /jobs/query/{id}       {"state":"Aborted"} (UploadComplete or InProgress only)
//!  DELETE /jobs/query/{id}      once JobComplete, Failed or Aborted
//! ```
//!
//! Without `ORDER BY` the rows come in the store's order (creation order), not sorted by any
//! field. Each call counts against the daily API allocation like any REST call. Faults:
//! `bulk_fail_query_jobs` fails the next jobs (`Failed`, `errorMessage`); `bulk_rows_per_second`
//! keeps a job `InProgress` for its rows ÷ rate seconds after the query ran.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use super::job::JobState;
use super::query_job::{
    CsvPage, Delimiter, LineEnding, QueryJob, QueryOperation, locator, locator_offset,
};
use super::{Answer, Call, invalid_state_message, job_not_found, method_not_allowed};
use crate::reply::{RecordError, Reply};
use crate::route::{Route, param};
use crate::soql::{self, Rows};
use crate::state::{AppState, Inner, Shared};

/// Rows per results page when the request sets no `maxRecords` (simple-salesforce's page).
pub const DEFAULT_MAX_RECORDS: usize = 50_000;
/// The largest `maxRecords` accepted, so one page stays a sane size (tens of MB at most).
pub const MAX_RECORDS: usize = 100_000;
/// Rows written per turn of the state lock while a results page is rendered.
const RENDER_CHUNK: usize = 2_000;

/// A results page to write once the state lock is released.
pub struct Page {
    rows: Arc<Rows>,
    range: Range<usize>,
    /// `Sforce-Locator`: the next page's locator, or `null` on the last page.
    pub next: String,
    delimiter: Delimiter,
    line_ending: LineEnding,
}

/// Runs one query-job call under the state lock.
pub fn handle(shared: &Shared, inner: &mut Inner, call: &Call<'_>) -> Answer {
    let reply = match (call.route, call.method) {
        (Route::QueryJobs, "POST") => return create(shared, inner, call),
        (Route::QueryJobs, "GET") => {
            let records: Vec<Value> = inner
                .bulk
                .queries
                .iter()
                .map(|j| j.full_info(&shared.user_id))
                .collect();
            Reply::json(
                200,
                json!({"done": true, "records": records, "nextRecordsUrl": null}),
            )
        }
        (Route::QueryJob(id), "GET") => match inner.bulk.queries.get(id) {
            Some(job) => Reply::json(200, job.full_info(&shared.user_id)),
            None => job_not_found(id),
        },
        (Route::QueryJob(id), "PATCH") => abort(shared, inner, id, call.body),
        (Route::QueryJob(id), "DELETE") => match inner.bulk.queries.get(id) {
            None => job_not_found(id),
            Some(job) if !job.state.is_final() => invalid_state(
                job,
                "a query job can be deleted once it is JobComplete, Failed or Aborted",
            ),
            Some(_) => {
                inner.bulk.queries.remove(id);
                Reply::empty(204)
            }
        },
        (Route::QueryResults(id), "GET") => return results(inner, id, call),
        (Route::QueryJobs, m) => method_not_allowed(m, "GET,POST"),
        (Route::QueryJob(_), m) => method_not_allowed(m, "GET,PATCH,DELETE"),
        (Route::QueryResults(_), m) => method_not_allowed(m, "GET"),
        _ => Reply::not_found(),
    };
    Answer::Reply(reply)
}

fn invalid_state(job: &QueryJob, wanted: &str) -> Reply {
    Reply::error(
        400,
        "INVALIDJOBSTATE",
        invalid_state_message(&job.id, job.state, wanted),
    )
}

fn invalid_job(message: impl Into<String>) -> Answer {
    Answer::Reply(Reply::error(400, "INVALIDJOB", message))
}

/// What Bulk API 2.0 query refuses in a query the emulator's SOQL accepts.
fn api_error(message: impl Into<String>) -> Answer {
    Answer::Reply(Reply::error(400, "API_ERROR", message))
}

fn create(shared: &Shared, inner: &mut Inner, call: &Call<'_>) -> Answer {
    let Some(body) = call.body.and_then(Value::as_object) else {
        return invalid_job("The request body must be a JSON object with operation and query");
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    let Some(operation) = text("operation").and_then(QueryOperation::parse) else {
        return invalid_job("operation must be query or queryAll");
    };
    let Some(q) = text("query").filter(|q| !q.trim().is_empty()) else {
        return invalid_job("query is required");
    };
    if let Some(ct) = text("contentType").filter(|c| *c != "CSV") {
        return invalid_job(format!(
            "contentType {ct} is not supported; CSV is the only one"
        ));
    }
    let delimiter = match text("columnDelimiter") {
        None => Delimiter::Comma,
        Some(d) => match Delimiter::parse(d) {
            Some(d) => d,
            None => {
                return invalid_job(format!(
                    "columnDelimiter {d} is not one of {}",
                    Delimiter::NAMES
                ));
            }
        },
    };
    let line_ending = match text("lineEnding") {
        None => LineEnding::Lf,
        Some(l) => match LineEnding::parse(l) {
            Some(l) => l,
            None => return invalid_job(format!("lineEnding {l} is not one of LF, CRLF")),
        },
    };
    // Checked now, as Salesforce does: a bad query is refused here, not as a failed job.
    let prepared = match soql::prepare(&inner.store, q) {
        Ok(p) => p,
        Err(e) => return Answer::Reply(RecordError::into_reply(e)),
    };
    if prepared.is_count() {
        return api_error(
            "Aggregate functions such as COUNT() are not supported by Bulk API 2.0 query",
        );
    }
    if prepared.has_offset() {
        return api_error("OFFSET is not supported by Bulk API 2.0 query");
    }
    let now = Utc::now();
    let job = QueryJob {
        id: inner.bulk.new_id(),
        operation,
        object: prepared.object().to_owned(),
        api_version: call.version.to_owned(),
        delimiter,
        line_ending,
        state: JobState::UploadComplete,
        created: now,
        modified: now,
        error_message: None,
        query: Some(prepared),
        rows: None,
        processing_started: None,
        processing_ms: 0,
    };
    let info = job.info(&shared.user_id);
    let id = job.id.clone();
    inner.bulk.queries.insert(job);
    inner.stats.bulk_query_jobs += 1;
    Answer::StartQuery(Reply::json(200, info), id)
}

fn abort(shared: &Shared, inner: &mut Inner, id: &str, body: Option<&Value>) -> Reply {
    let Some(job) = inner.bulk.queries.get_mut(id) else {
        return job_not_found(id);
    };
    match body.and_then(|b| b.get("state")).and_then(Value::as_str) {
        Some("Aborted") if !job.state.is_final() => {
            job.state = JobState::Aborted;
            job.modified = Utc::now();
            job.query = None;
            job.rows = None;
            Reply::json(200, job.info(&shared.user_id))
        }
        Some("Aborted") => invalid_state(job, "only a job not yet finished can be aborted"),
        _ => Reply::error(
            400,
            "INVALIDJOBSTATE",
            "state must be Aborted: a query job can only be aborted",
        ),
    }
}

fn results(inner: &mut Inner, id: &str, call: &Call<'_>) -> Answer {
    let Some(job) = inner.bulk.queries.get(id) else {
        return Answer::Reply(job_not_found(id));
    };
    if job.api_version != call.version {
        return Answer::Reply(Reply::error(
            409,
            "API_ERROR",
            format!(
                "Use the API version the job was created with (v{}) to get its results",
                job.api_version
            ),
        ));
    }
    let rows = match (&job.rows, job.state) {
        (Some(rows), JobState::JobComplete) => Arc::clone(rows),
        _ => {
            return Answer::Reply(Reply::error(
                412,
                "JOB_NOT_COMPLETE",
                format!(
                    "can only download query results of successfully completed bulk job with status: JOB_COMPLETE. Current status: {}",
                    job.state_code()
                ),
            ));
        }
    };
    let max = match param(call.query, "maxRecords").filter(|m| !m.is_empty()) {
        None => DEFAULT_MAX_RECORDS,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=MAX_RECORDS).contains(&n) => n,
            _ => {
                return api_error(format!(
                    "maxRecords {m} is not valid: a whole number from 1 to {MAX_RECORDS}"
                ));
            }
        },
    };
    let start = match param(call.query, "locator").filter(|l| !l.is_empty()) {
        None => 0,
        Some(l) => match locator_offset(&l).filter(|o| *o < rows.len()) {
            Some(offset) => offset,
            None => {
                return Answer::Reply(Reply::error(
                    400,
                    "INVALID_QUERY_LOCATOR",
                    format!("The locator {l} does not name a set of results of job {id}"),
                ));
            }
        },
    };
    let end = start.saturating_add(max).min(rows.len());
    let next = if end < rows.len() {
        locator(end)
    } else {
        "null".to_owned()
    };
    Answer::Page(Page {
        rows,
        range: start..end,
        next,
        delimiter: job.delimiter,
        line_ending: job.line_ending,
    })
}

/// Writes a results page: the header row, then the rows a chunk per turn of the state lock, so
/// other calls are answered while a large page is written. Returns the CSV and its row count.
pub async fn render(shared: &Shared, page: Page) -> (String, usize) {
    let mut csv = CsvPage::new(page.rows.columns(), page.delimiter, page.line_ending);
    let mut at = page.range.start;
    while at < page.range.end {
        let stop = at.saturating_add(RENDER_CHUNK).min(page.range.end);
        {
            let inner = shared.lock();
            csv.write(&page.rows, &inner.store, at..stop);
        }
        at = stop;
        if at < page.range.end {
            tokio::task::yield_now().await;
        }
    }
    let records = csv.records;
    (csv.finish(), records)
}

/// Starts evaluating query job `id` (its state is `UploadComplete`).
pub fn spawn(state: AppState, id: String) {
    tokio::spawn(run(state, id));
}

async fn run(state: AppState, id: String) {
    // Salesforce queues a job before it takes it up; a poll right after the create sees
    // UploadComplete, not an already finished job.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (rows, rate) = {
        let mut inner = state.lock();
        let fail = inner.faults.bulk_fail_query_jobs > 0;
        let rate = inner.faults.bulk_rows_per_second;
        let Inner {
            store,
            bulk,
            faults,
            ..
        } = &mut *inner;
        let Some(job) = bulk.queries.get_mut(&id) else {
            return;
        };
        if job.state != JobState::UploadComplete {
            return; // aborted meanwhile
        }
        let started = Instant::now();
        job.processing_started = Some(started);
        job.modified = Utc::now();
        let query = job.query.take();
        let Some(query) = query.filter(|_| !fail) else {
            if fail {
                faults.bulk_fail_query_jobs -= 1;
            }
            job.state = JobState::Failed;
            job.error_message = Some(
                "InternalServerError : the query job failed while processing (emulated fault)"
                    .into(),
            );
            return;
        };
        let outcome = query.run(store);
        let rows = outcome.rows.len();
        job.rows = Some(Arc::new(outcome.rows));
        job.state = JobState::InProgress;
        job.processing_ms = started.elapsed().as_millis() as u64;
        (rows, rate)
    };
    if rate > 0 && rows > 0 {
        tokio::time::sleep(Duration::from_secs_f64(rows as f64 / rate as f64)).await;
    }
    let mut inner = state.lock();
    let Some(job) = inner.bulk.queries.get_mut(&id) else {
        return;
    };
    if job.state != JobState::InProgress {
        return; // aborted meanwhile
    }
    job.state = JobState::JobComplete;
    job.modified = Utc::now();
    job.processing_ms = job
        .processing_started
        .map(|t| t.elapsed().as_millis() as u64)
        .unwrap_or_default();
    let org_records = inner.store.record_count();
    inner.bulk.queries.trim(&id, org_records);
}
