//! One Bulk API 2.0 query job: its options, state and info documents, the snapshot of the
//! records it matched (ids only), the jobs kept (bounded), the results locator, and the CSV a
//! results page is written as.
//!
//! ```text
//!  POST ─► UploadComplete ──(queued ~20 ms)──► InProgress ──► JobComplete   ids of the matched
//!              │                                   │                        records, in order
//!              │                                   └──────► Failed (errorMessage)
//!              └──PATCH Aborted────────────────────┴──────► Aborted
//! ```
//!
//! Results CSV, as Salesforce writes it: a header row with the selected fields as the query
//! wrote them (on every page), then one row per record; every value double-quoted (`""` inside
//! a value for a quote), null and empty both `""`; values in the REST JSON's text (date-times
//! `2024-01-02T03:04:05.000+0000`, numbers as JSON prints them, `true`/`false`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::job::JobState;
use crate::soql::{Prepared, Rows};
use crate::store::{Store, sf_datetime};

/// `query` (live records) or `queryAll` (deleted ones too; the emulator keeps no deleted
/// records, so both answer the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOperation {
    Query,
    QueryAll,
}

impl QueryOperation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "query" => Some(Self::Query),
            "queryAll" => Some(Self::QueryAll),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::QueryAll => "queryAll",
        }
    }
}

/// `columnDelimiter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    Backquote,
    Caret,
    Comma,
    Pipe,
    Semicolon,
    Tab,
}

impl Delimiter {
    pub const NAMES: &'static str = "BACKQUOTE, CARET, COMMA, PIPE, SEMICOLON, TAB";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BACKQUOTE" => Self::Backquote,
            "CARET" => Self::Caret,
            "COMMA" => Self::Comma,
            "PIPE" => Self::Pipe,
            "SEMICOLON" => Self::Semicolon,
            "TAB" => Self::Tab,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backquote => "BACKQUOTE",
            Self::Caret => "CARET",
            Self::Comma => "COMMA",
            Self::Pipe => "PIPE",
            Self::Semicolon => "SEMICOLON",
            Self::Tab => "TAB",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Backquote => b'`',
            Self::Caret => b'^',
            Self::Comma => b',',
            Self::Pipe => b'|',
            Self::Semicolon => b';',
            Self::Tab => b'\t',
        }
    }
}

/// `lineEnding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Lf,
    Crlf,
}

impl LineEnding {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LF" => Some(Self::Lf),
            "CRLF" => Some(Self::Crlf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lf => "LF",
            Self::Crlf => "CRLF",
        }
    }
}

/// One query job.
pub struct QueryJob {
    pub id: String,
    pub operation: QueryOperation,
    pub object: String,
    pub api_version: String,
    pub delimiter: Delimiter,
    pub line_ending: LineEnding,
    pub state: JobState,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub error_message: Option<String>,
    /// The query, checked when the job was created, until the job evaluates it.
    pub query: Option<Prepared>,
    /// The matched records by id, in result order, once evaluated (dropped on abort). Shared
    /// with the results pages being written, so a job deleted meanwhile does not cut one short.
    pub rows: Option<Arc<Rows>>,
    pub processing_started: Option<Instant>,
    pub processing_ms: u64,
}

impl std::fmt::Debug for QueryJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryJob")
            .field("id", &self.id)
            .field("object", &self.object)
            .field("state", &self.state)
            .field("records", &self.records())
            .finish_non_exhaustive()
    }
}

impl QueryJob {
    /// Records matched (0 until the query has run).
    pub fn records(&self) -> usize {
        self.rows.as_deref().map_or(0, Rows::len)
    }

    /// The job info as create and abort answer it.
    pub fn info(&self, user_id: &str) -> Value {
        json!({
            "id": self.id,
            "operation": self.operation.as_str(),
            "object": self.object,
            "createdById": user_id,
            "createdDate": sf_datetime(self.created),
            "systemModstamp": sf_datetime(self.modified),
            "state": self.state.as_str(),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": self.api_version.parse::<f64>().unwrap_or(62.0),
            "lineEnding": self.line_ending.as_str(),
            "columnDelimiter": self.delimiter.as_str(),
        })
    }

    /// The job info as `GET /jobs/query/{id}` (and the list) answer it: the above plus the
    /// job type, counters and, for a failed job, its `errorMessage`.
    pub fn full_info(&self, user_id: &str) -> Value {
        let mut v = self.info(user_id);
        if let Some(m) = v.as_object_mut() {
            m.insert("jobType".into(), json!("V2Query"));
            m.insert("numberRecordsProcessed".into(), json!(self.records()));
            m.insert("retries".into(), json!(0));
            m.insert("totalProcessingTime".into(), json!(self.processing_ms));
            if let Some(e) = &self.error_message {
                m.insert("errorMessage".into(), json!(e));
            }
        }
        v
    }

    /// The state as the results error spells it (`IN_PROGRESS`).
    pub fn state_code(&self) -> &'static str {
        match self.state {
            JobState::Open => "OPEN",
            JobState::UploadComplete => "UPLOAD_COMPLETE",
            JobState::InProgress => "IN_PROGRESS",
            JobState::JobComplete => "JOB_COMPLETE",
            JobState::Failed => "FAILED",
            JobState::Aborted => "ABORTED",
        }
    }
}

/// Query jobs kept; beyond it the oldest finished ones are forgotten.
const MAX_JOBS: usize = 200;
/// Matched ids kept over all query jobs, at least; beyond the bound the oldest finished jobs
/// (but the newest) are forgotten, so memory stays bounded however many jobs are run.
const MIN_KEPT_IDS: usize = 2_000_000;
/// The bound grows with the org: this many times its records. A client that reads a whole
/// org in one pass (`orderbridge reconcile --bulk`: every Order and every OrderItem, one job
/// each, their results read side by side) must find its first job still there when the last
/// one completes: Salesforce keeps results for days. With the bound at a fixed 2,000,000 a
/// reconcile of 1,000,000 orders (4,000,000 records) lost its Order job to its OrderItem job
/// and failed with NOT_FOUND. Twice the org leaves room for two such passes; an id kept costs
/// ~56 bytes against a stored record's ~1,800.
const KEPT_IDS_PER_RECORD: usize = 2;

/// The org's query jobs.
#[derive(Debug, Default)]
pub struct QueryJobs {
    jobs: BTreeMap<String, QueryJob>,
}

impl QueryJobs {
    pub fn get(&self, id: &str) -> Option<&QueryJob> {
        self.jobs.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut QueryJob> {
        self.jobs.get_mut(id)
    }

    /// Every query job, by id.
    pub fn iter(&self) -> impl Iterator<Item = &QueryJob> {
        self.jobs.values()
    }

    pub fn remove(&mut self, id: &str) -> Option<QueryJob> {
        self.jobs.remove(id)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub(super) fn insert(&mut self, job: QueryJob) {
        while self.jobs.len() >= MAX_JOBS && self.forget_oldest_finished(None) {}
        self.jobs.insert(job.id.clone(), job);
    }

    /// Forgets the oldest finished jobs but `keep` while the kept ids are over the bound for
    /// an org of `org_records` records.
    pub(super) fn trim(&mut self, keep: &str, org_records: usize) {
        let bound = kept_ids_bound(org_records);
        while self.jobs.values().map(QueryJob::records).sum::<usize>() > bound
            && self.forget_oldest_finished(Some(keep))
        {}
    }

    fn forget_oldest_finished(&mut self, keep: Option<&str>) -> bool {
        let oldest = self
            .jobs
            .values()
            .filter(|j| j.state.is_final() && Some(j.id.as_str()) != keep)
            .min_by_key(|j| j.created)
            .map(|j| j.id.clone());
        oldest.is_some_and(|id| self.jobs.remove(&id).is_some())
    }
}

/// How many matched ids the org's query jobs may hold together.
fn kept_ids_bound(org_records: usize) -> usize {
    org_records
        .saturating_mul(KEPT_IDS_PER_RECORD)
        .max(MIN_KEPT_IDS)
}

/// The locator of the results page starting at row `offset`: the offset's digits in base64
/// without padding (`MTAwMDA` is row 10,000), as Salesforce's look. Opaque to clients.
pub fn locator(offset: usize) -> String {
    STANDARD_NO_PAD.encode(offset.to_string())
}

/// The row a locator starts at; `None` when it is not one the emulator writes.
pub fn locator_offset(locator: &str) -> Option<usize> {
    let bytes = STANDARD_NO_PAD.decode(locator.trim_end_matches('=')).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A results page being written: the header row first, then the rows, a chunk at a time.
pub struct CsvPage {
    writer: csv::Writer<Vec<u8>>,
    /// Rows written (records deleted since the snapshot are not).
    pub records: usize,
}

impl CsvPage {
    pub fn new(columns: &[String], delimiter: Delimiter, line_ending: LineEnding) -> Self {
        let terminator = match line_ending {
            LineEnding::Lf => csv::Terminator::Any(b'\n'),
            LineEnding::Crlf => csv::Terminator::CRLF,
        };
        let mut writer = csv::WriterBuilder::new()
            .quote_style(csv::QuoteStyle::Always)
            .delimiter(delimiter.byte())
            .terminator(terminator)
            .from_writer(Vec::new());
        // Writing into a Vec cannot fail but for a bug in csv; the page would come out short.
        let _ = writer.write_record(columns);
        Self { writer, records: 0 }
    }

    /// Writes the live records of `range` of `rows` as they are in `store` now.
    pub fn write(&mut self, rows: &Rows, store: &Store, range: Range<usize>) {
        for values in rows.values(store, range) {
            let cells: Vec<Cow<'_, str>> = values.into_iter().map(cell).collect();
            let _ = self.writer.write_record(cells.iter().map(|c| c.as_bytes()));
            self.records += 1;
        }
    }

    pub fn finish(self) -> String {
        self.writer
            .into_inner()
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

/// A value's text in the results: what the REST JSON holds, unquoted; null is empty.
fn cell(v: Option<&Value>) -> Cow<'_, str> {
    match v {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(Value::Bool(true)) => Cow::Borrowed("true"),
        Some(Value::Bool(false)) => Cow::Borrowed("false"),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn locators_are_base64_offsets_and_garbage_is_refused() {
        assert_eq!(locator(10_000), "MTAwMDA");
        assert_eq!(locator_offset("MTAwMDA"), Some(10_000));
        assert_eq!(locator_offset("MTAwMDA="), Some(10_000));
        for bad in ["", "null", "!!", "bnVsbA", "LTE"] {
            assert_eq!(locator_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_are_quoted_and_null_is_empty() {
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&json!(12.5))), "12.5");
        assert_eq!(cell(Some(&json!(false))), "false");
        let page = CsvPage::new(
            &["Id".into(), "Name".into()],
            Delimiter::Comma,
            LineEnding::Lf,
        );
        assert_eq!(page.finish(), "\"Id\",\"Name\"\n");
        let page = CsvPage::new(&["A".into(), "B".into()], Delimiter::Pipe, LineEnding::Crlf);
        assert_eq!(page.finish(), "\"A\"|\"B\"\r\n");
    }

    fn finished(id: &str, object: &str, records: usize, age_s: i64) -> QueryJob {
        let at = Utc::now() - chrono::Duration::seconds(age_s);
        QueryJob {
            id: id.into(),
            operation: QueryOperation::Query,
            object: object.into(),
            api_version: "62.0".into(),
            delimiter: Delimiter::Comma,
            line_ending: LineEnding::Lf,
            state: JobState::JobComplete,
            created: at,
            modified: at,
            error_message: None,
            query: None,
            rows: Some(Arc::new(Rows::of_len(object, records))),
            processing_started: None,
            processing_ms: 0,
        }
    }

    /// A whole-org read (one job per object, read side by side) keeps its first job when its
    /// last completes, however large the org; beyond twice the org the oldest goes.
    #[test]
    fn an_org_read_in_one_pass_keeps_every_job_of_it() {
        let mut jobs = QueryJobs::default();
        jobs.insert(finished("orders", "Order", 1_000_000, 10));
        jobs.insert(finished("items", "OrderItem", 1_500_000, 5));
        // 2,500,000 ids kept, over the fixed floor, within twice an org of 1,250,000 records.
        jobs.trim("items", 1_250_000);
        assert!(
            jobs.get("orders").is_some(),
            "the job still being read was forgotten"
        );
        assert_eq!(jobs.len(), 2);
        // An org of 1,000,000 records bounds them at the floor (2,000,000): the oldest goes,
        // never the job that just completed.
        jobs.trim("items", 1_000_000);
        assert!(jobs.get("orders").is_none());
        assert!(jobs.get("items").is_some());
        assert_eq!(kept_ids_bound(0), MIN_KEPT_IDS);
        assert_eq!(kept_ids_bound(3_000_000), 6_000_000);
    }
}
