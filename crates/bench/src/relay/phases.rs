//! Phases 2 and 3 of `relay`, against the real outbox-relay: saturation (a backlog written
//! before the relay starts) and the fixed rate (orders committed at `--rate`, paced like the
//! other suites' open-loop load by [`post_paced`]). One [`Consumer`] on the work queue
//! receives both phases' events.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, SubsecRound, Utc};
use orderbridge_broker::{BrokerConfig, Session};
use orderbridge_domain::ClientScope;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::RelayArgs;
use super::consume::{Consumer, Received};
use crate::common::{Clock, PgCounters};
use crate::poster::post_paced;
use crate::procfs::{self, CpuSnapshot, CpuUsage};
use crate::snapshot;
use crate::stack::Stack;
use crate::workload;

/// What the saturation phase measured.
pub struct Saturation {
    pub backlog: usize,
    /// The relay's start on both clocks.
    pub clock: Clock,
    /// 1-min load just before the relay started.
    pub load_before: Option<[f64; 3]>,
    /// The bench received the whole backlog (before the timeout).
    pub drained: bool,
    /// Relay start → the backlog's last message received, s.
    pub drain_received: f64,
    /// Every `published_at` once the backlog is marked, earliest first.
    pub published: Vec<DateTime<Utc>>,
    pub cpu: CpuUsage,
}

/// Writes the backlog, starts the consumer and the relay, and waits until the backlog is
/// received and marked published. The consumer keeps running for the fixed rate.
pub async fn saturation(
    stack: &mut Stack,
    args: &RelayArgs,
    client_id: Uuid,
    session: &Session,
    config: &BrokerConfig,
    work_queue: String,
) -> Result<(Saturation, Consumer)> {
    let backlog = args.backlog as usize;
    if backlog > 0 {
        tracing::info!(backlog, "writing the backlog");
        let run = format!("backlog-{}", Uuid::now_v7().simple());
        workload::insert_backlog(stack.pool()?, client_id, &run, backlog, 1000).await?;
        workload::analyze(stack.pool()?).await?;
    }
    let consumer = Consumer::start(session, config, work_queue).await?;
    let load_before = procfs::loadavg();
    let clock = Clock::start();
    let mut relays = Vec::new();
    for _ in 0..args.relays {
        relays.push(stack.spawn_relay()?);
    }
    let cpu_before = CpuSnapshot::take(&[]).with_new_processes(&stack.pids());
    for pid in relays {
        stack.wait_ready_pid(pid).await?;
    }
    let drained = if backlog > 0 {
        consumer.wait_for(backlog, stack.args.timeout).await
    } else {
        true
    };
    let drain_received = clock.started.elapsed().as_secs_f64();
    // The bench may receive a batch before the relay's marking transaction commits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while backlog > 0 && Instant::now() < deadline {
        if snapshot::unpublished(stack.pool()?).await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let published = snapshot::published_times(stack.pool()?).await?;
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    stack.check_running()?;
    let saturation = Saturation {
        backlog,
        clock,
        load_before,
        drained,
        drain_received,
        published,
        cpu,
    };
    Ok((saturation, consumer))
}

/// What the fixed-rate phase measured, and everything the consumer received in both phases.
pub struct FixedRate {
    pub rate: RateResult,
    /// When the last commit was answered.
    pub ended: Instant,
    pub cpu: CpuUsage,
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    /// Every committed event (backlog and fixed rate) was received before the time limit.
    pub all_received: bool,
    pub pg_before: PgCounters,
    pub pg_after: PgCounters,
    pub scraped: Vec<(String, String)>,
    pub rss: Vec<(String, Option<u64>)>,
    pub got: Received,
}

/// Commits orders at `--rate` for `--warmup` + `--duration`, waits for the consumer to get
/// them, stops it, and takes the closing readings.
pub async fn fixed_rate(
    stack: &mut Stack,
    args: &RelayArgs,
    client_id: Uuid,
    backlog: usize,
    consumer: Consumer,
) -> Result<FixedRate> {
    let writers = PgPoolOptions::new()
        .max_connections(args.connections)
        .min_connections(args.connections)
        .connect(&stack.database_url)
        .await?;
    let pg_before = PgCounters::take(stack.pool()?).await?;
    let cpu_before = CpuSnapshot::take(&stack.pids());
    let load_before = procfs::loadavg();
    let run = format!("rate-{}", Uuid::now_v7().simple());
    tracing::info!(rate = args.rate, "fixed-rate phase");
    let client = workload::client_scope(stack.pool()?, client_id).await?;
    let rate = commit_at_rate(writers.clone(), client, args, run).await;
    let ended = Instant::now();
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    let all_received = consumer
        .wait_for(backlog + rate.committed.len(), Duration::from_secs(60))
        .await;
    writers.close().await;
    let got = consumer.stop().await;
    stack.check_running()?;
    let scraped = stack.scrape_metrics().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pg_after = PgCounters::take(stack.pool()?).await?;
    let rss = stack.peak_rss_kib();
    Ok(FixedRate {
        rate,
        ended,
        cpu,
        load_before,
        load_after,
        all_received,
        pg_before,
        pg_after,
        scraped,
        rss,
        got,
    })
}

/// One committed event of the fixed-rate phase.
#[derive(Clone, Copy)]
pub struct Committed {
    pub event_id: Uuid,
    pub due: Instant,
    pub committed: Instant,
}

/// An order with its event in one transaction, as the API writes them (without the idempotency
/// key, which the relay never reads).
async fn commit_order(
    pool: &PgPool,
    client: &ClientScope,
    run: &str,
    i: usize,
    events_only: bool,
) -> Result<Uuid> {
    let order = workload::stored_order(run, i, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let envelope = workload::submitted(&order, client, format!("{run}-{i}"));
    let mut tx = pool.begin().await?;
    if !events_only {
        orderbridge_db::create::insert_order(&mut tx, client.id, &order).await?;
    }
    orderbridge_db::outbox::enqueue(&mut *tx, "order", order.id.get(), &envelope).await?;
    tx.commit().await?;
    Ok(envelope.id.get())
}

pub struct RateResult {
    pub committed: Vec<Committed>,
    pub errors: usize,
    pub error_sample: Vec<String>,
    /// The measured window: after the warm-up, for `--duration`.
    pub window: (Instant, Instant),
}

impl RateResult {
    fn failed(&mut self, error: String) {
        self.errors += 1;
        if self.error_sample.len() < 5 {
            self.error_sample.push(error);
        }
    }
}

/// Commits order `i` at `start + i / rate` (open loop) on at most `--connections` writers.
async fn commit_at_rate(
    pool: PgPool,
    client: ClientScope,
    args: &RelayArgs,
    run: String,
) -> RateResult {
    let client = std::sync::Arc::new(client);
    let start = Instant::now();
    let window = (start + args.warmup, start + args.warmup + args.duration);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).ceil() as usize;
    let run = std::sync::Arc::new(run);
    let events_only = args.events_only;
    let mut result = RateResult {
        committed: Vec::with_capacity(total),
        errors: 0,
        error_sample: Vec::new(),
        window,
    };
    let job = |i, due| {
        let (pool, run, client) = (pool.clone(), run.clone(), client.clone());
        async move {
            let id = commit_order(&pool, &client, &run, i, events_only).await;
            let committed = Instant::now();
            id.map(|event_id| Committed {
                event_id,
                due,
                committed,
            })
        }
    };
    let absorb = |r: Result<Committed>| match r {
        Ok(c) => result.committed.push(c),
        Err(e) => result.failed(format!("{e:#}")),
    };
    post_paced(total, args.rate, args.connections as usize, job, absorb).await;
    // A commit whose task panicked never reached `absorb`; it failed all the same.
    for _ in result.committed.len() + result.errors..total {
        result.failed("commit task panicked".to_owned());
    }
    result
}
