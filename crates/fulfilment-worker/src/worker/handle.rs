//! What one message leads to: the request row decides.
//!
//! ```text
//!  read the request
//!   queued      → claim the call (claimed elsewhere → retry later, shortest tier);
//!                 attempts += 1, call the fulfilment system (no database connection held) →
//!                   provisioned / failed / refused → record the outcome (ends the claim) → write back
//!                   accepted → record it, ack (the callback brings the result;
//!                     a callback that already decided it → write back)
//!                   5xx, timeout, unreachable → give the claim back, retry tier by attempts;
//!                     the last attempt → failed, write back, dead letter
//!   decided, not written back → claim the write-back (claimed elsewhere → retry later),
//!                   PATCH the Salesforce order, mark written back (ends the claim)
//!                   Salesforce retryable → retry tier; permanent → dead letter
//!   accepted, or decided and written back, or no such request → ack, nothing else
//! ```
//!
//! So a duplicate message, a retry copy and a `fulfilment.result` nudge can arrive in any
//! order, any number of times, even at once: the fulfilment system is called only for a
//! request still `queued`, by whoever holds its claim (`orderbridge_db::fulfilment::claim_call`).
//! The write-back is claimed the same way (`claim_write_back`), so a result nudge arriving
//! while the worker writes the answer it received costs no second Salesforce call.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use orderbridge_broker::DeadLetterReason;
use orderbridge_db::fulfilment::{
    self as requests, CallClaim, FulfilmentRequest, Outcome, Recorded, WriteBackClaim,
};
use orderbridge_domain::fulfilment::RequestState;
use uuid::Uuid;

use super::Ctx;
use crate::call::{self, Answer};
use crate::writeback::Decided;

/// How much longer than the call's own timeout a claim on it lasts: time to record the answer.
/// A claim outliving its holder (killed mid-call) delays the next call by at most this plus the
/// timeout.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// How long a claim on a write-back lasts: one PATCH under SF_REQUEST_TIMEOUT (30 s by default)
/// plus a login refresh. Only a worker killed mid-write makes anyone wait for it to expire.
const WRITE_BACK_LEASE: Duration = Duration::from_secs(60);

/// Why a pass over the request could not finish: the database (or a row it cannot read).
type StoreError = sqlx::Error;

/// What becomes of a message (its copy is published and confirmed before the ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Done, or nothing to do.
    Ack,
    /// A copy to the delay tier `tier` (index, clamped to the last), then ack.
    Retry {
        tier: usize,
        code: String,
        message: String,
        /// The copy's new write-back attempt count (`x-orderbridge-attempts`); `None` keeps
        /// the message's own (a retry that was no write-back attempt).
        attempts: Option<u32>,
    },
    /// A copy to the dead-letter exchange, with the reason, then ack.
    DeadLetter {
        reason: DeadLetterReason,
        code: String,
        message: String,
    },
}

/// What one pass over the row asks for next.
enum Next {
    Done(Action),
    /// The row changed (decided): look again (to write the result back).
    Again,
}

/// Acts on the request `id`; `attempts` are the message's write-back attempts so far.
pub(super) async fn handle(ctx: &Ctx, id: Uuid, attempts: u32) -> Action {
    // Set when the calls ran out: the request is failed now, its result still to be written
    // back, and the message then ends as a dead letter whatever the write-back does.
    let mut gave_up: Option<Action> = None;
    // At most: call → decided → write back; a third pass would mean the row keeps changing.
    for _ in 0..3 {
        match pass(ctx, id, attempts, &mut gave_up).await {
            Ok(Next::Again) => continue,
            Ok(Next::Done(action)) => return gave_up.unwrap_or(action),
            Err(e) => {
                // The database is unavailable (or the row unreadable): come back later; the
                // request row still says what is left to do.
                tracing::warn!(error = %e, "cannot handle the fulfilment request now");
                return gave_up.unwrap_or(Action::Retry {
                    tier: 0,
                    code: "DATABASE".into(),
                    message: call::reason(&e.to_string()),
                    attempts: None,
                });
            }
        }
    }
    gave_up.unwrap_or(Action::Retry {
        tier: 0,
        code: "BUSY".into(),
        message: "the request kept changing while it was handled".into(),
        attempts: None,
    })
}

async fn pass(
    ctx: &Ctx,
    id: Uuid,
    attempts: u32,
    gave_up: &mut Option<Action>,
) -> Result<Next, StoreError> {
    let Some(request) = requests::load(&ctx.pool, id).await? else {
        tracing::warn!("no such fulfilment request (its order was deleted?); nothing to do");
        ctx.metrics.noops_total.fetch_add(1, Relaxed);
        return Ok(Next::Done(Action::Ack));
    };
    match request.state {
        RequestState::Queued => provision(ctx, request, gave_up).await,
        RequestState::Accepted => {
            tracing::debug!("accepted by the fulfilment system; waiting for its callback");
            ctx.metrics.noops_total.fetch_add(1, Relaxed);
            Ok(Next::Done(Action::Ack))
        }
        RequestState::Provisioned | RequestState::Failed if request.written_back_at.is_some() => {
            tracing::debug!("already decided and written back");
            ctx.metrics.noops_total.fetch_add(1, Relaxed);
            Ok(Next::Done(Action::Ack))
        }
        RequestState::Provisioned | RequestState::Failed => {
            write_back(ctx, &request, attempts).await
        }
    }
}

/// Calls the fulfilment system for a queued request, under its claim.
async fn provision(
    ctx: &Ctx,
    request: FulfilmentRequest,
    gave_up: &mut Option<Action>,
) -> Result<Next, StoreError> {
    let order = {
        let mut conn = ctx.pool.acquire().await?;
        orderbridge_db::orders::get_order(&mut conn, request.order_id, None).await?
    };
    let Some(order) = order else {
        tracing::warn!(order_id = %request.order_id, "the request's order is gone; nothing to do");
        ctx.metrics.noops_total.fetch_add(1, Relaxed);
        return Ok(Next::Done(Action::Ack));
    };
    let body = call::body(&request, order).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let lease = ctx.config.fulfilment_timeout + CLAIM_MARGIN;
    let (calls, claim) = match requests::claim_call(&ctx.pool, request.id, lease).await? {
        CallClaim::Claimed { attempts, until } => (attempts, until),
        CallClaim::Busy => {
            tracing::debug!("another delivery is calling for this request; looking again later");
            return Ok(Next::Done(Action::Retry {
                tier: 0,
                code: "BUSY".into(),
                message: "the request was being handled by another delivery".into(),
                attempts: None,
            }));
        }
        // Accepted or decided since it was read (a callback, another delivery): look again.
        CallClaim::NotQueued => return Ok(Next::Again),
    };
    let started = Instant::now();
    let answer = ctx.caller.call(&request, &body).await;
    ctx.metrics
        .call_latency
        .observe(started.elapsed().as_secs_f64());
    let calls = u32::try_from(calls).unwrap_or(u32::MAX);
    let outcome = match &answer {
        Answer::Provisioned => {
            ctx.metrics.count_request("provisioned");
            tracing::info!(calls, "provisioned");
            Outcome::Provisioned
        }
        Answer::Failed(reason) => {
            ctx.metrics.count_request("failed");
            tracing::warn!(calls, reason = %reason, "the fulfilment system could not provision the order");
            failed(reason)
        }
        Answer::Refused(reason) => {
            ctx.metrics.count_request("refused");
            tracing::error!(calls, reason = %reason, "the fulfilment system refused the request");
            failed(reason)
        }
        Answer::Accepted => {
            ctx.metrics.count_request("accepted");
            tracing::info!(calls, "accepted; the result comes through the callback");
            Outcome::Accepted
        }
        Answer::Retry(reason) if calls < ctx.config.fulfilment_max_attempts => {
            ctx.metrics.count_request("retry");
            tracing::warn!(calls, reason = %reason, "no answer from the fulfilment system; trying again later");
            requests::release_claim(&ctx.pool, request.id, claim).await?;
            return Ok(Next::Done(Action::Retry {
                tier: usize::try_from(calls.saturating_sub(1)).unwrap_or(usize::MAX),
                code: "FULFILMENT_UNAVAILABLE".into(),
                message: reason.clone(),
                attempts: None,
            }));
        }
        Answer::Retry(reason) => {
            ctx.metrics.count_request("retry");
            let why = call::reason(&format!("gave up after {calls} calls: {reason}"));
            tracing::error!(calls, reason = %why, "the fulfilment system never answered; the request fails");
            *gave_up = Some(Action::DeadLetter {
                reason: DeadLetterReason::AttemptsExhausted,
                code: "FULFILMENT_UNAVAILABLE".into(),
                message: why.clone(),
            });
            failed(&why)
        }
    };
    let recorded = {
        let mut conn = ctx.pool.acquire().await?;
        record(&mut conn, request.id, outcome).await?
    };
    Ok(match (answer, recorded) {
        // Accepted and still open: the callback brings the result.
        (Answer::Accepted, Recorded::Recorded { .. }) => Next::Done(Action::Ack),
        // Decided (here, or by a callback that raced the answer): write it back.
        _ => Next::Again,
    })
}

fn failed(reason: &str) -> Outcome {
    Outcome::Failed {
        reason: reason.to_owned(),
    }
}

async fn record(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    outcome: Outcome,
) -> Result<Recorded, StoreError> {
    let recorded = requests::record_outcome(conn, id, outcome).await?;
    match &recorded {
        Recorded::Recorded { state, .. } => tracing::debug!(%state, "outcome recorded"),
        // The callback decided it while we were calling: its decision stands.
        Recorded::AlreadyDecided { state, .. } => {
            tracing::info!(%state, "already decided (by the callback); that decision stands")
        }
        Recorded::UnknownRequest => tracing::warn!("the request is gone; outcome not recorded"),
    }
    Ok(recorded)
}

/// Writes a decided result to the Salesforce order and marks it written back.
async fn write_back(
    ctx: &Ctx,
    request: &FulfilmentRequest,
    attempts: u32,
) -> Result<Next, StoreError> {
    let decided = if request.state == RequestState::Provisioned {
        Decided::Provisioned
    } else {
        Decided::Failed
    };
    let claim = match requests::claim_write_back(&ctx.pool, request.id, WRITE_BACK_LEASE).await? {
        WriteBackClaim::Claimed { until } => until,
        WriteBackClaim::Busy => {
            tracing::debug!("another delivery is writing the result back; looking again later");
            return Ok(Next::Done(Action::Retry {
                tier: 0,
                code: "BUSY".into(),
                message: "the result was being written back by another delivery".into(),
                attempts: None,
            }));
        }
        // Written back since it was read: nothing left.
        WriteBackClaim::Nothing => {
            ctx.metrics.noops_total.fetch_add(1, Relaxed);
            return Ok(Next::Done(Action::Ack));
        }
    };
    match ctx
        .write_back
        .write(&request.salesforce_id, decided, request.reason.as_deref())
        .await
    {
        Ok(()) => {
            requests::mark_written_back(&ctx.pool, request.id).await?;
            ctx.metrics.write_backs_total.fetch_add(1, Relaxed);
            tracing::info!(salesforce_id = %request.salesforce_id, result = ?decided, "result written back to Salesforce");
            Ok(Next::Done(Action::Ack))
        }
        Err(e) => {
            requests::release_claim(&ctx.pool, request.id, claim).await?;
            ctx.metrics.write_back_errors_total.fetch_add(1, Relaxed);
            let attempts = attempts + 1;
            let message = call::reason(&e.to_string());
            Ok(Next::Done(if !e.retryable {
                tracing::error!(salesforce_id = %request.salesforce_id, code = %e.code, error = %message, "Salesforce refused the result");
                Action::DeadLetter {
                    reason: DeadLetterReason::Permanent,
                    code: e.code,
                    message,
                }
            } else if attempts >= ctx.config.fulfilment_max_attempts {
                tracing::error!(salesforce_id = %request.salesforce_id, attempts, error = %message, "Salesforce kept failing; giving up on the write-back");
                Action::DeadLetter {
                    reason: DeadLetterReason::AttemptsExhausted,
                    code: e.code,
                    message,
                }
            } else {
                tracing::warn!(salesforce_id = %request.salesforce_id, attempts, error = %message, "write-back failed; trying again later");
                Action::Retry {
                    tier: usize::try_from(attempts - 1).unwrap_or(usize::MAX),
                    code: e.code,
                    message,
                    attempts: Some(attempts),
                }
            }))
        }
    }
}
