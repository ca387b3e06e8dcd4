//! Settling a message: its copy (retry tier, dead letter) is published and confirmed by the
//! broker before the original is acked; a copy the broker did not take sends the original back
//! to the queue instead. A crash anywhere therefore redelivers, and the request row makes the
//! redelivery harmless.
//!
//! A copy of a message whose signature verified is re-signed with the current key; the dead
//! letter of one that did not keeps the headers it came with.

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation};
use orderbridge_broker::headers::{self, long_string};
use orderbridge_broker::{BrokerError, Topology};
use orderbridge_domain::text;

use super::Ctx;
use super::handle::Action;
use crate::message::{Message, Unreadable};

/// The longest error message kept in a header.
const MAX_ERROR_MESSAGE: usize = 2000;

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
                Some((reason.as_str(), &topo.fulfilment_queue)),
                now,
            ),
        )),
    }
}

/// The delivery's properties with the failure headers set (and, for a dead letter, the reason
/// and the queue `orderbridge dlq replay` sends it back to).
fn failure_properties(
    m: &Message,
    attempts: u32,
    code: &str,
    message: &str,
    dead_letter: Option<(&str, &str)>,
    now: DateTime<Utc>,
) -> BasicProperties {
    let props = &m.delivery.properties;
    let mut table = props.headers().clone().unwrap_or_default();
    let first = headers::text(props, headers::FIRST_FAILURE_AT).unwrap_or_else(|| now.to_rfc3339());
    table.insert(
        headers::ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    table.insert(headers::ERROR_CODE.into(), long_string(code));
    table.insert(
        headers::ERROR_MESSAGE.into(),
        long_string(text::truncate(message, MAX_ERROR_MESSAGE)),
    );
    table.insert(headers::FIRST_FAILURE_AT.into(), long_string(&first));
    table.insert(
        headers::LAST_FAILURE_AT.into(),
        long_string(&now.to_rfc3339()),
    );
    if let Some((reason, origin_queue)) = dead_letter {
        table.insert(headers::REASON.into(), long_string(reason));
        table.insert(headers::ORIGIN_QUEUE.into(), long_string(origin_queue));
    }
    headers::republishable(props)
        .with_headers(table)
        .with_delivery_mode(2)
}
