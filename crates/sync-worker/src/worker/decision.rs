//! Reading a batch and deciding what becomes of each message: one Salesforce write per order
//! (the newest event wins), then per message an [`Action`] from the write's result, the
//! attempts so far and the delivery count.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use orderbridge_broker::{DeadLetterReason, Keyring, SignatureError, headers};
use orderbridge_domain::{DecodeError, Envelope, OrderEvent, OrderId, SubmittedOrder};

use super::breaker;
use super::settle::settle;
use super::{BatchError, Ctx};
use crate::writer::{Failure, OrderResult};

/// One message of a batch, read.
pub(super) struct Message {
    pub(super) delivery: Delivery,
    /// `None` when it could not be read or is not signed by the relay; then `decode_error` or
    /// `signature_error` says why.
    pub(super) event: Option<Envelope<SubmittedOrder>>,
    pub(super) decode_error: Option<DecodeError>,
    /// Why the signature was not accepted. Such a message is never decoded, written or
    /// reported on (a forged message must not even mark a real order failed).
    pub(super) signature_error: Option<SignatureError>,
    pub(super) attempts: u32,
    /// Times the broker has delivered it before without it being settled (`x-delivery-count`).
    pub(super) returned: u32,
}

/// What to publish for one message before acking it.
pub(super) enum Action {
    /// Superseded by a newer event for the same order in the same batch: nothing to do.
    Drop,
    Synced(String),
    Retry(Failure),
    DeadLetter {
        reason: DeadLetterReason,
        code: String,
        message: String,
    },
    /// The call failed as a whole: back to the queue, untouched.
    Requeue,
}

/// Processes one batch; `Ok` with how many of its orders were written and reported synced
/// (what the window measures: a saturated org that answers quickly with errors is no
/// throughput). `Err` means the broker session is unusable (the caller reconnects; unacked
/// messages are redelivered).
pub(super) async fn process(ctx: Arc<Ctx>, deliveries: Vec<Delivery>) -> Result<usize, BatchError> {
    let started = Instant::now();
    let result = process_batch(&ctx, deliveries).await;
    ctx.write_time.observe(started.elapsed());
    result
}

async fn process_batch(ctx: &Arc<Ctx>, deliveries: Vec<Delivery>) -> Result<usize, BatchError> {
    ctx.metrics.batch_size.observe(deliveries.len() as f64);

    let messages: Vec<Message> = deliveries
        .into_iter()
        .map(|d| read(d, &ctx.keyring))
        .collect();
    let last_delivery = last_delivery(ctx.topology.delivery_limit);

    let (writes, newest) = plan_writes(&messages, last_delivery);
    let orders: Vec<&SubmittedOrder> = writes
        .iter()
        .filter_map(|i| messages[*i].event.as_ref().map(|e| &e.data))
        .collect();
    let correlation_ids: Vec<&str> = writes
        .iter()
        .filter_map(|i| messages[*i].event.as_ref()?.correlation_id.as_deref())
        .collect();
    tracing::debug!(orders = orders.len(), correlation_ids = ?correlation_ids, "writing to Salesforce");
    let bulk = ctx.config.bulk_enabled() && orders.len() >= ctx.config.bulk_min_orders as usize;
    let write_started = Instant::now();
    let results = if orders.is_empty() {
        Vec::new()
    } else if bulk {
        tracing::info!(
            orders = orders.len(),
            "writing a backlog batch with Bulk API 2.0"
        );
        let results = ctx.writer.write_bulk(&orders).await;
        tracing::info!(
            orders = orders.len(),
            took_ms = write_started.elapsed().as_millis() as u64,
            "backlog batch written; settling"
        );
        results
    } else {
        ctx.writer.write(&orders).await
    };
    let mut result_of: HashMap<usize, OrderResult> = writes.into_iter().zip(results).collect();

    let actions: Vec<Action> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            decide(
                ctx,
                m,
                result_of.remove(&i),
                newest.contains(&i),
                last_delivery,
            )
        })
        .collect();

    if let Some(pause) = ctx.config.fault_pause_before_ack {
        tracing::warn!(
            ?pause,
            "fault injection: pausing between the Salesforce write and the ack"
        );
        tokio::time::sleep(pause).await;
    }
    let synced = actions
        .iter()
        .filter(|a| matches!(a, Action::Synced(_)))
        .count();
    let settle_started = Instant::now();
    let settled = settle(ctx, &messages, actions).await.map(|()| synced);
    if bulk {
        tracing::info!(
            messages = messages.len(),
            took_ms = settle_started.elapsed().as_millis() as u64,
            "backlog batch settled"
        );
    }
    settled
}

/// Which messages to write: one per order, the newest event (highest order version, then
/// latest); older ones in the same batch are settled without a write of their own. Returns the
/// messages to write, in batch order, and the newest message of every order.
///
/// The newest event of an order at its last delivery is not written (it is dead-lettered
/// untried, see [`decide`]) and its older ones in the batch are dropped with it: writing an
/// older event instead would report `synced` for a version the newest then contradicts.
fn plan_writes(messages: &[Message], last_delivery: u32) -> (Vec<usize>, HashSet<usize>) {
    let mut newest: HashMap<OrderId, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(e) = &m.event else { continue };
        let order = &e.data.order;
        match newest.get(&order.id) {
            Some(&j) => {
                let other = messages[j]
                    .event
                    .as_ref()
                    .map(|o| (o.data.order.version, o.occurred_at));
                if other < Some((order.version, e.occurred_at)) {
                    newest.insert(order.id, i);
                }
            }
            None => {
                newest.insert(order.id, i);
            }
        }
    }
    let mut writes: Vec<usize> = newest
        .values()
        .copied()
        .filter(|&i| messages[i].returned < last_delivery)
        .collect();
    writes.sort_unstable();
    (writes, newest.into_values().collect())
}

/// One message's outcome, from its write's result (`None`: not written) and its history.
fn decide(
    ctx: &Ctx,
    m: &Message,
    result: Option<OrderResult>,
    is_newest: bool,
    last_delivery: u32,
) -> Action {
    let max_attempts = ctx.config.max_attempts;
    match (&m.event, result) {
        (None, _) if m.signature_error.is_some() => {
            let e = m.signature_error.as_ref();
            Action::DeadLetter {
                reason: DeadLetterReason::BadSignature,
                code: e.map(|e| e.code()).unwrap_or_default().into(),
                message: e.map(ToString::to_string).unwrap_or_default(),
            }
        }
        (None, _) => {
            let e = m.decode_error.as_ref();
            Action::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                code: match e {
                    Some(DecodeError::Unsupported { .. }) => "UNSUPPORTED_EVENT".into(),
                    _ => "MALFORMED_MESSAGE".into(),
                },
                message: e.map(ToString::to_string).unwrap_or_default(),
            }
        }
        (Some(_), None) if m.returned >= last_delivery && is_newest => Action::DeadLetter {
            reason: DeadLetterReason::Redelivered,
            code: "REDELIVERY_LIMIT".into(),
            message: format!(
                "returned unsettled {} times (a worker may crash on it): dead-lettered at \
                     its last delivery instead of tried again",
                m.returned
            ),
        },
        (Some(_), None) => Action::Drop,
        (Some(_), Some(OrderResult::Synced { salesforce_id })) => Action::Synced(salesforce_id),
        (Some(_), Some(OrderResult::Failed(f))) if !f.retryable => Action::DeadLetter {
            reason: DeadLetterReason::Permanent,
            code: f.code,
            message: f.message,
        },
        (Some(_), Some(OrderResult::Failed(f))) if m.attempts + 1 >= max_attempts => {
            Action::DeadLetter {
                reason: DeadLetterReason::AttemptsExhausted,
                code: f.code,
                message: f.message,
            }
        }
        (Some(_), Some(OrderResult::Failed(f))) => Action::Retry(f),
        (Some(_), Some(OrderResult::CallFailed(f))) => {
            breaker::trip(ctx, &f);
            Action::Requeue
        }
    }
}

/// The `x-delivery-count` of a message's last delivery: the worker dead-letters it itself then
/// instead of trying it again.
///
/// A quorum queue counts every return of a message (a crash, a lost connection, a `nack` with
/// requeue: the worker's own at shutdown too) and dead-letters it when the count would exceed
/// `BROKER_DELIVERY_LIMIT`, so the delivery with the count at the limit is the last one: a
/// message that kills every worker it reaches ends there. But the broker says nothing to the
/// portal, whose order would stay `published` until someone looked. So at that delivery the
/// worker dead-letters the message with a reason and reports the order `failed` (replayable like
/// any dead letter). Pauses and whole-call failures republish instead of returning, so they do
/// not count.
fn last_delivery(delivery_limit: u32) -> u32 {
    delivery_limit
}

/// Reads a delivery: checks its signature first, then decodes it.
pub(super) fn read(delivery: Delivery, keyring: &Keyring) -> Message {
    let attempts = headers::count(&delivery.properties, headers::ATTEMPTS).unwrap_or(0);
    // Set by quorum queues on a message returned to the queue (RabbitMQ 3.x; absent on the first
    // delivery).
    let returned = headers::count(&delivery.properties, headers::DELIVERY_COUNT).unwrap_or(0);
    if let Err(e) = keyring.verify(&delivery.properties, &delivery.data) {
        return Message {
            delivery,
            event: None,
            decode_error: None,
            signature_error: Some(e),
            attempts,
            returned,
        };
    }
    match OrderEvent::decode(&delivery.data) {
        Ok(env) => {
            let OrderEvent::Submitted(submitted) = env.data;
            Message {
                event: Some(Envelope {
                    id: env.id,
                    event_type: env.event_type,
                    version: env.version,
                    occurred_at: env.occurred_at,
                    correlation_id: env.correlation_id,
                    data: *submitted,
                }),
                decode_error: None,
                signature_error: None,
                attempts,
                returned,
                delivery,
            }
        }
        Err(e) => Message {
            delivery,
            event: None,
            decode_error: Some(e),
            signature_error: None,
            attempts,
            returned,
        },
    }
}
