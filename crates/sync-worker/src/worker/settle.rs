//! Settling a batch: every outcome (status report, retry copy, dead letter, requeue copy) is
//! published on one confirm channel and confirmed by the broker before the original delivery
//! is acked; what was not confirmed is requeued. A crash anywhere therefore redelivers.
//!
//! Status reports are signed; a copy of a message whose signature verified is re-signed with the
//! current key (so a rotation carries messages in flight over to the new key), a copy of one
//! that did not (its dead letter, or a pause's requeue) keeps the headers it came with.
//!
//! Three stages: [`publish_outcomes`] (what each action publishes, and publishing it),
//! [`await_confirms`] (which of those the broker took), [`ack_and_record`] (ack or requeue each
//! original, and count and log what happened).

use std::sync::atomic::Ordering::Relaxed;

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{Acker, BasicProperties, Channel, Confirmation, PublisherConfirm};
use orderbridge_broker::headers;
use orderbridge_broker::{DeadLetterReason, Keyring, REQUEUE_ROUTING_KEY, Topology};
use orderbridge_domain::{Envelope, SubmittedOrder, SyncError, SyncState, SyncStatus, text};

use super::decision::{Action, Message};
use super::{BatchError, Ctx};

/// Publishes every outcome of the batch on one confirm channel, waits for the confirms, then
/// acks what was settled and requeues the rest.
pub(super) async fn settle(
    ctx: &Ctx,
    messages: &[Message],
    actions: Vec<Action>,
) -> Result<(), BatchError> {
    let channel = ctx
        .publish_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .ok_or(BatchError::NoPublishChannel)?;
    let result = settle_on(ctx, &channel, messages, &actions).await;
    ctx.publish_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(channel);
    result
}

async fn settle_on(
    ctx: &Ctx,
    channel: &Channel,
    messages: &[Message],
    actions: &[Action],
) -> Result<(), BatchError> {
    let now = Utc::now();
    let published = publish_outcomes(ctx, channel, messages, actions, now).await?;
    let failed = await_confirms(ctx, published.pending, messages.len()).await?;
    ack_and_record(ctx, messages, actions, &published.has_copy, &failed, now).await?;
    for (target, client) in ctx.writer.clients() {
        if let Some(usage) = client.usage() {
            ctx.metrics
                .set_target_api_usage(target, usage.used, usage.max);
        }
    }
    Ok(())
}

/// A message copy to publish: exchange, routing key, properties (the body is the original's).
struct Copy {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
}

/// What one action publishes: a status report for the portal, a copy of the message, or both.
fn outcome(
    topo: &Topology,
    keyring: &Keyring,
    m: &Message,
    action: &Action,
    now: DateTime<Utc>,
) -> (Option<SyncStatus>, Option<Copy>) {
    let (status, copy) = unsigned_outcome(topo, m, action, now);
    let copy = copy.map(|c| Copy {
        properties: if m.signature_error.is_none() {
            keyring.sign(c.properties, &m.delivery.data)
        } else {
            c.properties
        },
        ..c
    });
    (status, copy)
}

fn unsigned_outcome(
    topo: &Topology,
    m: &Message,
    action: &Action,
    now: DateTime<Utc>,
) -> (Option<SyncStatus>, Option<Copy>) {
    match action {
        Action::Drop => (None, None),
        // Back to the tail of the work queue as a new publish, unchanged: unlike a
        // nack(requeue) this does not count against the queue's delivery limit, so an
        // outage never dead-letters messages that were not at fault. Through the retry
        // exchange's requeue binding, not the default exchange, which the worker's broker user
        // may not write to.
        Action::Requeue => (
            None,
            Some(Copy {
                exchange: topo.retry_exchange.clone(),
                routing_key: REQUEUE_ROUTING_KEY.to_owned(),
                properties: headers::republishable(&m.delivery.properties),
            }),
        ),
        Action::Synced(id) => (
            m.event
                .as_ref()
                .map(|e| status_of(e, SyncState::Synced, Some(id.clone()), m.attempts + 1, None)),
            None,
        ),
        Action::Retry(f) => {
            let attempts = m.attempts + 1;
            let tiers = &topo.retry_tiers;
            let tier = &tiers[(attempts as usize - 1).min(tiers.len() - 1)];
            (
                m.event.as_ref().map(|e| {
                    status_of(
                        e,
                        SyncState::Retrying,
                        None,
                        attempts,
                        Some((&f.code, &f.message)),
                    )
                }),
                Some(Copy {
                    exchange: topo.retry_exchange.clone(),
                    routing_key: tier.routing_key.clone(),
                    properties: failure_properties(m, attempts, &f.code, &f.message, None, now),
                }),
            )
        }
        Action::DeadLetter {
            reason,
            code,
            message,
        } => {
            // An undecodable or unsigned message never reached Salesforce: no attempt to count.
            let attempts = if matches!(
                reason,
                DeadLetterReason::Undecodable | DeadLetterReason::BadSignature
            ) {
                m.attempts
            } else {
                m.attempts + 1
            };
            (
                m.event.as_ref().map(|e| {
                    status_of(e, SyncState::Failed, None, attempts, Some((code, message)))
                }),
                Some(Copy {
                    exchange: topo.dead_letter_exchange.clone(),
                    routing_key: m.delivery.routing_key.as_str().to_owned(),
                    properties: failure_properties(
                        m,
                        attempts,
                        code,
                        message,
                        Some((*reason, &topo.sf_sync_queue)),
                        now,
                    ),
                }),
            )
        }
    }
}

/// One publish awaiting its confirm.
struct Pending {
    /// The message (index in the batch) it is an outcome of.
    message: usize,
    confirm: PublisherConfirm,
    /// The published message's id, to attribute a `basic.return`.
    message_id: String,
    /// A copy of the message (retry, dead letter, requeue), or else its status report.
    is_copy: bool,
}

struct Published {
    pending: Vec<Pending>,
    /// Per message: whether a copy of it was published.
    has_copy: Vec<bool>,
}

async fn publish_outcomes(
    ctx: &Ctx,
    channel: &Channel,
    messages: &[Message],
    actions: &[Action],
    now: DateTime<Utc>,
) -> Result<Published, BatchError> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut pending = Vec::new();
    let mut has_copy = vec![false; messages.len()];
    for (i, (m, action)) in messages.iter().zip(actions).enumerate() {
        let (status, copy) = outcome(&ctx.topology, &ctx.keyring, m, action, now);
        if let Some(copy) = copy {
            let message_id = copy
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            let confirm = ctx
                .broker
                .op(
                    "basic.publish",
                    channel.basic_publish(
                        copy.exchange.as_str().into(),
                        copy.routing_key.as_str().into(),
                        mandatory,
                        &m.delivery.data,
                        copy.properties,
                    ),
                )
                .await
                .map_err(BatchError::Publish)?;
            has_copy[i] = true;
            pending.push(Pending {
                message: i,
                confirm,
                message_id,
                is_copy: true,
            });
        }
        if let Some(status) = status {
            let correlation = m.event.as_ref().and_then(|e| e.correlation_id.clone());
            let key = status.routing_key();
            let envelope = status.into_envelope(now, correlation.clone());
            let body = serde_json::to_vec(&envelope)?;
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(envelope.id.to_string().into())
                .with_type(envelope.event_type.as_str().into())
                .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0))
                .with_app_id("orderbridge-sync-worker".into());
            if let Some(c) = correlation {
                // A short string holds 255 bytes at most.
                props = props.with_correlation_id(text::truncate_bytes(&c, 255).into());
            }
            let props = ctx.keyring.sign(props, &body);
            let confirm = ctx
                .broker
                .op(
                    "basic.publish",
                    channel.basic_publish(
                        ctx.topology.status_exchange.as_str().into(),
                        key.as_str().into(),
                        mandatory,
                        &body,
                        props,
                    ),
                )
                .await
                .map_err(BatchError::Publish)?;
            pending.push(Pending {
                message: i,
                confirm,
                message_id: envelope.id.to_string(),
                is_copy: false,
            });
        }
    }
    Ok(Published { pending, has_copy })
}

/// Per message, which of its publishes the broker did not take.
struct Failed {
    copy: Vec<bool>,
    status: Vec<bool>,
}

/// Waits for every confirm. A publish failed when it was nacked or returned unroutable; a
/// confirm that cannot be read means the channel is gone, and then nothing of the batch can be
/// settled (it is all redelivered after the reconnect).
async fn await_confirms(
    ctx: &Ctx,
    pending: Vec<Pending>,
    messages: usize,
) -> Result<Failed, BatchError> {
    let mut failed = Failed {
        copy: vec![false; messages],
        status: vec![false; messages],
    };
    let mut returned: Vec<String> = Vec::new();
    let mut broken = None;
    let mut waited = Vec::with_capacity(pending.len());
    for p in pending {
        let flags = if p.is_copy {
            &mut failed.copy
        } else {
            &mut failed.status
        };
        match ctx.broker.op("confirm", p.confirm).await {
            Ok(Confirmation::Ack(None)) => waited.push((p.message, p.message_id, p.is_copy)),
            Ok(Confirmation::Ack(Some(r))) => {
                // Attribute by message id below (lapin may attach a return to another confirm).
                match r.properties.message_id() {
                    Some(rid) => returned.push(rid.as_str().to_owned()),
                    None => flags[p.message] = true,
                }
                waited.push((p.message, p.message_id, p.is_copy));
            }
            Ok(Confirmation::Nack(_)) | Ok(Confirmation::NotRequested) => flags[p.message] = true,
            Err(e) => {
                flags[p.message] = true;
                broken = Some(e);
            }
        }
    }
    for (i, id, is_copy) in waited {
        if returned.contains(&id) {
            tracing::error!(message_id = %id, is_copy, "outcome message returned unroutable");
            if is_copy {
                failed.copy[i] = true;
            } else {
                failed.status[i] = true;
            }
        }
    }
    match broken {
        // The channel or connection is gone: acks cannot be trusted either.
        Some(e) => Err(BatchError::Confirm(e)),
        None => Ok(failed),
    }
}

/// Acks each message whose outcome the broker took, requeues the others, and records what
/// happened. A message is settled when its copy is confirmed; with no copy, when its status
/// report is. A lost status report next to a confirmed copy is only logged: the copy will
/// report again, and requeueing the original too would double the message.
async fn ack_and_record(
    ctx: &Ctx,
    messages: &[Message],
    actions: &[Action],
    has_copy: &[bool],
    failed: &Failed,
    now: DateTime<Utc>,
) -> Result<(), BatchError> {
    for (i, (m, action)) in messages.iter().zip(actions).enumerate() {
        let settled = !failed.copy[i] && (has_copy[i] || !failed.status[i]);
        if has_copy[i] && failed.status[i] {
            tracing::warn!(message_id = ?m.delivery.properties.message_id(), "status report not delivered; the message's next outcome reports again");
        }
        ack_or_requeue(ctx, &m.delivery.acker, settled).await?;
        if !settled || matches!(action, Action::Requeue) {
            ctx.metrics.requeued_total.fetch_add(1, Relaxed);
            continue;
        }
        record(ctx, m, action, now);
    }
    Ok(())
}

async fn ack_or_requeue(ctx: &Ctx, acker: &Acker, ack: bool) -> Result<(), BatchError> {
    let r = if ack {
        ctx.broker
            .op("basic.ack", acker.ack(BasicAckOptions::default()))
            .await
    } else {
        ctx.broker
            .op(
                "basic.nack",
                acker.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                }),
            )
            .await
    };
    r.map(drop).map_err(BatchError::Ack)
}

/// Metrics and the log line for a settled message.
fn record(ctx: &Ctx, m: &Message, action: &Action, now: DateTime<Utc>) {
    let metrics = &ctx.metrics;
    let order = m.event.as_ref().map(|e| e.data.order.id);
    let correlation_id = m.event.as_ref().and_then(|e| e.correlation_id.as_deref());
    match action {
        Action::Synced(id) => {
            metrics.synced_total.fetch_add(1, Relaxed);
            if let Some(e) = &m.event {
                let lag = (now - e.occurred_at).to_std().unwrap_or_default();
                metrics.end_to_end_lag.observe(lag.as_secs_f64());
            }
            tracing::debug!(?order, correlation_id, salesforce_id = %id, "synced");
        }
        Action::Retry(f) => {
            metrics.retried_total.fetch_add(1, Relaxed);
            tracing::warn!(?order, correlation_id, code = %f.code, error = %f.message, attempts = m.attempts + 1, "retry scheduled");
        }
        Action::DeadLetter {
            reason,
            code,
            message,
        } => {
            match reason {
                DeadLetterReason::Undecodable => &metrics.undecodable_total,
                DeadLetterReason::BadSignature => &metrics.bad_signature_total,
                _ => &metrics.failed_total,
            }
            .fetch_add(1, Relaxed);
            tracing::error!(
                ?order,
                correlation_id,
                reason = reason.as_str(),
                code,
                error = message,
                "dead-lettered"
            );
        }
        Action::Drop | Action::Requeue => {}
    }
}

fn status_of(
    e: &Envelope<SubmittedOrder>,
    state: SyncState,
    salesforce_id: Option<String>,
    attempts: u32,
    error: Option<(&String, &String)>,
) -> SyncStatus {
    SyncStatus {
        order_id: e.data.order.id,
        order_version: e.data.order.version,
        state,
        salesforce_id,
        attempts,
        error: error.map(|(code, message)| SyncError {
            code: code.clone(),
            message: text::truncate(message, headers::MAX_ERROR_MESSAGE).to_owned(),
        }),
        source_event_id: e.id,
        source_occurred_at: e.occurred_at,
    }
}

/// The delivery's properties for its copy (`headers::failure_copy`).
fn failure_properties(
    m: &Message,
    attempts: u32,
    code: &str,
    message: &str,
    dead_letter: Option<(DeadLetterReason, &str)>,
    now: DateTime<Utc>,
) -> BasicProperties {
    let failure = headers::Failure {
        attempts,
        code,
        message,
        dead_letter,
    };
    headers::failure_copy(&m.delivery.properties, failure, &now.to_rfc3339())
}
