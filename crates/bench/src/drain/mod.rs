//! `drain`: a backlog already in the outbox (orders and their `order.submitted` rows written
//! straight into Postgres, in the shape order-api writes them) pushed through relay, broker and
//! worker into the emulator.
//!
//! The worker is started first and waits, ready, on an empty queue: its start-up (the mapping
//! check: a describe call per mapped object, at the emulated latency) is a one-time cost, not
//! part of draining. The clock starts when the relay is started. Progress is polled with cheap
//! counts (partial and covering indexes); the figures come from the server's own timestamps
//! (`outbox.published_at`, `orders.updated_at` of the synced version), so the polling interval
//! does not blur them.
//!
//! In stages: [`set_up`] writes the backlog and readies the worker, [`drain`] starts the relay
//! and waits, [`Figures::compute`] reads the timestamps, `report.rs` writes the table, JSON and
//! chart.

mod report;

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::Value;
use uuid::Uuid;

use crate::common::{Clock, per_second, secs};
use crate::snapshot::{self, Baseline, Totals};
use crate::stack::{Stack, StackArgs, WORKER, with_stack};
use crate::verify::{self, Verification};
use crate::workload;

const TARGET_ORDERS_PER_S: f64 = 5000.0;

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Orders in the backlog.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub orders: u32,
    /// Orders per INSERT transaction while writing the backlog.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk: u32,
    /// How often progress is polled (the figures themselves come from server timestamps).
    #[arg(long, default_value = "200ms", value_parser = orderbridge_runtime::parse_interval)]
    pub poll: Duration,
    /// The worker with Bulk API 2.0 on for backlogs (WORKER_BULK_BATCH_SIZE=10000,
    /// WORKER_MAX_IN_FLIGHT=2; `--env` settings still win).
    #[arg(long)]
    pub bulk: bool,
    /// The closing reconcile reads Salesforce through Bulk API 2.0 query jobs
    /// (`orderbridge reconcile --bulk`) instead of REST query pages.
    #[arg(long)]
    pub reconcile_bulk: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// How long the preparations took (reported as context, outside the clock).
pub struct SetUp {
    client_id: Uuid,
    /// Writing the backlog, s.
    pub written_in: f64,
    /// The worker's start until ready, s.
    pub worker_ready_in: f64,
}

/// Everything the run measured, for the report.
pub struct Measured<'a> {
    pub args: &'a DrainArgs,
    pub set_up: SetUp,
    pub clock: Clock,
    pub timed_out: bool,
    pub baseline: Baseline,
    pub totals: Totals,
    pub figures: Figures,
    /// Orders per sync state at the end.
    pub states: Value,
    pub verification: Verification,
}

pub async fn run(mut args: DrainArgs) -> Result<bool> {
    if args.bulk {
        // First, so that the caller's own `--env` settings (applied in order) override them.
        let defaults = [
            ("WORKER_BULK_BATCH_SIZE", "10000"),
            ("WORKER_MAX_IN_FLIGHT", "2"),
        ];
        let mut env: Vec<(String, String)> = defaults
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.append(&mut args.stack.env);
        args.stack.env = env;
    }
    with_stack(args.stack.clone(), "drain", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &DrainArgs) -> Result<bool> {
    let set_up = set_up(stack, args).await?;
    let mut baseline = Baseline::take(stack).await?;
    tracing::info!("starting the relay: the clock runs");
    let clock = Clock::start();
    stack.spawn_relay()?;
    // The relay's pid joins the CPU accounting from its first tick.
    baseline.cpu = baseline.cpu.with_new_processes(&stack.pids());
    let timed_out = drain(stack, args, set_up.client_id, clock).await?;
    let totals = Totals::take(stack, &baseline).await?;
    let figures = Figures::compute(stack, args, clock).await?;
    let states = snapshot::order_states(stack.pool()?).await?;
    tracing::info!(
        synced = figures.synced.len(),
        "drained; checking Salesforce"
    );
    let verification = verify::verify(stack, args.reconcile_bulk).await?;
    let measured = Measured {
        args,
        set_up,
        clock,
        timed_out,
        baseline,
        totals,
        figures,
        states,
        verification,
    };
    report::finish(stack, &measured)
}

/// The emulator and the database, the backlog in the outbox, the worker started and ready.
async fn set_up(stack: &mut Stack, args: &DrainArgs) -> Result<SetUp> {
    let orders = args.orders as usize;
    stack.start_emulator().await?;
    stack.create_api_key().await?;
    let client_id = stack.client_id().await?;

    let writing = Instant::now();
    let run = format!("drain-{}", Uuid::now_v7().simple());
    tracing::info!(orders, "writing the backlog");
    workload::insert_backlog(stack.pool()?, client_id, &run, orders, args.chunk as usize).await?;
    let written_in = writing.elapsed().as_secs_f64();
    workload::analyze(stack.pool()?).await?;

    let worker_start = Instant::now();
    stack.spawn_worker()?;
    stack.wait_ready(WORKER).await?;
    Ok(SetUp {
        client_id,
        written_in,
        worker_ready_in: worker_start.elapsed().as_secs_f64(),
    })
}

/// Polls until no order of the backlog is left unfinished, or the timeout; returns whether it
/// timed out.
///
/// Each poll asks whether any order is unfinished, not how many: a count reads every
/// unfinished order's index entry (and the rows the drain keeps changing), which took over a
/// second of Postgres per poll at 1,000,000 orders, five polls a second — the bench competing
/// with the pipeline it measures. report.json gives the orders per state at the end.
async fn drain(stack: &mut Stack, args: &DrainArgs, client_id: Uuid, clock: Clock) -> Result<bool> {
    let deadline = clock.started + args.stack.timeout;
    loop {
        tokio::time::sleep(args.poll).await;
        stack.check_running()?;
        let unfinished: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orders
                            WHERE client_id = $1 AND sync_state IN ('pending', 'published', 'retrying'))",
        )
        .bind(client_id)
        .fetch_one(stack.pool()?)
        .await?;
        if !unfinished {
            return Ok(false);
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "timed out with orders unfinished (report.json gives the count of each state)"
            );
            return Ok(true);
        }
    }
}

/// The drain's figures, all from the server's timestamps, in seconds since the relay started.
pub struct Figures {
    /// Every `published_at` and every synced order's `updated_at`, earliest first.
    pub published: Vec<DateTime<Utc>>,
    pub synced: Vec<DateTime<Utc>>,
    pub first_published: f64,
    pub last_published: f64,
    pub first_synced: f64,
    pub last_synced: f64,
    /// Relay start → last synced.
    pub drain_rate: f64,
    /// First → last synced.
    pub steady_rate: f64,
    pub publish_rate: f64,
    pub not_synced: usize,
}

impl Figures {
    async fn compute(stack: &Stack, args: &DrainArgs, clock: Clock) -> Result<Self> {
        let published = snapshot::published_times(stack.pool()?).await?;
        let synced: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT updated_at FROM orders WHERE sync_state = 'synced' ORDER BY 1",
        )
        .fetch_all(stack.pool()?)
        .await?;
        let since_start = |t: &DateTime<Utc>| secs(*t - clock.started_wall);
        let last_synced = synced.last().map_or(0.0, since_start);
        let first_synced = synced.first().map_or(0.0, since_start);
        let last_published = published.last().map_or(0.0, since_start);
        let first_published = published.first().map_or(0.0, since_start);
        Ok(Self {
            drain_rate: per_second(synced.len(), last_synced),
            steady_rate: per_second(synced.len().saturating_sub(1), last_synced - first_synced),
            publish_rate: per_second(published.len(), last_published),
            not_synced: (args.orders as usize).saturating_sub(synced.len()),
            published,
            synced,
            first_published,
            last_published,
            first_synced,
            last_synced,
        })
    }
}
