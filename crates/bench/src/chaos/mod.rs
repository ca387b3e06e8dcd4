//! `chaos`: orders posted at a steady rate while faults hit every part of the pipeline, then,
//! once everything is quiet, every order classified (ok, lost, duplicated, unexpected, failed).
//! The run fails unless nothing was lost, duplicated or unexpected, no real order failed, the
//! injected poison was dead-lettered and every order ended synced or failed.
//! See crates/bench/CHAOS.md for the faults and the classification.

mod classify;
mod faults;
mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser};
use orderbridge_cli::dlq::DlqCommand;
use orderbridge_cli::reconcile::{self, Scope};
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::chart::{self, Band, Chart, Series};
use crate::common;
use crate::poster::{Posted, Poster, Retry, post_paced};
use crate::procfs::{self, CpuSnapshot};
use crate::report::{Table, thousands};
use crate::stack::{Stack, StackArgs, interruptible};

use classify::{DeadLetter, Inputs, Stored, classify};
use faults::{CloseScope, Executor};
use plan::{FaultKind, PlanInput, Planned};

/// Service settings the chaos run changes unless `--env` sets them: short retry tiers and
/// probes, so the pipeline recovers within seconds of a fault instead of the production
/// defaults' minutes (a 10-minute retry tier would make quiescence take 10 minutes).
const CHAOS_ENV: [(&str, &str); 4] = [
    ("BROKER_RETRY_TIERS", "1s,5s,15s"),
    ("WORKER_BUDGET_PROBE", "2s"),
    ("WORKER_BREAKER_PROBE_MAX", "5s"),
    ("WORKER_SHUTDOWN_GRACE", "10s"),
];

/// The longest the client waits for one POST before retrying it (same Idempotency-Key).
const POST_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// Which broker connections `broker-close` closes: the run's services' own (`own`), or
    /// every connection on the broker (`all`: `rabbitmqctl close_all_connections`; only where
    /// nobody else uses the broker).
    #[arg(long, value_enum, default_value = "own")]
    pub close_connections: CloseScope,
    /// Only print the fault schedule for these settings, start nothing.
    #[arg(long)]
    pub plan_only: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

pub async fn run(mut args: ChaosArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number (the chaos run posts at a steady rate)");
    }
    let seed = args.seed.unwrap_or_else(plan::random_seed);
    let kinds = if args.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        let mut k = args.faults.clone();
        k.sort();
        k.dedup();
        k
    };
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
    // The chaos settings go first, so the caller's --env wins.
    let mut env: Vec<(String, String)> = CHAOS_ENV
        .iter()
        .filter(|(k, _)| !args.stack.env.iter().any(|(ek, _)| ek == k))
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.append(&mut args.stack.env);
    args.stack.env = env;

    let mut stack = Stack::create(args.stack.clone(), "chaos").await?;
    let result = interruptible(chaos(&mut stack, &args, seed, &kinds, &schedule)).await;
    if let Err(e) = &result {
        eprintln!("chaos seed {seed}: the run could not be done: {e:#}");
    }
    stack.shutdown().await;
    result
}

#[derive(Default)]
struct PostTotals {
    accepted: HashMap<Uuid, usize>,
    refused: Vec<(usize, String)>,
    attempts: u64,
    retried_orders: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    duplicate_client_ref: u64,
    /// Orders accepted twice under different ids (a second 201 with another id for one index).
    double_accepted: u64,
    last_accepted: Option<Instant>,
}

/// Posts every order at `rate`, each until accepted or `give_up` (see [`Poster::post`]).
async fn post_all(
    poster: Arc<Poster>,
    orders: usize,
    rate: f64,
    connections: usize,
    give_up: Instant,
) -> PostTotals {
    let retry = Retry {
        attempts: u32::MAX,
        give_up: Some(give_up),
        timeout: Some(POST_TIMEOUT),
    };
    let mut totals = PostTotals::default();
    let job = |i, _due| {
        let poster = poster.clone();
        async move { (i, poster.post(i, retry).await) }
    };
    let absorb = |(i, p): (usize, Posted)| {
        totals.attempts += u64::from(p.attempts);
        if p.retried() {
            totals.retried_orders += 1;
        }
        for s in &p.statuses {
            *totals.statuses.entry(*s).or_insert(0) += 1;
        }
        totals.transport_errors += u64::from(p.transport_errors);
        totals.duplicate_client_ref += u64::from(p.duplicate_client_ref);
        match p.id {
            Some(id) => {
                if totals.accepted.insert(id, i).is_some() {
                    totals.double_accepted += 1;
                }
                totals.last_accepted = Some(Instant::now());
            }
            None => totals
                .refused
                .push((i, p.error.unwrap_or_else(|| "unknown".into()))),
        }
    };
    post_paced(orders, rate, connections, job, absorb).await;
    totals
}

/// What the quiescence wait saw last.
#[derive(Debug, Default)]
struct Quiet {
    reached: bool,
    waited_s: f64,
    not_terminal: i64,
    unpublished: i64,
    queues: BTreeMap<String, u64>,
}

/// Waits until every order is synced or failed, the outbox is published and the namespace's
/// queues (but the dead letters) are empty, twice in a row a second apart; or `deadline`.
async fn wait_quiet(stack: &mut Stack, deadline: Instant) -> Result<Quiet> {
    let started = Instant::now();
    let mut quiet = Quiet::default();
    let mut calm = 0;
    let dead_letters = format!("{}.dead-letters", stack.namespace);
    loop {
        stack.check_running()?;
        let (not_terminal, unpublished): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE sync_state NOT IN ('synced', 'failed')),
                    (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
        )
        .fetch_one(stack.pool()?)
        .await?;
        let queues = match faults::queue_depths(&stack.args.amqp_url, &stack.namespace).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the queue depths");
                HashMap::new()
            }
        };
        let busy_queues: u64 = queues
            .iter()
            .filter(|(name, _)| **name != dead_letters)
            .map(|(_, n)| n)
            .sum();
        quiet.not_terminal = not_terminal;
        quiet.unpublished = unpublished;
        quiet.queues = queues.into_iter().collect();
        quiet.waited_s = started.elapsed().as_secs_f64();
        tracing::info!(
            not_terminal,
            unpublished,
            busy_queues,
            "waiting for quiescence"
        );
        if not_terminal == 0 && unpublished == 0 && busy_queues == 0 && !quiet.queues.is_empty() {
            calm += 1;
            if calm >= 2 {
                quiet.reached = true;
                return Ok(quiet);
            }
        } else {
            calm = 0;
        }
        if Instant::now() > deadline {
            return Ok(quiet);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The dead-letter queue's contents, each mapped to its order through the outbox's event ids.
async fn dead_letters(stack: &Stack) -> Result<Vec<DeadLetter>> {
    #[derive(Deserialize)]
    struct Line {
        id: String,
        reason: Option<String>,
        error_code: Option<String>,
        origin_queue: Option<String>,
    }
    let mut out = Vec::new();
    orderbridge_cli::dlq::run(
        DlqCommand::List {
            limit: 1_000_000,
            json: true,
        },
        &stack.broker_config()?,
        &mut out,
    )
    .await
    .context("cannot list the dead letters")?;
    let text = String::from_utf8_lossy(&out);
    let mut letters = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let l: Line = serde_json::from_str(line).context("unreadable dlq list line")?;
        letters.push(DeadLetter {
            message_id: l.id,
            reason: l.reason,
            error_code: l.error_code,
            origin_queue: l.origin_queue,
            order_id: None,
        });
    }
    let event_ids: Vec<Uuid> = letters
        .iter()
        .filter_map(|d| d.message_id.parse().ok())
        .collect();
    let owners: HashMap<Uuid, Uuid> = sqlx::query_as::<_, (Uuid, Uuid)>(
        "SELECT event_id, aggregate_id FROM outbox WHERE event_id = ANY($1)",
    )
    .bind(&event_ids)
    .fetch_all(stack.pool()?)
    .await?
    .into_iter()
    .collect();
    for d in &mut letters {
        d.order_id = d
            .message_id
            .parse::<Uuid>()
            .ok()
            .and_then(|e| owners.get(&e).copied());
    }
    Ok(letters)
}

/// An order at the end: id, sync state, last error code, created_at, and when it was written to
/// Salesforce (synced ones).
type OrderRow = (
    Uuid,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// A Salesforce client for the emulator, as the services are configured (the dev credentials
/// are the client's defaults).
fn salesforce_client(emulator: &str) -> Result<Client> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        salesforce: SalesforceConfig,
    }
    let config = Wrapper::try_parse_from(["orderbridge-bench", "--sf-login-url", emulator])?;
    Ok(Client::new(&config.salesforce)?)
}

async fn chaos(
    stack: &mut Stack,
    args: &ChaosArgs,
    seed: u64,
    kinds: &[FaultKind],
    schedule: &[Planned],
) -> Result<bool> {
    let (key, api) = stack.start_pipeline().await?;
    let orders = args.orders as usize;
    let connections = args.connections as usize;
    let ctx = Arc::new(Poster {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 1)
            .build()?,
        api,
        key,
        run: format!("chaos-{}", Uuid::now_v7().simple()),
    });

    let load_before = procfs::loadavg();
    let cpu_before = CpuSnapshot::take(&stack.pids());
    tracing::info!(
        orders,
        rate = args.rate,
        seed,
        faults = schedule.len(),
        "posting under faults"
    );
    let started = Instant::now();
    let started_wall = Utc::now();
    let posting_s = orders as f64 / args.rate;
    let give_up = started + Duration::from_secs_f64(posting_s) + args.stack.timeout;
    let poster = tokio::spawn(post_all(
        ctx.clone(),
        orders,
        args.rate,
        connections,
        give_up,
    ));

    let mut executor = Executor::new(stack, schedule, args.close_connections);
    executor.run(started).await;
    let (events, poison_sent) = (
        std::mem::take(&mut executor.events),
        std::mem::take(&mut executor.poison_sent),
    );
    drop(executor);
    let posted = poster.await?;
    let posting_done_s = started.elapsed().as_secs_f64();
    tracing::info!(
        accepted = posted.accepted.len(),
        "posting and faults done; waiting for quiescence"
    );

    let quiet = wait_quiet(stack, Instant::now() + args.stack.timeout).await?;
    let quiet_at_s = started.elapsed().as_secs_f64();
    let stopped = stack.reap_stopped().await;
    let unclean: Vec<String> = stopped
        .iter()
        .filter(|(_, _, _, clean)| !clean)
        .map(|(name, pid, status, _)| format!("{name} {pid}: {status}"))
        .collect();
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    let rss = stack.peak_rss_kib();
    let emulator_stats = stack.emulator_stats().await?;

    // Classification.
    tracing::info!("classifying: reconcile against Salesforce, dead letters, Postgres");
    let mapping_file = stack
        .args
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "WORKER_MAPPING_FILE")
        .map(|(_, v)| std::path::PathBuf::from(v));
    let mapping = Mapping::load(mapping_file.as_deref())?;
    let client = salesforce_client(stack.emulator()?)?;
    let report = reconcile::reconcile(stack.pool()?, &client, &mapping, Scope::all()).await?;
    let letters = dead_letters(stack).await?;
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, sync_state, last_error_code, created_at,
                    CASE WHEN sync_state = 'synced' THEN coalesce(synced_at, updated_at) END
             FROM orders",
    )
    .fetch_all(stack.pool()?)
    .await?;
    let postgres: HashMap<Uuid, Stored> = rows
        .iter()
        .map(|(id, state, code, _, _)| {
            (
                *id,
                Stored {
                    state: state.clone(),
                    error_code: code.clone(),
                },
            )
        })
        .collect();
    let accepted: HashSet<Uuid> = posted.accepted.keys().copied().collect();
    let outcome = classify(&Inputs {
        accepted: &accepted,
        postgres: &postgres,
        report: &report,
        dead_letters: &letters,
        poison_sent: &poison_sent,
    });

    // The table.
    let mut t = Table::new(format!(
        "orderbridge-bench chaos: {} orders at {}/s under {} faults and {} poison messages; seed {seed}",
        thousands(orders as f64),
        args.rate,
        schedule.iter().filter(|p| p.kind.is_some()).count(),
        poison_sent.len()
    ));
    common::machine_context(&mut t, stack, load_before, load_after, &cpu);
    t.context(format!(
        "repeat the schedule: orderbridge-bench chaos --seed {seed} --orders {orders} --rate {} --fault-gap {} --fault-window {} --poison {}{}",
        args.rate,
        format_ms(args.fault_gap),
        format_ms(args.fault_window),
        args.poison,
        if args.faults.is_empty() {
            String::new()
        } else {
            format!(
                " --faults {}",
                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
            )
        }
    ));
    t.context(format!(
        "Salesforce emulated at {} ms + 0–{} ms per call; broker-close closes {} connections",
        args.stack.latency_ms,
        args.stack.jitter_ms,
        match args.close_connections {
            CloseScope::Own => "the services' own",
            CloseScope::All => "ALL the broker's",
        }
    ));
    t.context(format!("output: {}", stack.out.display()));

    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.phase == "begin") {
        let entry = by_kind.entry(e.fault).or_insert((0, 0));
        entry.0 += 1;
        if !e.ok {
            entry.1 += 1;
        }
    }
    for (kind, (n, failed)) in &by_kind {
        let failed = if *failed > 0 {
            format!(" ({failed} could not be done)")
        } else {
            String::new()
        };
        t.info(format!("fault {kind}"), format!("{n}{failed}"));
    }
    t.info(
        "orders accepted (201)",
        format!(
            "{} of {}",
            thousands(accepted.len() as f64),
            thousands(orders as f64)
        ),
    );
    let statuses: Vec<String> = posted
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    t.info(
        "POST attempts (answers; transport errors)",
        format!(
            "{} ({}; {})",
            posted.attempts,
            statuses.join(", "),
            posted.transport_errors
        ),
    );
    t.info(
        "orders that needed retries (same Idempotency-Key)",
        posted.retried_orders.to_string(),
    );
    t.info(
        "posting and faults done after",
        format!("{posting_done_s:.1} s (schedule {posting_s:.1} s)"),
    );
    t.info(
        "quiet after",
        format!(
            "{quiet_at_s:.1} s ({:.1} s after the last fault step)",
            quiet.waited_s
        ),
    );
    let reasons = classify::reasons(&letters);
    t.info(
        "dead letters by reason",
        if reasons.is_empty() {
            "none".into()
        } else {
            reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    // Memory is the benchmarks' subject (peak RSS is in report.json); processes restarted and
    // doubled here make a per-service figure meaningless.
    t.check_target(
        "ok: synced, exactly once in Salesforce with every item",
        format!("{} of {}", outcome.ok, outcome.accepted),
        "all",
        outcome.ok == outcome.accepted,
    );
    t.check(
        "lost: accepted, not in Salesforce, not failed",
        outcome.lost.len().to_string(),
        outcome.lost.is_empty(),
    );
    t.check(
        "duplicated: external ids (orders, items) on > 1 record",
        outcome.duplicated.len().to_string(),
        outcome.duplicated.is_empty(),
    );
    t.check(
        "unexpected: Salesforce records for no accepted order",
        outcome.unexpected.len().to_string(),
        outcome.unexpected.is_empty(),
    );
    t.check(
        "failed: real orders in state failed",
        outcome.failed.len().to_string(),
        outcome.failed.is_empty(),
    );
    t.check(
        "dead letters other than the injected poison",
        outcome.real_dead_letters.len().to_string(),
        outcome.real_dead_letters.is_empty(),
    );
    t.check_target(
        "poison messages dead-lettered",
        format!("{} of {}", outcome.poison_dead_lettered, poison_sent.len()),
        "all",
        outcome.poison_missing.is_empty(),
    );
    t.check(
        "mismatched: Salesforce id or item count differs",
        outcome.mismatched.len().to_string(),
        outcome.mismatched.is_empty(),
    );
    t.check_target(
        "not terminal: accepted, neither synced nor failed; pipeline quiet",
        format!(
            "{}{}",
            outcome.not_terminal.len(),
            if quiet.reached {
                String::new()
            } else {
                format!(
                    "; NOT quiet after {:.0} s (unpublished {}, queues {:?})",
                    quiet.waited_s, quiet.unpublished, quiet.queues
                )
            }
        ),
        "= 0, quiet",
        outcome.not_terminal.is_empty() && quiet.reached,
    );
    t.check(
        "services stopped with SIGTERM that did not exit cleanly",
        if unclean.is_empty() {
            format!("0 of {}", stopped.len())
        } else {
            unclean.join("; ")
        },
        unclean.is_empty(),
    );
    t.check(
        "POSTs never accepted (after retries until the timeout)",
        posted.refused.len().to_string(),
        posted.refused.is_empty(),
    );
    t.check(
        "idempotency: 409 duplicate client_ref on a retry, or two ids for one order",
        format!(
            "{} / {}",
            posted.duplicate_client_ref, posted.double_accepted
        ),
        posted.duplicate_client_ref == 0 && posted.double_accepted == 0,
    );

    let json = json!({
        "command": "chaos",
        "seed": seed,
        "started_at": started_wall,
        "args": {
            "orders": orders, "rate": args.rate, "connections": connections,
            "faults": kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "fault_gap_s": args.fault_gap.as_secs_f64(),
            "fault_window_s": args.fault_window.as_secs_f64(),
            "poison": args.poison,
            "close_connections": args.close_connections,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, load_before, load_after, &cpu),
        "plan": schedule,
        "timeline": events,
        "orders": {
            "requested": orders,
            "accepted": accepted.len(),
            "refused": posted.refused.len(),
            "refused_sample": posted.refused.iter().take(20)
                .map(|(i, e)| json!({"index": i, "error": e})).collect::<Vec<_>>(),
            "in_postgres": postgres.len(),
        },
        "post": {
            "attempts": posted.attempts,
            "retried_orders": posted.retried_orders,
            "retries": posted.attempts.saturating_sub(accepted.len() as u64),
            "statuses": posted.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "transport_errors": posted.transport_errors,
            "duplicate_client_ref": posted.duplicate_client_ref,
            "double_accepted": posted.double_accepted,
        },
        "quiescence": {
            "reached": quiet.reached, "waited_s": quiet.waited_s,
            "posting_done_s": posting_done_s, "quiet_at_s": quiet_at_s,
            "not_terminal": quiet.not_terminal, "unpublished": quiet.unpublished,
            "queues": quiet.queues,
        },
        "stopped_with_sigterm": stopped.iter()
            .map(|(name, pid, status, clean)| json!({"service": name, "pid": pid, "status": status, "clean": clean}))
            .collect::<Vec<_>>(),
        "classification": outcome.to_json(),
        "reconcile": {
            "counts": report.counts,
            "missing": report.missing.len(),
            "missing_failed": report.missing_failed.len(),
            "duplicated": report.duplicated.len(),
            "mismatched": report.mismatched.len(),
            "orphaned": report.orphaned.len(),
        },
        "dead_letters": {
            "total": letters.len(),
            "by_reason": reasons,
            "poison_sent": poison_sent,
            "entries": letters.iter().take(100).collect::<Vec<_>>(),
        },
        "salesforce": {"stats_at_end": emulator_stats},
        "peak_rss_mib": common::rss_json(&rss),
        "table": t.to_json(),
    });

    let svg = timeline_chart(
        &format!(
            "seed {seed}; {} orders at {}/s; Salesforce {} ms + 0–{} ms per call",
            thousands(orders as f64),
            args.rate,
            args.stack.latency_ms,
            args.stack.jitter_ms
        ),
        started_wall,
        &rows,
        &events,
        quiet_at_s,
        orders,
    );
    common::finish(stack, &t, &json, &[("timeline.svg", svg)])
}

/// A duration as `--fault-gap` takes it back.
fn format_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Accepted and synced orders over time, with the faults as bars in one lane per kind.
fn timeline_chart(
    describe: &str,
    started: DateTime<Utc>,
    rows: &[OrderRow],
    events: &[faults::Event],
    end_s: f64,
    orders: usize,
) -> String {
    let secs = |t: DateTime<Utc>| (t - started).num_milliseconds() as f64 / 1e3;
    let cumulative = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        let points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
            .chain(times.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)))
            .collect();
        chart::thin(&points, 1500)
    };
    let accepted = cumulative(rows.iter().map(|r| secs(r.3)).collect());
    let synced = cumulative(rows.iter().filter_map(|r| r.4.map(secs)).collect());
    let lanes: Vec<&str> = FaultKind::ALL
        .iter()
        .map(|k| k.name())
        .chain(std::iter::once("poison"))
        .collect();
    let mut bands = Vec::new();
    let mut open: HashMap<usize, f64> = HashMap::new();
    for e in events {
        let lane = lanes.iter().position(|l| *l == e.fault).unwrap_or(0);
        match e.phase {
            "begin" => {
                open.insert(e.id, e.at_s);
                let instant = !matches!(
                    FaultKind::ALL.get(lane),
                    Some(k) if k.has_window()
                );
                if instant {
                    bands.push(Band {
                        x0: e.at_s,
                        x1: e.at_s,
                        lane,
                        color: if e.ok { chart::RED } else { chart::GREY },
                    });
                }
            }
            _ => {
                let x0 = open.remove(&e.id).unwrap_or(e.at_s);
                bands.push(Band {
                    x0,
                    x1: e.at_s,
                    lane,
                    color: if e.ok { chart::ORANGE } else { chart::GREY },
                });
            }
        }
    }
    chart::render(&Chart {
        title: "Chaos run: orders accepted and synced while faults hit".into(),
        subtitle: describe.into(),
        x_label: "seconds since posting started".into(),
        y_label: "orders".into(),
        x_max: end_s.max(1.0) * 1.02,
        y_max: orders as f64 * 1.5,
        series: vec![
            Series {
                name: "accepted (created_at)".into(),
                color: chart::PURPLE,
                points: accepted,
                dashed: false,
            },
            Series {
                name: "synced (written to Salesforce)".into(),
                color: chart::BLUE,
                points: synced,
                dashed: false,
            },
        ],
        markers: Vec::new(),
        guides: Vec::new(),
        lanes: lanes.iter().map(|l| (*l).to_owned()).collect(),
        bands,
    })
}
