//! The system under test, as a user runs it: the real binaries as child processes on free ports,
//! against a database and a broker namespace made for this run, with a Salesforce emulator.
//! [`Stack::shutdown`] stops the processes and removes the database and the namespace, also after
//! a failed run; [`with_stack`] wraps a suite's measurement in exactly that.
//!
//! One type, [`Stack`], split by concern: this file holds the settings, the struct and the
//! teardown; `process.rs` the child processes; `infra.rs` the database and broker namespace;
//! `admin.rs` what is read from the running services (emulator admin API, metrics, RSS).

mod admin;
mod infra;
mod process;

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use process::Service;

pub const EMULATOR: &str = "sf-emulator";
pub const API: &str = "order-api";
pub const RELAY: &str = "outbox-relay";
pub const WORKER: &str = "sync-worker";
pub const SUBSCRIBER: &str = "sf-subscriber";
pub const FULFILMENT_WORKER: &str = "fulfilment-worker";
/// The reference fulfilment system the worker calls.
pub const RECEIVER: &str = "fulfilment-receiver";
/// Every binary a run may start.
pub const BINARIES: [&str; 7] = [
    EMULATOR,
    API,
    RELAY,
    WORKER,
    SUBSCRIBER,
    FULFILMENT_WORKER,
    RECEIVER,
];

/// The name under which the bench's API client and key are created.
pub const CLIENT_NAME: &str = "bench";

/// `application_name` of the bench's own Postgres connections, so the chaos run's backend
/// terminations can spare them.
pub const BENCH_APPLICATION_NAME: &str = "orderbridge-bench";

/// The emulator's daily API allocation: more than any run uses.
pub const EMULATOR_DAILY_API_LIMIT: u64 = 1_000_000_000;

/// Settings every subcommand shares: where things are, the emulated Salesforce, the services'
/// environment.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Directory holding order-api, outbox-relay, sync-worker, sf-subscriber and sf-emulator. Default: this
    /// program's own directory, i.e. the binaries of the same cargo profile (build them with
    /// `cargo build --release --bins`).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Directory for the report, the JSON, the chart and the services' logs.
    /// Default: target/bench/<UTC time>-<command>/ in the workspace.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Postgres server. The bench creates its own database there and drops it at the end; the
    /// database named in the URL is only used to connect for that.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderbridge",
        hide_env_values = true
    )]
    pub database_url: String,
    /// RabbitMQ. The bench uses a namespace of its own and deletes it at the end.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Latency the emulator adds to every Salesforce API call.
    #[arg(long, default_value_t = 150)]
    pub latency_ms: u64,
    /// Random extra latency per call, uniform in 0..=jitter.
    #[arg(long, default_value_t = 30)]
    pub jitter_ms: u64,
    /// The emulator's seed file (product catalogue). Default: config/sf-emulator-seed.json.
    #[arg(long)]
    pub seed_file: Option<PathBuf>,
    /// RUST_LOG of the services (JSON lines in <out>/logs/<service>.log).
    #[arg(long, default_value = "info")]
    pub service_log: String,
    /// Extra environment for every service, applied last, e.g. `--env WORKER_MAX_IN_FLIGHT=8`.
    /// Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Give up waiting for the pipeline after this long.
    #[arg(long, default_value = "10m", value_parser = orderbridge_runtime::parse_interval)]
    pub timeout: Duration,
    /// Keep the database and the broker namespace (for inspection); their names are printed.
    #[arg(long)]
    pub keep: bool,
}

impl StackArgs {
    /// The `--env` settings as `KEY=VALUE` strings, for the report.
    pub fn env_pairs(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// The workspace root: where this crate was compiled from, or the current directory when the
/// binary runs elsewhere.
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if compiled.join("Cargo.toml").is_file() {
        compiled.canonicalize().unwrap_or(compiled)
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    }
}

/// `bin_dir`, or this program's directory; every binary must be there.
fn resolve_bin_dir(arg: Option<&Path>) -> Result<PathBuf> {
    let dir = match arg {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate this program")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("this program has no parent directory"))?,
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: build them first with `cargo build --release --bins` \
             (or point --bin-dir at the directory that has them)",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(dir)
}

/// Everything a run started; see the module documentation.
pub struct Stack {
    pub args: StackArgs,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub database: String,
    pub database_url: String,
    admin_url: String,
    pub namespace: String,
    /// The run's own broker signing key (`id:secret`, made for this run), given to every
    /// service; the bench signs what it publishes itself (poison messages) with it.
    signing_key: String,
    /// The run's own `FULFILMENT_SIGNING_SECRET`, shared by order-api, fulfilment-worker and
    /// fulfilment-receiver.
    fulfilment_secret: String,
    pub http: reqwest::Client,
    pub pool: Option<PgPool>,
    pub emulator_url: Option<String>,
    /// The emulator's Pub/Sub API (`http://127.0.0.1:<port>`), for sf-subscriber.
    pub pubsub_url: Option<String>,
    pub api_url: Option<String>,
    /// The fulfilment receiver's base URL (`http://127.0.0.1:<port>`), once started.
    pub receiver_url: Option<String>,
    services: Vec<Service>,
    /// Processes sent a signal by [`Self::stop`] and not yet reaped.
    stopping: Vec<Service>,
    /// Instances started so far per binary (names the logs of restarts).
    started: std::collections::HashMap<&'static str, u32>,
}

impl Stack {
    /// Checks the binaries, creates the output directory and an empty database, picks a namespace.
    pub async fn create(args: StackArgs, command: &str) -> Result<Self> {
        let bin_dir = resolve_bin_dir(args.bin_dir.as_deref())?;
        let out = args.out.clone().unwrap_or_else(|| {
            workspace_root().join("target/bench").join(format!(
                "{}-{command}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        });
        fs::create_dir_all(out.join("logs"))
            .with_context(|| format!("cannot create {}", out.display()))?;
        let database = format!("ob_bench_{}", Uuid::new_v4().simple());
        let (database_url, admin_url) = infra::database_urls(&args.database_url, &database)?;
        infra::create_database(&admin_url, &database).await?;
        let namespace = format!("bench-{}", Uuid::now_v7());
        let signing_key = orderbridge_broker::signing::generate_key("bench")?
            .expose_secret()
            .to_owned();
        tracing::info!(%database, %namespace, out = %out.display(), bins = %bin_dir.display(), "stack created");
        Ok(Self {
            args,
            out,
            bin_dir,
            database,
            database_url,
            admin_url,
            namespace,
            signing_key,
            // Plain-text secrets are accepted (longer than the minimum key length).
            fulfilment_secret: format!(
                "bench-{}{}",
                Uuid::new_v4().simple(),
                Uuid::new_v4().simple()
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            pool: None,
            emulator_url: None,
            pubsub_url: None,
            api_url: None,
            receiver_url: None,
            services: Vec::new(),
            stopping: Vec::new(),
            started: std::collections::HashMap::new(),
        })
    }

    /// A service setting given with `--env` (the last one wins).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.args
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The cargo profile the binaries come from (the directory's name: `release`, `debug`…).
    pub fn profile(&self) -> String {
        self.bin_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Stops every service, deletes the broker namespace and drops the database unless
    /// `--keep`. Problems are logged, not returned: this runs after failures too and must get
    /// as far as it can.
    pub async fn shutdown(mut self) {
        self.stop_all().await;
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        if self.args.keep {
            tracing::info!(database = %self.database, namespace = %self.namespace, "kept (--keep)");
            return;
        }
        if let Err(e) = self.delete_namespace().await {
            tracing::warn!(namespace = %self.namespace, error = format!("{e:#}"), "cannot delete the broker namespace");
        }
        if let Err(e) = self.drop_database().await {
            tracing::warn!(database = %self.database, error = format!("{e:#}"), "cannot drop the database");
        }
    }
}

/// Runs `measure` on a stack of its own (see [`Stack::create`]) and tears the stack down
/// whatever happened, Ctrl-C included.
pub async fn with_stack(
    args: StackArgs,
    command: &str,
    measure: impl AsyncFnOnce(&mut Stack) -> Result<bool>,
) -> Result<bool> {
    let mut stack = Stack::create(args, command).await?;
    let result = interruptible(measure(&mut stack)).await;
    stack.shutdown().await;
    result
}

/// `measure`, or an error as soon as Ctrl-C arrives: the caller still gets to tear down.
pub async fn interruptible(measure: impl Future<Output = Result<bool>>) -> Result<bool> {
    tokio::select! {
        r = measure => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_parse() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
