//! `intake`: how many orders a second `POST /v1/orders` accepts, beside the physical limit: the
//! same transaction run straight on Postgres at the same concurrency.
//!
//! Only order-api runs (and Postgres): intake ends at the commit, so the relay, the worker and
//! the emulator are not started. Both phases are closed loops of `--connections` concurrent
//! clients, each sending its next order as soon as the previous one is answered, for a warm-up
//! and then the measured `--duration`:
//!
//! 1. **API**: 3-line orders (the e2e workload) with a unique `Idempotency-Key` each, over
//!    `--connections` HTTP/1.1 keep-alive connections. Orders/s counts 201s answered inside the
//!    window; latency is request → 201.
//! 2. **Direct**: the API's own transaction run by the bench on `--connections` Postgres
//!    connections, one transaction per order, with the API's functions: the idempotency
//!    advisory lock and lookup, order + lines, outbox event, remembered response (the
//!    serialized order), commit: `orderbridge_db::create::create_order`, as the API calls it. What the API adds on top (HTTP, JSON parsing and validation,
//!    the API-key lookup, its 16-connection pool) is what the ratio measures.
//!
//! The phases alternate in `--rounds` rounds (API, direct, API, direct…; `--duration` split
//! evenly), so the other load on a shared machine, which changes from minute to minute, weighs
//! on both alike; the report gives each round's figures. Both write into the same fresh
//! database. The check at the end: every order
//! the API answered 201 for is in Postgres exactly once, with its 3 lines, one outbox event and
//! its idempotency key (no worker runs, so Salesforce is not involved).

//!
//! In stages: [`measure`] starts order-api and the clients, `phases.rs` runs the alternating
//! rounds, `report.rs` writes the table, JSON and chart from one [`Measured`].

pub mod phases;
mod report;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::poster::Poster;
use crate::stack::{API, Stack, StackArgs, with_stack};
use crate::verify::{self, IntakeVerification};
use crate::workload;
use phases::Phases;

/// The target: intake ≥ 0.8 × the direct Postgres figure.
const TARGET_RATIO: f64 = 0.8;

#[derive(Debug, Clone, Args)]
pub struct IntakeArgs {
    /// Measured time of each phase (API, direct Postgres), over all rounds.
    #[arg(long, default_value = "20s", value_parser = orderbridge_runtime::parse_interval)]
    pub duration: Duration,
    /// Load before the first measured window of each phase (later rounds: 1 s at most).
    #[arg(long, default_value = "3s", value_parser = orderbridge_runtime::parse_interval)]
    pub warmup: Duration,
    /// The phases alternate this many times (API, direct, API, direct…), `--duration` split
    /// evenly, so a change in the machine's other load weighs on both.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Concurrent clients in both phases: HTTP connections, then Postgres connections.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Everything the run measured, for the report.
pub struct Measured<'a> {
    pub args: &'a IntakeArgs,
    pub phases: Phases,
    pub rss: Vec<(String, Option<u64>)>,
    pub verification: IntakeVerification,
}

pub async fn run(args: IntakeArgs) -> Result<bool> {
    with_stack(args.stack.clone(), "intake", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &IntakeArgs) -> Result<bool> {
    let key = stack.create_api_key().await?;
    let client_id = stack.client_id().await?;
    stack.spawn_api()?;
    stack.wait_ready(API).await?;
    let api = stack
        .api_url
        .clone()
        .ok_or_else(|| anyhow!("order-api has no URL"))?;
    let run = format!("intake-{}", Uuid::now_v7().simple());
    let poster = Arc::new(Poster::new(
        api,
        key,
        run.clone(),
        args.connections as usize,
        Some(Duration::from_secs(30)),
    )?);
    let pool = PgPoolOptions::new()
        .max_connections(args.connections)
        .min_connections(args.connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&stack.database_url)
        .await?;
    let phases = phases::alternate(stack, args, poster, pool.clone(), client_id).await?;
    let rss = stack.peak_rss_kib();
    pool.close().await;
    stack.check_running()?;

    tracing::info!(
        accepted = phases.api.accepted.len(),
        "checking the accepted orders in Postgres"
    );
    let verification = verify::verify_intake(
        stack.pool()?,
        &run,
        &phases.api.accepted,
        phases.api.unknown,
        workload::LINES as i64,
    )
    .await?;
    let measured = Measured {
        args,
        phases,
        rss,
        verification,
    };
    let ok = report::finish(stack, &measured)?;
    Ok(ok && measured.verification.ok())
}
