//! `--fix`: queueing resyncs for a report's missing and mismatched orders. Kept apart from the
//! reads because it is the only part that writes, and it writes nothing to Salesforce: the
//! pipeline does, once the resync is queued.

use orderbridge_db::orders::{ResyncWhen, queue_resync};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::ReconcileError;
use super::report::Report;
use crate::progress::Progress;

/// Options of [`fix`].
#[derive(Debug, Clone)]
pub struct FixOptions {
    /// Also resync orders in state `failed`.
    pub include_failed: bool,
    /// Correlation id of the resync events (one per run, so they can be found in logs).
    pub correlation_id: String,
}

/// What [`fix`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixOutcome {
    /// Orders put back to `pending` with a fresh `order.submitted` event.
    pub queued: Vec<Uuid>,
    /// Failed orders left alone (no `include_failed`).
    pub skipped_failed: Vec<Uuid>,
    /// Orders deleted since the report.
    pub not_found: Vec<Uuid>,
}

/// Queues a resync for each of the report's missing and mismatched orders, exactly as
/// `POST /v1/orders/{id}/resync` does ([`queue_resync`]), one transaction per order. Duplicates
/// and orphans are left to a person: deleting Salesforce records is not for a tool to decide.
pub async fn fix(
    pool: &PgPool,
    report: &Report,
    options: &FixOptions,
    progress: &dyn Progress,
) -> Result<FixOutcome, ReconcileError> {
    let (targets, skipped_failed) = report.resync_targets(options.include_failed);
    let bar = progress.phase("resyncs queued");
    bar.set_total(targets.len() as u64);
    let mut outcome = FixOutcome {
        skipped_failed,
        ..FixOutcome::default()
    };
    for id in targets {
        let mut tx = pool.begin().await?;
        match queue_resync(
            &mut tx,
            id.into(),
            None,
            Some(options.correlation_id.clone()),
            ResyncWhen::Always,
        )
        .await?
        {
            Some(_) => {
                tx.commit().await?;
                outcome.queued.push(id);
            }
            None => outcome.not_found.push(id),
        }
        bar.inc(1);
    }
    bar.finish();
    tracing::info!(
        queued = outcome.queued.len(),
        correlation_id = %options.correlation_id,
        "resyncs queued"
    );
    Ok(outcome)
}
