//! Settling a message: its copy (retry tier, dead letter) is published and confirmed by the
//! broker before the original is acked; a copy the broker did not take sends the original back
//! to the queue instead. A crash anywhere therefore redelivers, and the request row makes the
//! redelivery harmless.
//!
//! A copy of a message whose signature verified is re-signed with the current key; the dead
//! letter of one that did not keeps the headers it came with.

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use orderbridge_broker::headers;
use orderbridge_broker::{BrokerError, DeadLetterReason, Topology};

use super::Ctx;
use super::handle::Action;
use crate::message::{Message, Unreadable};

/// Publishes the action's copy (if any) on `channel` (in confirm mode), then acks the original,
/// or requeues it when the copy was not confirmed. `Err`: the session is unusable (the original
/// is redelivered after the reconnect).
pub(super) async fn settle(
    ctx: &Ctx,
    channel: &Channel,
    m: &Message,
    action: &Action,
) -> Result<(), BrokerError> {
    let taken = match copy(&ctx.topology, m, action, Utc::now()) {
        None => true,
        Some((exchange, routing_key, props)) => {
            let props = if matches!(m.read, Err(Unreadable::Signature(_))) {
                props
            } else {
                ctx.keyring.sign(props, &m.delivery.data)
            };
            let confirm = ctx
                .broker
                .op(
                    "basic.publish",
                    channel.basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &m.delivery.data,
                        props,
                    ),
                )
                .await?;
            match ctx.broker.op("confirm", confirm).await? {
                Confirmation::Ack(None) => true,
                Confirmation::Ack(Some(_)) => {
                    tracing::error!(exchange, routing_key, "copy returned unroutable");
                    false
                }
                Confirmation::Nack(_) | Confirmation::NotRequested => false,
            }
        }
    };
    if taken {
        ctx.broker
            .op(
                "basic.ack",
                m.delivery.acker.ack(BasicAckOptions::default()),
            )
            .await?;
    } else {
        ctx.broker
            .op(
                "basic.nack",
                m.delivery.acker.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                }),
            )
            .await?;
    }
    Ok(())
}

/// Exchange, routing key and properties of the copy an action publishes.
fn copy(
    topo: &Topology,
    m: &Message,
    action: &Action,
    now: DateTime<Utc>,
) -> Option<(String, String, BasicProperties)> {
    match action {
        Action::Ack => None,
        Action::Retry {
            tier,
            code,
            message,
            attempts,
        } => {
            let tiers = &topo.fulfilment_retry_tiers;
            let tier = tiers.get(*tier).or(tiers.last())?;
            Some((
                topo.retry_exchange.clone(),
                tier.routing_key.clone(),
                failure_properties(m, attempts.unwrap_or(m.attempts), code, message, None, now),
            ))
        }
        Action::DeadLetter {
            reason,
            code,
            message,
        } => Some((
            topo.dead_letter_exchange.clone(),
            m.delivery.routing_key.as_str().to_owned(),
            failure_properties(
                m,
                m.attempts,
                code,
                message,
                Some((*reason, &topo.fulfilment_queue)),
                now,
            ),
        )),
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
