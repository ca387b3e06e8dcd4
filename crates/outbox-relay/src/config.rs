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
    /// Most rows read and published per batch; also the window of unconfirmed messages.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Fallback poll when no NOTIFY arrives, so a lost notification never strands a row. Also
    /// the pause before retrying rows the broker refused.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = orderbridge_runtime::parse_interval)]
    pub poll_interval: Duration,
    /// How often a standby relay tries to take over publishing.
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
