//! Command line and environment.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use orderbridge_broker::BrokerConfig;
use orderbridge_runtime::LogConfig;
use orderbridge_salesforce::SalesforceConfig;

/// Writes order events from RabbitMQ to Salesforce in batches; reports each order's sync status.
#[derive(Debug, Clone, Parser)]
#[command(name = "sync-worker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub salesforce: SalesforceConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume and sync (the default).
    Run,
    /// Inspect and replay dead letters: an alias of `orderbridge dlq` (same arguments).
    // Its `--help` is `orderbridge dlq --help` (forwarded like every other argument), not the
    // worker's ~45 options, which do not apply to it.
    #[command(disable_help_flag = true)]
    Dlq {
        /// `list [--limit N] [--json]`, `show <id>`, `replay <id>|--all`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
    /// Check the mapping file, and with `--salesforce` also against the org's objects and fields
    /// and the price book, then exit.
    CheckMapping {
        /// Also describe the mapped objects in Salesforce and resolve the price book.
        #[arg(long)]
        salesforce: bool,
    },
}

/// The worker's own settings.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// Address of the admin HTTP server (`/health/live`, `/health/ready`, `/metrics`).
    #[arg(
        long,
        env = "WORKER_ADMIN_ADDR",
        default_value = "127.0.0.1:9102",
        global = true
    )]
    pub admin_addr: SocketAddr,
    /// Most orders per batch. 200 orders of up to 3 lines fit one Composite call (5 collections
    /// of 200: accounts, orders, 3 of items); bigger batches take more calls.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=1000), global = true)]
    pub batch_size: u16,
    /// How long the first message of a batch waits for more before the batch goes out anyway.
    #[arg(long, env = "WORKER_BATCH_LINGER", default_value = "50ms", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub batch_linger: Duration,
    /// End-to-end time a batch that is not full may spend waiting for more orders: it goes out
    /// once its oldest order (by the event's `occurred_at`) could no longer be written within
    /// this time, judged by how long recent writes took, and never sooner than
    /// WORKER_BATCH_LINGER after its first message. Fewer, fuller Composite calls at modest
    /// rates (API budget) at a bounded latency; `0s`: batches wait WORKER_BATCH_LINGER only.
    #[arg(long, env = "WORKER_LATENCY_TARGET", default_value = "700ms", value_parser = humantime::parse_duration, global = true)]
    pub latency_target: Duration,
    /// The most batches written to Salesforce at once, so its latency does not cap throughput.
    /// With WORKER_ADAPTIVE_WINDOW the window starts at 4 (or this, if lower) and finds, while
    /// a backlog lasts, how many pay off; each full batch in flight holds ~5–12 MiB, and each is
    /// one concurrent request against the org's limits (see the README's sizing rule).
    #[arg(long, env = "WORKER_MAX_IN_FLIGHT", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64), global = true)]
    pub max_in_flight: u16,
    /// Adapt the number of batches in flight (1 ..= WORKER_MAX_IN_FLIGHT) to what raises
    /// throughput during a backlog; `false`: always WORKER_MAX_IN_FLIGHT.
    #[arg(long, env = "WORKER_ADAPTIVE_WINDOW", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub adaptive_window: bool,
    /// Backlog batches through Bulk API 2.0 (0: off). A batch that fills to WORKER_BATCH_SIZE
    /// before its linger runs out is part of a backlog: it keeps filling up to this many orders
    /// for up to WORKER_BULK_LINGER, and goes out as Bulk jobs when it holds at least
    /// WORKER_BULK_MIN_ORDERS (about 15 calls per batch instead of 5 per 1,000 orders).
    #[arg(long, env = "WORKER_BULK_BATCH_SIZE", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=50_000), global = true)]
    pub bulk_batch_size: u32,
    /// How much longer a backlog batch keeps filling once it is past WORKER_BATCH_SIZE.
    #[arg(long, env = "WORKER_BULK_LINGER", default_value = "2s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub bulk_linger: Duration,
    /// The fewest orders a batch goes through Bulk with; smaller ones use Composite (a Bulk
    /// batch costs about as many calls as Composite spends on 3,000 orders).
    #[arg(long, env = "WORKER_BULK_MIN_ORDERS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub bulk_min_orders: u32,
    /// Salesforce write attempts per event before it is dead-lettered (retryable failures go
    /// through the delay tiers, BROKER_RETRY_TIERS, in between).
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub max_attempts: u32,
    /// Field mapping file (JSON); unset: the built-in Account + Order + OrderItem mapping.
    #[arg(long, env = "WORKER_MAPPING_FILE", global = true)]
    pub mapping_file: Option<PathBuf>,
    /// Price book by name, overriding the mapping's `pricebook`; unset: the standard price book.
    #[arg(long, env = "WORKER_PRICEBOOK", global = true)]
    pub pricebook: Option<String>,
    /// First wait before asking Salesforce again after an outage; doubles up to the maximum.
    #[arg(long, env = "WORKER_BREAKER_PROBE_MIN", default_value = "1s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub breaker_probe_min: Duration,
    /// Longest wait between probes while Salesforce is down.
    #[arg(long, env = "WORKER_BREAKER_PROBE_MAX", default_value = "30s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub breaker_probe_max: Duration,
    /// Wait between budget checks while the API allocation is spent (REQUEST_LIMIT_EXCEEDED or
    /// usage above SF_MAX_API_USAGE_SHARE), and between probes after an auth failure.
    #[arg(long, env = "WORKER_BUDGET_PROBE", default_value = "1m", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub budget_probe: Duration,
    /// On SIGTERM/SIGINT, how long in-flight batches may take to finish and ack; after that
    /// the process exits and their messages are redelivered (writes are idempotent).
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,
    /// How often the queue depths (metrics: the work queue, its retry tiers, the dead letters)
    /// are read.
    #[arg(long, env = "WORKER_DLQ_CHECK_INTERVAL", default_value = "15s", value_parser = orderbridge_runtime::parse_interval, global = true)]
    pub dlq_check_interval: Duration,
    /// Fault injection for tests: wait this long after the Salesforce write and before
    /// publishing outcomes and acking, so a test can SIGKILL the process exactly there.
    #[arg(long, env = "WORKER_FAULT_PAUSE_BEFORE_ACK", hide = true, value_parser = humantime::parse_duration, global = true)]
    pub fault_pause_before_ack: Option<Duration>,
}

impl WorkerConfig {
    /// Unacked messages the broker may hand over: a batch being filled plus every batch in
    /// flight, so a slow Salesforce call never starves the next batch; with Bulk on, room for
    /// a backlog batch being written and the next one filling.
    pub fn prefetch(&self) -> u16 {
        let n = u32::from(self.batch_size) * (u32::from(self.max_in_flight) + 1);
        let n = n.max(self.bulk_batch_size.saturating_mul(2));
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// Whether a backlog batch may grow past WORKER_BATCH_SIZE.
    pub fn bulk_enabled(&self) -> bool {
        self.bulk_batch_size > u32::from(self.batch_size)
    }
}
