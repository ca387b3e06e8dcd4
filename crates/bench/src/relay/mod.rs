//! `relay`: how fast outbox-relay moves committed events to RabbitMQ, and with what lag, beside
//! a raw publish-with-confirms loop on the same broker as the limit.
//!
//! Only outbox-relay runs (and Postgres, RabbitMQ): no API, worker or emulator. The bench plays
//! both ends: it commits orders into Postgres itself and consumes what the relay publishes from
//! the Salesforce work queue `{ns}.sf-sync` (the queue the relay's exchange routes every order
//! event to, which the worker would consume), acking as it goes so the queue stays short. Three
//! phases, in this order:
//!
//! 1. **Raw limit**: a throwaway topic exchange and quorum queue (`{ns}.bench-raw`, created and
//!    deleted by the bench; quorum like the work queue), `--raw-messages` persistent, mandatory
//!    messages of an order event's size, published the way the relay publishes: a window of
//!    `--raw-batch` messages sent without waiting, then every confirm awaited, then the next
//!    window. A consumer drains the queue meanwhile, as in the relay phases.
//! 2. **Saturation**: `--backlog` orders with their `order.submitted` outbox rows written before
//!    the relay starts (as `drain` writes them); events/s from the relay's first to its last
//!    `published_at`, and as received.
//! 3. **Fixed rate**: orders committed at `--rate` per second (open loop, `--connections`
//!    writers, one transaction per order: `orderbridge_db::create::insert_order` and
//!    `orderbridge_db::outbox::enqueue`, i.e. the rows the API writes but the idempotency key),
//!    for `--warmup` + `--duration`. For each event committed inside the window, the lag from
//!    the client's moment after `COMMIT` returned to the moment the bench received the message
//!    (matched by `message_id` = event id). The relay's own `published_at` (set after the
//!    broker's confirm, in the marking transaction) gives a second, server-side figure.
//!
//! The check at the end: every committed event was received, none twice, and no outbox row is
//! left unpublished. (No order reaches Salesforce without a worker; the e2e and drain runs
//! reconcile with Salesforce.)
//!
//! In modules by stage: `raw.rs` (phase 1), `phases.rs` (phases 2 and 3), `consume.rs` (the
//! bench's consumer), `figures.rs` (the figures, computed once), `report.rs` (table, JSON,
//! chart).

mod consume;
mod figures;
mod phases;
mod raw;
mod report;

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use orderbridge_broker::Supervisor;

use crate::procfs;
use crate::stack::{Stack, StackArgs, with_stack};
use figures::Figures;
use phases::{FixedRate, Saturation};
use raw::RawResult;

/// The target (issue 15, tightened from issue 6's 50 ms): commit → publish lag p99 ≤ 25 ms at 1,000
/// orders/s.
const TARGET_P99_MS: f64 = 25.0;
const TARGET_RATE: f64 = 1000.0;

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Orders (events) committed per second in the fixed-rate phase (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured time of the fixed-rate phase.
    #[arg(long, default_value = "20s", value_parser = orderbridge_runtime::parse_interval)]
    pub duration: Duration,
    /// Load before the fixed-rate window (not counted).
    #[arg(long, default_value = "3s", value_parser = orderbridge_runtime::parse_interval)]
    pub warmup: Duration,
    /// In the fixed-rate phase commit only the outbox row (the same event, the same size), not
    /// the order and its lines: for a machine where Postgres cannot commit `--rate` whole
    /// orders a second. The relay's marking then finds no order to move to `published`.
    #[arg(long)]
    pub events_only: bool,
    /// Postgres connections committing the fixed-rate orders.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,
    /// Orders already in the outbox when the relay starts (saturation); 0 skips the phase.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: u32,
    /// outbox-relay processes started (both phases). More than one publishes at once only with
    /// partitions: `--env RELAY_PARTITIONS=4`. They are started one after another, so the first
    /// leads every partition until the others join (about `RELAY_STANDBY_INTERVAL`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub relays: u32,
    /// Messages of the raw publish-with-confirms loop; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub raw_messages: u32,
    /// Unconfirmed messages per window in the raw loop (the relay's RELAY_BATCH_SIZE default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub raw_batch: u32,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Everything the run measured, for the report.
pub struct Measured<'a> {
    pub args: &'a RelayArgs,
    /// 1-min load when the run started (before the raw loop).
    pub load_start: Option<[f64; 3]>,
    /// The work queue the bench consumed.
    pub work_queue: String,
    pub raw: Option<RawResult>,
    pub sat: Saturation,
    pub fixed: FixedRate,
    pub figures: Figures,
}

pub async fn run(args: RelayArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    with_stack(args.stack.clone(), "relay", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &RelayArgs) -> Result<bool> {
    stack.create_api_key().await?;
    let client_id = stack.client_id().await?;
    let config = stack.broker_config()?;
    let supervisor = Supervisor::new(config.clone(), "orderbridge-bench")?;
    // Declares the namespace's topology, so the work queue exists before the relay starts.
    let session = supervisor.try_connect().await?;
    let work_queue = supervisor.topology().sf_sync_queue.clone();
    let load_start = procfs::loadavg();

    let raw = if args.raw_messages > 0 {
        tracing::info!(
            messages = args.raw_messages,
            "raw publish-with-confirms loop"
        );
        Some(raw::run(&supervisor, &config, stack, args).await?)
    } else {
        None
    };
    let (sat, consumer) = phases::saturation(
        stack,
        args,
        client_id,
        &session,
        &config,
        work_queue.clone(),
    )
    .await?;
    let fixed = phases::fixed_rate(stack, args, client_id, sat.backlog, consumer).await?;
    let figures = Figures::compute(stack, &sat, &fixed, raw.as_ref()).await?;
    session.close(&config).await;
    let measured = Measured {
        args,
        load_start,
        work_queue,
        raw,
        sat,
        fixed,
        figures,
    };
    report::finish(stack, &measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_and_payload() {
        assert!(report::lag_chart("t", &[], &[]).contains("target"));
        assert!(report::lag_chart("t", &[1.0, 5.0], &[2.0]).contains("<polyline"));
        let p = raw::sample_payload().unwrap_or_default();
        assert!(p.len() > 500, "an order event is about 1 kB: {}", p.len());
    }
}
