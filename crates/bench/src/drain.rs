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

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;
use uuid::Uuid;

use crate::chart::{self, Chart, Series};
use crate::procfs::{self, CpuSnapshot};
use crate::report::{Goal, Table, thousands};
use crate::stack::{EMULATOR, Stack, StackArgs, WORKER, with_stack};
use crate::{common, verify, workload};

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
    #[command(flatten)]
    pub stack: StackArgs,
}

pub async fn run(args: DrainArgs) -> Result<bool> {
    with_stack(args.stack.clone(), "drain", async |stack| {
        measure(stack, &args).await
    })
    .await
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

async fn measure(stack: &mut Stack, args: &DrainArgs) -> Result<bool> {
    let orders = args.orders as usize;
    stack.start_emulator().await?;
    stack.create_api_key().await?;
    let client_id = stack.client_id().await?;

    let writing = Instant::now();
    let run = format!("drain-{}", Uuid::now_v7().simple());
    tracing::info!(orders, "writing the backlog");
    workload::insert_backlog(stack.pool()?, client_id, &run, orders, args.chunk as usize).await?;
    let written_in = writing.elapsed().as_secs_f64();
    // Fresh statistics, so the relay's and the progress queries' plans fit the backlog.
    sqlx::query("ANALYZE orders, order_lines, outbox")
        .execute(stack.pool()?)
        .await?;

    let worker_start = Instant::now();
    stack.spawn_worker()?;
    stack.wait_ready(WORKER).await?;
    let worker_ready_in = worker_start.elapsed().as_secs_f64();

    let startup_calls = stack.api_calls().await?;
    let pg_before = common::PgCounters::take(stack.pool()?).await?;
    let load_before = procfs::loadavg();
    let cpu_before = CpuSnapshot::take(&stack.pids());
    tracing::info!("starting the relay: the clock runs");
    let started = Instant::now();
    let started_wall = Utc::now();
    stack.spawn_relay()?;
    // The relay's pid joins the CPU accounting from its first tick.
    let cpu_before = cpu_before.with_new_processes(&stack.pids());

    let deadline = started + args.stack.timeout;
    let mut timed_out = false;
    loop {
        tokio::time::sleep(args.poll).await;
        stack.check_running()?;
        let (unpublished, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL),
                    (SELECT count(*) FROM orders
                     WHERE client_id = $1 AND sync_state IN ('pending', 'published', 'retrying'))",
        )
        .bind(client_id)
        .fetch_one(stack.pool()?)
        .await?;
        tracing::debug!(unpublished, unfinished, "progress");
        if unfinished == 0 {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(unpublished, unfinished, "timed out");
            timed_out = true;
            break;
        }
    }
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    let rss = stack.peak_rss_kib();
    let scraped = stack.scrape_metrics().await;
    // Backends report their counters at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pg_after = common::PgCounters::take(stack.pool()?).await?;
    let stats = stack.emulator_stats().await?;
    let calls = stats["api_calls_total"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(startup_calls);

    let published: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT published_at FROM outbox WHERE published_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(stack.pool()?)
    .await?;
    let synced: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM orders WHERE sync_state = 'synced' ORDER BY 1")
            .fetch_all(stack.pool()?)
            .await?;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT sync_state, count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(stack.pool()?)
            .await?;
    tracing::info!(synced = synced.len(), "drained; checking Salesforce");
    let verification = verify::verify(stack).await?;

    let since_start = |t: &DateTime<Utc>| secs(*t - started_wall);
    let last_synced = synced.last().map_or(0.0, since_start);
    let first_synced = synced.first().map_or(0.0, since_start);
    let last_published = published.last().map_or(0.0, since_start);
    let first_published = published.first().map_or(0.0, since_start);
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let drain_rate = rate(synced.len(), last_synced);
    let steady_rate = rate(synced.len().saturating_sub(1), last_synced - first_synced);
    let publish_rate = rate(published.len(), last_published);
    let not_synced = orders.saturating_sub(synced.len());

    let mut t = Table::new(format!(
        "orderbridge-bench drain: {} orders already in the outbox; Salesforce emulated at {} ms + 0–{} ms per call",
        thousands(orders as f64),
        args.stack.latency_ms,
        args.stack.jitter_ms
    ));
    common::machine_context(&mut t, stack, load_before, load_after, &cpu);
    t.context(format!(
        "backlog written in {written_in:.1} s ({} orders/s, {} per transaction); worker ready after {worker_ready_in:.1} s, before the clock starts",
        thousands(rate(orders, written_in)),
        args.chunk
    ));
    t.context("clock: from starting the relay; times are the server's (published_at, updated_at)");
    t.context(format!("output: {}", stack.out.display()));

    t.info(
        "orders synced",
        format!(
            "{} of {}",
            thousands(synced.len() as f64),
            thousands(orders as f64)
        ),
    );
    t.target(
        "orders/s, relay start → last synced",
        drain_rate,
        format!("{drain_rate:.0} ({last_synced:.1} s)"),
        Goal::AtLeast(TARGET_ORDERS_PER_S),
        ">= 5,000",
    );
    t.info(
        "orders/s, first → last synced (steady state)",
        format!("{steady_rate:.0} (first after {first_synced:.2} s)"),
    );
    t.info(
        "outbox drained (all published)",
        format!("after {last_published:.1} s: {publish_rate:.0} events/s (first after {first_published:.2} s)"),
    );
    let calls_per_1000 = common::salesforce_call_rows(&mut t, calls, startup_calls, synced.len());
    let (service_metrics, pg_json) = common::footer_rows(
        &mut t,
        &common::Footer {
            scraped: &scraped,
            backlog: true,
            pg_before: &pg_before,
            pg_after: &pg_after,
            orders,
            rss: &rss,
            rss_no_target: &[EMULATOR],
            cpu: &cpu,
        },
    );
    t.check(
        "orders not synced by the end",
        format!(
            "{not_synced}{}",
            if timed_out { " (timed out)" } else { "" }
        ),
        not_synced == 0,
    );
    common::verification_rows(&mut t, &verification);

    let json = json!({
        "command": "drain",
        "started_at": started_wall,
        "args": {
            "orders": orders, "chunk": args.chunk, "poll_ms": args.poll.as_millis() as u64,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, load_before, load_after, &cpu),
        "backlog": {"written_in_s": written_in, "worker_ready_in_s": worker_ready_in},
        "orders": {
            "requested": orders, "synced": synced.len(), "not_synced": not_synced,
            "timed_out": timed_out,
            "states_in_postgres": states.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        },
        "throughput": {
            "orders_per_s": drain_rate, "steady_orders_per_s": steady_rate,
            "last_synced_s": last_synced, "first_synced_s": first_synced,
            "published_per_s": publish_rate, "last_published_s": last_published,
            "first_published_s": first_published,
        },
        "salesforce": {
            "api_calls": calls, "startup_calls": startup_calls,
            "per_1000_orders": calls_per_1000, "stats_at_end": stats,
        },
        "peak_rss_mib": common::rss_json(&rss),
        "service_metrics": service_metrics,
        "postgres_per_order": pg_json,
        "verification": verification.to_json(),
        "table": t.to_json(),
    });

    let cumulative = |times: &[DateTime<Utc>]| {
        let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
            .chain(
                times
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (since_start(t), (i + 1) as f64)),
            )
            .collect();
        chart::thin(&points, 1000)
    };
    let target_end = orders as f64 / TARGET_ORDERS_PER_S;
    let x_max = last_synced.max(last_published).max(target_end) * 1.05;
    let svg = chart::render(&Chart {
        title: format!(
            "Draining {} orders: {drain_rate:.0} orders/s to the last synced",
            thousands(orders as f64)
        ),
        subtitle: format!(
            "outbox drained at {publish_rate:.0} events/s; Salesforce emulated at {} ms + 0–{} ms per call",
            args.stack.latency_ms, args.stack.jitter_ms
        ),
        x_label: "seconds since the relay started".into(),
        y_label: "orders".into(),
        x_max,
        y_max: orders as f64 * 1.02,
        series: vec![
            Series {
                name: "published (outbox.published_at)".into(),
                color: chart::ORANGE,
                points: cumulative(&published),
                dashed: false,
            },
            Series {
                name: "synced (orders.updated_at)".into(),
                color: chart::BLUE,
                points: cumulative(&synced),
                dashed: false,
            },
            Series {
                name: "target: 5,000 orders/s".into(),
                color: chart::RED,
                points: vec![(0.0, 0.0), (target_end, orders as f64)],
                dashed: true,
            },
        ],
        markers: Vec::new(),
        guides: Vec::new(),
        ..Default::default()
    });
    common::finish(stack, &t, &json, &[("progress.svg", svg)])
}
