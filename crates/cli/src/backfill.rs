//! `orderbridge backfill`: orders written to Salesforce again, in bulk: a new or refreshed org,
//! a sandbox, a Salesforce restored from backup.
//!
//! ```text
//!  orders in scope (created between --since/--until, sync state in --states), by id
//!     └─ chunks of --chunk, one transaction each: queue_resync (as POST /v1/orders/{id}/resync)
//!          = order back to `pending` + a fresh `order.submitted` event in the outbox
//!  ─► outbox-relay ─► {ns}.sf-sync ─► sync-worker: a backlog, so with WORKER_BULK_BATCH_SIZE
//!     set its batches grow into Bulk API 2.0 jobs; per-order outcomes as ever
//! ```
//!
//! It writes nothing to Salesforce itself: the pipeline does, with everything it guarantees
//! (status reports, retries, dead letters; a record already there counts as written, so an
//! order is never created twice). Each chunk commits on its own; an interrupted run is resumed
//! with `--after <the last id it printed>` (a rerun without it queues the settled orders
//! again, which costs API calls but creates nothing).

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Args;
use orderbridge_db::DbConfig;
use orderbridge_db::orders::{ResyncError, ResyncWhen, queue_resync};
use orderbridge_domain::SyncState;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command::parse_time;
use crate::progress::{Progress, TerminalProgress};

/// `orderbridge backfill` options.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Only orders created at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only orders created before this instant (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only orders in these sync states (comma-separated: pending, published, retrying, synced,
    /// failed). The default takes the settled ones; orders on their way are written anyway.
    #[arg(long, value_delimiter = ',', default_value = "synced,failed")]
    pub states: Vec<SyncState>,
    /// Resume after this order id (an interrupted run prints its last one).
    #[arg(long)]
    pub after: Option<Uuid>,
    /// Orders per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub chunk: u32,
    /// Count the orders in scope; queue nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackfillOutcome {
    /// Orders in scope when the run started.
    pub in_scope: u64,
    /// Orders put back to `pending` with a fresh event.
    pub queued: u64,
    /// The last order queued: `--after` for a run that continues from here.
    pub last: Option<Uuid>,
    /// Correlation id of the run's events (find them in every service's logs).
    pub correlation_id: String,
    pub dry_run: bool,
}

/// Why the command could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("database: {0}")]
    Db(#[from] orderbridge_db::DbError),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Resync(#[from] ResyncError),
    #[error("--since must be before --until")]
    EmptyScope,
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot write the output: {0}")]
    Json(#[from] serde_json::Error),
}

/// The orders `args` selects after `after`, by id (UUIDv7: creation order).
const PAGE: &str = "SELECT id FROM orders
     WHERE id > $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
       AND ($3::timestamptz IS NULL OR created_at < $3) AND sync_state = ANY($4)
     ORDER BY id LIMIT $5";

/// Queues every order in scope, chunk by chunk; `checkpoint` is told each committed chunk's
/// last id.
pub async fn backfill(
    pool: &PgPool,
    args: &BackfillArgs,
    correlation_id: &str,
    progress: &dyn Progress,
    mut checkpoint: impl FnMut(Uuid),
) -> Result<BackfillOutcome, BackfillError> {
    if let (Some(a), Some(b)) = (args.since, args.until)
        && a >= b
    {
        return Err(BackfillError::EmptyScope);
    }
    let states: Vec<&str> = args.states.iter().map(|s| s.as_str()).collect();
    let start = args.after.unwrap_or(Uuid::nil());
    let in_scope: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE id > $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
           AND ($3::timestamptz IS NULL OR created_at < $3) AND sync_state = ANY($4)",
    )
    .bind(start)
    .bind(args.since)
    .bind(args.until)
    .bind(&states)
    .fetch_one(pool)
    .await?;
    let mut outcome = BackfillOutcome {
        in_scope: u64::try_from(in_scope).unwrap_or(0),
        correlation_id: correlation_id.to_owned(),
        dry_run: args.dry_run,
        ..BackfillOutcome::default()
    };
    if args.dry_run {
        return Ok(outcome);
    }
    let bar = progress.phase("orders queued");
    bar.set_total(outcome.in_scope);
    // Orders queued by this run are `pending` now and drop out of the state filter; the id
    // keyset moves on regardless, so a page is never read twice.
    let mut after = start;
    loop {
        let ids: Vec<Uuid> = sqlx::query_scalar(PAGE)
            .bind(after)
            .bind(args.since)
            .bind(args.until)
            .bind(&states)
            .bind(i64::from(args.chunk))
            .fetch_all(pool)
            .await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        let mut tx = pool.begin().await?;
        let mut queued = 0u64;
        for id in &ids {
            if queue_resync(
                &mut tx,
                (*id).into(),
                None,
                Some(correlation_id.to_owned()),
                ResyncWhen::Always,
            )
            .await?
            .is_some()
            {
                queued += 1;
            }
        }
        tx.commit().await?;
        outcome.queued += queued;
        outcome.last = Some(last);
        after = last;
        bar.inc(ids.len() as u64);
        checkpoint(last);
    }
    bar.finish();
    tracing::info!(
        queued = outcome.queued,
        correlation_id,
        "backfill queued; the sync worker writes the orders"
    );
    Ok(outcome)
}

/// Runs `orderbridge backfill` and writes its outcome to `out`.
pub async fn run(
    args: &BackfillArgs,
    db: &DbConfig,
    out: &mut impl Write,
) -> Result<BackfillOutcome, BackfillError> {
    let pool = db.connect("orderbridge-backfill").await?;
    orderbridge_db::migrate(&pool).await?;
    let correlation_id = format!("backfill-{}", Uuid::now_v7());
    let progress = TerminalProgress::stderr();
    let outcome = backfill(&pool, args, &correlation_id, &progress, |last| {
        // The resume point, on every chunk, where an operator sees it after a crash.
        tracing::info!(%last, "checkpoint: resume with --after {last}");
    })
    .await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &outcome)?;
        writeln!(out)?;
    } else if outcome.dry_run {
        writeln!(
            out,
            "{} orders in scope; nothing queued (--dry-run)",
            outcome.in_scope
        )?;
    } else {
        writeln!(
            out,
            "{} of {} orders queued for Salesforce (correlation id {}); the sync worker writes them, through Bulk API 2.0 when WORKER_BULK_BATCH_SIZE is set",
            outcome.queued, outcome.in_scope, outcome.correlation_id
        )?;
        if let Some(last) = outcome.last {
            writeln!(
                out,
                "last order: {last} (continue after it with --after {last})"
            )?;
        }
    }
    Ok(outcome)
}
