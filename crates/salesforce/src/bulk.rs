//! Bulk API 2.0 ingest: many records written by one asynchronous job, for a handful of calls.
//!
//! ```text
//!  records ─► to_csv ─► POST /jobs/ingest ─► PUT …/batches (CSV) ─► PATCH UploadComplete
//!                        ─► GET /jobs/ingest/{id} until JobComplete | Failed | Aborted (backoff)
//!                        ─► successfulResults + failedResults + unprocessedrecords (CSV)
//!                        ─► IngestResults: every row back, keyed by its own columns
//! ```
//!
//! Salesforce does not keep the rows' order in the result files, so a caller maps rows back by
//! a column it wrote (an external id). About 7 calls per job however many rows it carries,
//! against one call per 200 records for sObject Collections.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::client::{Body, Client, RawResponse, Target};
use crate::error::{ApiError, Error};

/// What a job does with each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    /// Create or update by the job's external id field.
    Upsert,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Upsert => "upsert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct IngestJob<'a> {
    pub object: &'a str,
    pub operation: Operation,
    /// Required for [`Operation::Upsert`].
    pub external_id_field: Option<&'a str>,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    /// Processing is over: the result files are final.
    pub fn is_final(self) -> bool {
        matches!(self, Self::JobComplete | Self::Failed | Self::Aborted)
    }
}

/// `GET /jobs/ingest/{id}`, the parts a client acts on.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: String,
    pub state: JobState,
    #[serde(default)]
    pub object: String,
    #[serde(default)]
    pub number_records_processed: u64,
    #[serde(default)]
    pub number_records_failed: u64,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// One row of a result file: the columns it was uploaded with, and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// The record's id (written rows; for failed rows when Salesforce says).
    pub id: Option<String>,
    /// Upserts: whether the row created the record.
    pub created: bool,
    /// Failed rows: the error, read from `sf__Error` (`CODE:message:fields --`).
    pub error: Option<ApiError>,
    /// The row as uploaded, by column name.
    pub fields: HashMap<String, String>,
}

/// The rows of a finished job. A row in neither `failed` nor `unprocessed` was written;
/// `successful` (the written rows with their ids) is read only when asked for, and the other
/// two only when the job reports such rows, so a clean job costs no result call at all.
#[derive(Debug, Clone)]
pub struct IngestResults {
    pub job: JobInfo,
    /// Empty unless asked for.
    pub successful: Vec<ResultRow>,
    pub failed: Vec<ResultRow>,
    /// Rows the job never reached (it failed or was aborted): nothing is known of them.
    pub unprocessed: Vec<HashMap<String, String>>,
    /// From `UploadComplete` until the poll that saw the job final was sent
    /// ([`Client::bulk_ingest`]; zero from [`Client::job_results`], which does not wait): what
    /// the next job of its kind may be expected to take ([`Poll::expected`]).
    pub waited: Duration,
}

/// How a client waits for a job: polls at once, then after `first`, each wait `growth` times
/// the last, up to `max`, for at most `timeout`. A job is seen done at most `growth − 1` of
/// its run time late (`growth` 2: up to twice as long as it ran), for about
/// log_growth(run / first) polls: ~19 for a one-minute job at 100 ms × 1.5 up to 5 s.
///
/// With `expected` (what earlier jobs of the kind took), the first poll waits for
/// [`EXPECTED_EARLY`] of it, and after a miss polls resume every [`EXPECTED_STEP`] of it (at
/// least `first`), growing as above: a job that runs as long as the last ones costs one or
/// two polls however long that is.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub first: Duration,
    pub growth: f64,
    pub max: Duration,
    pub timeout: Duration,
    pub expected: Option<Duration>,
}

/// The first poll of a job with an expected time comes this share of it early: a job that got
/// faster is then seen done early, and what the caller expects can follow it down.
pub const EXPECTED_EARLY: f64 = 0.9;
/// After a miss at the expected time, the next poll comes this share of it later.
pub const EXPECTED_STEP: f64 = 0.1;

impl Default for Poll {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(250),
            growth: 2.0,
            max: Duration::from_secs(10),
            timeout: Duration::from_secs(30 * 60),
            expected: None,
        }
    }
}

/// Records as Bulk CSV: the columns are every key in order of first appearance (keys in a
/// record come in the map's order); a nested
/// object is a relationship by external id (`"Account": {"Ext__c": "C-1"}` becomes the
/// column `Account.Ext__c`); `attributes` is left out; null is `#N/A` (clears the field);
/// a missing value is an empty cell (left as it is). Many records of one object are cheaper
/// as rows ([`crate::rows::rows_to_csv`]).
pub fn to_csv(records: &[&Map<String, Value>]) -> Result<Vec<u8>, Error> {
    let mut columns: Vec<(String, Option<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for record in records {
        for (key, value) in *record {
            if key == "attributes" {
                continue;
            }
            let names: Vec<(String, Option<String>)> = match value {
                Value::Object(reference) => reference
                    .keys()
                    .filter(|k| *k != "attributes")
                    .map(|f| (key.clone(), Some(f.clone())))
                    .collect(),
                _ => vec![(key.clone(), None)],
            };
            for (k, f) in names {
                let name = column_name(&k, f.as_deref());
                if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(name) {
                    slot.insert(columns.len());
                    columns.push((k, f));
                }
            }
        }
    }
    let header: Vec<String> = columns
        .iter()
        .map(|(k, f)| column_name(k, f.as_deref()))
        .collect();
    write_csv(
        &header,
        records.iter().map(|record| {
            columns.iter().map(|(key, field)| match field {
                Some(f) => record.get(key).and_then(|r| r.get(f)),
                None => record.get(key),
            })
        }),
    )
}

/// Writes a CSV of `header` and one line per row; a row yields one value per header column, in
/// header order (`None`: an empty cell).
pub(crate) fn write_csv<'v, H, R, C>(header: &[H], rows: R) -> Result<Vec<u8>, Error>
where
    H: AsRef<str>,
    R: IntoIterator<Item = C>,
    C: IntoIterator<Item = Option<&'v Value>>,
{
    let invalid = |e: csv::Error| Error::InvalidRequest(format!("cannot write the CSV: {e}"));
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(header.iter().map(|h| h.as_ref()))
        .map_err(invalid)?;
    let mut line: Vec<Cow<'v, str>> = Vec::with_capacity(header.len());
    for (n, row) in rows.into_iter().enumerate() {
        line.clear();
        for (value, name) in row.into_iter().zip(header) {
            line.push(cell(value).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "record {n}: {} cannot be written to CSV (arrays and nested objects have no CSV form)",
                    name.as_ref()
                ))
            })?);
        }
        writer
            .write_record(line.iter().map(|c| c.as_bytes()))
            .map_err(invalid)?;
    }
    writer
        .into_inner()
        .map_err(|e| Error::InvalidRequest(format!("cannot write the CSV: {e}")))
}

fn column_name(key: &str, field: Option<&str>) -> String {
    match field {
        Some(f) => format!("{key}.{f}"),
        None => key.to_owned(),
    }
}

fn cell(value: Option<&Value>) -> Option<Cow<'_, str>> {
    Some(match value {
        None => Cow::Borrowed(""),
        Some(Value::Null) => Cow::Borrowed("#N/A"),
        Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
        Some(Value::Bool(b)) => Cow::Owned(b.to_string()),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(Value::Array(_) | Value::Object(_)) => return None,
    })
}

/// Reads `sf__Error`: `CODE:message:Field1,Field2 --` (the message may hold colons itself).
pub fn parse_row_error(text: &str) -> ApiError {
    let body = text.trim().trim_end_matches("--").trim_end();
    let (code, rest) = body.split_once(':').unwrap_or((body, ""));
    let (message, fields) = match rest.rsplit_once(':') {
        Some((m, f)) if !f.contains(' ') || f.trim().is_empty() => (m, f.trim()),
        _ => (rest, ""),
    };
    ApiError {
        code: code.trim().to_owned(),
        message: message.trim().to_owned(),
        fields: fields
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// A result row's columns by name.
type Columns = HashMap<String, String>;

/// Reads a result file into rows of named columns: the `sf__…` ones, and the row as uploaded.
fn read_results(response: &RawResponse) -> Result<Vec<(Columns, Columns)>, Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(response.body.as_slice());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| response.invalid(format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| response.invalid(format!("cannot read the CSV: {e}")))?;
        let mut lead = HashMap::new();
        let mut fields = HashMap::new();
        for (name, value) in header.iter().zip(record.iter()) {
            if name.starts_with("sf__") {
                lead.insert(name.clone(), value.to_owned());
            } else {
                fields.insert(name.clone(), value.to_owned());
            }
        }
        rows.push((lead, fields));
    }
    Ok(rows)
}

impl Client {
    /// Creates an ingest job (state `Open`).
    pub async fn create_ingest_job(&self, job: &IngestJob<'_>) -> Result<JobInfo, Error> {
        if job.operation == Operation::Upsert && job.external_id_field.is_none() {
            return Err(Error::InvalidRequest(
                "an upsert job needs an external id field".into(),
            ));
        }
        let mut body = json!({
            "object": job.object,
            "operation": job.operation.as_str(),
            "contentType": "CSV",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        });
        if let (Some(f), Some(m)) = (job.external_id_field, body.as_object_mut()) {
            m.insert("externalIdFieldName".into(), json!(f));
        }
        self.request(
            Method::POST,
            Target::Data(&["jobs", "ingest"]),
            &[],
            Some(&body),
        )
        .await?
        .json()
    }

    /// Uploads the job's data (once per job; at most 100 MB).
    pub async fn upload_job_data(&self, id: &str, csv: &[u8]) -> Result<(), Error> {
        self.request_body(
            Method::PUT,
            Target::Data(&["jobs", "ingest", id, "batches"]),
            &[],
            Some(Body::Csv(csv)),
        )
        .await?;
        Ok(())
    }

    /// Moves a job to `UploadComplete` (processing starts) or `Aborted`.
    pub async fn set_job_state(&self, id: &str, state: JobState) -> Result<JobInfo, Error> {
        let state = match state {
            JobState::UploadComplete => "UploadComplete",
            JobState::Aborted => "Aborted",
            other => {
                return Err(Error::InvalidRequest(format!(
                    "a client can set a job UploadComplete or Aborted, not {other:?}"
                )));
            }
        };
        self.request(
            Method::PATCH,
            Target::Data(&["jobs", "ingest", id]),
            &[],
            Some(&json!({ "state": state })),
        )
        .await?
        .json()
    }

    /// A job's current information.
    pub async fn ingest_job(&self, id: &str) -> Result<JobInfo, Error> {
        self.request(
            Method::GET,
            Target::Data(&["jobs", "ingest", id]),
            &[],
            None,
        )
        .await?
        .json()
    }

    /// Polls until the job is final, with backoff; a job still running after `poll.timeout`
    /// is an [`Error::BulkJobTimeout`] (the job goes on; its id is in the error).
    pub async fn wait_for_job(&self, id: &str, poll: Poll) -> Result<JobInfo, Error> {
        let (info, _) = self
            .wait_until_final(id, poll, |id| self.ingest_job(id))
            .await?;
        Ok(info)
    }

    /// Polls a job (`get`: ingest or query) until it is final, as [`Client::wait_for_job`] says;
    /// with how long after the start the poll that saw it final was sent (not answered: a
    /// round trip in what a caller expects of the next job would grow it by one every job).
    pub(crate) async fn wait_until_final<'a, F, Fut>(
        &self,
        id: &'a str,
        poll: Poll,
        get: F,
    ) -> Result<(JobInfo, Duration), Error>
    where
        F: Fn(&'a str) -> Fut,
        Fut: std::future::Future<Output = Result<JobInfo, Error>>,
    {
        let started = Instant::now();
        let mut delay = poll.first;
        if let Some(expected) = poll.expected {
            // Nothing to see before then: a poll at once would be a call spent for nothing.
            tokio::time::sleep(expected.mul_f64(EXPECTED_EARLY).min(poll.timeout)).await;
            delay = poll
                .first
                .max(expected.mul_f64(EXPECTED_STEP))
                .min(poll.max);
        }
        loop {
            let sent = started.elapsed();
            let info = get(id).await?;
            if info.state.is_final() {
                return Ok((info, sent));
            }
            if started.elapsed() >= poll.timeout {
                return Err(Error::BulkJobTimeout {
                    id: id.to_owned(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = delay.mul_f64(poll.growth.max(1.0)).min(poll.max);
        }
    }

    /// The result files of a finished job that say something: `successfulResults` when
    /// `successful` is asked for, `failedResults` when rows failed, `unprocessedrecords` when
    /// the job did not complete.
    pub async fn job_results(
        &self,
        job: JobInfo,
        successful: bool,
    ) -> Result<IngestResults, Error> {
        let get = |which: &'static str| {
            let id = job.id.clone();
            async move {
                self.request_csv(Target::Data(&["jobs", "ingest", &id, which]), &[])
                    .await
            }
        };
        let successful = if successful {
            read_results(&get("successfulResults").await?)?
        } else {
            Vec::new()
        };
        let successful = successful
            .into_iter()
            .map(|(lead, fields)| ResultRow {
                id: lead.get("sf__Id").filter(|s| !s.is_empty()).cloned(),
                created: lead
                    .get("sf__Created")
                    .is_some_and(|c| c.eq_ignore_ascii_case("true")),
                error: None,
                fields,
            })
            .collect();
        let failed = if job.number_records_failed > 0 {
            read_results(&get("failedResults").await?)?
        } else {
            Vec::new()
        };
        let failed = failed
            .into_iter()
            .map(|(lead, fields)| ResultRow {
                id: lead.get("sf__Id").filter(|s| !s.is_empty()).cloned(),
                created: false,
                error: Some(parse_row_error(
                    lead.get("sf__Error").map(String::as_str).unwrap_or(""),
                )),
                fields,
            })
            .collect();
        let unprocessed = if job.state == JobState::JobComplete {
            Vec::new()
        } else {
            read_results(&get("unprocessedrecords").await?)?
        };
        let unprocessed = unprocessed.into_iter().map(|(_, fields)| fields).collect();
        Ok(IngestResults {
            job,
            successful,
            failed,
            unprocessed,
            waited: Duration::ZERO,
        })
    }

    /// Deletes a finished job and its result files.
    pub async fn delete_job(&self, id: &str) -> Result<(), Error> {
        self.request(
            Method::DELETE,
            Target::Data(&["jobs", "ingest", id]),
            &[],
            None,
        )
        .await?;
        Ok(())
    }

    /// The whole round: create, upload, complete, wait, read the results back (see
    /// [`IngestResults`]; `successful` asks for the written rows' ids). A job that fails or is
    /// aborted still returns its results (its unprocessed rows among them); a call that fails
    /// on the way aborts the job when it can. The job is not deleted: Salesforce removes jobs
    /// after seven days, and a deletion would cost a call per job.
    pub async fn bulk_ingest(
        &self,
        job: &IngestJob<'_>,
        csv: &[u8],
        poll: Poll,
        successful: bool,
    ) -> Result<IngestResults, Error> {
        let info = self.create_ingest_job(job).await?;
        let id = info.id.clone();
        let run = async {
            self.upload_job_data(&id, csv).await?;
            self.set_job_state(&id, JobState::UploadComplete).await?;
            self.wait_until_final(&id, poll, |id| self.ingest_job(id))
                .await
        };
        let (finished, waited) = match run.await {
            Ok(done) => done,
            Err(e) => {
                if let Err(abort) = self.set_job_state(&id, JobState::Aborted).await {
                    tracing::warn!(job = %id, error = %abort, "could not abort the bulk job");
                }
                return Err(e);
            }
        };
        let mut results = self.job_results(finished, successful).await?;
        results.waited = waited;
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_become_csv_with_relationship_columns() {
        let a = json!({"attributes": {"type": "Order"}, "Name": "A, \"quoted\"", "Account": {"Ext__c": "C-1"}, "Qty__c": 3});
        let b = json!({"Name": "B", "Note__c": null, "Active__c": true});
        let csv = to_csv(&[a.as_object().unwrap(), b.as_object().unwrap()]).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "Account.Ext__c,Name,Qty__c,Active__c,Note__c\nC-1,\"A, \"\"quoted\"\"\",3,,\n,B,,true,#N/A\n"
        );
    }

    #[test]
    fn a_nested_array_is_refused() {
        let a = json!({"Name": ["x"]});
        assert!(matches!(
            to_csv(&[a.as_object().unwrap()]),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn row_errors_are_read_with_colons_in_the_message() {
        let e = parse_row_error(
            "DUPLICATE_VALUE:duplicate value found: External_Id__c duplicates value on record with id: 8015g0000000001AAA:-- ",
        );
        assert_eq!(e.code, "DUPLICATE_VALUE");
        assert_eq!(
            e.message,
            "duplicate value found: External_Id__c duplicates value on record with id: 8015g0000000001AAA"
        );
        assert!(e.fields.is_empty());
        let e = parse_row_error(
            "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name,Phone --",
        );
        assert_eq!(e.code, "REQUIRED_FIELD_MISSING");
        assert_eq!(e.message, "Required fields are missing: [Name]");
        assert_eq!(e.fields, ["Name", "Phone"]);
    }
}
