//! The e2e figures, computed once from what the run produced (the [`Flow`], the server's
//! timestamps) so that the table, the JSON and the chart all report the same numbers.

use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::observe::Flow;
use crate::common::{Clock, ms, per_second};

/// Server-side times of each synced order: the order's and its outbox row's creation, the
/// row's `published_at`, the order's `synced_at` (written to Salesforce) and `updated_at`
/// (the status applied).
pub type StageRow = (
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

/// Every synced order's [`StageRow`].
pub async fn stage_rows(pool: &PgPool) -> Result<Vec<StageRow>> {
    Ok(sqlx::query_as(
        "SELECT o.created_at, ob.created_at, ob.published_at, o.synced_at, o.updated_at
         FROM orders o JOIN outbox ob ON ob.aggregate_id = o.id
         WHERE o.sync_state = 'synced'",
    )
    .fetch_all(pool)
    .await?)
}

pub struct Figures {
    /// POST → seen synced through the API, ms.
    pub observed_ms: Vec<f64>,
    /// POST → the synced status applied in Postgres (`updated_at`), ms.
    pub applied_ms: Vec<f64>,
    /// POST → written to Salesforce (`synced_at`), ms.
    pub written_ms: Vec<f64>,
    /// How far behind its schedule each order was sent, ms.
    pub queued_ms: Vec<f64>,
    /// The server-side stages, each a sample of ms.
    pub stages: [(&'static str, Vec<f64>); 4],
    pub accepted: usize,
    pub synced: usize,
    /// First POST → last 201, and first POST → last seen synced, s.
    pub accept_window: f64,
    pub sync_window: f64,
    pub accepted_rate: f64,
    pub synced_rate: f64,
    /// Synced/s ÷ accepted/s.
    pub ratio: f64,
    pub steady_accepted: Option<f64>,
    pub steady_synced: Option<f64>,
}

impl Figures {
    pub fn compute(flow: &Flow, stage_rows: &[StageRow], clock: Clock) -> Self {
        let (observed_ms, applied_ms, written_ms, queued_ms) = latencies(flow, clock);
        let (posted, observed) = (&flow.posted, &flow.observed);
        let first_sent = posted.first_sent.unwrap_or(clock.started);
        let accept_window = posted
            .last_answered
            .map_or(0.0, |l| l.duration_since(first_sent).as_secs_f64());
        let sync_window = observed
            .seen
            .iter()
            .map(|s| s.seen)
            .max()
            .map_or(0.0, |l| l.duration_since(first_sent).as_secs_f64());
        let (accepted, synced) = (posted.accepted, observed.seen.len());
        let accepted_rate = per_second(accepted, accept_window);
        let synced_rate = per_second(synced, sync_window);
        let ratio = if accepted_rate > 0.0 {
            synced_rate / accepted_rate
        } else {
            0.0
        };
        Self {
            observed_ms,
            applied_ms,
            written_ms,
            queued_ms,
            stages: stages(stage_rows),
            accepted,
            synced,
            accept_window,
            sync_window,
            accepted_rate,
            synced_rate,
            ratio,
            steady_accepted: steady_rate(posted.answered.clone()),
            steady_synced: steady_rate(observed.seen.iter().map(|s| s.seen).collect()),
        }
    }
}

/// (observed, applied, written, queued) latencies in ms. The server's timestamps are
/// wall-clock times: each order's due moment becomes one through the run's start.
fn latencies(flow: &Flow, clock: Clock) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let seen = &flow.observed.seen;
    let observed = seen
        .iter()
        .map(|s| s.seen.duration_since(s.sent.due).as_secs_f64() * 1e3)
        .collect();
    let applied = seen
        .iter()
        .map(|s| ms(s.updated_at - clock.wall(s.sent.due)))
        .collect();
    let written = seen
        .iter()
        .filter_map(|s| s.synced_at.map(|t| ms(t - clock.wall(s.sent.due))))
        .collect();
    let queued = seen
        .iter()
        .map(|s| s.sent.sent.duration_since(s.sent.due).as_secs_f64() * 1e3)
        .collect();
    (observed, applied, written, queued)
}

/// The per-stage breakdown of the synced orders' time, from the server's timestamps.
fn stages(rows: &[StageRow]) -> [(&'static str, Vec<f64>); 4] {
    let stage = |f: &dyn Fn(&StageRow) -> Option<chrono::Duration>| -> Vec<f64> {
        rows.iter().filter_map(|r| f(r).map(ms)).collect()
    };
    [
        ("API: request → outbox row", stage(&|r| Some(r.1 - r.0))),
        (
            "relay: outbox row → published",
            stage(&|r| r.2.map(|p| p - r.1)),
        ),
        (
            "broker + worker + Salesforce: published → written",
            stage(&|r| Some(r.3? - r.2?)),
        ),
        ("status report → applied", stage(&|r| r.3.map(|s| r.4 - s))),
    ]
}

/// Events per second between the 10th and the 90th percentile of their times: the rate once
/// started and before the tail, which the first → last figures include.
fn steady_rate(mut times: Vec<Instant>) -> Option<f64> {
    if times.len() < 20 {
        return None;
    }
    times.sort();
    let (lo, hi) = (times.len() / 10, times.len() * 9 / 10);
    let span = times[hi].duration_since(times[lo]).as_secs_f64();
    (span > 0.0).then(|| (hi - lo) as f64 / span)
}
