//! Command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};
use orderbridge_broker::BrokerConfig;
use orderbridge_db::DbConfig;
use orderbridge_runtime::LogConfig;

/// Publishes the Postgres outbox to RabbitMQ with publisher confirms.
#[derive(Debug, Clone, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub relay: RelayConfig,
    #[command(flatten)]
    pub status: StatusConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// The relay's own settings.
#[derive(Debug, Clone, Args)]
pub struct RelayConfig {
    /// Address of the admin HTTP server (`/health/live`, `/health/ready`, `/metrics`).
    #[arg(long, env = "RELAY_ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: SocketAddr,
    /// Most rows read and published per batch; also the window of unconfirmed messages per batch.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// While a backlog lasts (a batch came back full, or held rows back), read and publish the
    /// next batch while the current one's confirms come in (two batches in flight, never two
    /// rows of one order). `false`: one batch at a time.
    #[arg(long, env = "RELAY_PIPELINE", default_value_t = true, action = clap::ArgAction::Set)]
    pub pipeline: bool,
    /// Fallback poll when no NOTIFY arrives, so a lost notification never strands a row. Also
    /// the pause before retrying rows the broker refused.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = orderbridge_runtime::parse_interval)]
    pub poll_interval: Duration,
    /// Partitions of the outbox, by order (aggregate) id; each is published by one relay at a
    /// time, so up to this many relays publish at once. Every relay of a deployment must have
    /// the same value (a relay that sees others publishing with another count stands by). 1
    /// means one leader publishes everything.
    #[arg(long, env = "RELAY_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::outbox::MAX_PARTITIONS)))]
    pub partitions: u16,
    /// How often a standby relay tries to take over publishing, and how often a publishing
    /// relay rebalances the partitions with the others.
    #[arg(long, env = "RELAY_STANDBY_INTERVAL", default_value = "1s", value_parser = orderbridge_runtime::parse_interval)]
    pub standby_interval: Duration,
    /// Published rows older than this are deleted.
    #[arg(long, env = "RELAY_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How often retention runs.
    #[arg(long, env = "RELAY_RETENTION_INTERVAL", default_value = "1m", value_parser = orderbridge_runtime::parse_interval)]
    pub retention_interval: Duration,
    /// Rows deleted per retention statement; small so no statement holds locks for long.
    #[arg(long, env = "RELAY_RETENTION_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub retention_batch: u32,
    /// On SIGTERM/SIGINT, how long the in-flight batch may take to collect its confirms before
    /// it is abandoned (its unconfirmed rows stay unpublished and go out again later).
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Limit on any one database operation of the relay (connect, read, mark), on top of the
    /// server-side statement timeout, so a dead connection cannot wedge the relay.
    #[arg(long, env = "RELAY_DB_TIMEOUT", default_value = "15s", value_parser = orderbridge_runtime::parse_interval)]
    pub db_timeout: Duration,
    /// Postgres `application_name` of the relay's connections (shows in pg_stat_activity).
    #[arg(
        long,
        env = "RELAY_DB_APPLICATION_NAME",
        default_value = "outbox-relay"
    )]
    pub db_application_name: String,
}

/// Settings of the status applier (the sync worker's reports → orders; see `status`).
#[derive(Debug, Clone, Args)]
pub struct StatusConfig {
    /// Unacknowledged status messages the broker may send ahead (`basic.qos`). Bounds the
    /// applier's memory and how much the broker redelivers after a crash.
    #[arg(long, env = "RELAY_STATUS_PREFETCH", default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..))]
    pub status_prefetch: u16,
    /// Most reports applied in one Postgres transaction. Keep it below the prefetch, so the
    /// broker keeps sending while a batch is being applied.
    #[arg(long, env = "RELAY_STATUS_BATCH_SIZE", default_value_t = 250, value_parser = clap::value_parser!(u16).range(1..))]
    pub status_batch_size: u16,
    /// How long a batch waits for more reports after its first one. Short: it only gathers what
    /// is arriving anyway; the latency it adds is at most this.
    #[arg(long, env = "RELAY_STATUS_LINGER", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub status_linger: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            status_prefetch: 500,
            status_batch_size: 250,
            status_linger: Duration::from_millis(5),
        }
    }
}
