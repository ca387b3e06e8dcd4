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

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use chrono::{SubsecRound, Utc};
use clap::Args;
use orderbridge_db::create::{self, Idempotency, create_order};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::chart::{self, Chart, Guide, Marker, Series};
use crate::load::{self, LoadResult, Outcome, Window};
use crate::procfs::{self, CpuSnapshot, CpuUsage};
use crate::report::{Goal, Table};
use crate::stack::{API, Stack, StackArgs, with_stack};
use crate::stats::Summary;
use crate::{common, verify, workload};

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

pub async fn run(args: IntakeArgs) -> Result<bool> {
    with_stack(args.stack.clone(), "intake", async |stack| {
        measure(stack, &args).await
    })
    .await
}

#[derive(Deserialize)]
struct Created {
    id: Uuid,
}

/// What happened around one phase (all its rounds): CPU, Postgres counters, load.
struct PhaseContext {
    cpu: CpuUsage,
    /// Postgres's counters over the measured windows.
    pg: common::PgCounters,
    load_before: Option<[f64; 3]>,
    load_after: Option<[f64; 3]>,
    /// (orders/s, 1-min load at the window's start) of each round.
    rounds: Vec<(f64, Option<f64>)>,
}

impl PhaseContext {
    fn new() -> Self {
        Self {
            cpu: CpuUsage {
                wall_s: 0.0,
                seconds: std::collections::BTreeMap::new(),
                machine_busy: None,
            },
            pg: common::PgCounters::default(),
            load_before: None,
            load_after: None,
            rounds: Vec::new(),
        }
    }

    fn add_cpu(&mut self, cpu: &CpuUsage) {
        let wall = self.cpu.wall_s + cpu.wall_s;
        self.cpu.machine_busy = match (self.cpu.machine_busy, cpu.machine_busy) {
            (Some(a), Some(b)) if wall > 0.0 => Some((a * self.cpu.wall_s + b * cpu.wall_s) / wall),
            (a, b) => a.or(b),
        };
        self.cpu.wall_s = wall;
        for (name, s) in &cpu.seconds {
            *self.cpu.seconds.entry(name.clone()).or_insert(0.0) += s;
        }
    }
}

/// One round of a phase: `drive` for `warmup` + `duration`, with CPU and Postgres counters
/// snapshotted at the window's edges; adds its figures to `result` and `ctx`.
#[allow(clippy::too_many_arguments)]
async fn round<F, Fut>(
    stack: &Stack,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    op: Arc<F>,
    next: Arc<AtomicUsize>,
    result: &mut LoadResult,
    ctx: &mut PhaseContext,
) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Outcome, Option<u16>)> + Send,
{
    let window = Window::new(Instant::now(), warmup, duration);
    let pids = stack.pids();
    let pool = stack.pool()?.clone();
    let sampler = async move {
        tokio::time::sleep_until(window.from.into()).await;
        let before = (
            CpuSnapshot::take(&pids),
            common::PgCounters::take(&pool).await,
            procfs::loadavg(),
        );
        tokio::time::sleep_until(window.to.into()).await;
        let cpu_after = CpuSnapshot::take(&pids);
        let load_after = procfs::loadavg();
        // Backends report their counters at transaction end, at most once a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let pg_after = common::PgCounters::take(&pool).await;
        (before, cpu_after, load_after, pg_after)
    };
    let (r, ((cpu0, pg0, load_before), cpu1, load_after, pg1)) =
        tokio::join!(load::drive(connections, window, op, next), sampler);
    ctx.add_cpu(&cpu0.usage_until(&cpu1));
    ctx.pg.add(&pg0?.delta(&pg1?));
    ctx.load_before = ctx.load_before.or(load_before);
    ctx.load_after = load_after;
    ctx.rounds.push((r.per_second(), load_before.map(|l| l[0])));
    result.merge(r);
    Ok(())
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
    let connections = args.connections as usize;
    let mut t = Table::new(format!(
        "orderbridge-bench intake: {connections} concurrent clients, {} s measured per phase in {} alternating rounds, after {} s warm-up",
        args.duration.as_secs_f64(),
        args.rounds,
        args.warmup.as_secs_f64()
    ));

    // The two phases alternate in rounds, so that the others' load on a shared machine, which
    // changes from minute to minute, weighs on both alike.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections + 1)
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = format!("intake-{}", Uuid::now_v7().simple());
    let ctx = Arc::new((http, api, key, run.clone()));
    let api_op = Arc::new(move |i| {
        let ctx = ctx.clone();
        async move {
            let (http, api, key, run) = &*ctx;
            post(http, api, key, run, i).await
        }
    });
    let pool = PgPoolOptions::new()
        .max_connections(args.connections)
        .min_connections(args.connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&stack.database_url)
        .await?;
    let direct_run = format!("direct-{}", Uuid::now_v7().simple());
    let shared = Arc::new((pool.clone(), client_id, direct_run));
    let direct_op = Arc::new(move |i| {
        let shared = shared.clone();
        async move {
            let (pool, client_id, run) = &*shared;
            match direct_order(pool, *client_id, run, i).await {
                Ok(id) => (Outcome::Accepted(id), None),
                Err(e) => (Outcome::Unknown(format!("{e:#}")), None),
            }
        }
    });
    let (api_next, direct_next) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut api_result, mut direct_result) = (LoadResult::default(), LoadResult::default());
    let (mut api_ctx, mut direct_ctx) = (PhaseContext::new(), PhaseContext::new());
    let rounds = args.rounds.max(1);
    let slice = args.duration / rounds;
    for r in 0..rounds {
        // The first round of each phase warms up fully; later ones only let the switch settle.
        let warmup = if r == 0 {
            args.warmup
        } else {
            args.warmup.min(Duration::from_secs(1))
        };
        tracing::info!(round = r + 1, rounds, connections, "API");
        round(
            stack,
            connections,
            warmup,
            slice,
            api_op.clone(),
            api_next.clone(),
            &mut api_result,
            &mut api_ctx,
        )
        .await?;
        tracing::info!(round = r + 1, rounds, connections, "direct");
        round(
            stack,
            connections,
            warmup,
            slice,
            direct_op.clone(),
            direct_next.clone(),
            &mut direct_result,
            &mut direct_ctx,
        )
        .await?;
    }
    let rss = stack.peak_rss_kib();
    pool.close().await;
    stack.check_running()?;

    tracing::info!(
        accepted = api_result.accepted.len(),
        "checking the accepted orders in Postgres"
    );
    let verification = verify::verify_intake(
        stack.pool()?,
        &run,
        &api_result.accepted,
        api_result.unknown,
        workload::LINES as i64,
    )
    .await?;

    // The table.
    let api_rate = api_result.per_second();
    let direct_rate = direct_result.per_second();
    let ratio = if direct_rate > 0.0 {
        api_rate / direct_rate
    } else {
        0.0
    };
    common::machine_context(
        &mut t,
        stack,
        api_ctx.load_before,
        direct_ctx.load_after,
        &api_ctx.cpu,
    );
    t.context(format!(
        "rounds, orders/s API / direct (1-min load): {}",
        api_ctx
            .rounds
            .iter()
            .zip(&direct_ctx.rounds)
            .map(|((a, la), (d, _))| format!(
                "{a:.0} / {d:.0} ({})",
                la.map_or_else(|| "?".to_owned(), |l| format!("{l:.1}"))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    t.context(format!(
        "all cores busy: API {}, direct {}",
        busy_text(&api_ctx.cpu),
        busy_text(&direct_ctx.cpu)
    ));
    t.context(format!(
        "only order-api runs (no relay, worker or emulator: intake ends at the commit); its pool: DB_MAX_CONNECTIONS={}",
        stack.setting("DB_MAX_CONNECTIONS").unwrap_or("16 (default)")
    ));
    t.context(
        "direct = the API's transaction via its own functions (advisory lock, idempotency lookup, order + lines, outbox event, idempotency key), one per order",
    );
    t.context(format!("output: {}", stack.out.display()));
    t.info(
        "API: orders/s (201s in the window)",
        format!("{api_rate:.0}"),
    );
    t.info(
        "direct Postgres: orders/s (commits in the window)",
        format!("{direct_rate:.0}"),
    );
    t.target(
        "API ÷ direct Postgres",
        ratio,
        format!("{ratio:.2}"),
        Goal::AtLeast(TARGET_RATIO),
        format!(">= {TARGET_RATIO}"),
    );
    for (label, r) in [
        ("API: POST → 201", &api_result),
        ("direct: BEGIN → COMMIT", &direct_result),
    ] {
        if let Some(s) = Summary::of(&r.latencies_ms) {
            t.info(
                format!("{label} p50 / p90 / p99 / max"),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms",
                    s.p50, s.p90, s.p99, s.max
                ),
            );
        }
    }
    let zero = common::PgCounters::default();
    let api_pg = zero.rows_labelled(
        &api_ctx.pg,
        api_result.accepted_in_window,
        "API: Postgres per order: commits, rows inserted / updated / fetched",
        &mut t,
    );
    let direct_pg = zero.rows_labelled(
        &direct_ctx.pg,
        direct_result.accepted_in_window,
        "direct: Postgres per order: commits, rows inserted / updated / fetched",
        &mut t,
    );
    phase_cpu_rows(&mut t, "API", &api_ctx.cpu, api_result.accepted_in_window);
    phase_cpu_rows(
        &mut t,
        "direct",
        &direct_ctx.cpu,
        direct_result.accepted_in_window,
    );
    common::rss_rows(&mut t, &rss, &[]);
    t.check(
        "API requests refused or failed (in the window)",
        format!(
            "{} ({} refused, {} unknown outcome in all)",
            api_result.failed_in_window, api_result.refused, api_result.unknown
        ),
        api_result.failed_in_window == 0,
    );
    t.check(
        "direct transactions failed (in the window)",
        direct_result.failed_in_window.to_string(),
        direct_result.failed_in_window == 0,
    );
    t.check(
        "accepted (201) orders not in Postgres",
        verification.missing.len().to_string(),
        verification.missing.is_empty(),
    );
    t.check(
        "orders in Postgres no 201 announced",
        verification.unexpected.to_string(),
        verification.unexpected == 0,
    );
    t.check(
        "accepted orders without 3 lines, 1 event, 1 idempotency key",
        verification.incomplete.len().to_string(),
        verification.incomplete.is_empty(),
    );

    let json = json!({
        "command": "intake",
        "started_at": Utc::now(),
        "args": {
            "duration_s": args.duration.as_secs_f64(), "warmup_s": args.warmup.as_secs_f64(),
            "connections": connections, "rounds": args.rounds,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, api_ctx.load_before, direct_ctx.load_after, &api_ctx.cpu),
        "api": api_result.to_json(),
        "direct": direct_result.to_json(),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "phases": {
            "api": phase_json(&api_ctx, api_pg),
            "direct": phase_json(&direct_ctx, direct_pg),
        },
        "peak_rss_mib": common::rss_json(&rss),
        "verification": verification.to_json(),
        "table": t.to_json(),
    });
    let svg = latency_chart(
        &format!(
            "{connections} clients; API {api_rate:.0} orders/s, direct {direct_rate:.0}/s (ratio {ratio:.2})"
        ),
        &api_result.latencies_ms,
        &direct_result.latencies_ms,
    );
    let ok = common::finish(stack, &t, &json, &[("latency.svg", svg)])?;
    Ok(ok && verification.ok())
}

/// One `POST /v1/orders`; a 503 or a transport error may still have committed (the API's
/// transaction is never cancelled half-way), so its outcome is unknown.
async fn post(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    run: &str,
    i: usize,
) -> (Outcome, Option<u16>) {
    let body = match serde_json::to_vec(&workload::order_request(run, i)) {
        Ok(b) => b,
        Err(e) => return (Outcome::Refused(format!("cannot serialise: {e}")), None),
    };
    let resp = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("{run}-{i}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return (Outcome::Unknown(format!("transport: {e}")), None),
    };
    let status = resp.status();
    let code = Some(status.as_u16());
    if status == reqwest::StatusCode::CREATED {
        return match resp.json::<Created>().await {
            Ok(c) => (Outcome::Accepted(c.id), code),
            Err(e) => (Outcome::Unknown(format!("unreadable 201 body: {e}")), code),
        };
    }
    let text = resp.text().await.unwrap_or_default();
    let error = format!(
        "{status}: {}",
        orderbridge_domain::text::truncate(&text, 200)
    );
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        (Outcome::Unknown(error), code)
    } else {
        (Outcome::Refused(error), code)
    }
}

/// The API's order-creating transaction, `orderbridge_db::create::create_order`, called directly:
/// the same function, SQL and round trips, without HTTP.
async fn direct_order(pool: &PgPool, client_id: Uuid, run: &str, i: usize) -> Result<Uuid> {
    // Postgres keeps microseconds; the API truncates the same way.
    let order = workload::stored_order(run, i, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let key = format!("{run}-{i}");
    // The API stores SHA-256 of the request; any 32 bytes cost Postgres the same.
    let mut fingerprint = [0u8; 32];
    fingerprint[..16].copy_from_slice(order.id.as_bytes());
    let idempotency = Idempotency {
        key: key.clone(),
        fingerprint,
        expires_at: Utc::now() + chrono::Duration::hours(24),
    };
    match create_order(pool, client_id, Some(&idempotency), order, Some(key)).await? {
        create::Created::New { order, .. } => Ok(order.id),
        create::Created::Replayed(_) => {
            Err(anyhow!("idempotency key {} already used", idempotency.key))
        }
    }
}

fn busy_text(cpu: &CpuUsage) -> String {
    cpu.machine_busy
        .map_or_else(|| "?".to_owned(), |b| format!("{:.0}%", b * 100.0))
}

/// CPU per order of the processes that matter in a phase.
fn phase_cpu_rows(t: &mut Table, label: &str, cpu: &CpuUsage, orders: usize) {
    let n = orders.max(1) as f64;
    let parts: Vec<String> = cpu
        .seconds
        .iter()
        .filter(|(_, s)| **s * 1e3 / n >= 0.005)
        .map(|(name, s)| format!("{name} {:.2}", s * 1e3 / n))
        .collect();
    t.info(
        format!("{label}: CPU ms per order"),
        if parts.is_empty() {
            "?".to_owned()
        } else {
            parts.join(", ")
        },
    );
}

fn phase_json(c: &PhaseContext, pg: Value) -> Value {
    json!({
        "loadavg_before": c.load_before,
        "loadavg_after": c.load_after,
        "rounds": c.rounds.iter().map(|(r, l)| json!({"orders_per_s": r, "loadavg_1m": l})).collect::<Vec<_>>(),
        "cpu_busy_share": c.cpu.machine_busy,
        "cpu_seconds": c.cpu.seconds,
        "cpu_window_s": c.cpu.wall_s,
        "postgres_per_order": pg,
    })
}

/// CDFs of the API's POST → 201 and of the direct transaction.
fn latency_chart(describe: &str, api: &[f64], direct: &[f64]) -> String {
    let api_s = Summary::of(api);
    let direct_s = Summary::of(direct);
    let p99 = api_s
        .map_or(0.0, |s| s.p99)
        .max(direct_s.map_or(0.0, |s| s.p99));
    let x_max = (p99 * 1.3).max(1.0);
    let mut markers = Vec::new();
    for (s, color) in [(api_s, chart::BLUE), (direct_s, chart::GREEN)] {
        if let Some(s) = s {
            for (label, v, p) in [("p50", s.p50, 50.0), ("p99", s.p99, 99.0)] {
                markers.push(Marker {
                    x: v,
                    y: p,
                    label: format!("{label} {v:.1} ms"),
                    color,
                });
            }
        }
    }
    chart::render(&Chart {
        title: "Intake latency, cumulative".into(),
        subtitle: format!("{describe}; x axis cut at 1.3 × the larger p99"),
        x_label: "latency (ms)".into(),
        y_label: "orders at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "API: POST → 201".into(),
                color: chart::BLUE,
                points: chart::cdf_points(api),
                dashed: false,
            },
            Series {
                name: "direct Postgres: BEGIN → COMMIT".into(),
                color: chart::GREEN,
                points: chart::cdf_points(direct),
                dashed: false,
            },
        ],
        markers,
        guides: vec![Guide::p99()],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_renders_without_data() {
        let svg = latency_chart("t", &[], &[]);
        assert!(svg.starts_with("<svg"));
        let svg = latency_chart("t", &[1.0, 2.0, 3.0], &[0.5, 1.0]);
        assert!(svg.contains("<polyline"));
    }
}
