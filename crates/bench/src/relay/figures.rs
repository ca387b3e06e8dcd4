//! The relay figures, computed once from what the phases produced and the outbox's own
//! timestamps, so that the table, the JSON and the chart report the same numbers.

use std::collections::HashMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::phases::{Committed, FixedRate, Saturation};
use super::raw::RawResult;
use crate::common::{ms, secs};
use crate::snapshot;
use crate::stack::Stack;

pub struct Figures {
    /// Events committed inside the fixed-rate window.
    pub in_window: usize,
    /// Commit → received, for the events committed inside the window, ms.
    pub lag_ms: Vec<f64>,
    /// How far behind its schedule each commit returned, ms.
    pub behind_ms: Vec<f64>,
    /// Commit → the relay's `published_at` (after the broker's confirm), ms.
    pub marked_ms: Vec<f64>,
    pub unpublished: i64,
    pub window_s: f64,
    pub committed_rate: f64,
    pub received_rate: f64,
    /// The window's end → the last commit answered, s.
    pub tail_s: f64,
    /// Events the consumer should have received (backlog and fixed rate).
    pub expected: usize,
    pub not_received: usize,
    /// Saturation events/s and the first and last `published_at`, s after the relay started.
    pub sat_rate: Option<f64>,
    pub sat_first: f64,
    pub sat_last: f64,
    pub raw_rate: Option<f64>,
}

impl Figures {
    pub async fn compute(
        stack: &Stack,
        sat: &Saturation,
        fixed: &FixedRate,
        raw: Option<&RawResult>,
    ) -> Result<Self> {
        let (rate, got) = (&fixed.rate, &fixed.got);
        let (from, to) = rate.window;
        let in_window: Vec<&Committed> = rate
            .committed
            .iter()
            .filter(|c| c.committed >= from && c.committed < to)
            .collect();
        let lag_ms = in_window
            .iter()
            .filter_map(|c| {
                got.at
                    .get(&c.event_id)
                    .map(|r| r.saturating_duration_since(c.committed).as_secs_f64() * 1e3)
            })
            .collect();
        let behind_ms = in_window
            .iter()
            .map(|c| c.committed.duration_since(c.due).as_secs_f64() * 1e3)
            .collect();
        let marked_ms = marked_ms(stack, sat, &in_window).await?;
        let unpublished = snapshot::unpublished(stack.pool()?).await?;
        let window_s = to.duration_since(from).as_secs_f64();
        let received_in_window = got.at.values().filter(|t| **t >= from && **t < to).count();
        let (sat_rate, sat_first, sat_last) = saturation_rate(sat);
        Ok(Self {
            in_window: in_window.len(),
            lag_ms,
            behind_ms,
            marked_ms,
            unpublished,
            window_s,
            committed_rate: in_window.len() as f64 / window_s,
            received_rate: received_in_window as f64 / window_s,
            tail_s: fixed.ended.duration_since(to).as_secs_f64(),
            expected: sat.backlog + rate.committed.len(),
            not_received: rate
                .committed
                .iter()
                .filter(|c| !got.at.contains_key(&c.event_id))
                .count(),
            sat_rate,
            sat_first,
            sat_last,
            raw_rate: raw.map(RawResult::per_second),
        })
    }
}

/// Server side: commit (client clock, same machine) → `published_at` (after the confirm).
async fn marked_ms(stack: &Stack, sat: &Saturation, in_window: &[&Committed]) -> Result<Vec<f64>> {
    let ids: Vec<Uuid> = in_window.iter().map(|c| c.event_id).collect();
    let published: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT event_id, created_at, published_at FROM outbox WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(stack.pool()?)
    .await?;
    let committed_wall: HashMap<Uuid, DateTime<Utc>> = in_window
        .iter()
        .map(|c| (c.event_id, sat.clock.wall(c.committed)))
        .collect();
    Ok(published
        .iter()
        .filter_map(|(id, _, p)| Some(ms((*p)? - *committed_wall.get(id)?)))
        .collect())
}

/// Saturation events/s from the server's timestamps, with the first and last `published_at`
/// in seconds after the relay started.
fn saturation_rate(sat: &Saturation) -> (Option<f64>, f64, f64) {
    let published = &sat.published;
    match (published.first(), published.last()) {
        (Some(f), Some(l)) if sat.backlog > 0 => {
            let start = sat.clock.started_wall;
            let (first, last) = (secs(*f - start), secs(*l - start));
            // Rows marked in one transaction share their published_at: with a single batch
            // there is no span, so count from the relay's start instead.
            let r = if last > first {
                (published.len() - 1) as f64 / (last - first)
            } else {
                published.len() as f64 / last.max(1e-3)
            };
            (Some(r), first, last)
        }
        _ => (None, 0.0, 0.0),
    }
}
