//! `cost`: what a large history costs the API (issue 15, "cost growth"). The same measurements
//! on the fresh database and again after `--preload` (5,000,000) orders were written into it:
//!
//! 1. **intake**: `intake`'s alternating API / direct-Postgres rounds (`intake/phases.rs`, the
//!    same code), giving the intake ratio (API orders/s ÷ direct orders/s);
//! 2. **GET**: `GET /v1/orders/{id}` for random existing orders (a sample drawn with
//!    `ORDER BY random()` over the client's orders), closed loop on `--read-connections`;
//! 3. **lists**: `GET /v1/orders?limit=50` (the newest page), with `sync_state=synced`, and with
//!    `created_after` = `--created-after-age` (5 s) before each request: the poll of a portal
//!    asking what is new, which matches few or no orders.
//!
//! The preload (`preload.rs`) writes the orders as the drain's backlog is written, in bulk SQL
//! (arrays unnested server-side, lines from `generate_series`), `--chunk` orders a transaction,
//! so memory stays bounded: the bench client's own orders, 3 lines each, synced and published
//! long ago, their `created_at` spread evenly over the `--history-days` before the run and
//! their UUIDv7 ids carrying the same millisecond (as order-api writes them; `store.rs`'s list
//! filter relies on it). Then `VACUUM (ANALYZE)`: in production autovacuum has long been
//! through such history, and a vacuum running during the second measurement would only blur it.
//!
//! Before each set's intake and before its reads the database is settled alike (`VACUUM
//! (ANALYZE)`, `CHECKPOINT`), so both sets start from the same state — but for the analyse
//! while `orders` is empty, which would leave plans made for empty tables in order-api's
//! connections (see [`settle`]).
//! Only order-api runs. The checks: every order the API accepted (201) in either set is in
//! Postgres with its lines, event and key (as `intake` checks), and every read answered 200.
//!
//! Each read phase is profiled over its measured window (`profile.rs`: CPU per request of each
//! process, Postgres pages per request found in `shared_buffers` or read into them), which is
//! what explains a read that grows with the table. `--prewarm` reads the tables and indexes
//! into `shared_buffers` after the preload, to measure a server sized for the history.
//!
//! In stages: [`measure`] runs the two sets around the preload, `reads.rs` the read phases,
//! `profile.rs` their CPU and pages, `preload.rs` the bulk writes, the prewarm and the table
//! sizes, `report.rs` the table, JSON and chart.

mod preload;
mod profile;
mod reads;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::intake::IntakeArgs;
use crate::intake::phases::{self, Phases};
use crate::poster::Poster;
use crate::stack::{API, Stack, StackArgs, with_stack};
use crate::verify::{self, IntakeVerification};
use crate::workload;
use preload::{Preloaded, Sizes};
use reads::Reads;

/// The bound: after the preload, intake ratio and GET p99 within 10 % of the
/// empty-table figures.
const TARGET_DRIFT: f64 = 0.10;

#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// Orders written into the database between the two sets of measurements.
    #[arg(long, default_value_t = 5_000_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub preload: u64,
    /// Orders per INSERT transaction while preloading (memory is bounded by one chunk).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    /// The preloaded orders' `created_at` spread evenly over this many days before the run.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub history_days: u32,
    /// After the preload, read the orders' tables and indexes into `shared_buffers`
    /// (`pg_prewarm`; a superuser, and a server with the extension): the second set then
    /// measures a server whose buffers hold the history, i.e. one sized for it.
    #[arg(long)]
    pub prewarm: bool,
    /// Intake: measured time of each phase (API, direct Postgres) over all rounds, per set.
    #[arg(long, default_value = "20s", value_parser = orderbridge_runtime::parse_interval)]
    pub duration: Duration,
    /// Intake: load before the first measured window of each phase.
    #[arg(long, default_value = "3s", value_parser = orderbridge_runtime::parse_interval)]
    pub warmup: Duration,
    /// Intake: API and direct phases alternate this many times per set.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Intake: concurrent clients in both phases.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Reads: measured time of each read phase (GET, and each list), per set.
    #[arg(long, default_value = "10s", value_parser = orderbridge_runtime::parse_interval)]
    pub read_duration: Duration,
    /// Reads: load before each read phase's measured window.
    #[arg(long, default_value = "1s", value_parser = orderbridge_runtime::parse_interval)]
    pub read_warmup: Duration,
    /// Reads: concurrent HTTP connections.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub read_connections: u32,
    /// Reads: existing orders drawn at random for `GET /v1/orders/{id}`.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub sample: u32,
    /// The `created_after` list asks for orders newer than this long before each request.
    #[arg(long, default_value = "5s", value_parser = orderbridge_runtime::parse_interval)]
    pub created_after_age: Duration,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// One set of measurements: intake, then the reads.
pub struct Set {
    pub phases: Phases,
    pub reads: Reads,
    pub verification: IntakeVerification,
    /// Orders of the client when the reads ran.
    pub orders: i64,
    pub sizes: Sizes,
}

/// Everything the run measured, for the report.
pub struct Measured<'a> {
    pub args: &'a CostArgs,
    pub before: Set,
    pub preloaded: Preloaded,
    pub after: Set,
    pub superuser: bool,
    pub rss: Vec<(String, Option<u64>)>,
}

pub async fn run(args: CostArgs) -> Result<bool> {
    with_stack(args.stack.clone(), "cost", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &CostArgs) -> Result<bool> {
    let key = stack.create_api_key().await?;
    let client_id = stack.client_id().await?;
    stack.spawn_api()?;
    stack.wait_ready(API).await?;
    let api = stack
        .api_url
        .clone()
        .ok_or_else(|| anyhow!("order-api has no URL"))?;
    let superuser = preload::is_superuser(stack.pool()?).await?;
    if args.prewarm && !superuser {
        bail!("--prewarm needs a Postgres superuser (it creates the pg_prewarm extension)");
    }
    if !superuser {
        tracing::warn!(
            "not a Postgres superuser: no CHECKPOINT between phases, and the preload fires the orders' triggers"
        );
    }
    let ctx = Ctx {
        api,
        key,
        client_id,
        superuser,
    };

    tracing::info!("set 1 of 2: the fresh database");
    let before = measure_set(stack, args, &ctx, "before").await?;

    tracing::info!(orders = args.preload, "preloading");
    let preloaded = preload::preload(stack.pool()?, args, client_id, superuser).await?;
    stack.check_running()?;

    tracing::info!("set 2 of 2: after the preload");
    let after = measure_set(stack, args, &ctx, "after").await?;
    let rss = stack.peak_rss_kib();
    stack.check_running()?;
    let measured = Measured {
        args,
        before,
        preloaded,
        after,
        superuser,
        rss,
    };
    let ok = report::finish(stack, &measured)?;
    Ok(ok && measured.before.verification.ok() && measured.after.verification.ok())
}

/// What every set needs to reach the API and the client's orders.
struct Ctx {
    api: String,
    key: String,
    client_id: Uuid,
    superuser: bool,
}

/// Settles the database, runs intake's rounds, checks what they accepted, settles again and
/// runs the reads.
async fn measure_set(stack: &Stack, args: &CostArgs, ctx: &Ctx, label: &str) -> Result<Set> {
    settle(stack, ctx.superuser).await?;
    let intake = IntakeArgs {
        duration: args.duration,
        warmup: args.warmup,
        rounds: args.rounds,
        connections: args.connections,
        stack: args.stack.clone(),
    };
    let run = format!("cost-{label}-{}", Uuid::now_v7().simple());
    let poster = Arc::new(Poster::new(
        ctx.api.clone(),
        ctx.key.clone(),
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
    tracing::info!(set = label, "intake");
    let phases = phases::alternate(stack, &intake, poster, pool.clone(), ctx.client_id).await?;
    pool.close().await;
    let verification = verify::verify_intake(
        stack.pool()?,
        &run,
        &phases.api.accepted,
        phases.api.unknown,
        workload::LINES as i64,
    )
    .await?;

    settle(stack, ctx.superuser).await?;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE client_id = $1")
        .bind(ctx.client_id)
        .fetch_one(stack.pool()?)
        .await?;
    let sizes = preload::sizes(stack.pool()?).await?;
    tracing::info!(set = label, orders, "reads");
    let reads = reads::measure(stack, args, &ctx.api, &ctx.key, ctx.client_id).await?;
    Ok(Set {
        phases,
        reads,
        verification,
        orders,
        sizes,
    })
}

/// The same starting point for every phase: the database vacuumed and analysed (no
/// autovacuum or hint-bit writes in the window, plans from current statistics) and, as a
/// superuser, a checkpoint (no checkpoint's writes in the window either).
///
/// Except while `orders` is empty (the fresh set's intake): analysing empty tables records
/// them as known to be empty (`reltuples` 0 rather than "never analysed"), and a backend that
/// plans a statement then (order-api's, at its first requests) plans sequential scans and keeps
/// those plans as the table grows, until statistics change again. Measured in `cost --preload
/// 0`: with the analyse, the fresh set's API rounds ran ~11,400 sequential scans of `orders`
/// (82 million rows read) and the direct rounds none (their connections planned seconds later,
/// on a table no longer empty), which made the fresh intake ratio 0.42–0.62 where `intake`
/// gives ~0.84. A new deployment has never-analysed tables, which the planner does not take
/// for empty, so skipping the analyse here is also the state production starts from.
async fn settle(stack: &Stack, superuser: bool) -> Result<()> {
    let started = Instant::now();
    let pool = stack.pool()?;
    let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM orders)")
        .fetch_one(pool)
        .await?;
    if !empty {
        sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;
    }
    if superuser {
        sqlx::query("CHECKPOINT").execute(pool).await?;
    }
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        analysed = !empty,
        "settled"
    );
    Ok(())
}
