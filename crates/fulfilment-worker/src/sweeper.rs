//! The sweeper: every FULFILMENT_SWEEP_INTERVAL, requests stuck open are moved on
//! (`orderbridge_db::fulfilment::sweep`).
//!
//! ```text
//!  queued, untouched FULFILMENT_REQUEUE_AFTER, no live claim ─► a new fulfilment.requested
//!       (its message was lost: dead-lettered and never replayed, a purged queue)
//!  accepted, untouched FULFILMENT_CALLBACK_TIMEOUT ─► failed ("no result … within …")
//!       + fulfilment.result, so the failure is written back like any other
//! ```
//!
//! Every worker process sweeps; a request one of them moved on is no longer stuck for the
//! others, so running several costs nothing but a query each.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use orderbridge_db::fulfilment::{self, SweepAfter};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::FulfilmentConfig;
use crate::metrics::Metrics;

/// Requests moved on per sweep at most; a bigger backlog of stuck requests takes several.
const SWEEP_LIMIT: i64 = 500;

/// Sweeps until `shutdown` turns true. A failed sweep (the database away) is logged and tried
/// again at the next interval.
pub async fn run(
    pool: PgPool,
    config: FulfilmentConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let after = SweepAfter {
        queued: config.requeue_after,
        accepted: config.callback_timeout,
        limit: SWEEP_LIMIT,
    };
    let mut ticks = tokio::time::interval(config.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        // Bounded, so a hung database cannot stall the loop past a few intervals.
        let limit = config.sweep_interval.max(Duration::from_secs(30));
        match tokio::time::timeout(limit, fulfilment::sweep(&pool, after)).await {
            Ok(Ok(swept)) => {
                metrics
                    .sweeper_requeued_total
                    .fetch_add(swept.renudged.len() as u64, Relaxed);
                metrics
                    .sweeper_timed_out_total
                    .fetch_add(swept.timed_out.len() as u64, Relaxed);
                for id in &swept.renudged {
                    tracing::warn!(request_id = %id, after = %humantime::format_duration(after.queued), "queued request untouched for too long (its message was lost?); queued again");
                }
                for id in &swept.timed_out {
                    tracing::error!(request_id = %id, after = %humantime::format_duration(after.accepted), "accepted request got no callback in time; failed");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sweep failed; trying again at the next interval")
            }
            Err(_) => tracing::warn!("sweep timed out; trying again at the next interval"),
        }
    }
}
