//! `chaos`: orders posted at a steady rate while faults hit every part of the pipeline, then,
//! once everything is quiet, every order classified (ok, lost, duplicated, unexpected, failed).
//! Meanwhile a share of the synced orders is approved in Salesforce, which sets off the
//! fulfilment loop (sf-subscriber → fulfilment-worker → fulfilment-receiver → write-back) under
//! the same faults and some of its own.
//! The run fails unless nothing was lost, duplicated or unexpected, no real order failed, the
//! injected poison was dead-lettered, every order ended synced or failed, and every approved
//! order was provisioned exactly once (and no other order at all).
//! See crates/bench/CHAOS.md for the faults and the classification.
//!
//! In stages: [`run`] plans the faults; [`chaos`] starts the pipeline, posts and approves under
//! the faults (`post.rs`, `approve.rs`, `faults.rs`) and waits until all is quiet
//! (`settle.rs`), then [`classify_run`] reconciles and classifies (`classify.rs`, and
//! `fulfil.rs` for the fulfilment loop); `report.rs` writes the table, JSON and timeline.

mod approve;
mod classify;
mod cluster;
mod faults;
mod fulfil;
mod plan;
mod post;
mod report;
pub mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use orderbridge_cli::reconcile::Report;
use serde_json::Value;
use uuid::Uuid;

use crate::common::Clock;
use crate::inbound::operator_client;
use crate::poster::Poster;
use crate::procfs::{self, CpuSnapshot, CpuUsage};
use crate::stack::{FULFILMENT_WORKER, RECEIVER, SUBSCRIBER, Stack, StackArgs, interruptible};
use crate::verify;

use approve::{Approvals, Approver};
use classify::{DeadLetter, Inputs, Outcome, classify};
use faults::{CloseScope, Executor};
use plan::{FaultKind, PlanInput, Planned};
use post::PostTotals;
use settle::{OrderRow, Quiet};

/// Service settings the chaos run changes unless `--env` sets them: short retry tiers and
/// probes, so the pipeline recovers within seconds of a fault instead of the production
/// defaults' minutes (a 10-minute retry tier would make quiescence take 10 minutes).
/// `FULFILMENT_TIMEOUT` bounds a call the receiver hangs on, and the claim a killed
/// fulfilment-worker leaves on its request (the timeout + 5 s). `SUBSCRIBER_INITIAL_REPLAY`:
/// a subscriber killed before it stored a replay id for a topic must not resume at `latest`
/// and skip what was published while it was down (the bus holds only this run's events).
const CHAOS_ENV: [(&str, &str); 7] = [
    ("BROKER_RETRY_TIERS", "1s,5s,15s"),
    ("WORKER_BUDGET_PROBE", "2s"),
    ("WORKER_BREAKER_PROBE_MAX", "5s"),
    ("WORKER_SHUTDOWN_GRACE", "10s"),
    ("FULFILMENT_TIMEOUT", "3s"),
    ("FULFILMENT_SHUTDOWN_GRACE", "10s"),
    ("SUBSCRIBER_INITIAL_REPLAY", "earliest"),
];

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Orders to post.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub orders: u32,
    /// Orders per second, steady (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Most POSTs in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Seed of the fault schedule (random when absent; always printed and in report.json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds to inject, comma-separated. Default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub faults: Vec<FaultKind>,
    /// Mean time between fault starts (faults are spread over the posting period).
    #[arg(long, default_value = "4s", value_parser = orderbridge_runtime::parse_interval)]
    pub fault_gap: Duration,
    /// Longest fault window (outages, budget, locks, latency, second instances).
    #[arg(long, default_value = "8s", value_parser = orderbridge_runtime::parse_interval)]
    pub fault_window: Duration,
    /// Poison messages published straight onto the work queue; each must be dead-lettered.
    #[arg(long, default_value_t = 3)]
    pub poison: u32,
    /// Share of the orders approved in Salesforce once synced (0 to 1; drawn from the seed and
    /// the order id), which asks for their provisioning.
    #[arg(long, default_value_t = 0.5)]
    pub approve: f64,
    /// How long the fulfilment receiver takes to answer each request.
    #[arg(long, default_value = "200ms", value_parser = orderbridge_runtime::parse_interval)]
    pub receiver_delay: Duration,
    /// Which broker connections `broker-close` closes: the run's services' own (`own`), or
    /// every connection on the broker (`all`: `rabbitmqctl close_all_connections`; only where
    /// nobody else uses the broker).
    #[arg(long, value_enum, default_value = "own")]
    pub close_connections: CloseScope,
    /// Use the 3-node RabbitMQ cluster of `scripts/rabbitmq-cluster` (started if it is not
    /// running; never the system broker) instead of `AMQP_URL`: the services get all three
    /// node URLs, and the default faults gain `node-kill`.
    #[arg(long)]
    pub rabbitmq_cluster: bool,
    /// Only print the fault schedule for these settings, start nothing.
    #[arg(long)]
    pub plan_only: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// What the run did and saw, from the first POST to quiescence.
pub struct Run {
    pub clock: Clock,
    /// The posting period the schedule was planned for, s.
    pub posting_s: f64,
    pub posted: PostTotals,
    /// Posting and faults done, s after posting started.
    pub posting_done_s: f64,
    pub events: Vec<faults::Event>,
    pub poison_sent: Vec<String>,
    pub quiet: Quiet,
    pub quiet_at_s: f64,
    pub approvals: Approvals,
    /// (service, pid, exit status, clean) of the processes stopped with a signal.
    pub stopped: Vec<(String, u32, String, bool)>,
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    pub cpu: CpuUsage,
    pub rss: Vec<(String, Option<u64>)>,
    pub emulator_stats: Value,
}

/// What the classification read and found.
pub struct Found {
    pub report: Report,
    pub letters: Vec<DeadLetter>,
    pub rows: Vec<OrderRow>,
    pub accepted: HashSet<Uuid>,
    pub outcome: Outcome,
    pub fulfil: fulfil::Outcome,
    /// When each provisioned request was decided (for the chart).
    pub provisioned_at: Vec<chrono::DateTime<chrono::Utc>>,
}

/// Everything the run measured, for the report.
pub struct Measured<'a> {
    pub args: &'a ChaosArgs,
    pub seed: u64,
    pub kinds: &'a [FaultKind],
    pub schedule: &'a [Planned],
    pub run: Run,
    pub found: Found,
}

pub async fn run(mut args: ChaosArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number (the chaos run posts at a steady rate)");
    }
    if !(0.0..=1.0).contains(&args.approve) {
        bail!("--approve is a share of the orders, from 0 to 1");
    }
    let seed = args.seed.unwrap_or_else(plan::random_seed);
    let kinds = if args.faults.is_empty() {
        let mut k = FaultKind::ALL.to_vec();
        if args.rabbitmq_cluster {
            k.push(FaultKind::NodeKill);
        }
        k
    } else {
        let mut k = args.faults.clone();
        k.sort();
        k.dedup();
        k
    };
    if kinds.contains(&FaultKind::NodeKill) && !args.rabbitmq_cluster {
        bail!("the node-kill fault needs --rabbitmq-cluster (it never touches the system broker)");
    }
    let posting_s = f64::from(args.orders) / args.rate;
    let schedule = plan::plan(&PlanInput {
        seed,
        posting_s,
        kinds: kinds.clone(),
        gap_s: args.fault_gap.as_secs_f64(),
        max_window_s: args.fault_window.as_secs_f64(),
        poison: args.poison,
    });
    println!(
        "chaos seed {seed}: {} faults and {} poison messages over {posting_s:.0} s",
        schedule.iter().filter(|p| p.kind.is_some()).count(),
        args.poison
    );
    if args.plan_only {
        for p in &schedule {
            println!(
                "  #{:<3} {:>8.3} s  {:<16} {:>6.3} s",
                p.id,
                p.at_s,
                p.label(),
                p.duration_s
            );
        }
        return Ok(true);
    }
    if args.rabbitmq_cluster {
        let cluster = cluster::Cluster::local();
        println!("starting the 3-node RabbitMQ cluster (scripts/rabbitmq-cluster start)");
        cluster.start().await?;
        args.stack.amqp_url = cluster.amqp_url();
    }
    with_chaos_env(&mut args.stack);
    // Not `with_stack`: the seed is printed before the teardown, whose logs would bury it.
    let mut stack = Stack::create(args.stack.clone(), "chaos").await?;
    let result = interruptible(chaos(&mut stack, &args, seed, &kinds, &schedule)).await;
    if let Err(e) = &result {
        eprintln!("chaos seed {seed}: the run could not be done: {e:#}");
    }
    stack.shutdown().await;
    result
}

/// [`CHAOS_ENV`] under the caller's `--env`: the chaos settings go first, so the caller's win.
fn with_chaos_env(stack: &mut StackArgs) {
    let mut env: Vec<(String, String)> = CHAOS_ENV
        .iter()
        .filter(|(k, _)| !stack.env.iter().any(|(ek, _)| ek == k))
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.append(&mut stack.env);
    stack.env = env;
}

async fn chaos(
    stack: &mut Stack,
    args: &ChaosArgs,
    seed: u64,
    kinds: &[FaultKind],
    schedule: &[Planned],
) -> Result<bool> {
    let (key, api) = stack.start_pipeline().await?;
    // The return path and the fulfilment loop: the receiver first, as the worker is given its
    // URL when it starts.
    stack.spawn_receiver(args.receiver_delay)?;
    stack.wait_ready(RECEIVER).await?;
    stack.spawn_subscriber()?;
    stack.spawn_fulfilment_worker()?;
    for svc in [SUBSCRIBER, FULFILMENT_WORKER] {
        stack.wait_ready(svc).await?;
    }
    let salesforce = operator_client(stack)?;
    salesforce
        .login()
        .await
        .context("cannot log in to the emulator")?;
    let poster = Arc::new(Poster::new(
        api,
        key,
        format!("chaos-{}", Uuid::now_v7().simple()),
        args.connections as usize,
        None,
    )?);
    let run = under_faults(stack, args, seed, schedule, poster, &salesforce).await?;
    let found = classify_run(stack, &run, &salesforce).await?;
    let measured = Measured {
        args,
        seed,
        kinds,
        schedule,
        run,
        found,
    };
    report::finish(stack, &measured)
}

/// Posts every order while the schedule's faults happen, then waits until the pipeline is
/// quiet and takes the closing readings.
async fn under_faults(
    stack: &mut Stack,
    args: &ChaosArgs,
    seed: u64,
    schedule: &[Planned],
    poster: Arc<Poster>,
    salesforce: &orderbridge_salesforce::Client,
) -> Result<Run> {
    let orders = args.orders as usize;
    let load_before = procfs::loadavg();
    let cpu_before = CpuSnapshot::take(&stack.pids());
    tracing::info!(
        orders,
        rate = args.rate,
        seed,
        faults = schedule.len(),
        "posting under faults"
    );
    let clock = Clock::start();
    let posting_s = orders as f64 / args.rate;
    let give_up = clock.started + Duration::from_secs_f64(posting_s) + args.stack.timeout;
    let posting = tokio::spawn(post::post_all(
        poster,
        orders,
        args.rate,
        args.connections as usize,
        give_up,
    ));
    let approver = Approver::start(
        stack.pool()?.clone(),
        salesforce.clone(),
        seed,
        args.approve,
        clock.started,
        give_up,
    );

    let mut executor = Executor::new(
        stack,
        schedule,
        args.close_connections,
        args.rabbitmq_cluster.then(cluster::Cluster::local),
    );
    executor.run(clock.started).await;
    let (events, poison_sent) = (
        std::mem::take(&mut executor.events),
        std::mem::take(&mut executor.poison_sent),
    );
    drop(executor);
    let posted = posting.await?;
    let posting_done_s = clock.started.elapsed().as_secs_f64();
    tracing::info!(
        accepted = posted.accepted.len(),
        approved = approver.approved(),
        "posting and faults done; waiting for quiescence"
    );

    let (quiet, approvals) =
        settle::wait_quiet(stack, Instant::now() + args.stack.timeout, approver).await?;
    let quiet_at_s = clock.started.elapsed().as_secs_f64();
    let stopped = stack.reap_stopped().await;
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    Ok(Run {
        clock,
        posting_s,
        posted,
        posting_done_s,
        events,
        poison_sent,
        quiet,
        quiet_at_s,
        approvals,
        stopped,
        load_before,
        load_after,
        cpu,
        rss: stack.peak_rss_kib(),
        emulator_stats: stack.emulator_stats().await?,
    })
}

/// Reconciles against Salesforce, reads the dead letters and every order's state, and sorts
/// each order into its class; then the same for the fulfilment loop.
async fn classify_run(
    stack: &Stack,
    run: &Run,
    salesforce: &orderbridge_salesforce::Client,
) -> Result<Found> {
    tracing::info!("classifying: reconcile against Salesforce, dead letters, Postgres");
    let report = verify::reconcile_run(stack, false).await?;
    let letters = settle::dead_letters(stack).await?;
    let rows = settle::order_rows(stack).await?;
    let postgres: HashMap<Uuid, _> = settle::stored(&rows);
    let accepted: HashSet<Uuid> = run.posted.accepted.keys().copied().collect();
    let outcome = classify(&Inputs {
        accepted: &accepted,
        postgres: &postgres,
        report: &report,
        dead_letters: &letters,
        poison_sent: &run.poison_sent,
    });
    let read = fulfil::read(stack, salesforce).await?;
    let approved: HashSet<Uuid> = run.approvals.approved.keys().copied().collect();
    let given_up: HashSet<Uuid> = run.approvals.given_up.iter().map(|(id, _)| *id).collect();
    let fulfil = fulfil::classify(&fulfil::Inputs {
        approved: &approved,
        given_up: &given_up,
        orders: &read.orders,
        requests: &read.requests,
        activation: &read.activation,
        received: &read.received,
    });
    let provisioned_at = read
        .requests
        .iter()
        .filter(|r| r.state == "provisioned")
        .filter_map(|r| r.decided_at)
        .collect();
    Ok(Found {
        report,
        letters,
        rows,
        accepted,
        outcome,
        fulfil,
        provisioned_at,
    })
}
