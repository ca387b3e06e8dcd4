//! The end of a chaos run: waiting until the pipeline is quiet, then reading what it left (the
//! dead-letter queue, every order's state), for the classification. Kept apart from the run's
//! orchestration because quiescence is a condition of its own, checked against Postgres and the
//! broker together.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use orderbridge_cli::dlq::DlqCommand;
use serde::Deserialize;
use uuid::Uuid;

use super::approve::{Approvals, Approver};
use super::classify::{DeadLetter, Stored};
use super::faults;
use crate::stack::Stack;

/// What the quiescence wait saw last.
#[derive(Debug, Default)]
pub struct Quiet {
    pub reached: bool,
    pub waited_s: f64,
    pub not_terminal: i64,
    pub unpublished: i64,
    pub queues: BTreeMap<String, u64>,
    /// Whether the approvals were finished (every synced order looked at, every approval made
    /// or given up).
    pub approvals_done: bool,
    /// Fulfilment requests still open: queued, accepted, or decided but not yet written back.
    pub fulfilment_open: i64,
    /// Approved orders without a decided request written back to Salesforce (the subscriber or
    /// the worker has not got to them yet).
    pub approved_unfinished: i64,
}

/// Waits until every order is synced or failed, the approvals are done, every approved order's
/// fulfilment request is decided and written back, no request is open, the outbox is published
/// and the namespace's queues (but the dead letters) are empty, twice in a row a second apart;
/// or `deadline`. The approvals are finished (see [`Approver::finish`]) once every order is
/// synced or failed, as no order can be synced after that.
pub async fn wait_quiet(
    stack: &mut Stack,
    deadline: Instant,
    approver: Approver,
) -> Result<(Quiet, Approvals)> {
    let started = Instant::now();
    let mut quiet = Quiet::default();
    let mut calm = 0;
    let dead_letters = format!("{}.dead-letters", stack.namespace);
    let mut approver = Some(approver);
    let mut approvals = Approvals::default();
    loop {
        stack.check_running()?;
        let (not_terminal, unpublished, fulfilment_open): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE sync_state NOT IN ('synced', 'failed')),
                    (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                    (SELECT count(*) FROM fulfilment_requests
                     WHERE state IN ('queued', 'accepted') OR written_back_at IS NULL)",
        )
        .fetch_one(stack.pool()?)
        .await?;
        if not_terminal == 0
            && let Some(a) = approver.take()
        {
            tracing::info!("every order synced or failed; finishing the approvals");
            approvals = a.finish().await;
            quiet.approvals_done = true;
        }
        let approved: Vec<Uuid> = approvals.approved.keys().copied().collect();
        let approved_unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::uuid[]) AS a(id)
             WHERE NOT EXISTS (SELECT 1 FROM fulfilment_requests f
                               WHERE f.order_id = a.id AND f.state IN ('provisioned', 'failed')
                                 AND f.written_back_at IS NOT NULL)",
        )
        .bind(&approved)
        .fetch_one(stack.pool()?)
        .await?;
        let queues = match faults::queue_depths(&stack.args.amqp_url, &stack.namespace).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the queue depths");
                HashMap::new()
            }
        };
        let busy_queues: u64 = queues
            .iter()
            .filter(|(name, _)| **name != dead_letters)
            .map(|(_, n)| n)
            .sum();
        quiet.not_terminal = not_terminal;
        quiet.unpublished = unpublished;
        quiet.fulfilment_open = fulfilment_open;
        quiet.approved_unfinished = approved_unfinished;
        quiet.queues = queues.into_iter().collect();
        quiet.waited_s = started.elapsed().as_secs_f64();
        tracing::info!(
            not_terminal,
            unpublished,
            busy_queues,
            fulfilment_open,
            approved_unfinished,
            "waiting for quiescence"
        );
        if not_terminal == 0
            && quiet.approvals_done
            && unpublished == 0
            && fulfilment_open == 0
            && approved_unfinished == 0
            && busy_queues == 0
            && !quiet.queues.is_empty()
        {
            calm += 1;
            if calm >= 2 {
                quiet.reached = true;
                return Ok((quiet, approvals));
            }
        } else {
            calm = 0;
        }
        if Instant::now() > deadline {
            if let Some(a) = approver.take() {
                approvals = a.finish().await;
            }
            return Ok((quiet, approvals));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The dead-letter queue's contents, each mapped to its order through the outbox's event ids.
pub async fn dead_letters(stack: &Stack) -> Result<Vec<DeadLetter>> {
    #[derive(Deserialize)]
    struct Line {
        id: String,
        reason: Option<String>,
        error_code: Option<String>,
        origin_queue: Option<String>,
    }
    let mut out = Vec::new();
    orderbridge_cli::dlq::run(
        DlqCommand::List {
            limit: 1_000_000,
            json: true,
        },
        &stack.broker_config()?,
        &mut out,
    )
    .await
    .context("cannot list the dead letters")?;
    let text = String::from_utf8_lossy(&out);
    let mut letters = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let l: Line = serde_json::from_str(line).context("unreadable dlq list line")?;
        letters.push(DeadLetter {
            message_id: l.id,
            reason: l.reason,
            error_code: l.error_code,
            origin_queue: l.origin_queue,
            order_id: None,
        });
    }
    let event_ids: Vec<Uuid> = letters
        .iter()
        .filter_map(|d| d.message_id.parse().ok())
        .collect();
    let owners: HashMap<Uuid, Uuid> = sqlx::query_as::<_, (Uuid, Uuid)>(
        "SELECT event_id, aggregate_id FROM outbox WHERE event_id = ANY($1)",
    )
    .bind(&event_ids)
    .fetch_all(stack.pool()?)
    .await?
    .into_iter()
    .collect();
    for d in &mut letters {
        d.order_id = d
            .message_id
            .parse::<Uuid>()
            .ok()
            .and_then(|e| owners.get(&e).copied());
    }
    Ok(letters)
}

/// An order at the end: id, sync state, last error code, created_at, and when it was written to
/// Salesforce (synced ones).
pub type OrderRow = (
    Uuid,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// Every order's [`OrderRow`].
pub async fn order_rows(stack: &Stack) -> Result<Vec<OrderRow>> {
    Ok(sqlx::query_as(
        "SELECT id, sync_state, last_error_code, created_at,
                    CASE WHEN sync_state = 'synced' THEN coalesce(synced_at, updated_at) END
             FROM orders",
    )
    .fetch_all(stack.pool()?)
    .await?)
}

/// The orders as the classification reads them: state and last error code by id.
pub fn stored(rows: &[OrderRow]) -> HashMap<Uuid, Stored> {
    rows.iter()
        .map(|(id, state, code, _, _)| {
            (
                *id,
                Stored {
                    state: state.clone(),
                    error_code: code.clone(),
                },
            )
        })
        .collect()
}
