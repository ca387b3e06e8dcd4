//! Periodic upkeep of the outbox table beside the publisher: retention (deleting old published
//! rows) and the backlog gauge (counting unpublished ones).
//!
//! Both run on the pool, never on the leader connection, so neither can hold up publishing;
//! `retention_pass` is public (and re-exported as `relay::retention_pass`) for tests.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;

use crate::config::RelayConfig;
use crate::faults::{DbFault, db_op};
use crate::metrics::Metrics;
use crate::outbox;

/// Deletes published rows older than the retention, in small batches, until none are left.
/// Returns how many were deleted. Runs on the pool, never on the publishing connection.
pub async fn retention_pass(
    pool: &PgPool,
    retention: Duration,
    batch: u32,
    metrics: &Metrics,
    limit: Duration,
) -> Result<u64, DbFault> {
    let mut total = 0;
    loop {
        let n = db_op(limit, outbox::delete_published(pool, retention, batch)).await?;
        total += n;
        metrics
            .retention_deleted_total
            .fetch_add(n, Ordering::Relaxed);
        if n < u64::from(batch) {
            return Ok(total);
        }
        // Let the hot path breathe between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn retention_loop(
    pool: PgPool,
    config: RelayConfig,
    metrics: Arc<Metrics>,
    limit: Duration,
) {
    loop {
        tokio::time::sleep(config.retention_interval).await;
        match retention_pass(
            &pool,
            config.retention,
            config.retention_batch,
            &metrics,
            limit,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention removed published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "retention failed; will retry"),
        }
    }
}

pub(crate) async fn backlog_loop(pool: PgPool, metrics: Arc<Metrics>, limit: Duration) {
    loop {
        match db_op(limit, outbox::backlog(&pool)).await {
            Ok((rows, age)) => metrics.set_backlog(rows, age),
            Err(e) => tracing::debug!(error = %e, "cannot measure the backlog"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
