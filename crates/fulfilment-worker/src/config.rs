//! Command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};
use orderbridge_broker::BrokerConfig;
use orderbridge_db::DbConfig;
use orderbridge_runtime::LogConfig;
use orderbridge_salesforce::SalesforceConfig;
use secrecy::SecretString;

/// Provisions orders in the fulfilment system from the fulfilment queue and writes each result
/// back to the Salesforce order.
#[derive(Debug, Clone, Parser)]
#[command(name = "fulfilment-worker", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub fulfilment: FulfilmentConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub salesforce: SalesforceConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// The worker's own settings.
#[derive(Debug, Clone, Args)]
pub struct FulfilmentConfig {
    /// The fulfilment system's provisioning endpoint: each request is POSTed here, signed.
    #[arg(
        long,
        env = "FULFILMENT_URL",
        default_value = "http://127.0.0.1:8095/provision"
    )]
    pub fulfilment_url: reqwest::Url,
    /// Secret the requests are signed with (Standard Webhooks: `whsec_<base64>` or the raw
    /// secret). Shared with the fulfilment system, which verifies it; also signs its callbacks.
    #[arg(
        long,
        env = "FULFILMENT_SIGNING_SECRET",
        value_parser = secret,
        hide_env_values = true
    )]
    pub fulfilment_signing_secret: SecretString,
    /// Limit on one call to the fulfilment system (connect, send, answer); a call that takes
    /// longer is retried through the delay tiers like a 5xx.
    #[arg(long, env = "FULFILMENT_TIMEOUT", default_value = "10s", value_parser = orderbridge_runtime::parse_interval)]
    pub fulfilment_timeout: Duration,
    /// Messages handled at once (unacknowledged deliveries the broker hands over), hence the
    /// most calls to the fulfilment system at once. A call holds no database connection, so this
    /// is bounded by what the fulfilment system accepts, not by DB_MAX_CONNECTIONS.
    #[arg(long, env = "FULFILMENT_PREFETCH", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub fulfilment_prefetch: u16,
    /// Calls to the fulfilment system per request (5xx, timeouts, unreachable) before it is
    /// marked failed and dead-lettered; the delay tiers (BROKER_RETRY_TIERS) pace them. Also
    /// the Salesforce write-back attempts of one result.
    #[arg(long, env = "FULFILMENT_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub fulfilment_max_attempts: u32,
    /// The Salesforce Order field the result is written to.
    #[arg(
        long,
        env = "FULFILMENT_SF_STATUS_FIELD",
        default_value = "Activation_Status__c"
    )]
    pub sf_status_field: String,
    /// The Salesforce Order field the failure reason is written to (cleared on success).
    #[arg(
        long,
        env = "FULFILMENT_SF_ERROR_FIELD",
        default_value = "Activation_Error__c"
    )]
    pub sf_error_field: String,
    /// The length of FULFILMENT_SF_ERROR_FIELD: a longer reason is cut to it (characters).
    #[arg(long, env = "FULFILMENT_SF_ERROR_MAX_LENGTH", default_value_t = 255, value_parser = clap::value_parser!(u32).range(1..=131_072))]
    pub sf_error_max_length: u32,
    /// Value of the status field for a provisioned order.
    #[arg(
        long,
        env = "FULFILMENT_SF_PROVISIONED_VALUE",
        default_value = "Provisioned"
    )]
    pub sf_provisioned_value: String,
    /// Value of the status field for an order the fulfilment system could not provision.
    #[arg(long, env = "FULFILMENT_SF_FAILED_VALUE", default_value = "Failed")]
    pub sf_failed_value: String,
    /// How often the sweeper looks for requests stuck open (see the next two settings).
    #[arg(long, env = "FULFILMENT_SWEEP_INTERVAL", default_value = "1m", value_parser = orderbridge_runtime::parse_interval)]
    pub sweep_interval: Duration,
    /// A `queued` request untouched this long lost its message (dead-lettered and never
    /// replayed, a purged queue): the sweeper queues it again. Keep it above the longest
    /// BROKER_RETRY_TIERS delay, or requests waiting out a delay are called early.
    #[arg(long, env = "FULFILMENT_REQUEUE_AFTER", default_value = "30m", value_parser = orderbridge_runtime::parse_interval)]
    pub requeue_after: Duration,
    /// How long a request the fulfilment system accepted (202) may wait for its callback; then
    /// it fails ("no result from the fulfilment system within …") and that is written back.
    #[arg(long, env = "FULFILMENT_CALLBACK_TIMEOUT", default_value = "1h", value_parser = orderbridge_runtime::parse_interval)]
    pub callback_timeout: Duration,
    /// Address of the admin HTTP server (`/health/live`, `/health/ready`, `/metrics`).
    #[arg(long, env = "FULFILMENT_ADMIN_ADDR", default_value = "127.0.0.1:9104")]
    pub admin_addr: SocketAddr,
    /// On SIGTERM/SIGINT, how long messages being handled may take to finish and settle; after
    /// that the process exits and they are redelivered (the request row decides what is left).
    #[arg(long, env = "FULFILMENT_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}
