//! Bulk API 2.0: ingest jobs, which write many records from one CSV upload, and query jobs
//! (`query`, `query_job`), which read many records as CSV pages; both processed in the
//! background while the client polls. Ingest:
//!
//! ```text
//!  POST  /jobs/ingest                 {object, operation, externalIdFieldName} ─► job (Open)
//!  PUT   /jobs/ingest/{id}/batches    text/csv, once, ≤ 100 MB
//!  PATCH /jobs/ingest/{id}            {"state":"UploadComplete"} ─► process::spawn
//!                                      └► InProgress: rows written in chunks, each chunk one
//!                                         turn of the state lock (CDC, Flow rules as for REST)
//!  GET   /jobs/ingest/{id}            state, numberRecordsProcessed/Failed, errorMessage
//!  GET   /jobs/ingest/{id}/successfulResults | failedResults | unprocessedrecords   (CSV)
//!  DELETE /jobs/ingest/{id}
//! ```
//!
//! Query jobs (see `query`):
//!
//! ```text
//!  POST  /jobs/query                  {operation, query} ─► SOQL checked ─► job (UploadComplete)
//!                                      └► query::spawn ─► InProgress ─► JobComplete (ids kept)
//!  GET   /jobs/query/{id}/results     ?maxRecords&locator ─► CSV page, Sforce-Locator
//!  GET | PATCH (Aborted) | DELETE /jobs/query/{id}, GET /jobs/query
//! ```
//!
//! Job ids of both kinds come from one counter, so they never collide. Each call counts
//! against the daily API allocation like any REST call; the rows do not. Faults
//! (`POST /__admin/faults`): `bulk_fail_jobs` fails the next ingest jobs half-way (the rest
//! unprocessed), `bulk_fail_query_jobs` the next query jobs; `bulk_rows_per_second` slows
//! both down.

pub mod csv_data;
pub mod job;
pub mod process;
pub mod query;
pub mod query_job;

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Value, json};

use crate::ids;
use crate::reply::Reply;
use crate::route::Route;
use crate::state::{Inner, Shared};
use csv_data::ResultKind;
use job::{Job, JobState, Operation};

/// Largest upload accepted (Salesforce: 150 MB once base64-encoded, so 100 MB of CSV).
pub const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;
/// Jobs kept; beyond it the oldest finished ones are forgotten, so memory stays bounded.
const MAX_JOBS: usize = 200;
/// Job ids start with this key prefix, as Salesforce's do.
const JOB_PREFIX: &str = "750";

/// The org's Bulk jobs: ingest jobs here, query jobs in `queries`.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: BTreeMap<String, Job>,
    next: u64,
    /// Query jobs.
    pub queries: query_job::QueryJobs,
}

impl Jobs {
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.get_mut(id)
    }

    /// A new job id (`750…`), for either kind of job.
    fn new_id(&mut self) -> String {
        self.next += 1;
        ids::make_id(JOB_PREFIX, self.next)
    }

    fn insert(&mut self, job: Job) {
        while self.jobs.len() >= MAX_JOBS {
            let Some(oldest) = self
                .jobs
                .iter()
                .filter(|(_, j)| j.state.is_final())
                .min_by_key(|(_, j)| j.created)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.jobs.remove(&oldest);
        }
        self.jobs.insert(job.id.clone(), job);
    }
}

/// What a Bulk call answers.
pub enum Answer {
    Reply(Reply),
    /// A result file.
    Csv(String),
    /// The reply, and the ingest job whose processing starts now.
    Start(Reply, String),
    /// The reply, and the query job whose evaluation starts now (`query::spawn`).
    StartQuery(Reply, String),
    /// A query job's results page, written once the state lock is released (`query::render`).
    Page(query::Page),
}

fn invalid_state_message(id: &str, state: JobState, wanted: &str) -> String {
    format!("Job {id} is in state {}; {wanted}", state.as_str())
}

fn invalid_state(job: &Job, wanted: &str) -> Reply {
    Reply::error(
        400,
        "INVALIDJOBSTATE",
        invalid_state_message(&job.id, job.state, wanted),
    )
}

fn job_not_found(id: &str) -> Reply {
    Reply::error(
        404,
        "NOT_FOUND",
        format!("Job {id} does not exist or is not visible"),
    )
}

/// One Bulk call, as `http` read it.
pub struct Call<'a> {
    pub route: &'a Route,
    pub method: &'a str,
    /// The API version of the path, e.g. `62.0`.
    pub version: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    pub body: Option<&'a Value>,
    /// The raw body of an upload.
    pub csv: &'a [u8],
    /// `Sforce-Call-Options: client=`.
    pub client: Option<&'a str>,
}

/// Runs one Bulk call under the state lock.
pub fn handle(shared: &Shared, inner: &mut Inner, call: &Call<'_>) -> Answer {
    if call.route.is_bulk_query() {
        return query::handle(shared, inner, call);
    }
    let Call {
        route,
        method,
        version,
        body,
        csv,
        client,
        ..
    } = *call;
    let reply = match (route, method) {
        (Route::IngestJobs, "POST") => create(shared, inner, version, body, client),
        (Route::IngestJobs, "GET") => {
            let records: Vec<Value> = inner
                .bulk
                .jobs
                .values()
                .map(|j| j.info(&shared.user_id))
                .collect();
            Reply::json(
                200,
                json!({"done": true, "records": records, "nextRecordsUrl": null}),
            )
        }
        (Route::IngestJob(id), "GET") => match inner.bulk.jobs.get(id) {
            Some(job) => Reply::json(200, job.info(&shared.user_id)),
            None => job_not_found(id),
        },
        (Route::IngestJob(id), "PATCH") => return set_state(shared, inner, id, body),
        (Route::IngestJob(id), "DELETE") => match inner.bulk.jobs.get(id) {
            None => job_not_found(id),
            Some(job) if job.state == JobState::InProgress => {
                invalid_state(job, "a job can be deleted once it is no longer in progress")
            }
            Some(_) => {
                inner.bulk.jobs.remove(id);
                Reply::empty(204)
            }
        },
        (Route::IngestBatches(id), "PUT") => upload(inner, id, csv),
        (Route::IngestResults(id, which), "GET") => {
            // Salesforce documents `unprocessedrecords` and clients send `unprocessedRecords`
            // (simple-salesforce): the names are matched without regard to case.
            let kind = match which.to_ascii_lowercase().as_str() {
                "successfulresults" => ResultKind::Successful,
                "failedresults" => ResultKind::Failed,
                "unprocessedrecords" => ResultKind::Unprocessed,
                _ => return Answer::Reply(Reply::not_found()),
            };
            return match inner.bulk.jobs.get(id) {
                None => Answer::Reply(job_not_found(id)),
                Some(job) if !job.state.is_final() => Answer::Reply(invalid_state(
                    job,
                    "results are ready once the job is JobComplete, Failed or Aborted",
                )),
                Some(job) => Answer::Csv(csv_data::results(job, kind)),
            };
        }
        (Route::IngestJobs, m) => method_not_allowed(m, "GET,POST"),
        (Route::IngestJob(_), m) => method_not_allowed(m, "GET,PATCH,DELETE"),
        (Route::IngestBatches(_), m) => method_not_allowed(m, "PUT"),
        (Route::IngestResults(..), m) => method_not_allowed(m, "GET"),
        _ => Reply::not_found(),
    };
    Answer::Reply(reply)
}

fn method_not_allowed(method: &str, allowed: &str) -> Reply {
    Reply::error(
        405,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
    )
}

fn create(
    shared: &Shared,
    inner: &mut Inner,
    version: &str,
    body: Option<&Value>,
    client: Option<&str>,
) -> Reply {
    let Some(body) = body.and_then(Value::as_object) else {
        return Reply::error(
            400,
            "INVALIDJOB",
            "The request body must be a JSON object with object and operation",
        );
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    let Some(object) = text("object") else {
        return Reply::error(400, "INVALIDJOB", "object is required");
    };
    let Some(def) = shared.schema.object(object) else {
        return Reply::error(
            400,
            "INVALIDJOB",
            format!("Unable to find object: {object}"),
        );
    };
    let Some(operation) = text("operation").and_then(Operation::parse) else {
        return Reply::error(
            400,
            "INVALIDJOB",
            "operation must be one of insert, upsert, update, delete",
        );
    };
    if let Some(ct) = text("contentType").filter(|c| *c != "CSV") {
        return Reply::error(
            400,
            "INVALIDJOB",
            format!("contentType {ct} is not supported; use CSV"),
        );
    }
    if let Some(d) = text("columnDelimiter").filter(|d| *d != "COMMA") {
        return Reply::error(
            400,
            "INVALIDJOB",
            format!("columnDelimiter {d} is not supported here; use COMMA"),
        );
    }
    let external_id_field = match (operation, text("externalIdFieldName")) {
        (Operation::Upsert, None) => {
            return Reply::error(
                400,
                "INVALIDJOB",
                "externalIdFieldName is required for upsert",
            );
        }
        (Operation::Upsert, Some(f)) => match def.field(f) {
            Some(fd) if fd.external_id || fd.name == "Id" => Some(fd.name.clone()),
            _ => {
                return Reply::error(
                    400,
                    "INVALIDJOB",
                    format!("{f} is not an external id field of {}", def.name),
                );
            }
        },
        (_, _) => None,
    };
    let now = Utc::now();
    let job = Job {
        id: inner.bulk.new_id(),
        object: def.name.clone(),
        operation,
        external_id_field,
        api_version: version.to_owned(),
        client: client.map(str::to_owned),
        state: JobState::Open,
        created: now,
        modified: now,
        error_message: None,
        header: Vec::new(),
        rows: Vec::new(),
        uploaded: false,
        outcomes: Vec::new(),
        processing_started: None,
        processing_ms: 0,
        fail_after: None,
    };
    let info = job.info(&shared.user_id);
    inner.bulk.insert(job);
    Reply::json(200, info)
}

fn upload(inner: &mut Inner, id: &str, csv: &[u8]) -> Reply {
    let Some(job) = inner.bulk.jobs.get_mut(id) else {
        return job_not_found(id);
    };
    if job.state != JobState::Open {
        return invalid_state(job, "data can be uploaded only while it is Open");
    }
    if job.uploaded {
        return Reply::error(
            400,
            "BULK_API_ERROR",
            format!(
                "Found multiple contents for job: <{id}>, please 'Close' / 'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' once on a given Job."
            ),
        );
    }
    if csv.len() > MAX_UPLOAD_BYTES {
        return Reply::error(
            413,
            "BULK_API_ERROR",
            format!(
                "The upload is larger than {MAX_UPLOAD_BYTES} bytes; split it over several jobs"
            ),
        );
    }
    job.uploaded = true;
    job.modified = Utc::now();
    // Salesforce reads the data when it processes the job; a malformed file fails the job then.
    match csv_data::parse(csv) {
        Ok((header, rows)) => {
            job.header = header;
            job.rows = rows;
        }
        Err(message) => job.error_message = Some(message),
    }
    Reply::empty(201)
}

fn set_state(shared: &Shared, inner: &mut Inner, id: &str, body: Option<&Value>) -> Answer {
    let Some(job) = inner.bulk.jobs.get_mut(id) else {
        return Answer::Reply(job_not_found(id));
    };
    let wanted = body.and_then(|b| b.get("state")).and_then(Value::as_str);
    match wanted {
        Some("UploadComplete") if job.state == JobState::Open => {
            job.state = JobState::UploadComplete;
            job.modified = Utc::now();
            if !job.uploaded && job.error_message.is_none() {
                job.error_message = Some("InvalidBatch : No data was uploaded for this job".into());
            }
            Answer::Start(Reply::json(200, job.info(&shared.user_id)), job.id.clone())
        }
        Some("Aborted") if !job.state.is_final() => {
            job.state = JobState::Aborted;
            job.modified = Utc::now();
            Answer::Reply(Reply::json(200, job.info(&shared.user_id)))
        }
        Some("UploadComplete" | "Aborted") => Answer::Reply(invalid_state(
            job,
            "UploadComplete needs an Open job, Aborted one not yet finished",
        )),
        _ => Answer::Reply(Reply::error(
            400,
            "INVALIDJOBSTATE",
            "state must be UploadComplete or Aborted",
        )),
    }
}
