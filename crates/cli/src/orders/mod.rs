//! `orderbridge orders show <id>`: where an order is and why, from every place it can be. Postgres
//! (the order, its status history, its outbox events, its fulfilment request), the broker (its
//! message in a retry tier or the dead letters; the work queue counted) and Salesforce (its
//! records by external id), ending with a one-line diagnosis.
//!
//! Only Postgres is required: a broker or Salesforce that cannot be reached (or is skipped with
//! `--no-broker` / `--no-salesforce`) leaves its section out, says why, and the diagnosis is
//! made from the rest. Nothing is changed anywhere.
//!
//! - `postgres`: the stored order;
//! - `queues`: the broker's look;
//! - `salesforce`: the records;
//! - `diagnose`: the one-line answer;
//! - `render`: the text output.

mod diagnose;
mod postgres;
mod queues;
mod render;
mod salesforce;

use std::io::Write;
use std::path::PathBuf;

use chrono::Utc;
use clap::{Args, Subcommand};
use orderbridge_broker::{BrokerConfig, Supervisor};
use orderbridge_db::DbConfig;
use orderbridge_domain::OrderId;
use orderbridge_mapping::Targets;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde::Serialize;

pub(crate) use diagnose::seconds;
pub use diagnose::{Facts, diagnose};
pub use postgres::{Backlog, Fulfilment, OrderRow, OutboxEvent, Stored};
pub use queues::{Found, InQueues, Looked};
pub use salesforce::{Record, Records};

use crate::command::CommandError;

/// The `orders` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum OrdersCommand {
    /// Where an order is and why: its state, history and events in Postgres, its message on the
    /// broker, its Salesforce records, and a one-line diagnosis. Exit status 0, 1 when there is
    /// no such order, 2 on errors.
    Show(ShowArgs),
}

/// `orderbridge orders show` options.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The order id (as `POST /v1/orders` returned it).
    pub id: OrderId,
    /// Print everything as one JSON object instead of the text.
    #[arg(long)]
    pub json: bool,
    /// Do not look at the broker.
    #[arg(long)]
    pub no_broker: bool,
    /// Do not ask Salesforce.
    #[arg(long)]
    pub no_salesforce: bool,
    /// Messages looked at per retry tier and in the dead letters at most (each is held for
    /// the look and given back).
    #[arg(long, default_value_t = 10_000)]
    pub scan_limit: u32,
    /// The sync worker's attempts per event, for "attempt 2 of 8" (same variable).
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// The sync worker's field mapping or targets file (JSON), for the Salesforce objects and
    /// external-id fields (with several targets: the order's target, and its `SF_<NAME>_*`
    /// settings); unset: its built-in mapping.
    #[arg(long, env = "WORKER_MAPPING_FILE")]
    pub mapping_file: Option<PathBuf>,
}

/// A place that was looked at, skipped, or could not be reached (`orders show`'s sections,
/// `status`'s sources).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Section<T> {
    Found(T),
    Skipped,
    Unavailable { error: String },
}

impl<T> Section<T> {
    pub fn found(&self) -> Option<&T> {
        match self {
            Self::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// Everything `show` found.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub stored: Stored,
    pub broker: Section<InQueues>,
    pub salesforce: Section<Records>,
    pub diagnosis: String,
}

/// Runs `orders show`; `Ok(false)` when there is no such order.
pub async fn run(
    command: &OrdersCommand,
    db: &DbConfig,
    broker: &BrokerConfig,
    salesforce: &SalesforceConfig,
    out: &mut (impl Write + Send),
) -> Result<bool, CommandError> {
    let OrdersCommand::Show(args) = command;
    let Some(shown) = show(args, db, broker, salesforce).await? else {
        writeln!(out, "no order {}", args.id)?;
        out.flush()?;
        return Ok(false);
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &shown).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render::text(&shown).as_bytes())?;
    }
    out.flush()?;
    Ok(true)
}

/// Looks the order up everywhere; `None` when Postgres has no such order.
pub async fn show(
    args: &ShowArgs,
    db: &DbConfig,
    broker: &BrokerConfig,
    salesforce: &SalesforceConfig,
) -> Result<Option<Shown>, CommandError> {
    let targets = (!args.no_salesforce).then(|| {
        Targets::load(args.mapping_file.as_deref())
            .map_err(|e| crate::render::clean(&e.to_string()))
    });
    let pool = db.connect("orderbridge-orders").await?;
    let stored = postgres::load(&pool, args.id).await;
    // With several targets, the order as the routing rules read it (with its client).
    let routed = match &targets {
        Some(Ok(t)) if t.single_mapping().is_none() => {
            Some(postgres::routing_view(&pool, args.id).await)
        }
        _ => None,
    };
    pool.close().await;
    let Some(stored) = stored? else {
        return Ok(None);
    };
    let routed = routed.transpose()?.flatten();
    let (queues, records) = tokio::join!(
        look_in_broker(args, broker, &stored),
        look_in_salesforce(salesforce, &stored, targets, routed),
    );
    let diagnosis = diagnose(&Facts {
        stored: &stored,
        queues: queues.found(),
        records: records.found(),
        max_attempts: args.max_attempts,
        now: Utc::now(),
    });
    Ok(Some(Shown {
        stored,
        broker: queues,
        salesforce: records,
        diagnosis,
    }))
}

async fn look_in_broker(
    args: &ShowArgs,
    config: &BrokerConfig,
    stored: &Stored,
) -> Section<InQueues> {
    if args.no_broker {
        return Section::Skipped;
    }
    let look = async {
        let supervisor = Supervisor::new(config.clone(), "orderbridge-orders")?;
        let session = supervisor.try_connect().await?;
        let found = queues::find(
            config,
            supervisor.topology(),
            &session,
            &stored.event_ids(),
            args.scan_limit,
        )
        .await;
        // Whatever is still held (after an error) goes back with the connection.
        session.close(config).await;
        found
    };
    match look.await {
        Ok(q) => Section::Found(q),
        Err(e) => Section::Unavailable {
            error: crate::render::clean(&e.to_string()),
        },
    }
}

async fn look_in_salesforce(
    config: &SalesforceConfig,
    stored: &Stored,
    targets: Option<Result<Targets, String>>,
    routed: Option<serde_json::Value>,
) -> Section<Records> {
    let Some(targets) = targets else {
        return Section::Skipped;
    };
    let look = async {
        let targets = targets?;
        let several = targets.single_mapping().is_none();
        let target = if several {
            let order = routed.ok_or("the order could not be read for routing")?;
            targets.route(&order).map_err(|e| e.to_string())?
        } else {
            &targets.targets()[0]
        };
        let objects = crate::reconcile::objects(&target.mapping).map_err(|e| e.to_string())?;
        let config = match &target.salesforce {
            Some(prefix) => config
                .for_target(prefix, |k| std::env::var(k).ok())
                .map_err(|e| format!("target {}: {e}", target.name))?,
            None => config.clone(),
        };
        let client = Client::new(&config).map_err(|e| e.to_string())?;
        let mut records = salesforce::read(&client, &objects, stored.order.id)
            .await
            .map_err(|e| e.to_string())?;
        records.target = several.then(|| target.name.clone());
        Ok::<_, String>(records)
    };
    match look.await {
        Ok(r) => Section::Found(r),
        Err(error) => Section::Unavailable {
            error: crate::render::clean(&error),
        },
    }
}
