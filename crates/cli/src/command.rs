//! Command line and environment, and the `reconcile` subcommand (`dlq` is in [`crate::dlq`]).

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use orderbridge_broker::BrokerConfig;
use orderbridge_db::DbConfig;
use orderbridge_mapping::{MappingError, Targets};
use orderbridge_runtime::LogConfig;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde::Serialize;

use crate::broker::BrokerCommand;
use crate::dlq::DlqCommand;
use crate::keys::KeysCommand;
use crate::progress::TerminalProgress;
use crate::reconcile::{
    DEFAULT_PAGE_SIZE, DEFAULT_PARALLEL, FixOptions, FixOutcome, Paging, ReconcileError, Report,
    Scope, fix, reconcile_target, reconcile_with_progress,
};
use crate::render;

/// Operator commands for orderbridge.
#[derive(Debug, Clone, Parser)]
#[command(name = "orderbridge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub salesforce: SalesforceConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Compare Postgres orders with Salesforce records by external id; report missing,
    /// duplicated, mismatched and orphaned ones. Exit status 0 when clean, 1 when not, 2 on
    /// errors. `reconcile statuses --since <time>` instead applies the Status of every Order
    /// changed in Salesforce since then (closing a gap of the Salesforce subscriber).
    #[command(args_conflicts_with_subcommands = true)]
    Reconcile(ReconcileArgs),
    /// Write orders to Salesforce again (a new or refreshed org): every order in scope gets a
    /// fresh `order.submitted` event, in chunks, and the sync worker writes them, through
    /// Bulk API 2.0 when WORKER_BULK_BATCH_SIZE is set. Exit status 0 on success, 2 on errors.
    Backfill(crate::backfill::BackfillArgs),
    /// The whole system at a glance: each service's health and what its metrics say (relay
    /// partitions, worker breaker and API budget, subscriber streams and lag), the outbox
    /// backlog, queue depths and dead letters, then the problems found. Exit status 0 when
    /// there are none, 1 when there are, 2 on errors.
    Status(crate::status::StatusArgs),
    /// Look at one order: where it is and why (`orders show <id>`). Exit status 0, 1 when
    /// there is no such order, 2 on errors.
    Orders {
        #[command(subcommand)]
        command: crate::orders::OrdersCommand,
    },
    /// Inspect and replay the dead-letter queue. Exit status 0 on success, 2 on errors.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Create, list, revoke and rotate API keys. Exit status 0 on success, 2 on errors.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The broker's security: signing keys (`gen-key`), and one least-privilege user per
    /// component (`permissions`, `setup-users`). Exit status 0 on success, 2 on errors.
    Broker {
        #[command(subcommand)]
        command: BrokerCommand,
    },
}

/// `orderbridge reconcile` options.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(subcommand)]
    pub target: Option<ReconcileTarget>,
    /// Only orders created at or after this instant (RFC 3339, e.g. 2026-11-24T00:00:00Z).
    #[arg(long, visible_alias = "created-after", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only orders created before this instant (RFC 3339).
    #[arg(long, visible_alias = "created-before", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The sync worker's field mapping or targets file (JSON); unset: its built-in mapping.
    /// Gives the Salesforce objects and external-id fields to read.
    #[arg(long, env = "WORKER_MAPPING_FILE")]
    pub mapping_file: Option<PathBuf>,
    /// With a targets file (several divisions): the target to compare, its orders with its
    /// org (through its `SF_<NAME>_*` settings). Required then: one run per target.
    #[arg(long = "target", value_name = "NAME")]
    pub only_target: Option<String>,
    /// Print the full report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Example ids shown per class in the summary.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Orders compared per step (one Postgres page, and the Salesforce records sorting among
    /// them): what the run holds in memory at a time, whatever the number of orders.
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub page_size: u32,
    /// Ranges of order ids compared at once, each with its own two Salesforce queries (a
    /// query's pages come one after another, so this is what speeds up a large org; a
    /// Salesforce user may hold 10 query cursors open).
    #[arg(long, default_value_t = DEFAULT_PARALLEL,
          value_parser = clap::value_parser!(u32).range(1..=5))]
    pub parallel: u32,
    /// Read Salesforce with Bulk API 2.0 query jobs (one per object, results in pages of
    /// 50,000 sorted on local disk under TMPDIR) instead of REST query pages of 2,000: a few
    /// dozen calls instead of one per 2,000 records; for large orgs (see the README).
    #[arg(long)]
    pub bulk: bool,
    /// Queue resyncs (as `POST /v1/orders/{id}/resync` does) for the missing and mismatched
    /// orders, except failed ones.
    #[arg(long)]
    pub fix: bool,
    /// With --fix, also resync orders in sync state `failed`.
    #[arg(long, requires = "fix")]
    pub include_failed: bool,
}

/// What `reconcile` compares besides the records (the default).
#[derive(Debug, Clone, Subcommand)]
pub enum ReconcileTarget {
    /// Apply the Salesforce Status of every Order changed since `--since` to its order (source
    /// `reconcile`), and mark the subscriber's gaps from then on closed. Exit status 0, or 2 on
    /// errors.
    Statuses(crate::statuses::StatusesArgs),
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-11-24T00:00:00Z"))
}

/// Why the command could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("database: {0}")]
    Db(#[from] orderbridge_db::DbError),
    #[error("Salesforce client: {0}")]
    Salesforce(#[source] Box<orderbridge_salesforce::Error>),
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("--since must be before --until")]
    EmptyScope,
    #[error("database: {0}")]
    Statuses(String),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<&'a FixOutcome>,
}

/// Runs `reconcile` and writes its output to `out`. Returns whether the report is clean (the
/// state found, before any `--fix`).
pub async fn run_reconcile(
    args: &ReconcileArgs,
    db: &DbConfig,
    salesforce: &SalesforceConfig,
    out: &mut impl Write,
) -> Result<bool, CommandError> {
    if let (Some(a), Some(b)) = (args.since, args.until)
        && a >= b
    {
        return Err(CommandError::EmptyScope);
    }
    let targets = Targets::load(args.mapping_file.as_deref())?;
    let names = || {
        targets
            .targets()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = match (targets.single_mapping(), &args.only_target) {
        (Some(_), None) => None,
        (_, Some(name)) => Some(
            targets
                .targets()
                .iter()
                .position(|t| t.name == *name)
                .ok_or_else(|| {
                    CommandError::Target(format!("no target {name} (targets: {})", names()))
                })?,
        ),
        (None, None) => {
            return Err(CommandError::Target(format!(
                "the mapping file has several targets ({}): compare one at a time with --target NAME",
                names()
            )));
        }
    };
    let settings = match target.and_then(|t| targets.targets()[t].salesforce.as_deref()) {
        Some(prefix) => salesforce
            .for_target(prefix, |k| std::env::var(k).ok())
            .map_err(|e| CommandError::Target(e.to_string()))?,
        None => salesforce.clone(),
    };
    let pool = db.connect("orderbridge-reconcile").await?;
    let client = Client::new(&settings).map_err(|e| CommandError::Salesforce(Box::new(e)))?;
    let progress = TerminalProgress::stderr();
    let scope = Scope {
        created_after: args.since,
        created_before: args.until,
    };
    let paging = Paging {
        page_size: args.page_size,
        parallel: args.parallel,
        bulk: args.bulk,
    };
    let report = match target {
        Some(t) => reconcile_target(&pool, &client, &targets, t, scope, paging, &progress).await?,
        None => {
            let mapping = &targets.targets()[0].mapping;
            reconcile_with_progress(&pool, &client, mapping, scope, paging, &progress).await?
        }
    };
    let fixed = if args.fix {
        let options = FixOptions {
            include_failed: args.include_failed,
            correlation_id: format!("reconcile-{}", uuid::Uuid::now_v7()),
        };
        Some(fix(&pool, &report, &options, &progress).await?)
    } else {
        None
    };
    pool.close().await;
    if args.json {
        let doc = JsonOutput {
            report: &report,
            fix: fixed.as_ref(),
        };
        serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render::summary(&report, args.examples).as_bytes())?;
        if let Some(f) = &fixed {
            out.write_all(render::fix_summary(f).as_bytes())?;
        }
    }
    out.flush()?;
    Ok(report.is_clean())
}
