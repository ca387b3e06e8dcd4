//! `fulfilment`: the whole loop of issue 14 through the real binaries. `--orders` orders are
//! posted and synced; then, with one event stream open per order (`GET /v1/orders/{id}/events`,
//! as the portal holds), each order is approved in the emulator over REST (`Status` =
//! `Activated`, under another client name than orderbridge's) at `--rate` per second, open loop.
//! The emulator's default Flow rule `provision-on-activate` publishes `OrderProvisionRequested__e`;
//! sf-subscriber stores the request, the relay queues it, fulfilment-worker calls
//! fulfilment-receiver (answering after `--receiver-delay`) and writes the result back.
//!
//! Measured per order: approval (the REST call's answer) → `provisioned` first visible in the
//! API. Checked: every approved order ends `provisioned` locally, its Salesforce Order shows
//! `Activation_Status__c` = `Provisioned`, the receiver provisioned exactly one request per order
//! (duplicates answered from its idempotency memory do not count), no request failed and nothing
//! was dead-lettered. `report.rs` holds the table.

mod checks;
mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::common::lock;
use crate::inbound::sse::Watchers;
use crate::inbound::{Target, operator_client, post_and_sync};
use crate::poster::post_paced;
use crate::procfs;
use crate::stack::{FULFILMENT_WORKER, RECEIVER, SUBSCRIBER, Stack, StackArgs, with_stack};

/// How long the last approvals may take to show `provisioned` after the last call.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct FulfilmentArgs {
    /// Orders posted and synced first, then each approved once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub orders: u32,
    /// Approvals per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long the reference receiver takes to answer each request.
    #[arg(long, default_value = "200ms", value_parser = orderbridge_runtime::parse_interval)]
    pub receiver_delay: Duration,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The approvals as measured.
#[derive(Debug, Default)]
pub struct Live {
    /// Approval → `provisioned` visible in the API, ms, one per order seen provisioned.
    pub latency_ms: Vec<f64>,
    /// Approvals whose REST call failed.
    pub failed_calls: Vec<String>,
    /// Approved orders never seen `provisioned` through the API before the deadline.
    pub unseen: usize,
    pub approved: usize,
    pub seconds: f64,
    pub sse_events: u64,
    pub sse_reconnects: u64,
}

pub struct Measured<'a> {
    pub args: &'a FulfilmentArgs,
    pub live: Live,
    pub checks: checks::Checks,
    pub rss: Vec<(String, Option<u64>)>,
    pub load: [Option<[f64; 3]>; 2],
    pub cpu: procfs::CpuUsage,
}

pub async fn run(args: FulfilmentArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    with_stack(args.stack.clone(), "fulfilment", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &FulfilmentArgs) -> Result<bool> {
    let (key, api) = stack.start_pipeline().await?;
    stack.spawn_receiver(args.receiver_delay)?;
    stack.wait_ready(RECEIVER).await?;
    stack.spawn_subscriber()?;
    stack.spawn_fulfilment_worker()?;
    for svc in [SUBSCRIBER, FULFILMENT_WORKER] {
        stack.wait_ready(svc).await?;
    }
    let targets = post_and_sync(stack, &api, &key, args.orders as usize).await?;
    let salesforce = operator_client(stack)?;
    salesforce
        .login()
        .await
        .context("cannot log in to the emulator")?;

    let load_before = procfs::loadavg();
    let cpu_before = procfs::CpuSnapshot::take(&stack.pids());
    let ids: Vec<uuid::Uuid> = targets.iter().map(|t| t.id).collect();
    let watchers = Watchers::open(&api, &key, &ids).await?;
    let live = approve(args, &targets, &salesforce, &watchers).await?;
    watchers.stop().await;
    let cpu = cpu_before.usage_until(&procfs::CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    stack.check_running()?;

    let checks = checks::run(stack, &targets, &salesforce).await?;
    stack.scrape_metrics().await;
    let measured = Measured {
        args,
        live,
        checks,
        rss: stack.peak_rss_kib(),
        load: [load_before, load_after],
        cpu,
    };
    report::finish(stack, &measured)
}

/// Approves every order once at `--rate`; each one's latency is from its REST call's answer to
/// the first SSE event showing `provisioned`.
async fn approve(
    args: &FulfilmentArgs,
    targets: &[Target],
    salesforce: &orderbridge_salesforce::Client,
    watchers: &Watchers,
) -> Result<Live> {
    // (order, when its approval was committed) per approval made.
    let made: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    post_paced(
        targets.len(),
        args.rate,
        256,
        |o, _due| {
            let sf = salesforce.clone();
            let id = targets[o].salesforce_id.clone();
            let (made, failed) = (made.clone(), failed.clone());
            async move {
                match sf
                    .update("Order", &id, &json!({"Status": "Activated"}))
                    .await
                {
                    Ok(()) => lock(&made).push((o, Instant::now())),
                    Err(e) => lock(&failed).push(format!("{id}: {e}")),
                }
            }
        },
        |()| {},
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let made = std::mem::take(&mut *lock(&made));

    let visible = |o: usize| lock(&watchers.seen[o]).status_first("provisioned");
    let deadline = Instant::now() + SETTLE;
    while made.iter().any(|&(o, _)| visible(o).is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut live = Live {
        approved: made.len(),
        seconds,
        failed_calls: std::mem::take(&mut *lock(&failed)),
        sse_events: watchers.events(),
        sse_reconnects: watchers.reconnects(),
        ..Live::default()
    };
    for &(o, approved) in &made {
        match visible(o) {
            Some(at) => live
                .latency_ms
                .push(at.saturating_duration_since(approved).as_secs_f64() * 1e3),
            None => live.unseen += 1,
        }
    }
    Ok(live)
}
