//! Exchange and queue names, arguments and bindings, declared idempotently.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::headers::long_string;
use crate::{BrokerConfig, BrokerError};

/// Binding of the Salesforce work queue on the events exchange: every order event.
pub const SF_SYNC_BINDING: &str = "order.#";

/// Binding of the Salesforce work queue on the retry exchange: the worker puts messages back on
/// the work queue (a Salesforce outage) by publishing to the retry exchange with this key, so
/// it needs no write permission on the default exchange (which reaches every queue in the
/// vhost). Retry tier keys are durations (`5s`) and never collide with it.
pub const REQUEUE_ROUTING_KEY: &str = "requeue";

/// Binding of the fulfilment work queue on the events exchange: the provisioning nudges
/// (`fulfilment.requested`, `fulfilment.result`), never matched by [`SF_SYNC_BINDING`].
pub const FULFILMENT_BINDING: &str = "fulfilment.#";

/// Routing key on the retry exchange that puts a message straight back on the fulfilment work
/// queue (the fulfilment worker's counterpart of [`REQUEUE_ROUTING_KEY`]).
pub const FULFILMENT_REQUEUE_ROUTING_KEY: &str = "fulfilment.requeue";

/// Prefix of the fulfilment retry tiers' routing keys on the (shared, direct) retry exchange:
/// `fulfilment.5s` never equals a sync tier's `5s`, so the two sets of tiers cannot cross.
const FULFILMENT_TIER_PREFIX: &str = "fulfilment.";

/// One delayed-retry tier: a queue whose messages expire back into the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    /// Routing key on the retry exchange, e.g. `5s`.
    pub routing_key: String,
    pub queue: String,
    pub delay: Duration,
}

/// Every name and argument of the orderbridge broker topology for one namespace.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Topic exchange the relay publishes order events to; routing key = event type.
    pub events_exchange: String,
    /// Quorum work queue the sync worker consumes.
    pub sf_sync_queue: String,
    pub delivery_limit: u32,
    /// Direct exchange the worker publishes retries to, routing key = [`RetryTier::routing_key`],
    /// and requeues ([`REQUEUE_ROUTING_KEY`], bound straight to the work queue).
    pub retry_exchange: String,
    /// Shortest delay first.
    pub retry_tiers: Vec<RetryTier>,
    /// Fanout exchange for dead letters (delivery limit exceeded, or the worker gave up).
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Quorum work queue the fulfilment worker consumes (bound with [`FULFILMENT_BINDING`]),
    /// with the same delivery limit and dead-letter exchange as the Salesforce work queue.
    pub fulfilment_queue: String,
    /// The fulfilment queue's own delay tiers (same delays as [`Self::retry_tiers`], routing
    /// keys `fulfilment.<delay>`, queues `{ns}.fulfilment.retry.<delay>`), expiring back into
    /// [`Self::fulfilment_queue`]; shortest first.
    pub fulfilment_retry_tiers: Vec<RetryTier>,
    /// Topic exchange for sync status events flowing back from the worker (routing key
    /// `order.sync_status.<state>`).
    pub status_exchange: String,
    /// Quorum queue bound to the status exchange with `#`, consumed by the outbox relay
    /// process's status applier; dead-letters to [`Self::dead_letter_exchange`].
    pub status_queue: String,
}

impl Topology {
    pub fn new(
        namespace: &str,
        delivery_limit: u32,
        retry_delays: &[Duration],
    ) -> Result<Self, BrokerError> {
        // Names are AMQP short strings (≤ 255 bytes); leave room for the longest suffix.
        if namespace.is_empty() || namespace.len() > 200 {
            return Err(BrokerError::InvalidConfig(
                "BROKER_NAMESPACE must be 1 to 200 bytes".into(),
            ));
        }
        if delivery_limit == 0 {
            return Err(BrokerError::InvalidConfig(
                "BROKER_DELIVERY_LIMIT must be at least 1".into(),
            ));
        }
        if retry_delays.is_empty() {
            return Err(BrokerError::InvalidConfig(
                "BROKER_RETRY_TIERS needs at least one delay".into(),
            ));
        }
        let mut delays = retry_delays.to_vec();
        delays.sort();
        delays.dedup();
        let sf_sync_queue = format!("{namespace}.sf-sync");
        let fulfilment_queue = format!("{namespace}.fulfilment");
        let mut retry_tiers = Vec::with_capacity(delays.len());
        let mut fulfilment_retry_tiers = Vec::with_capacity(delays.len());
        for delay in delays {
            if delay.is_zero() || delay.as_millis() > u128::from(u32::MAX) {
                return Err(BrokerError::InvalidConfig(format!(
                    "retry delay {delay:?} must be between 1 ms and 49 days"
                )));
            }
            let routing_key = humantime::format_duration(delay)
                .to_string()
                .replace(' ', "");
            fulfilment_retry_tiers.push(RetryTier {
                queue: format!("{fulfilment_queue}.retry.{routing_key}"),
                routing_key: format!("{FULFILMENT_TIER_PREFIX}{routing_key}"),
                delay,
            });
            retry_tiers.push(RetryTier {
                queue: format!("{sf_sync_queue}.retry.{routing_key}"),
                routing_key,
                delay,
            });
        }
        Ok(Self {
            events_exchange: format!("{namespace}.events"),
            sf_sync_queue,
            delivery_limit,
            retry_exchange: format!("{namespace}.retry"),
            retry_tiers,
            dead_letter_exchange: format!("{namespace}.dlx"),
            dead_letter_queue: format!("{namespace}.dead-letters"),
            fulfilment_queue,
            fulfilment_retry_tiers,
            status_exchange: format!("{namespace}.status"),
            status_queue: format!("{namespace}.status-events"),
        })
    }

    /// Declares everything. Idempotent: re-declaring with the same arguments is a no-op, so
    /// every process does it on every (re)connect. Declaring with different arguments than an
    /// existing queue has fails with PRECONDITION_FAILED (the broker never changes them in place).
    pub async fn declare(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
    ) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (&self.events_exchange, ExchangeKind::Topic),
            (&self.retry_exchange, ExchangeKind::Direct),
            (&self.dead_letter_exchange, ExchangeKind::Fanout),
            (&self.status_exchange, ExchangeKind::Topic),
        ] {
            config
                .op(
                    "exchange.declare",
                    channel.exchange_declare(
                        name.as_str().into(),
                        kind,
                        durable,
                        FieldTable::default(),
                    ),
                )
                .await?;
        }

        // Dead letters stay until someone replays or purges them.
        self.declare_queue(config, channel, &self.dead_letter_queue, quorum())
            .await?;
        self.bind(
            config,
            channel,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            "",
        )
        .await?;

        // The work queues: the Salesforce sync's and the fulfilment worker's, each with its own
        // requeue binding and delay tiers, sharing the retry and dead-letter exchanges.
        self.declare_work_queue(
            config,
            channel,
            &self.sf_sync_queue,
            SF_SYNC_BINDING,
            REQUEUE_ROUTING_KEY,
            &self.retry_tiers,
        )
        .await?;
        self.declare_work_queue(
            config,
            channel,
            &self.fulfilment_queue,
            FULFILMENT_BINDING,
            FULFILMENT_REQUEUE_ROUTING_KEY,
            &self.fulfilment_retry_tiers,
        )
        .await?;

        // Status reports: applied to orders by the relay process. One that cannot be read is
        // rejected and dead-lettered (never requeued: it would fail the same way forever, and
        // never dropped: it is a fact about an order). At-least-once, as for the work queue.
        let mut args = at_least_once_dead_lettering(quorum());
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        self.declare_queue(config, channel, &self.status_queue, args)
            .await?;
        self.bind(
            config,
            channel,
            &self.status_queue,
            &self.status_exchange,
            "#",
        )
        .await?;
        Ok(())
    }

    /// Checks that every exchange and queue exists, without declaring anything (passive
    /// declares, which need no permission): for a component running as a broker user that may
    /// not declare (`BROKER_DECLARE_TOPOLOGY=false`). Arguments and bindings are not checked;
    /// whoever declared the topology (`orderbridge broker setup-users`) set them.
    ///
    /// Runs on a channel of its own, closed afterwards: a passive declare of something missing
    /// closes the channel it runs on.
    pub async fn verify(
        &self,
        config: &BrokerConfig,
        connection: &Connection,
    ) -> Result<(), BrokerError> {
        let channel = config
            .op("channel.open", connection.create_channel())
            .await?;
        let result = self.verify_on(config, &channel).await;
        if channel.status().connected() {
            let _ = config
                .op("channel.close", channel.close(200, "checked".into()))
                .await;
        }
        result
    }

    async fn verify_on(&self, config: &BrokerConfig, channel: &Channel) -> Result<(), BrokerError> {
        let passive_exchange = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (&self.events_exchange, ExchangeKind::Topic),
            (&self.retry_exchange, ExchangeKind::Direct),
            (&self.dead_letter_exchange, ExchangeKind::Fanout),
            (&self.status_exchange, ExchangeKind::Topic),
        ] {
            let declared = config
                .op(
                    "exchange.declare",
                    channel.exchange_declare(
                        name.as_str().into(),
                        kind,
                        passive_exchange,
                        FieldTable::default(),
                    ),
                )
                .await;
            missing_as(declared, || format!("exchange {name}"))?;
        }
        let passive_queue = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for name in self.queues() {
            let declared = config
                .op(
                    "queue.declare",
                    channel.queue_declare(
                        name.as_str().into(),
                        passive_queue,
                        FieldTable::default(),
                    ),
                )
                .await;
            missing_as(declared, || format!("queue {name}"))?;
        }
        Ok(())
    }

    /// Ready messages in the dead-letter queue (for the worker's dead-letter gauge and the
    /// operator CLI). Messages someone holds unacknowledged (a running `dlq` command) are not
    /// counted.
    ///
    /// A passive declare of a queue that does not exist is a channel error (404) that closes
    /// `channel`; [`Topology::declare`] creates the queue on every connect, so that only happens
    /// if someone deleted it since, but pass a channel whose loss the caller handles.
    pub async fn dead_letter_count(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
    ) -> Result<u32, BrokerError> {
        Ok(queue_stat(config, channel, &self.dead_letter_queue)
            .await?
            .messages)
    }

    /// Deletes every queue and exchange of this namespace (tests, or tearing down a
    /// deployment). Messages in the queues are lost.
    pub async fn delete(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
    ) -> Result<(), BrokerError> {
        for q in self.queues() {
            config
                .op(
                    "queue.delete",
                    channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
                )
                .await?;
        }
        for x in [
            &self.events_exchange,
            &self.retry_exchange,
            &self.dead_letter_exchange,
            &self.status_exchange,
        ] {
            config
                .op(
                    "exchange.delete",
                    channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
                )
                .await?;
        }
        Ok(())
    }

    /// A work queue bound on the events exchange with `binding`, its requeue binding on the
    /// retry exchange, and its delay tiers.
    async fn declare_work_queue(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
        queue: &str,
        binding: &str,
        requeue_key: &str,
        tiers: &[RetryTier],
    ) -> Result<(), BrokerError> {
        // After `delivery_limit` deliveries (crash loops, requeues) the broker dead-letters the
        // message instead of redelivering it forever. At-least-once dead-lettering (which needs
        // reject-publish overflow) so a message is never lost on its way to the dead-letter
        // queue.
        let mut args = at_least_once_dead_lettering(quorum());
        args.insert("x-delivery-limit".into(), long(self.delivery_limit.into()));
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        self.declare_queue(config, channel, queue, args).await?;
        self.bind(config, channel, queue, &self.events_exchange, binding)
            .await?;
        self.bind(config, channel, queue, &self.retry_exchange, requeue_key)
            .await?;

        // Retry tiers: no consumer; each message expires after the tier's TTL and is
        // dead-lettered through the default exchange straight into the work queue (not back
        // through the events exchange, which would copy it to every other subscriber).
        for tier in tiers {
            let mut args = at_least_once_dead_lettering(quorum());
            let ttl = i64::try_from(tier.delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), long(ttl));
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(queue));
            self.declare_queue(config, channel, &tier.queue, args)
                .await?;
            self.bind(
                config,
                channel,
                &tier.queue,
                &self.retry_exchange,
                &tier.routing_key,
            )
            .await?;
        }
        Ok(())
    }

    /// Every queue of the topology: the work queues, dead letters, status reports, then the
    /// retry tiers.
    pub fn queues(&self) -> Vec<&String> {
        let mut queues = vec![
            &self.sf_sync_queue,
            &self.dead_letter_queue,
            &self.status_queue,
            &self.fulfilment_queue,
        ];
        queues.extend(self.retry_tiers.iter().map(|t| &t.queue));
        queues.extend(self.fulfilment_retry_tiers.iter().map(|t| &t.queue));
        queues
    }

    async fn declare_queue(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), BrokerError> {
        config
            .op(
                "queue.declare",
                channel.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
            )
            .await?;
        Ok(())
    }

    async fn bind(
        &self,
        config: &BrokerConfig,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        config
            .op(
                "queue.bind",
                channel.queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
    }
}

/// A passive declare's NOT_FOUND as [`BrokerError::TopologyMissing`] naming what is missing.
fn missing_as<T>(
    declared: Result<T, BrokerError>,
    what: impl FnOnce() -> String,
) -> Result<(), BrokerError> {
    match declared {
        Ok(_) => Ok(()),
        Err(BrokerError::Amqp { source, .. }) if matches!(source.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404) => {
            Err(BrokerError::TopologyMissing(what()))
        }
        Err(e) => Err(e),
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn at_least_once_dead_lettering(mut args: FieldTable) -> FieldTable {
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

fn long(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_share_the_namespace_and_tiers_are_sorted() {
        let t = Topology::new(
            "ns",
            5,
            &[
                Duration::from_secs(60),
                Duration::from_secs(5),
                Duration::from_secs(600),
            ],
        )
        .unwrap();
        assert_eq!(t.events_exchange, "ns.events");
        assert_eq!(t.sf_sync_queue, "ns.sf-sync");
        let keys: Vec<_> = t
            .retry_tiers
            .iter()
            .map(|t| t.routing_key.as_str())
            .collect();
        assert_eq!(keys, ["5s", "1m", "10m"]);
        assert_eq!(t.retry_tiers[0].queue, "ns.sf-sync.retry.5s");
        assert_eq!(t.fulfilment_queue, "ns.fulfilment");
        let keys: Vec<_> = t
            .fulfilment_retry_tiers
            .iter()
            .map(|t| t.routing_key.as_str())
            .collect();
        assert_eq!(keys, ["fulfilment.5s", "fulfilment.1m", "fulfilment.10m"]);
        assert_eq!(t.fulfilment_retry_tiers[2].queue, "ns.fulfilment.retry.10m");
        // The requeue keys and every tier key differ, on the one retry exchange.
        let mut all: Vec<&str> = t
            .retry_tiers
            .iter()
            .chain(&t.fulfilment_retry_tiers)
            .map(|t| t.routing_key.as_str())
            .chain([REQUEUE_ROUTING_KEY, FULFILMENT_REQUEUE_ROUTING_KEY])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 8);
        assert!(Topology::new("", 5, &[Duration::from_secs(1)]).is_err());
        assert!(Topology::new("ns", 0, &[Duration::from_secs(1)]).is_err());
        assert!(Topology::new("ns", 5, &[]).is_err());
    }
}

/// What a passive `queue.declare` tells of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStat {
    /// Ready messages (not those delivered and not yet acknowledged).
    pub messages: u32,
    pub consumers: u32,
}

/// Counts `queue`'s ready messages and consumers without declaring it. A queue that does not
/// exist is an error, and the broker closes the channel with it (404).
pub async fn queue_stat(
    config: &BrokerConfig,
    channel: &Channel,
    queue: &str,
) -> Result<QueueStat, BrokerError> {
    let q = config
        .op(
            "queue.declare",
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    Ok(QueueStat {
        messages: q.message_count(),
        consumers: q.consumer_count(),
    })
}
