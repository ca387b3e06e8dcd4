//! RabbitMQ plumbing shared by the orderbridge binaries that talk to the broker (the outbox relay,
//! the sync worker, the fulfilment worker): the configuration ([`BrokerConfig`]), the topology every one of them declares
//! at start-up ([`Topology`]), a supervised connection ([`Supervisor`]), the message headers
//! they exchange ([`headers`]: names, [`DeadLetterReason`], one reader for every value type),
//! the signatures on every message ([`signing`]) and the broker permissions each component needs
//! ([`permissions`]).
//!
//! ```text
//!                      ┌────────────────────────────┐
//!  outbox-relay ──────►│ {ns}.events  (topic)       │──order.#──► {ns}.sf-sync (quorum, x-delivery-limit)
//!   routing key =      └────────────────────────────┘   ▲   │        │ consumed by sync-worker
//!   event type                │ other systems bind      │   │        │ delivery limit exceeded
//!   (order.submitted)         ▼ their own queues        │   │        ▼
//!                          erp-queue, …                  │   │   {ns}.dlx (fanout) ──► {ns}.dead-letters
//!                                                        │   │        ▲
//!  sync-worker ──retry──► {ns}.retry (direct) ─"5s"──► {ns}.sf-sync.retry.5s  ──TTL──┘ (dead-letter via
//!                                          ─"1m"──► {ns}.sf-sync.retry.1m  ──TTL──┘  the default
//!                                          ─"10m"─► {ns}.sf-sync.retry.10m ──TTL──┘  exchange, back
//!                                                                                     to {ns}.sf-sync)
//!  outbox-relay ─► {ns}.events ──fulfilment.#──► {ns}.fulfilment (quorum, x-delivery-limit, DLX)
//!                                                   │ consumed by fulfilment-worker
//!  fulfilment-worker ──retry──► {ns}.retry ─"fulfilment.5s"…─► {ns}.fulfilment.retry.5s … ──TTL──┘
//!                                          ─"fulfilment.requeue"─► {ns}.fulfilment
//!  sync-worker ──status──► {ns}.status (topic) ──#──► {ns}.status-events ──► outbox-relay's status
//!                                                      │ (quorum, DLX)        applier ──► orders
//!                                                      └─unreadable, rejected──► {ns}.dlx ──► {ns}.dead-letters
//! ```
//!
//! lapin does not recover connections reliably on its own (amqp-rs/lapin #288, #312, #389, #409,
//! #470), so nothing here relies on its auto-recovery: [`Supervisor::connect`] opens a fresh
//! connection with capped exponential backoff and jitter, re-declares the topology, and every
//! lapin await in this crate runs under [`BrokerConfig::broker_op_timeout`].

pub mod headers;
pub mod permissions;
pub mod signing;
mod topology;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

// Lives in orderbridge-runtime so services without a broker (sf-subscriber) share it.
pub use headers::DeadLetterReason;
pub use lapin;
pub use orderbridge_runtime::backoff::Backoff;
pub use permissions::{Component, Permissions};
pub use signing::{Keyring, SignatureError, SigningConfig, SigningError};
pub use topology::{
    FULFILMENT_BINDING, FULFILMENT_REQUEUE_ROUTING_KEY, QueueStat, REQUEUE_ROUTING_KEY, RetryTier,
    SF_SYNC_BINDING, Topology, queue_stat,
};

/// Broker settings, flattened into each binary's command line.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Broker")]
pub struct BrokerConfig {
    /// AMQP URL of the broker, or of every node of a cluster, comma-separated (each with its
    /// credentials): a connection goes to the node that answered last and, when it does not
    /// answer, to the next. Shared by every orderbridge binary that talks to the broker. A
    /// `heartbeat` query parameter is honoured; without one 10 s is used, so a dead peer is
    /// noticed within ~20 s even when idle. Likewise `frame_max`: without one, 32 KiB (the
    /// client's buffers are 32 frames each way, so RabbitMQ's 128 KiB would hold 8 MiB per
    /// connection for messages of a few KiB; larger ones are simply split into more frames).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub amqp_url: SecretString,
    /// Prefix of every exchange and queue name, so deployments and test runs never collide.
    #[arg(
        long,
        env = "BROKER_NAMESPACE",
        default_value = "orderbridge",
        global = true
    )]
    pub broker_namespace: String,
    /// Limit on any one broker operation (connect, declare, publish, confirm, close). lapin can
    /// hang forever in several failure modes; this turns a hang into a reconnect.
    #[arg(long, env = "BROKER_OP_TIMEOUT", default_value = "10s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub broker_op_timeout: Duration,
    /// First delay before reconnecting; doubles per failed attempt (with jitter).
    #[arg(long, env = "BROKER_RECONNECT_MIN", default_value = "100ms", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub broker_reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    #[arg(long, env = "BROKER_RECONNECT_MAX", default_value = "30s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub broker_reconnect_max: Duration,
    /// Deliveries of one message from the Salesforce work queue before the broker dead-letters
    /// it (quorum `x-delivery-limit`; RabbitMQ 3.10 has no default). Changing it on an existing
    /// queue needs the queue deleted or a policy: queue arguments cannot change in place.
    #[arg(
        long,
        env = "BROKER_DELIVERY_LIMIT",
        default_value_t = 10,
        global = true
    )]
    pub broker_delivery_limit: u32,
    /// Delayed-retry tiers (comma-separated durations, any order). Each becomes a queue
    /// whose messages expire back into the work queue after that long.
    #[arg(long, env = "BROKER_RETRY_TIERS", default_value = "5s,1m,10m", value_parser = humantime::parse_duration, value_delimiter = ',', global = true)]
    pub broker_retry_tiers: Vec<Duration>,
    /// Declare the whole topology on every (re)connect (`true`), or only check that it exists
    /// (`false`, passive declares). A component running as its own least-privilege broker user
    /// (`orderbridge broker setup-users`) has no permission to declare, and needs `false`;
    /// the setup command declares the topology instead.
    #[arg(
        long,
        env = "BROKER_DECLARE_TOPOLOGY",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub broker_declare_topology: bool,
    #[command(flatten)]
    pub signing: SigningConfig,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

/// A broker failure. The URL (which may hold a password) is never part of a message.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("AMQP_URL is not a valid AMQP URL (or comma-separated list of them)")]
    InvalidUrl,
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(
        "the broker has no {0} (BROKER_DECLARE_TOPOLOGY=false only checks the topology: declare it \
         with `orderbridge broker setup-users`, or run with BROKER_DECLARE_TOPOLOGY=true as a user \
         allowed to)"
    )]
    TopologyMissing(String),
    #[error("broker operation `{0}` timed out")]
    Timeout(&'static str),
    #[error("broker operation `{op}` failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
}

impl BrokerConfig {
    /// These settings as the environment variables that set them, for a child process that
    /// takes the same broker settings (`sync-worker dlq` runs `orderbridge dlq`).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let tiers: Vec<String> = self
            .broker_retry_tiers
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        vec![
            ("AMQP_URL", self.amqp_url.expose_secret().to_owned()),
            ("BROKER_NAMESPACE", self.broker_namespace.clone()),
            ("BROKER_OP_TIMEOUT", duration(self.broker_op_timeout)),
            ("BROKER_RECONNECT_MIN", duration(self.broker_reconnect_min)),
            ("BROKER_RECONNECT_MAX", duration(self.broker_reconnect_max)),
            (
                "BROKER_DELIVERY_LIMIT",
                self.broker_delivery_limit.to_string(),
            ),
            ("BROKER_RETRY_TIERS", tiers.join(",")),
            (
                "BROKER_DECLARE_TOPOLOGY",
                self.broker_declare_topology.to_string(),
            ),
        ]
        .into_iter()
        .chain(self.signing.to_env())
        .collect()
    }

    /// The signing keys ([`signing`]); an error without `BROKER_SIGNING_KEY`.
    pub fn keyring(&self) -> Result<Keyring, BrokerError> {
        Ok(self.signing.keyring()?)
    }

    /// The exchange and queue names and arguments for this namespace.
    pub fn topology(&self) -> Result<Topology, BrokerError> {
        Topology::new(
            &self.broker_namespace,
            self.broker_delivery_limit,
            &self.broker_retry_tiers,
        )
    }

    /// Runs one lapin operation under the operation timeout.
    pub async fn op<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        with_timeout(self.broker_op_timeout, op, fut).await
    }

    /// Every node's URL, in the order given, with the heartbeat, frame size and connection
    /// timeout set where the URL does not say.
    fn uris(&self) -> Result<Vec<AMQPUri>, BrokerError> {
        let uris = amqp_urls(self.amqp_url.expose_secret())
            .map(|url| {
                let mut uri = AMQPUri::from_str(url).map_err(|_| BrokerError::InvalidUrl)?;
                if uri.query.heartbeat.is_none() {
                    uri.query.heartbeat = Some(10);
                }
                if uri.query.frame_max.is_none() {
                    uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
                }
                if uri.query.connection_timeout.is_none() {
                    uri.query.connection_timeout =
                        Some(u64::try_from(self.broker_op_timeout.as_millis()).unwrap_or(u64::MAX));
                }
                Ok(uri)
            })
            .collect::<Result<Vec<_>, BrokerError>>()?;
        if uris.is_empty() {
            return Err(BrokerError::InvalidUrl);
        }
        Ok(uris)
    }
}

/// The largest AMQP frame a connection asks for unless its URL says `frame_max`. lapin keeps a
/// send and a receive buffer of 32 frames each for the connection's life: at RabbitMQ's default
/// of 128 KiB that is 8 MiB per connection, half of a relay's resident memory, for messages of
/// a few KiB (measured: `orderbridge-bench drain`, relay 30.6 → 17.1 MiB, worker 50 → 43–45 MiB,
/// throughput unchanged; BENCHMARKS.md).
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// The URLs of an `AMQP_URL` value: one, or several comma-separated (a cluster's nodes).
/// Commas cannot occur in a URL's own parts unencoded, so splitting on them is safe.
pub fn amqp_urls(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// `host:port` of a node, for logs (never the credentials).
fn node_name(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// Runs one lapin operation under `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    op: &'static str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(BrokerError::Amqp { op, source }),
        Err(_) => Err(BrokerError::Timeout(op)),
    }
}

/// An open connection with one channel on which the topology has been declared.
pub struct Session {
    pub connection: Connection,
    pub channel: Channel,
}

impl Session {
    /// True while both the connection and the channel are usable. lapin flips these when the
    /// broker closes either or the heartbeat lapses.
    pub fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Puts the channel in publisher-confirm mode.
    pub async fn enable_confirms(&self, config: &BrokerConfig) -> Result<(), BrokerError> {
        config
            .op(
                "confirm.select",
                self.channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
    }

    /// Closes the connection politely, bounded by the operation timeout. Errors are ignored: the
    /// connection is being thrown away either way.
    pub async fn close(self, config: &BrokerConfig) {
        let _ = config
            .op("connection.close", self.connection.close(200, "bye".into()))
            .await;
    }
}

/// Opens broker sessions, retrying with capped exponential backoff and jitter.
pub struct Supervisor {
    config: BrokerConfig,
    topology: Topology,
    connection_name: String,
    backoff: Backoff,
    /// The node to try first: the one that answered last.
    preferred: AtomicUsize,
}

impl Supervisor {
    /// `connection_name` shows in the management UI and `rabbitmqctl list_connections`.
    pub fn new(config: BrokerConfig, connection_name: &str) -> Result<Self, BrokerError> {
        // Parse eagerly so a bad URL fails at start-up, not in the retry loop.
        config.uris()?;
        let topology = config.topology()?;
        let backoff = Backoff::new(config.broker_reconnect_min, config.broker_reconnect_max);
        Ok(Self {
            config,
            topology,
            connection_name: connection_name.to_owned(),
            backoff,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// One attempt: connect, open a channel, declare the topology (or, with
    /// `BROKER_DECLARE_TOPOLOGY=false`, check that it exists). With several nodes, each is tried
    /// once, from the one that answered last; the error is the last node's.
    pub async fn try_connect(&self) -> Result<Session, BrokerError> {
        let uris = self.config.uris()?;
        let first = self.preferred.load(Ordering::Relaxed) % uris.len();
        let mut last_error = BrokerError::InvalidUrl;
        for i in (0..uris.len()).map(|k| (first + k) % uris.len()) {
            let node = node_name(&uris[i]);
            match self.try_node(uris[i].clone()).await {
                Ok(session) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    if uris.len() > 1 {
                        tracing::info!(connection = %self.connection_name, %node, "connected to the broker node");
                    }
                    return Ok(session);
                }
                Err(e) => {
                    if uris.len() > 1 {
                        tracing::warn!(error = %e, %node, "broker node unavailable, trying the next");
                    }
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn try_node(&self, uri: AMQPUri) -> Result<Session, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let connection = self
            .config
            .op("connect", Connection::connect_uri(uri, properties))
            .await?;
        let session = async {
            let channel = self
                .config
                .op("channel.open", connection.create_channel())
                .await?;
            if self.config.broker_declare_topology {
                self.topology.declare(&self.config, &channel).await?;
                Ok::<_, BrokerError>(channel)
            } else {
                // A failed passive declare closes its channel: check on one of its own.
                self.topology.verify(&self.config, &connection).await?;
                Ok(channel)
            }
        }
        .await;
        match session {
            Ok(channel) => Ok(Session {
                connection,
                channel,
            }),
            Err(e) => {
                let _ = self
                    .config
                    .op("connection.close", connection.close(200, "bye".into()))
                    .await;
                Err(e)
            }
        }
    }

    /// Connects, retrying until it succeeds. Waits before the attempt if the previous session
    /// failed recently, so a broker that accepts and then drops connections is not hammered.
    /// Cancel by dropping the future (e.g. in `tokio::select!` against a shutdown signal).
    pub async fn connect(&mut self) -> Session {
        loop {
            if let Some(delay) = self.backoff.pending_delay() {
                tokio::time::sleep(delay).await;
            }
            match self.try_connect().await {
                Ok(session) => {
                    tracing::info!(connection = %self.connection_name, "connected to the broker");
                    return session;
                }
                Err(e) => {
                    let delay = self.backoff.fail();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot connect to the broker");
                }
            }
        }
    }

    /// Records that the last session worked for a while, so the next reconnect starts with the
    /// shortest delay.
    pub fn session_succeeded(&mut self) {
        self.backoff.reset();
    }

    /// Records that the current session was lost, so the next [`Self::connect`] waits first.
    pub fn session_lost(&mut self) {
        // The node may be going down: with several, start from the next one.
        self.preferred.fetch_add(1, Ordering::Relaxed);
        let delay = self.backoff.fail();
        tracing::warn!(retry_in = ?delay, "broker session lost, reconnecting");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerConfig,
    }

    /// What `to_env` hands a child process reads back as the same settings (each variable
    /// given as the flag clap derives from the same field).
    #[test]
    fn settings_survive_the_trip_through_the_environment() {
        let original = Cli::try_parse_from([
            "x",
            "--amqp-url",
            "amqp://u:p@h:5672/v",
            "--broker-namespace",
            "ns-1",
            "--broker-op-timeout",
            "1m 30s",
            "--broker-reconnect-min",
            "250ms",
            "--broker-delivery-limit",
            "7",
            "--broker-retry-tiers",
            "5s,90s,10m",
            "--broker-declare-topology",
            "no",
            "--broker-signing-key",
            "k2:0123456789abcdef0123456789abcdef",
            "--broker-signing-keys-previous",
            "k1:fedcba9876543210fedcba9876543210",
        ])
        .unwrap()
        .broker;
        let mut args = vec!["x".to_owned()];
        for (name, value) in original.to_env() {
            args.push(format!("--{}", name.to_lowercase().replace('_', "-")));
            args.push(value);
        }
        let back = Cli::try_parse_from(args).unwrap().broker;
        assert_eq!(
            back.amqp_url.expose_secret(),
            original.amqp_url.expose_secret()
        );
        assert_eq!(back.broker_namespace, "ns-1");
        assert_eq!(back.broker_op_timeout, Duration::from_secs(90));
        assert_eq!(back.broker_reconnect_min, Duration::from_millis(250));
        assert_eq!(back.broker_reconnect_max, original.broker_reconnect_max);
        assert_eq!(back.broker_delivery_limit, 7);
        assert_eq!(back.broker_retry_tiers, original.broker_retry_tiers);
        assert!(!back.broker_declare_topology);
        let keys = back.keyring().unwrap();
        assert_eq!(keys.signing_key_id(), "k2");
        assert_eq!(
            format!("{keys:?}"),
            format!("{:?}", original.keyring().unwrap())
        );
    }
}
