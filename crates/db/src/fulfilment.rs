//! Fulfilment requests (issue 14): opening one when a trigger arrives ([`request`],
//! [`request_for_order`]), claiming the slow steps for one worker at a time ([`claim_call`],
//! [`claim_write_back`], [`release_claim`]), recording what the fulfilment system decided ([`record_outcome`]),
//! noting that the result reached Salesforce ([`mark_written_back`]), moving on requests stuck
//! open ([`sweep`]) and reading them back
//! ([`load`], [`latest_for_order`]).
//!
//! Every function runs inside the CALLER'S connection or transaction (a savepoint when one is
//! open), so a trigger is stored atomically with whatever stored the trigger: the subscriber's
//! inbox row, the outbound message's dedupe row, the API's request. The row, the local status
//! (`orderbridge_db::status` semantics: history, version bump, NOTIFY) and the outbox event
//! commit together or not at all.
//!
//! Lock order, everywhere: the order row, then its request rows. Two triggers for the same
//! order therefore serialize, and a trigger racing a callback cannot deadlock with it.

use chrono::{DateTime, Utc};
use orderbridge_domain::fulfilment::{
    self, AGGREGATE_TYPE, FulfilmentEvent, FulfilmentRef, MAX_REASON_CHARS, RequestState,
};
use orderbridge_domain::{ClientId, OrderId, StatusSource, text};
use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::outbox;
use crate::status::{self, StatusChange};

/// A trigger, as [`request`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct NewRequest<'a> {
    /// The Salesforce Order Id the trigger names; the order is found by it.
    pub salesforce_id: &'a str,
    /// See `orderbridge_domain::fulfilment::idem_key`; must pass `idem_key::is_valid`
    /// (the table refuses other keys, failing the caller's transaction).
    pub idem_key: &'a str,
    /// One of `orderbridge_domain::fulfilment::Trigger`'s names.
    pub trigger: &'a str,
    pub correlation_id: Option<&'a str>,
}

/// What [`request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A new request (or a failed one re-opened under the same key): row `queued`, status
    /// `provisioning`, outbox `fulfilment.requested`.
    Queued { id: Uuid, order_id: OrderId },
    /// Nothing written: the same key was seen before (and did not fail), or the order already
    /// has an open (queued or accepted) request under another key; `id` is that request.
    Duplicate { id: Uuid },
    /// Nothing written: the order was provisioned already (a re-run is a no-op).
    AlreadyProvisioned { order_id: OrderId },
    /// Nothing written: no order has this Salesforce id (or, for [`request_for_order`], this
    /// id / this client's order).
    UnknownOrder,
    /// Nothing written ([`request_for_order`] only): the order has no Salesforce id yet, so
    /// there is nothing to write a result back to.
    NotSynced { order_id: OrderId },
}

/// What the fulfilment system decided, for [`record_outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Provisioned,
    /// Refused; `reason` comes from outside and is cut to `MAX_REASON_CHARS`.
    Failed {
        reason: String,
    },
    /// Taken (202): a callback decides it later.
    Accepted,
}

/// What [`record_outcome`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The request is now in `state` (for a decided state, the local status was applied).
    /// `Accepted` for an already accepted request is reported like this too (nothing changes).
    Recorded {
        order_id: OrderId,
        state: RequestState,
    },
    /// Ignored: the request was decided before, as `state` (with `reason` if it failed).
    AlreadyDecided {
        order_id: OrderId,
        state: RequestState,
        reason: Option<String>,
    },
    /// No request with this id.
    UnknownRequest,
}

/// A `fulfilment_requests` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfilmentRequest {
    pub id: Uuid,
    pub order_id: OrderId,
    pub salesforce_id: String,
    pub idem_key: String,
    pub trigger: String,
    pub correlation_id: Option<String>,
    pub state: RequestState,
    pub reason: Option<String>,
    pub attempts: i32,
    pub written_back_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    id: Uuid,
    order_id: Uuid,
    salesforce_id: String,
    idem_key: String,
    trigger: String,
    correlation_id: Option<String>,
    state: String,
    reason: Option<String>,
    attempts: i32,
    written_back_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

const REQUEST_COLUMNS: &str = "id, order_id, salesforce_id, idem_key, trigger, correlation_id, \
     state, reason, attempts, written_back_at, created_at, updated_at, decided_at";

impl TryFrom<RequestRow> for FulfilmentRequest {
    type Error = sqlx::Error;

    fn try_from(r: RequestRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.id,
            order_id: OrderId::from_uuid(r.order_id),
            salesforce_id: r.salesforce_id,
            idem_key: r.idem_key,
            trigger: r.trigger,
            correlation_id: r.correlation_id,
            // The table's CHECK constraint keeps it one of the names.
            state: r
                .state
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            reason: r.reason,
            attempts: r.attempts,
            written_back_at: r.written_back_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            decided_at: r.decided_at,
        })
    }
}

/// The order a trigger is about, locked.
struct LockedOrder {
    id: OrderId,
    /// When its current status was decided: statuses this module applies are never older, so
    /// a Salesforce clock running ahead of ours cannot make them stale (they follow from it).
    status_at: DateTime<Utc>,
}

/// Opens a request for the order the Salesforce Order `new.salesforce_id` was synced to.
///
/// In order: no such order → [`Requested::UnknownOrder`]; the key seen before → `Duplicate`,
/// unless that request failed and the order was not provisioned since (then it is re-opened:
/// `queued` again, reason and attempts cleared); the order already provisioned →
/// `AlreadyProvisioned`; an open request under another key → `Duplicate` (that one); otherwise
/// a new request. `Queued` writes the row, the status `provisioning` (source `fulfilment`) and
/// the outbox event `fulfilment.requested`.
pub async fn request(
    conn: &mut PgConnection,
    new: NewRequest<'_>,
) -> Result<Requested, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The oldest order wins should two ever carry the same Salesforce id (as in `status`).
    let order: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, coalesce(status_at, created_at) FROM orders
         WHERE salesforce_id = $1 ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .bind(new.salesforce_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, status_at)) = order else {
        return Ok(Requested::UnknownOrder);
    };
    let order = LockedOrder {
        id: OrderId::from_uuid(id),
        status_at,
    };
    let outcome = request_locked(&mut tx, &order, new).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// [`request`] for an order known by its own id (the API's and the CLI's retry), with
/// `client_id`: only that client's order (another client's is `UnknownOrder`). The result is
/// written back to the order's current Salesforce id; an order without one is `NotSynced`.
pub async fn request_for_order(
    conn: &mut PgConnection,
    order_id: OrderId,
    client_id: Option<ClientId>,
    idem_key: &str,
    trigger: &str,
    correlation_id: Option<&str>,
) -> Result<Requested, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let order: Option<(Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT salesforce_id, coalesce(status_at, created_at) FROM orders
         WHERE id = $1 AND ($2::uuid IS NULL OR client_id = $2) FOR UPDATE",
    )
    .bind(order_id.get())
    .bind(client_id.map(ClientId::get))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((salesforce_id, status_at)) = order else {
        return Ok(Requested::UnknownOrder);
    };
    let Some(sf_id) = salesforce_id else {
        return Ok(Requested::NotSynced { order_id });
    };
    let order = LockedOrder {
        id: order_id,
        status_at,
    };
    let new = NewRequest {
        salesforce_id: &sf_id,
        idem_key,
        trigger,
        correlation_id,
    };
    let outcome = request_locked(&mut tx, &order, new).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The rules of [`request`], with the order locked.
async fn request_locked(
    conn: &mut PgConnection,
    order: &LockedOrder,
    new: NewRequest<'_>,
) -> Result<Requested, sqlx::Error> {
    let by_key: Option<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT id, order_id, state FROM fulfilment_requests WHERE idem_key = $1")
            .bind(new.idem_key)
            .fetch_optional(&mut *conn)
            .await?;
    let provisioned: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM fulfilment_requests WHERE order_id = $1 AND state = 'provisioned' LIMIT 1",
    )
    .bind(order.id.get())
    .fetch_optional(&mut *conn)
    .await?;
    let open: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM fulfilment_requests
         WHERE order_id = $1 AND state IN ('queued', 'accepted')",
    )
    .bind(order.id.get())
    .fetch_optional(&mut *conn)
    .await?;

    let reopen = match by_key {
        Some((id, key_order, state)) => {
            if key_order != order.id.get() {
                // A key is global: IdemKey__c values come from Salesforce admins, and one reused
                // for another order must not open a second request under it (the fulfilment
                // system would answer it with the first order's result).
                tracing::warn!(
                    request_id = %id, order_id = %order.id, other_order_id = %key_order,
                    "fulfilment idempotency key already used by another order: ignored"
                );
                return Ok(Requested::Duplicate { id });
            }
            if state != RequestState::Failed.as_str() {
                return Ok(Requested::Duplicate { id });
            }
            Some(id)
        }
        None => None,
    };
    if provisioned.is_some() {
        return Ok(Requested::AlreadyProvisioned { order_id: order.id });
    }
    if let Some(id) = open {
        return Ok(Requested::Duplicate { id });
    }

    let id = match reopen {
        Some(id) => {
            sqlx::query(
                "UPDATE fulfilment_requests
                 SET state = 'queued', reason = NULL, attempts = 0, decided_at = NULL, claimed_until = NULL,
                     written_back_at = NULL, trigger = $2, correlation_id = $3,
                     salesforce_id = $4, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(new.trigger)
            .bind(new.correlation_id)
            .bind(new.salesforce_id)
            .execute(&mut *conn)
            .await?;
            id
        }
        None => {
            // The order lock does not cover the key: a trigger for another order can carry
            // the same one at the same moment. The later insert waits for the earlier one
            // and then yields to it instead of failing the caller's transaction.
            let inserted: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO fulfilment_requests
                     (id, order_id, salesforce_id, idem_key, trigger, correlation_id, state)
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued')
                 ON CONFLICT (idem_key) DO NOTHING
                 RETURNING id",
            )
            .bind(Uuid::now_v7())
            .bind(order.id.get())
            .bind(new.salesforce_id)
            .bind(new.idem_key)
            .bind(new.trigger)
            .bind(new.correlation_id)
            .fetch_optional(&mut *conn)
            .await?;
            match inserted {
                Some(id) => id,
                None => {
                    let id: Uuid = sqlx::query_scalar(
                        "SELECT id FROM fulfilment_requests WHERE idem_key = $1",
                    )
                    .bind(new.idem_key)
                    .fetch_one(&mut *conn)
                    .await?;
                    return Ok(Requested::Duplicate { id });
                }
            }
        }
    };
    let at = Utc::now().max(order.status_at);
    apply_status(conn, order.id, fulfilment::STATUS_PROVISIONING, at).await?;
    let event = FulfilmentEvent::Requested(FulfilmentRef {
        request_id: id,
        order_id: order.id,
    });
    outbox::enqueue(
        &mut *conn,
        AGGREGATE_TYPE,
        order.id.get(),
        &event.into_envelope(at, new.correlation_id.map(str::to_owned)),
    )
    .await?;
    Ok(Requested::Queued {
        id,
        order_id: order.id,
    })
}

/// Records what the fulfilment system decided about request `id`, in the caller's transaction.
///
/// `Provisioned` / `Failed` decide the request (state, reason, `decided_at`) and apply the
/// order's status `provisioned` / `provisioning_failed`; `Accepted` moves a queued request to
/// `accepted` (the status stays `provisioning`). Idempotent: a decided request stays decided,
/// and any later outcome is ignored and reported as [`Recorded::AlreadyDecided`]. Writing the
/// result back to Salesforce is the caller's next step (or, for a callback, [`queue_result`]).
pub async fn record_outcome(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: Outcome,
) -> Result<Recorded, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // Lock order: the order, then the request (see the module docs).
    let order_id: Option<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM fulfilment_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(order_id) = order_id else {
        return Ok(Recorded::UnknownRequest);
    };
    let order_id = OrderId::from_uuid(order_id);
    let status_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT coalesce(status_at, created_at) FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id.get())
    .fetch_optional(&mut *tx)
    .await?;
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, reason FROM fulfilment_requests WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    // Deleted with its order between the first read and the locks.
    let (Some(status_at), Some((state, reason))) = (status_at, row) else {
        return Ok(Recorded::UnknownRequest);
    };
    let state: RequestState = state
        .parse()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if state.is_decided() {
        return Ok(Recorded::AlreadyDecided {
            order_id,
            state,
            reason,
        });
    }
    let (new_state, reason, status) = match &outcome {
        Outcome::Accepted => (RequestState::Accepted, None, None),
        Outcome::Provisioned => (
            RequestState::Provisioned,
            None,
            Some(fulfilment::STATUS_PROVISIONED),
        ),
        Outcome::Failed { reason } => (
            RequestState::Failed,
            Some(text::truncate(reason, MAX_REASON_CHARS)),
            Some(fulfilment::STATUS_PROVISIONING_FAILED),
        ),
    };
    sqlx::query(
        "UPDATE fulfilment_requests
         SET state = $2, reason = $3, updated_at = now(), claimed_until = NULL,
             decided_at = CASE WHEN $4 THEN now() END
         WHERE id = $1",
    )
    .bind(id)
    .bind(new_state.as_str())
    .bind(reason)
    .bind(new_state.is_decided())
    .execute(&mut *tx)
    .await?;
    if let Some(status) = status {
        apply_status(&mut tx, order_id, status, Utc::now().max(status_at)).await?;
    }
    tx.commit().await?;
    Ok(Recorded::Recorded {
        order_id,
        state: new_state,
    })
}

/// Writes the outbox event `fulfilment.result` for request `id` of `order_id`, in the caller's
/// transaction: the worker then writes the result back to Salesforce. For a result that arrived
/// by callback (the worker writes back the answers it received itself).
pub async fn queue_result(
    conn: &mut PgConnection,
    id: Uuid,
    order_id: OrderId,
    correlation_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let event = FulfilmentEvent::Result(FulfilmentRef {
        request_id: id,
        order_id,
    });
    outbox::enqueue(
        conn,
        AGGREGATE_TYPE,
        order_id.get(),
        &event.into_envelope(Utc::now(), correlation_id.map(str::to_owned)),
    )
    .await
}

/// What [`claim_call`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClaim {
    /// The caller may call the fulfilment system for the request until `until`; `attempts`
    /// counts this call. Give it back with [`release_claim`] if the call decided nothing.
    Claimed { attempts: i32, until: DateTime<Utc> },
    /// Another delivery claimed the call and its claim has not expired.
    Busy,
    /// The request is not `queued` (accepted or decided), or there is no such request.
    NotQueued,
}

/// Claims the call to the fulfilment system for queued request `id`, for `lease`, and counts
/// it (committed at once: a call made is counted even if the caller dies before the answer).
///
/// The claim is a column, not a lock held by a connection, so the call (seconds, perhaps) is
/// made without holding one of the pool's connections: how many calls run at once is bounded by
/// the worker's prefetch, not by its database pool. A claim is released by [`release_claim`] or
/// [`record_outcome`], or expires: a caller that died mid-call (or is slower than `lease`) no
/// longer holds the request, and the next delivery calls again under the same idempotency key.
pub async fn claim_call<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    lease: std::time::Duration,
) -> Result<CallClaim, sqlx::Error> {
    // The outer SELECT reads the row as it was before the UPDATE (one snapshot): a row that was
    // queued but not claimed here is claimed by someone else.
    let (attempts, until, state): (Option<i32>, Option<DateTime<Utc>>, Option<String>) =
        sqlx::query_as(
            "WITH claimed AS (
                 UPDATE fulfilment_requests
                 SET attempts = attempts + 1, claimed_until = now() + make_interval(secs => $2),
                     updated_at = now()
                 WHERE id = $1 AND state = 'queued'
                   AND (claimed_until IS NULL OR claimed_until <= now())
                 RETURNING attempts, claimed_until
             )
             SELECT (SELECT attempts FROM claimed), (SELECT claimed_until FROM claimed),
                    (SELECT state FROM fulfilment_requests WHERE id = $1)",
        )
        .bind(id)
        .bind(lease.as_secs_f64())
        .fetch_one(executor)
        .await?;
    Ok(match (attempts.zip(until), state.as_deref()) {
        (Some((attempts, until)), _) => CallClaim::Claimed { attempts, until },
        (None, Some("queued")) => CallClaim::Busy,
        (None, _) => CallClaim::NotQueued,
    })
}

/// What [`claim_write_back`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBackClaim {
    /// The caller is to write the result back, until `until`; [`mark_written_back`] ends the
    /// claim, [`release_claim`] gives it back if the write failed.
    Claimed { until: DateTime<Utc> },
    /// Another caller holds an unexpired claim on the write-back.
    Busy,
    /// Nothing to write back: written back already, not decided, or no such request.
    Nothing,
}

/// Claims writing decided request `id`'s result back to Salesforce, for `lease` (see
/// [`claim_call`] for why a claim and not a lock).
pub async fn claim_write_back<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    lease: std::time::Duration,
) -> Result<WriteBackClaim, sqlx::Error> {
    // As in claim_call: the outer SELECT sees the row as it was before the UPDATE.
    let (until, pending): (Option<DateTime<Utc>>, Option<bool>) = sqlx::query_as(
        "WITH claimed AS (
             UPDATE fulfilment_requests SET claimed_until = now() + make_interval(secs => $2)
             WHERE id = $1 AND state IN ('provisioned', 'failed') AND written_back_at IS NULL
               AND (claimed_until IS NULL OR claimed_until <= now())
             RETURNING claimed_until
         )
         SELECT (SELECT claimed_until FROM claimed),
                (SELECT state IN ('provisioned', 'failed') AND written_back_at IS NULL
                 FROM fulfilment_requests WHERE id = $1)",
    )
    .bind(id)
    .bind(lease.as_secs_f64())
    .fetch_one(executor)
    .await?;
    Ok(match (until, pending) {
        (Some(until), _) => WriteBackClaim::Claimed { until },
        (None, Some(true)) => WriteBackClaim::Busy,
        (None, _) => WriteBackClaim::Nothing,
    })
}

/// Gives back the claim `until` on request `id` (from [`claim_call`] or [`claim_write_back`]:
/// the step did not finish and is to be retried later). Only that claim: one that expired and
/// was taken by another caller stays theirs.
pub async fn release_claim<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fulfilment_requests SET claimed_until = NULL WHERE id = $1 AND claimed_until = $2",
    )
    .bind(id)
    .bind(until)
    .execute(executor)
    .await?;
    Ok(())
}

/// Notes that request `id`'s result reached the Salesforce order. True when this call marked
/// it; false when it was marked already, is not decided, or does not exist (idempotent).
pub async fn mark_written_back<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE fulfilment_requests
         SET written_back_at = now(), updated_at = now(), claimed_until = NULL
         WHERE id = $1 AND state IN ('provisioned', 'failed') AND written_back_at IS NULL",
    )
    .bind(id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`sweep`] looks for: open requests nothing has touched for a while.
#[derive(Debug, Clone, Copy)]
pub struct SweepAfter {
    /// A `queued` request (no live claim) untouched this long lost its nudge (a message dead-
    /// lettered and never replayed, a queue purged): it gets a new `fulfilment.requested`.
    /// Longer than the longest delay tier, or requests waiting out a tier are nudged early.
    pub queued: std::time::Duration,
    /// An `accepted` request untouched this long never got its callback: it fails, with a
    /// reason saying so, and its result is written back like any other.
    pub accepted: std::time::Duration,
    /// Most requests handled per sweep (the rest wait for the next one).
    pub limit: i64,
}

/// What [`sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Queued requests nudged again.
    pub renudged: Vec<Uuid>,
    /// Accepted requests failed for want of a callback.
    pub timed_out: Vec<Uuid>,
}

/// Finds open requests stuck past `after` and moves them on: queued ones get a new
/// `fulfilment.requested` event, accepted ones fail (`record_outcome`) and get a
/// `fulfilment.result` event, so the worker writes the failure back. Each request is handled in
/// a transaction of its own (several workers may sweep at once: a request one of them moved on
/// is no longer stuck for the others).
pub async fn sweep(pool: &sqlx::PgPool, after: SweepAfter) -> Result<Swept, sqlx::Error> {
    let mut swept = Swept::default();
    // `updated_at` moves with every claim, outcome and re-open, so it is the request's last sign
    // of life.
    let queued: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM fulfilment_requests
         WHERE state = 'queued' AND updated_at < now() - make_interval(secs => $1)
           AND (claimed_until IS NULL OR claimed_until <= now())
         ORDER BY updated_at LIMIT $2",
    )
    .bind(after.queued.as_secs_f64())
    .bind(after.limit)
    .fetch_all(pool)
    .await?;
    for id in queued {
        let mut tx = pool.begin().await?;
        // Still stuck, and ours to move (SKIP LOCKED: another sweeper or a claim has it).
        let row: Option<(Uuid, Option<String>)> = sqlx::query_as(
            "UPDATE fulfilment_requests SET updated_at = now()
             WHERE id = (SELECT id FROM fulfilment_requests
                         WHERE id = $1 AND state = 'queued'
                           AND updated_at < now() - make_interval(secs => $2)
                           AND (claimed_until IS NULL OR claimed_until <= now())
                         FOR UPDATE SKIP LOCKED)
             RETURNING order_id, correlation_id",
        )
        .bind(id)
        .bind(after.queued.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((order_id, correlation_id)) = row else {
            continue;
        };
        let order_id = OrderId::from_uuid(order_id);
        let event = FulfilmentEvent::Requested(FulfilmentRef {
            request_id: id,
            order_id,
        });
        outbox::enqueue(
            &mut *tx,
            AGGREGATE_TYPE,
            order_id.get(),
            &event.into_envelope(Utc::now(), correlation_id),
        )
        .await?;
        tx.commit().await?;
        swept.renudged.push(id);
    }

    let accepted: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT id, correlation_id FROM fulfilment_requests
         WHERE state = 'accepted' AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2",
    )
    .bind(after.accepted.as_secs_f64())
    .bind(after.limit)
    .fetch_all(pool)
    .await?;
    let waited = humantime::format_duration(after.accepted);
    for (id, correlation_id) in accepted {
        let mut tx = pool.begin().await?;
        // Still waiting? (Cheap check first.) Then record_outcome locks the order and the
        // request and decides only a request still open: a callback that came in between
        // stands (AlreadyDecided, nothing written).
        let still: Option<bool> = sqlx::query_scalar(
            "SELECT state = 'accepted' AND updated_at < now() - make_interval(secs => $2)
             FROM fulfilment_requests WHERE id = $1",
        )
        .bind(id)
        .bind(after.accepted.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        if still != Some(true) {
            continue;
        }
        let reason = format!(
            "no result from the fulfilment system within {waited} of accepting the request"
        );
        let Recorded::Recorded { order_id, .. } =
            record_outcome(&mut tx, id, Outcome::Failed { reason }).await?
        else {
            continue;
        };
        queue_result(&mut tx, id, order_id, correlation_id.as_deref()).await?;
        tx.commit().await?;
        swept.timed_out.push(id);
    }
    Ok(swept)
}

/// Request `id`, as stored.
pub async fn load<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<FulfilmentRequest>, sqlx::Error> {
    let row: Option<RequestRow> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM fulfilment_requests WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(FulfilmentRequest::try_from).transpose()
}

/// The order's newest request (its state and reason are what the API shows).
pub async fn latest_for_order<'e>(
    executor: impl PgExecutor<'e>,
    order_id: OrderId,
) -> Result<Option<FulfilmentRequest>, sqlx::Error> {
    let row: Option<RequestRow> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM fulfilment_requests
         WHERE order_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(order_id.get())
    .fetch_optional(executor)
    .await?;
    row.map(FulfilmentRequest::try_from).transpose()
}

/// Applies a fulfilment status with `status` semantics (source `fulfilment`). The order is
/// locked by the caller and `at` is not older than its status, so it is never stale; the
/// same status again is simply unchanged.
async fn apply_status(
    conn: &mut PgConnection,
    order_id: OrderId,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    status::apply(
        conn,
        order_id,
        StatusChange {
            status,
            at,
            source: StatusSource::FULFILMENT,
        },
    )
    .await?;
    Ok(())
}
