//! The admin API under `/__admin` (outside `/services`, never counted as API calls): statistics,
//! record dumps, fault injection, reset and seeding. The Pub/Sub side's admin calls
//! (`/__admin/pubsub…`) are in `pubsub::admin`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::flows::Flows;
use crate::reply::{Reply, to_response};
use crate::seed::{self, Seed};
use crate::state::AppState;
use crate::store::LockRule;

/// `GET /__admin/stats`
pub async fn stats(State(s): State<AppState>) -> Response {
    let inner = s.lock();
    let mut records = serde_json::Map::new();
    for obj in s.schema.objects() {
        records.insert(
            obj.name.clone(),
            json!(inner.store.records(&obj.name).count()),
        );
    }
    let mut body = serde_json::to_value(&inner.stats).unwrap_or(Value::Null);
    if let Some(m) = body.as_object_mut() {
        m.insert(
            "api_usage".into(),
            json!({"used": inner.usage.used(), "max": s.config.daily_api_limit}),
        );
        m.insert("sessions".into(), json!(inner.sessions.len()));
        m.insert("records".into(), Value::Object(records));
    }
    to_response(Reply::json(200, body), None)
}

/// `GET /__admin/records/{sobject}`: every stored record of an object (platform events too).
pub async fn records(State(s): State<AppState>, Path(sobject): Path<String>) -> Response {
    let inner = s.lock();
    let name = match s.schema.object(&sobject) {
        Some(d) => d.name.clone(),
        None if sobject.ends_with("__e") => sobject,
        None => return to_response(Reply::not_found(), None),
    };
    let list: Vec<Value> = inner
        .store
        .records(&name)
        .map(|(_, r)| Value::Object(r.to_map()))
        .collect();
    to_response(
        Reply::json(200, json!({"totalSize": list.len(), "records": list})),
        None,
    )
}

/// Body of `POST /__admin/faults`; every field optional, merged into the current settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsPatch {
    latency_ms: Option<u64>,
    jitter_ms: Option<u64>,
    error_rates: Option<BTreeMap<String, f64>>,
    fail_next: Option<BTreeMap<String, u32>>,
    outage: Option<bool>,
    /// The next this many Bulk ingest jobs fail half-way.
    bulk_fail_jobs: Option<u32>,
    /// The next this many Bulk query jobs fail.
    bulk_fail_query_jobs: Option<u32>,
    /// Bulk processing speed in rows per second (0: unthrottled).
    bulk_rows_per_second: Option<u64>,
    /// Calls under `/services/data` served at once (0: no limit).
    max_concurrent_calls: Option<u32>,
    /// Invalidates every access token now (clients must log in again).
    expire_sessions: Option<bool>,
    /// Sets the remaining daily API allocation (0 → REQUEST_LIMIT_EXCEEDED).
    daily_limit_remaining: Option<u64>,
    /// Records (Id or external-id value) whose writes fail with UNABLE_TO_LOCK_ROW.
    lock_records: Option<Vec<LockRule>>,
    /// Clears all faults before applying the rest.
    clear: Option<bool>,
}

fn bad_request(msg: impl Into<String>) -> Response {
    to_response(Reply::error(400, "INVALID_INPUT", msg), None)
}

fn current(s: &AppState) -> Reply {
    let inner = s.lock();
    let mut v = serde_json::to_value(&inner.faults).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "lock_records".into(),
            serde_json::to_value(&inner.locks.rules).unwrap_or(Value::Null),
        );
        m.insert(
            "daily_limit_remaining".into(),
            json!(s.config.daily_api_limit.saturating_sub(inner.usage.used())),
        );
    }
    Reply::json(200, v)
}

/// `GET /__admin/faults`
pub async fn get_faults(State(s): State<AppState>) -> Response {
    to_response(current(&s), None)
}

/// `POST /__admin/faults`
pub async fn set_faults(State(s): State<AppState>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid faults body: {e}")),
    };
    if let Some(rates) = &patch.error_rates
        && let Some((code, rate)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(*r))
    {
        return bad_request(format!(
            "error_rates.{code} = {rate}: a rate is between 0 and 1"
        ));
    }
    {
        let mut inner = s.lock();
        if patch.clear == Some(true) {
            inner.faults = Default::default();
            inner.locks = Default::default();
        }
        if let Some(v) = patch.latency_ms {
            inner.faults.latency_ms = v;
        }
        if let Some(v) = patch.jitter_ms {
            inner.faults.jitter_ms = v;
        }
        if let Some(v) = patch.error_rates {
            inner.faults.error_rates = v.into_iter().filter(|(_, r)| *r > 0.0).collect();
        }
        if let Some(v) = patch.fail_next {
            inner.faults.fail_next = v.into_iter().filter(|(_, n)| *n > 0).collect();
        }
        if let Some(v) = patch.outage {
            inner.faults.outage = v;
        }
        if let Some(v) = patch.bulk_fail_jobs {
            inner.faults.bulk_fail_jobs = v;
        }
        if let Some(v) = patch.bulk_fail_query_jobs {
            inner.faults.bulk_fail_query_jobs = v;
        }
        if let Some(v) = patch.bulk_rows_per_second {
            inner.faults.bulk_rows_per_second = v;
        }
        if let Some(v) = patch.max_concurrent_calls {
            inner.faults.max_concurrent_calls = v;
        }
        if patch.expire_sessions == Some(true) {
            inner.sessions.clear();
        }
        if let Some(remaining) = patch.daily_limit_remaining {
            inner
                .usage
                .set_remaining(s.config.daily_api_limit, remaining);
        }
        if let Some(v) = patch.lock_records {
            inner.locks.rules = v;
        }
    }
    tracing::info!("faults updated");
    to_response(current(&s), None)
}

/// `DELETE /__admin/faults`
pub async fn clear_faults(State(s): State<AppState>) -> Response {
    {
        let mut inner = s.lock();
        inner.faults = Default::default();
        inner.locks = Default::default();
    }
    to_response(current(&s), None)
}

/// `POST /__admin/reset`: fresh org (plus the configured seed), counters and faults cleared, the
/// Flow rules back to the configured ones, the outbound-message queue emptied.
pub async fn reset(State(s): State<AppState>) -> Response {
    s.outbound.clear();
    let mut inner = s.lock();
    inner.reset(&s.schema);
    inner.flows = Flows::new(s.flows_at_start.clone());
    s.capture(&mut inner);
    s.pubsub.lock().faults = Default::default();
    if let Some(seed_value) = &s.seed {
        let parsed: Result<Seed, _> = serde_json::from_value(seed_value.clone());
        match parsed {
            Ok(seed) => {
                let applied = seed::apply(&mut inner.store, &seed);
                // Admin data loads publish no change events (nobody changed a record).
                inner.store.take_changes();
                if let Err(e) = applied {
                    return to_response(e.into_reply(), None);
                }
            }
            Err(e) => return bad_request(format!("invalid seed file: {e}")),
        }
    }
    to_response(Reply::json(200, json!({"reset": true})), None)
}

/// `POST /__admin/seed`
pub async fn seed(State(s): State<AppState>, body: Bytes) -> Response {
    let mut seed: Seed = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid seed body: {e}")),
    };
    // Rules are checked before any record is written, so a bad one leaves the org untouched.
    let mut rules = Vec::new();
    for input in seed.flows.take().unwrap_or_default() {
        match input.validate(&s.schema, &s.pubsub) {
            Ok(rule) => rules.push(rule),
            Err(e) => return bad_request(e.to_string()),
        }
    }
    let seeded_flows = !rules.is_empty();
    let mut inner = s.lock();
    let savepoint = inner.store.begin();
    let applied = seed::apply(&mut inner.store, &seed);
    match applied {
        Ok(mut created) => {
            let mut flows = inner.flows.clone();
            for rule in rules {
                if let Err(e) = flows.upsert(rule) {
                    inner.store.rollback(savepoint);
                    return bad_request(e.to_string());
                }
            }
            inner.flows = flows;
            s.capture(&mut inner);
            if seeded_flows && let Some(m) = created.as_object_mut() {
                m.insert("flows".into(), inner.flows.to_json()["flows"].clone());
            }
            inner.store.commit(savepoint);
            // Admin data loads publish no change events (nobody changed a record).
            inner.store.take_changes();
            inner.dirty = true;
            to_response(Reply::json(201, created), None)
        }
        Err(e) => {
            // A seed applies whole or not at all.
            inner.store.rollback(savepoint);
            to_response(e.into_reply(), None)
        }
    }
}
