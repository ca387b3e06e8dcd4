//! Writing a batch through Bulk API 2.0: the records Composite would carry, as three jobs
//! run one after another, each row's result mapped back to its order by external id.
//!
//! ```text
//!  accounts (upsert by key, newest order's values) ─► orders (create/upsert by key)
//!     ─► items of the orders that were written ─► per order: decide(account, order, items)
//! ```
//!
//! A job costs about 4 calls plus its polls, whatever its size; only the orders job reads its
//! successful rows back (for the ids). Outcomes are exactly Composite's: an order already
//! written is found by its `DUPLICATE_VALUE`, a refused row is its order's failure with
//! Salesforce's code, and a row the job never reached (it failed or was aborted) is a
//! retryable failure of its order. A job that cannot be run at all (outage, budget, session)
//! is a failure of the whole call, as a Composite call's would be.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orderbridge_domain::SubmittedOrder;
use orderbridge_mapping::{ObjectMapping, WriteMode};
use orderbridge_salesforce::bulk::{IngestJob, JobState, Operation, Poll};
use orderbridge_salesforce::{ApiError, Column, ErrorClass, RecordResult, rows_to_csv};
use serde_json::Value;

use super::outcome::{decide, record_fate};
use super::{CallFailure, OrderResult, Prepared, RecordFate, Writer, all_failed};

/// How a job is waited for: Salesforce takes seconds to minutes, polled with backoff. Growth
/// 1.5 sees a job done at most half its run time late (doubling wasted ~3 s of a 5.5 s batch
/// of 10,000 orders in `drain --bulk`) for a poll or two more per job. Once a job of the
/// object has run, the next one is first looked at when it should be done ([`Pace`]).
const POLL: Poll = Poll {
    first: Duration::from_millis(100),
    growth: 1.5,
    max: Duration::from_secs(5),
    // The three jobs of a batch must end well within RabbitMQ's delivery acknowledgement
    // timeout (`consumer_timeout`, 30 min by default), or the broker closes the channel and
    // redelivers the batch while its jobs still run (harmless, by external id, but wasted).
    timeout: Duration::from_secs(8 * 60),
    expected: None,
};

/// What each object's jobs took per row, from `UploadComplete` until seen done, so the next
/// job is first polled when it should be done: backoff alone costs ~19 polls for a job of a
/// minute, this one or two. Each finished job moves the figure halfway to its own; since the
/// first poll comes a little early ([`orderbridge_salesforce::bulk::EXPECTED_EARLY`]), a job
/// seen done then lowers it, so the figure follows a Salesforce that got faster as well as
/// one that got slower. A job far larger than any seen is expected to take at most
/// [`Pace::STRETCH`] times the longest one: a job's time is not all per row (a 200-row job is
/// mostly queueing), and an expectation scaled from a small job must not keep the worker from
/// looking at a large one for minutes.
#[derive(Debug, Default)]
pub(super) struct Pace(Mutex<HashMap<String, Seen>>);

/// What an object's jobs took: per row (moving halfway each job), and the longest.
#[derive(Debug, Clone, Copy)]
struct Seen {
    per_row: f64,
    longest: Duration,
}

impl Pace {
    const STRETCH: u32 = 2;

    /// How long a job of `rows` rows of `sobject` should take; `None` before the first one.
    pub(super) fn expected(&self, sobject: &str, rows: usize) -> Option<Duration> {
        let seen = *self.lock().get(sobject)?;
        let by_rows = Duration::try_from_secs_f64(seen.per_row * rows as f64).ok()?;
        Some(by_rows.min(seen.longest * Self::STRETCH))
    }

    /// A job of `rows` rows of `sobject` completed after `waited`.
    pub(super) fn observe(&self, sobject: &str, rows: usize, waited: Duration) {
        if rows == 0 {
            return;
        }
        let per_row = waited.as_secs_f64() / rows as f64;
        self.lock()
            .entry(sobject.to_owned())
            .and_modify(|s| {
                s.per_row = (s.per_row + per_row) / 2.0;
                s.longest = s.longest.max(waited);
            })
            .or_insert(Seen {
                per_row,
                longest: waited,
            });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Writer {
    /// Writes `orders` (distinct ids) with Bulk API 2.0 jobs; one result per order, in order,
    /// with the same meaning as [`Writer::write`]'s.
    pub async fn write_bulk(&self, orders: &[&SubmittedOrder]) -> Vec<OrderResult> {
        let (mut results, prepared) = match self.prepare_batch(orders).await {
            Ok(p) => p,
            Err(failure) => return all_failed(orders.len(), &failure),
        };
        if let Err(failure) = self.send_bulk(&prepared, &mut results).await {
            for (i, _) in &prepared {
                if results[*i].is_none() {
                    results[*i] = Some(OrderResult::CallFailed(failure.clone()));
                }
            }
        }
        self.finish(&prepared, results).await
    }

    async fn send_bulk(
        &self,
        prepared: &[(usize, Prepared)],
        results: &mut [Option<OrderResult>],
    ) -> Result<(), CallFailure> {
        let m = &self.mapping;

        // Accounts: one row per key, with the values of the newest order (by acceptance time),
        // as in a Composite call.
        let mut account_fate: HashMap<String, RecordFate> = HashMap::new();
        if let Some(a) = &m.account {
            let mut keys: Vec<&str> = Vec::new();
            let mut newest: HashMap<&str, &Prepared> = HashMap::new();
            for (_, p) in prepared {
                if let Some((key, _)) = &p.account {
                    match newest.get(key.as_str()) {
                        None => {
                            keys.push(key);
                            newest.insert(key, p);
                        }
                        Some(q) if q.created_at < p.created_at => {
                            newest.insert(key, p);
                        }
                        Some(_) => {}
                    }
                }
            }
            let records: Vec<&[Option<Value>]> = keys
                .iter()
                .filter_map(|k| newest.get(k)?.account.as_ref().map(|(_, r)| r.as_slice()))
                .collect();
            if !records.is_empty() {
                account_fate = self
                    .run_job(&a.object, &self.layouts.account, &records, false)
                    .await?;
            }
        }

        let orders: Vec<&[Option<Value>]> = prepared
            .iter()
            .map(|(_, p)| p.order_record.as_slice())
            .collect();
        let order_fate = if orders.is_empty() {
            HashMap::new()
        } else {
            self.run_job(&m.order.object, &self.layouts.order, &orders, true)
                .await?
        };

        // Items only of the orders that were written: the others' outcome is already decided
        // by their order, and their items could only fail as a consequence.
        let mut item_fate: HashMap<String, RecordFate> = HashMap::new();
        if let Some(im) = &m.items {
            let records: Vec<&[Option<Value>]> = prepared
                .iter()
                .filter(|(_, p)| {
                    matches!(order_fate.get(&p.order_key), Some(RecordFate::Written(_)))
                })
                .flat_map(|(_, p)| p.items.iter().map(|(_, r)| r.as_slice()))
                .collect();
            if !records.is_empty() {
                item_fate = self
                    .run_job(&im.object, &self.layouts.item, &records, false)
                    .await?;
            }
        }

        for (i, p) in prepared {
            let account = p
                .account
                .as_ref()
                .map(|(k, _)| account_fate.get(k).cloned());
            let items: Vec<Option<RecordFate>> = p
                .items
                .iter()
                .map(|(k, _)| item_fate.get(k).cloned())
                .collect();
            results[*i] = Some(decide(
                account,
                order_fate.get(&p.order_key).cloned(),
                &items,
                &p.order_key,
            ));
        }
        Ok(())
    }

    /// Runs one job over `records` (values in `columns` order, the external id first) and
    /// returns each record's fate by its external id.
    async fn run_job(
        &self,
        object: &ObjectMapping,
        columns: &[Column],
        records: &[&[Option<Value>]],
        want_ids: bool,
    ) -> Result<HashMap<String, RecordFate>, CallFailure> {
        let csv = rows_to_csv(columns, records).map_err(|e| CallFailure::from_error(&e))?;
        let operation = match object.write {
            WriteMode::Create => Operation::Insert,
            WriteMode::Upsert => Operation::Upsert,
        };
        let job = IngestJob {
            object: &object.sobject,
            operation,
            external_id_field: (operation == Operation::Upsert)
                .then_some(object.external_id_field.as_str()),
        };
        let poll = Poll {
            expected: self.pace.expected(&object.sobject, records.len()),
            ..POLL
        };
        let started = Instant::now();
        let outcome = self.client.bulk_ingest(&job, &csv, poll, want_ids).await;
        drop(csv);
        let results = match outcome {
            Ok(r) => {
                if r.job.state == JobState::JobComplete {
                    self.pace.observe(&object.sobject, records.len(), r.waited);
                }
                self.observer.call("bulk_job", started.elapsed(), None);
                tracing::info!(
                    object = %object.sobject,
                    job = %r.job.id,
                    state = ?r.job.state,
                    rows = records.len(),
                    failed = r.job.number_records_failed,
                    expected_ms = poll.expected.map(|d| d.as_millis() as u64),
                    waited_ms = r.waited.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "bulk job done"
                );
                r
            }
            Err(e) => {
                let f = CallFailure::from_error(&e);
                self.observer
                    .call("bulk_job", started.elapsed(), Some(&f.code));
                return Err(f);
            }
        };

        let key_field = object.external_id_field.as_str();
        let key_of = |fields: &HashMap<String, String>| fields.get(key_field).cloned();
        // A row in neither failed nor unprocessed was written (its id read only if asked for).
        let mut fates: HashMap<String, RecordFate> = records
            .iter()
            .filter_map(|r| r.first()?.as_ref()?.as_str())
            .map(|k| (k.to_owned(), RecordFate::Written(None)))
            .collect();
        for row in results.successful {
            if let Some(k) = key_of(&row.fields) {
                fates.insert(k, RecordFate::Written(row.id));
            }
        }
        for row in results.failed {
            if let Some(k) = key_of(&row.fields) {
                let result = RecordResult {
                    id: row.id,
                    success: false,
                    errors: row.error.into_iter().collect(),
                    created: None,
                };
                fates.insert(k, record_fate(&result, object));
            }
        }
        if !results.unprocessed.is_empty() {
            let why = ApiError {
                code: "BULK_ROW_UNPROCESSED".into(),
                message: format!(
                    "Bulk job {} ended {:?} before this row: {}",
                    results.job.id,
                    results.job.state,
                    results
                        .job
                        .error_message
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
                fields: Vec::new(),
            };
            for fields in &results.unprocessed {
                if let Some(k) = key_of(fields) {
                    fates.insert(
                        k,
                        RecordFate::Refused(vec![why.clone()], ErrorClass::Retryable),
                    );
                }
            }
        }
        Ok(fates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_pace_expects_by_rows_and_moves_halfway_to_each_job() {
        let pace = Pace::default();
        assert_eq!(pace.expected("Order", 1_000), None, "nothing seen yet");
        pace.observe("Order", 1_000, 2 * S);
        assert_eq!(pace.expected("Order", 500), Some(S));
        assert_eq!(pace.expected("OrderItem", 500), None, "per object");
        // Faster now (seen done at the early poll): halfway down.
        pace.observe("Order", 1_000, S);
        assert_eq!(pace.expected("Order", 1_000), Some(S + S / 2));
        pace.observe("Order", 0, 100 * S);
        assert_eq!(
            pace.expected("Order", 1_000),
            Some(S + S / 2),
            "an empty job says nothing"
        );
        // A job far larger than any seen: at most twice the longest (2 s), not 150 s.
        assert_eq!(pace.expected("Order", 100_000), Some(4 * S));
    }
}
