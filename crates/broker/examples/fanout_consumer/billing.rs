//! The billing service's side of the fan-out: everything another system needs to read
//! orderbridge's `order.submitted` events safely. Shared by the example's `main.rs` and its
//! integration test (`crates/broker/tests/fanout.rs`), so the test runs exactly this code.
//!
//! The rules (README.md, "Reading orderbridge's events"):
//!
//! 1. **Its own queue**, bound to `{ns}.events` with the routing key it wants. Never consume
//!    orderbridge's queues: a message taken from `{ns}.sf-sync` would never reach Salesforce.
//! 2. **Its own dead letters**: a dead-letter exchange and queue of its own, so what it cannot
//!    read is kept for it to look at, apart from orderbridge's (whose operators replay theirs
//!    into orderbridge's queues, not this one).
//! 3. **The signature first**: a message that does not verify was not published by orderbridge
//!    (or was changed on the way); it goes to the dead letters unread.
//! 4. **Idempotent by `message_id`** (= the envelope's `id`): delivery is at least once (the
//!    relay publishes again when a confirm is lost; a consumer crash redelivers), so the same
//!    event can arrive twice and must take effect once.

use std::collections::HashSet;
use std::future::Future;

use futures_util::StreamExt;
use orderbridge_broker::Keyring;
use orderbridge_broker::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use orderbridge_broker::lapin::types::{AMQPValue, FieldTable, LongString};
use orderbridge_broker::lapin::{self, BasicProperties, Channel, ExchangeKind};
use serde::Deserialize;

/// The events billing wants: only new orders (not fulfilment events, not status reports).
pub const ROUTING_KEY: &str = "order.submitted";

/// Deliveries of one message before the broker gives up on it and dead-letters it (a message
/// that crashes the consumer every time must not block the queue forever).
const DELIVERY_LIMIT: i64 = 5;

/// The subscriber's own names, all under its own prefix (never orderbridge's namespace).
#[derive(Debug, Clone)]
pub struct Names {
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Names {
    pub fn new(subscriber: &str) -> Self {
        Self {
            queue: format!("{subscriber}.order-submitted"),
            dead_letter_exchange: format!("{subscriber}.dlx"),
            dead_letter_queue: format!("{subscriber}.dead-letters"),
        }
    }
}

/// Why the subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(
        "orderbridge's events exchange {exchange} is not there (is BROKER_NAMESPACE orderbridge's, \
         and its topology declared?): {source}"
    )]
    NoEventsExchange {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// Declares the subscriber's queue and dead letters, and binds the queue to orderbridge's
/// events exchange, which is only checked (a passive declare): it is orderbridge's to define.
pub async fn declare(
    channel: &Channel,
    events_exchange: &str,
    names: &Names,
) -> Result<(), DeclareError> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            events_exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .map_err(|source| DeclareError::NoEventsExchange {
            exchange: events_exchange.to_owned(),
            source,
        })?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum(),
        )
        .await?;
    bind(
        channel,
        &names.dead_letter_queue,
        &names.dead_letter_exchange,
        "",
    )
    .await?;

    let mut args = quorum();
    args.insert(
        "x-dead-letter-exchange".into(),
        text(&names.dead_letter_exchange),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    // At-least-once dead-lettering (a refused message is never lost on its way to the dead
    // letters) needs `reject-publish`. Set no `x-max-length` with it: a full queue would nack
    // orderbridge's publish, and the relay would publish the event again to every queue.
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    channel
        .queue_declare(
            names.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await?;
    Ok(bind(channel, &names.queue, events_exchange, ROUTING_KEY).await?)
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A quorum queue: replicated, and the only kind with a delivery limit.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// What billing reads of an `order.submitted` v1 message (schemas/order.submitted.v1.json).
/// Only the fields it uses: unknown ones are ignored, as the contract asks of readers.
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    version: u32,
    data: OrderData,
}

#[derive(Debug, Deserialize)]
struct OrderData {
    id: String,
    client_ref: String,
    currency: String,
    /// A decimal string: money never travels as a float.
    total: String,
}

/// What billing does with a new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub order_id: String,
    pub client_ref: String,
    pub currency: String,
    pub total: String,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// First time seen: invoiced (then acked).
    Invoiced(Invoice),
    /// This `message_id` was handled before: acked, nothing done.
    Duplicate,
    /// Not signed by orderbridge, or not an event billing can read: rejected into billing's own
    /// dead letters, with the reason.
    Refused(String),
}

/// The billing service's state: the keys it verifies with, and the ids it has handled.
pub struct Billing {
    keyring: Keyring,
    /// In a real service a table with a unique key, written in the same transaction as the
    /// invoice, so "invoiced" and "seen" can never disagree after a crash.
    handled: HashSet<String>,
}

impl Billing {
    /// `keyring` holds orderbridge's signing key(s) (`BROKER_SIGNING_KEY`, and during a rotation
    /// `BROKER_SIGNING_KEYS_PREVIOUS`).
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            handled: HashSet::new(),
        }
    }

    /// Handles one message: signature, then duplicate check, then the event itself.
    pub fn handle(&mut self, properties: &BasicProperties, body: &[u8]) -> Outcome {
        // Nothing of a message is trusted, nor even parsed, before its signature verifies.
        if let Err(e) = self.keyring.verify(properties, body) {
            return Outcome::Refused(format!("{}: {e}", e.code()));
        }
        let Some(message_id) = properties.message_id().as_ref().map(|m| m.to_string()) else {
            return Outcome::Refused("no message_id".into());
        };
        if self.handled.contains(&message_id) {
            return Outcome::Duplicate;
        }
        let event: Event = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => return Outcome::Refused(format!("unreadable: {e}")),
        };
        if (event.event_type.as_str(), event.version) != (ROUTING_KEY, 1) {
            return Outcome::Refused(format!(
                "unsupported event {} version {}",
                event.event_type, event.version
            ));
        }
        if event.id != message_id {
            return Outcome::Refused("message_id is not the event's id".into());
        }
        self.handled.insert(message_id);
        Outcome::Invoiced(Invoice {
            order_id: event.data.id,
            client_ref: event.data.client_ref,
            currency: event.data.currency,
            total: event.data.total,
        })
    }
}

/// Consumes the subscriber's queue until `shutdown` resolves (or the broker ends the
/// consumer), calling `on_outcome` with each message's id and outcome. Acks a message only
/// after it was handled (at least once), and rejects a refused one without requeueing, which
/// sends it to the queue's dead-letter exchange: billing's own.
pub async fn run(
    channel: &Channel,
    names: &Names,
    billing: &mut Billing,
    mut on_outcome: impl FnMut(&str, &Outcome),
    shutdown: impl Future<Output = ()>,
) -> Result<(), lapin::Error> {
    channel.basic_qos(50, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            names.queue.as_str().into(),
            "billing".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let next = tokio::select! {
            () = &mut shutdown => return Ok(()),
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            return Ok(());
        };
        let delivery = delivery?;
        let outcome = billing.handle(&delivery.properties, &delivery.data);
        match outcome {
            Outcome::Invoiced(_) | Outcome::Duplicate => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Outcome::Refused(_) => {
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        on_outcome(&message_id, &outcome);
    }
}
