//! Processing a job in the background once its upload is complete: rows written in chunks,
//! each chunk one turn of the state lock, so REST calls keep being answered while a large
//! job runs; each chunk's committed changes go out as change events and to the Flow rules,
//! as a REST call's do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use super::csv_data;
use super::job::{Job, JobState, Operation, RowOutcome};
use crate::reply::RecordError;
use crate::schema::{ObjectDef, Schema};
use crate::state::{AppState, Inner};
use crate::store::{Locks, Store, UpsertError, text_of};

/// Rows written per turn of the lock.
const CHUNK: usize = 500;

/// Starts processing job `id` (its state is `UploadComplete`).
pub fn spawn(state: AppState, id: String) {
    tokio::spawn(run(state, id));
}

async fn run(state: AppState, id: String) {
    // Salesforce queues a job before it takes it up; a poll right after UploadComplete sees
    // UploadComplete, not an already finished job.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let schema = Arc::clone(&state.schema);
    {
        let mut inner = state.lock();
        let fail = inner.faults.bulk_fail_jobs > 0;
        let Some(job) = inner.bulk.get_mut(&id) else {
            return;
        };
        if job.state != JobState::UploadComplete {
            return; // aborted meanwhile
        }
        let problem = job.error_message.clone().or_else(|| {
            schema
                .object(&job.object)
                .map(|def| csv_data::check_header(def, &job.header))
                .and_then(Result::err)
        });
        if let Some(message) = problem {
            job.error_message = Some(message);
            job.state = JobState::Failed;
            job.modified = Utc::now();
            return;
        }
        job.state = JobState::InProgress;
        job.modified = Utc::now();
        job.processing_started = Some(Instant::now());
        if fail {
            job.fail_after = Some(job.rows.len() / 2);
            inner.faults.bulk_fail_jobs -= 1;
        }
    }
    while let Some((rows, rate)) = step(&state, &schema, &id) {
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(rows as f64 / rate as f64)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Writes the job's next chunk under the lock and publishes what it committed. `None` when
/// the job is over (done, failed, aborted or gone); otherwise the rows written and the
/// throttle (rows per second, 0 for none).
fn step(state: &AppState, schema: &Schema, id: &str) -> Option<(usize, u64)> {
    let mut inner = state.lock();
    let rate = inner.faults.bulk_rows_per_second;
    let Inner {
        store, locks, bulk, ..
    } = &mut *inner;
    let job = bulk.get_mut(id)?;
    if job.state != JobState::InProgress {
        return None; // aborted: what is not processed stays unprocessed
    }
    let def = schema.object(&job.object)?;
    {
        let start = job.outcomes.len();
        let stop = job.fail_after.unwrap_or(usize::MAX).min(job.rows.len());
        let end = (start + CHUNK).min(stop);
        for n in start..end {
            let outcome = apply(store, locks, def, job, n);
            job.outcomes.push(outcome);
        }
        let finished = end >= stop;
        if finished {
            job.state = if job.fail_after.is_some() {
                job.error_message = Some(
                    "InternalServerError : the job failed while processing (emulated fault)".into(),
                );
                JobState::Failed
            } else {
                JobState::JobComplete
            };
            job.modified = Utc::now();
            job.processing_ms = job
                .processing_started
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or_default();
        }
        let origin = job
            .client
            .as_deref()
            .map(|name| format!("com/salesforce/api/bulk/{};client={name}", job.api_version));
        if end > start {
            inner.dirty = true;
        }
        crate::http::after_commit(state, inner, origin.unwrap_or_default());
        (!finished).then_some((end - start, rate))
    }
}

/// Writes row `n` of `job`.
fn apply(store: &mut Store, locks: &mut Locks, def: &ObjectDef, job: &Job, n: usize) -> RowOutcome {
    let Some(row) = job.rows.get(n) else {
        return failed(None, &RecordError::new("UNKNOWN_EXCEPTION", "no such row"));
    };
    let rec = csv_data::record(&job.header, row);
    let id_of = |rec: &serde_json::Map<String, Value>| {
        rec.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    let missing_id = || RecordError::new("MISSING_ARGUMENT", "Id not specified in an update call");
    let result: Result<(String, bool), RecordError> = match job.operation {
        Operation::Insert => store.create(locks, &def.name, &rec).map(|id| (id, true)),
        Operation::Update => match id_of(&rec) {
            Some(id) => store
                .update(locks, Some(&def.name), &id, &rec)
                .map(|id| (id, false)),
            None => Err(missing_id()),
        },
        Operation::Delete => match id_of(&rec) {
            Some(id) => store
                .delete(locks, Some(&def.name), &id)
                .map(|id| (id, false)),
            None => Err(missing_id()),
        },
        Operation::Upsert => {
            let field = job.external_id_field.as_deref().unwrap_or("Id");
            match rec.get(field).and_then(text_of) {
                None => Err(
                    RecordError::new("MISSING_ARGUMENT", format!("{field} not specified"))
                        .with_fields(vec![field.to_owned()]),
                ),
                Some(value) => match store.upsert(locks, &def.name, field, &value, &rec, false) {
                    Ok(u) => Ok((u.id, u.created)),
                    Err(UpsertError::Record(e)) => Err(e),
                    Err(UpsertError::UnknownField) => Err(RecordError::new(
                        "NOT_FOUND",
                        "The requested resource does not exist",
                    )),
                    Err(UpsertError::Multiple(found)) => Err(RecordError::new(
                        "DUPLICATE_EXTERNAL_ID",
                        format!(
                            "{field}: more than one record found for external id field: {found:?}"
                        ),
                    )),
                },
            }
        }
    };
    match result {
        Ok((id, created)) => RowOutcome::Written { id, created },
        Err(e) => failed(None, &e),
    }
}

/// `sf__Error` as Salesforce writes it: `CODE:message:fields --`.
fn failed(id: Option<String>, e: &RecordError) -> RowOutcome {
    RowOutcome::Failed {
        id,
        error: format!("{}:{}:{} --", e.code, e.message, e.fields.join(",")),
    }
}
