//! `e2e`: orders posted through the API at a given rate, watched until `synced` through the API
//! as a portal would, with Salesforce emulated at a given latency.
//!
//! How "synced" is observed: polling `GET /v1/orders/{id}` per order (with `If-None-Match`)
//! costs `rate × time-to-sync ÷ poll interval` requests per second (2,500/s at 500 orders/s,
//! 0.5 s and 100 ms), several times the load being measured on a 2-core machine. Instead the
//! observer reads what a portal's "recently synced" view reads: `GET /v1/orders?sync_state=synced`
//! (newest first) every `--poll`, as many pages as reach back to the oldest order not yet seen
//! synced, with a page size of about the pipeline's depth (orders seen and newer than that one,
//! orders pending, POSTs in flight). Orders are synced roughly in order, so each poll reads one
//! page of a few hundred orders at most, whatever the rate and the run's length. (Filtering with
//! `created_after` instead makes each poll that finds fewer orders than its limit scan every
//! synced order of the client: `created_at` is not in the index; measured, that tripled
//! Postgres's rows fetched per order.) An order counts as synced when it first appears, so the
//! observed latency includes up to one poll interval and the poll's own time; the report also
//! gives the server-side times (`updated_at` of the synced version: when the status applier's
//! transaction ran, and `sync.synced_at`: when the worker wrote it to Salesforce), which have no
//! polling error. Failed orders are picked up once a second by the same listing with
//! `sync_state=failed`.
//!
//! The load is open-loop: order `i` is due at `i / rate` s whatever happened before, and its
//! latency counts from that moment, so a slow API cannot hide its delay by holding the sender
//! back (coordinated omission). At `--rate 0` orders go out as fast as `--connections`
//! concurrent requests allow and latency counts from the actual send.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::chart::{self, Chart, Guide, Marker, Series};
use crate::poster::{Posted, Poster, Retry, post_paced};
use crate::procfs::{self, CpuSnapshot};
use crate::report::{Goal, Table, thousands};
use crate::stack::{EMULATOR, Stack, StackArgs, with_stack};
use crate::stats::{Summary, summary_json};
use crate::{common, verify};

/// The targets that apply here.
const TARGET_RATIO: f64 = 0.9;
const TARGET_P99_MS: f64 = 1000.0;
/// The latency target is stated at 500 orders/s.
const TARGET_P99_RATE: f64 = 500.0;
/// How far below the oldest watched order's creation time the listing reads (see `list`).
const ORDER_MARGIN: chrono::Duration = chrono::Duration::milliseconds(250);
/// Extra rows per page for the orders inside that margin.
const MARGIN_ROWS: usize = 50;
/// Attempts per order on 429/503/409-in-flight or a transport error, same Idempotency-Key.
/// Up to 10 attempts per order, each within the client's 30 s timeout.
const RETRY: Retry = Retry {
    attempts: 10,
    give_up: None,
    timeout: None,
};

#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    /// Orders to post.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub orders: u32,
    /// Orders per second offered (open loop); 0 = as fast as the connections allow.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Most POSTs in flight at once (HTTP/1.1 keep-alive connections).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// How often the observer lists newly synced orders: the resolution of the observed latency.
    #[arg(long, default_value = "100ms", value_parser = orderbridge_runtime::parse_interval)]
    pub poll: Duration,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// One accepted order, from the bench's side.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When it was due (open loop) or first sent (`--rate 0`): latencies count from here.
    due: Instant,
    sent: Instant,
}

/// Accepted orders not yet seen synced (or failed), oldest creation first; and those already
/// seen that are newer than the oldest pending one (they still show up in the listing).
#[derive(Default)]
struct Watch {
    pending: HashMap<Uuid, (DateTime<Utc>, Sent)>,
    by_created: BTreeSet<(DateTime<Utc>, Uuid)>,
    seen_recent: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Watch {
    fn add(&mut self, id: Uuid, created_at: DateTime<Utc>, sent: Sent) {
        self.pending.insert(id, (created_at, sent));
        self.by_created.insert((created_at, id));
    }

    fn take(&mut self, id: Uuid) -> Option<Sent> {
        let (created_at, sent) = self.pending.remove(&id)?;
        self.by_created.remove(&(created_at, id));
        self.seen_recent.insert((created_at, id));
        Some(sent)
    }

    /// How many orders the listing must return to reach back to `oldest`: those seen already
    /// and newer, those still pending, and those whose POST is in flight (not known yet).
    fn page_size(&mut self, oldest: DateTime<Utc>, in_flight_posts: usize) -> usize {
        self.seen_recent = self
            .seen_recent
            .split_off(&(oldest - ORDER_MARGIN, Uuid::nil()));
        self.seen_recent.len() + self.pending.len() + in_flight_posts + MARGIN_ROWS
    }

    fn oldest(&self) -> Option<DateTime<Utc>> {
        self.by_created.first().map(|(c, _)| *c)
    }
}

fn lock(w: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct PostTotals {
    accepted: usize,
    rejected: usize,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    retried_orders: u64,
    errors: Vec<String>,
    post_ms: Vec<f64>,
    answered: Vec<Instant>,
    first_sent: Option<Instant>,
    last_answered: Option<Instant>,
}

impl PostTotals {
    fn absorb(&mut self, r: Posted) {
        for s in &r.statuses {
            *self.statuses.entry(*s).or_insert(0) += 1;
        }
        self.transport_errors += u64::from(r.transport_errors);
        if r.retried() {
            self.retried_orders += 1;
        }
        self.first_sent = Some(self.first_sent.map_or(r.sent, |f| f.min(r.sent)));
        // A duplicate client_ref is a failure of idempotency here, not an acceptance.
        if r.created_at.is_some() {
            self.accepted += 1;
            self.post_ms
                .push(r.answered.duration_since(r.sent).as_secs_f64() * 1e3);
            self.answered.push(r.answered);
            self.last_answered = Some(self.last_answered.map_or(r.answered, |l| l.max(r.answered)));
        } else {
            self.rejected += 1;
            if self.errors.len() < 10 {
                self.errors
                    .push(r.error.unwrap_or_else(|| "unknown".into()));
            }
        }
    }
}

/// Posts every order at `rate` (see [`post_paced`]), each until accepted ([`RETRY`]); an
/// accepted order joins the watch list as soon as its 201 arrives.
async fn post_all(
    poster: Arc<Poster>,
    watch: Arc<Mutex<Watch>>,
    orders: usize,
    rate: f64,
    connections: usize,
) -> PostTotals {
    let mut totals = PostTotals::default();
    let job = |i, due| {
        let (poster, watch) = (poster.clone(), watch.clone());
        async move {
            let p = poster.post(i, RETRY).await;
            if let (Some(id), Some(created_at)) = (p.id, p.created_at) {
                lock(&watch).add(id, created_at, Sent { due, sent: p.sent });
            }
            p
        }
    };
    post_paced(orders, rate, connections, job, |p| totals.absorb(p)).await;
    totals
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    id: Uuid,
    sync: ItemSync,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ItemSync {
    synced_at: Option<DateTime<Utc>>,
    last_error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    code: String,
}

/// An order seen synced.
struct Seen {
    sent: Sent,
    seen: Instant,
    updated_at: DateTime<Utc>,
    synced_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct ObserveTotals {
    seen: Vec<Seen>,
    failed: Vec<(Uuid, String)>,
    requests: u64,
    request_errors: u64,
    cycles: u64,
    busy: Duration,
    timed_out: bool,
}

/// Lists the orders in `state` created after `after`, all pages; `found` gets each item and the
/// time its page arrived.
async fn list(
    ctx: &Poster,
    totals: &mut ObserveTotals,
    state: &str,
    oldest: DateTime<Utc>,
    limit: usize,
    mut found: impl FnMut(Item, Instant),
) {
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/v1/orders?sync_state={state}&limit={}",
            ctx.api,
            limit.clamp(1, 200)
        );
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        totals.requests += 1;
        let page: Option<Page> = match ctx.http.get(url).bearer_auth(&ctx.key).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r.json().await.ok(),
            _ => None,
        };
        let Some(page) = page else {
            totals.request_errors += 1;
            return;
        };
        let at = Instant::now();
        // Newest first: once a page reaches orders older than the oldest one still watched,
        // everything further down is too, but for ids and creation times taken a moment apart
        // by concurrent requests (a preempted thread): hence the margin.
        let reached_older = page
            .items
            .last()
            .is_some_and(|i| i.created_at < oldest - ORDER_MARGIN);
        for item in page.items {
            found(item, at);
        }
        match page.next_cursor {
            Some(c) if !reached_older => cursor = Some(c),
            _ => return,
        }
    }
}

async fn observe(
    ctx: Arc<Poster>,
    watch: Arc<Mutex<Watch>>,
    posting_done: Arc<AtomicBool>,
    poll: Duration,
    in_flight_posts: usize,
    deadline: Instant,
) -> ObserveTotals {
    let mut totals = ObserveTotals::default();
    let mut next_failed_check = Instant::now() + Duration::from_secs(1);
    loop {
        let cycle = Instant::now();
        // Read before the listing: orders accepted after this are caught by the next poll.
        let done_posting = posting_done.load(Ordering::Acquire);
        let window = {
            let mut w = lock(&watch);
            w.oldest()
                .map(|oldest| (oldest, w.page_size(oldest, in_flight_posts)))
        };
        if let Some((oldest, limit)) = window {
            let mut seen = Vec::new();
            list(&ctx, &mut totals, "synced", oldest, limit, |item, at| {
                if let Some(sent) = lock(&watch).take(item.id) {
                    seen.push(Seen {
                        sent,
                        seen: at,
                        updated_at: item.updated_at,
                        synced_at: item.sync.synced_at,
                    });
                }
            })
            .await;
            totals.seen.extend(seen);
            if cycle >= next_failed_check {
                next_failed_check = cycle + Duration::from_secs(1);
                let mut failed = Vec::new();
                list(&ctx, &mut totals, "failed", oldest, limit, |item, _| {
                    if lock(&watch).take(item.id).is_some() {
                        let code = item.sync.last_error.map(|e| e.code).unwrap_or_default();
                        failed.push((item.id, code));
                    }
                })
                .await;
                totals.failed.extend(failed);
            }
        }
        totals.cycles += 1;
        totals.busy += cycle.elapsed();
        if done_posting && lock(&watch).pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            totals.timed_out = true;
            break;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(cycle + poll)).await;
    }
    totals
}

/// Server-side times of each synced order, for the per-stage breakdown.
type StageRow = (
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

pub async fn run(args: E2eArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be 0 or a positive number");
    }
    with_stack(args.stack.clone(), "e2e", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &E2eArgs) -> Result<bool> {
    let (key, api) = stack.start_pipeline().await?;
    let orders = args.orders as usize;
    let connections = args.connections as usize;
    let ctx = Arc::new(Poster {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(connections + 1)
            .timeout(Duration::from_secs(30))
            .build()?,
        api,
        key,
        run: format!("bench-{}", Uuid::now_v7().simple()),
    });

    // The worker's start-up calls (mapping check, login) are not the orders' cost.
    let startup_calls = stack.api_calls().await?;
    let pg_before = common::PgCounters::take(stack.pool()?).await?;
    let load_before = procfs::loadavg();
    let cpu_before = CpuSnapshot::take(&stack.pids());
    tracing::info!(orders, rate = args.rate, connections, "posting");

    let watch = Arc::new(Mutex::new(Watch::default()));
    let posting_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let started_wall = Utc::now();
    let deadline = started + args.stack.timeout;
    let poster = {
        let (ctx, watch, done) = (ctx.clone(), watch.clone(), posting_done.clone());
        let rate = args.rate;
        tokio::spawn(async move {
            let totals = post_all(ctx, watch, orders, rate, connections).await;
            done.store(true, Ordering::Release);
            totals
        })
    };
    let observer = tokio::spawn(observe(
        ctx.clone(),
        watch.clone(),
        posting_done,
        args.poll,
        connections,
        deadline,
    ));
    let (posted, observed) = tokio::join!(poster, observer);
    let (posted, observed) = (posted?, observed?);
    let cpu = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    stack.check_running()?;
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
    let unseen = lock(&watch).pending.len();
    tracing::info!(
        accepted = posted.accepted,
        synced = observed.seen.len(),
        "run over; checking Salesforce"
    );

    let stage_rows: Vec<StageRow> = sqlx::query_as(
        "SELECT o.created_at, ob.created_at, ob.published_at, o.synced_at, o.updated_at
         FROM orders o JOIN outbox ob ON ob.aggregate_id = o.id
         WHERE o.sync_state = 'synced'",
    )
    .fetch_all(stack.pool()?)
    .await?;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT sync_state, count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(stack.pool()?)
            .await?;
    let verification = verify::verify(
        stack.pool()?,
        stack.emulator()?,
        stack
            .setting("WORKER_MAPPING_FILE")
            .map(std::path::Path::new),
    )
    .await?;

    // Latencies, ms. Instants become wall-clock times through the run's start.
    let wall = |i: Instant| {
        started_wall + chrono::Duration::from_std(i.duration_since(started)).unwrap_or_default()
    };
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
    let observed_ms: Vec<f64> = observed
        .seen
        .iter()
        .map(|s| s.seen.duration_since(s.sent.due).as_secs_f64() * 1e3)
        .collect();
    let applied_ms: Vec<f64> = observed
        .seen
        .iter()
        .map(|s| ms(s.updated_at - wall(s.sent.due)))
        .collect();
    let written_ms: Vec<f64> = observed
        .seen
        .iter()
        .filter_map(|s| s.synced_at.map(|t| ms(t - wall(s.sent.due))))
        .collect();
    let queued_ms: Vec<f64> = observed
        .seen
        .iter()
        .map(|s| s.sent.sent.duration_since(s.sent.due).as_secs_f64() * 1e3)
        .collect();

    let stage = |f: &dyn Fn(&StageRow) -> Option<chrono::Duration>| -> Vec<f64> {
        stage_rows.iter().filter_map(|r| f(r).map(ms)).collect()
    };
    let stages = [
        ("API: request → outbox row", stage(&|r| Some(r.1 - r.0))),
        (
            "relay: outbox row → published",
            stage(&|r| r.2.map(|p| p - r.1)),
        ),
        (
            "broker + worker + Salesforce: published → written",
            stage(&|r| Some(r.3? - r.2?)),
        ),
        ("status report → applied", stage(&|r| r.3.map(|s| r.4 - s))),
    ];

    let accepted = posted.accepted;
    let synced = observed.seen.len();
    let first_sent = posted.first_sent.unwrap_or(started);
    let accept_window = posted
        .last_answered
        .map_or(0.0, |l| l.duration_since(first_sent).as_secs_f64());
    let sync_window = observed
        .seen
        .iter()
        .map(|s| s.seen)
        .max()
        .map_or(0.0, |l| l.duration_since(first_sent).as_secs_f64());
    let accepted_rate = per_second(accepted, accept_window);
    let synced_rate = per_second(synced, sync_window);
    let ratio = if accepted_rate > 0.0 {
        synced_rate / accepted_rate
    } else {
        0.0
    };
    let steady_accepted = steady_rate(posted.answered.clone());
    let steady_synced = steady_rate(observed.seen.iter().map(|s| s.seen).collect());

    // The table.
    let rate_text = if args.rate > 0.0 {
        format!("{}/s", thousands(args.rate))
    } else {
        "saturation (--rate 0)".to_owned()
    };
    let mut t = Table::new(format!(
        "orderbridge-bench e2e: {} orders at {rate_text}, {} connections; Salesforce emulated at {} ms + 0–{} ms per call",
        thousands(orders as f64),
        connections,
        args.stack.latency_ms,
        args.stack.jitter_ms
    ));
    common::machine_context(&mut t, stack, load_before, load_after, &cpu);
    t.context(format!(
        "observer: GET /v1/orders?sync_state=synced (newest first) every {} ms: {} list requests ({} failed), mean poll {:.1} ms",
        args.poll.as_millis(),
        observed.requests,
        observed.request_errors,
        observed.busy.as_secs_f64() * 1e3 / observed.cycles.max(1) as f64
    ));
    t.context(if args.rate > 0.0 {
        "latencies count from each order's scheduled send time (open loop)"
    } else {
        "latencies count from each order's actual send"
    });
    t.context(format!("output: {}", stack.out.display()));

    t.info(
        "orders accepted (201)",
        format!(
            "{} of {}",
            thousands(accepted as f64),
            thousands(orders as f64)
        ),
    );
    t.info(
        "accepted orders/s (first POST → last 201)",
        format!("{accepted_rate:.0}"),
    );
    t.info(
        "synced orders/s (first POST → last seen synced)",
        format!("{synced_rate:.0}"),
    );
    if let (Some(a), Some(s)) = (steady_accepted, steady_synced) {
        t.info(
            "steady state (10% → 90% of each): accepted/s, synced/s",
            format!("{a:.0}, {s:.0}"),
        );
    }
    t.target(
        "synced/s ÷ accepted/s",
        ratio,
        format!("{ratio:.2}"),
        Goal::AtLeast(TARGET_RATIO),
        format!(">= {TARGET_RATIO}"),
    );
    if let Some(s) = Summary::of(&posted.post_ms) {
        t.info(
            "POST → 201 p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p99, s.max),
        );
    }
    if let Some(s) = Summary::of(&observed_ms) {
        let at_target_rate = args.rate > 0.0 && args.rate <= TARGET_P99_RATE;
        common::latency_rows(
            &mut t,
            "POST → synced (observed)",
            &s,
            0,
            at_target_rate.then_some((TARGET_P99_MS, "<= 1,000 ms at 500/s")),
            "target is at <= 500/s",
        );
    }
    if let Some(s) = Summary::of(&applied_ms) {
        t.info(
            "POST → synced in Postgres (updated_at) p50 / p99",
            format!("{:.0} / {:.0} ms", s.p50, s.p99),
        );
    }
    if let Some(s) = Summary::of(&written_ms) {
        t.info(
            "POST → written to Salesforce (synced_at) p50 / p99",
            format!("{:.0} / {:.0} ms", s.p50, s.p99),
        );
    }
    for (name, values) in &stages {
        if let Some(s) = Summary::of(values) {
            t.info(
                format!("  stage {name} p50 / p99"),
                format!("{:.1} / {:.1} ms", s.p50, s.p99),
            );
        }
    }
    let calls_per_1000 = common::salesforce_call_rows(&mut t, calls, startup_calls, accepted);
    let (service_metrics, pg_json) = common::footer_rows(
        &mut t,
        &common::Footer {
            scraped: &scraped,
            backlog: false,
            pg_before: &pg_before,
            pg_after: &pg_after,
            orders: accepted,
            rss: &rss,
            rss_no_target: &[EMULATOR],
            cpu: &cpu,
        },
    );
    t.check(
        "orders the API refused (after retries)",
        posted.rejected.to_string(),
        posted.rejected == 0,
    );
    t.check(
        "accepted orders not synced by the end",
        format!(
            "{} ({} failed{})",
            unseen + observed.failed.len(),
            observed.failed.len(),
            if observed.timed_out {
                ", timed out"
            } else {
                ""
            }
        ),
        unseen == 0 && observed.failed.is_empty(),
    );
    common::verification_rows(&mut t, &verification);

    // The JSON.
    let stage_json: serde_json::Map<String, Value> = stages
        .iter()
        .map(|(name, values)| ((*name).to_owned(), summary_json(values)))
        .collect();
    let json = json!({
        "command": "e2e",
        "started_at": started_wall,
        "args": {
            "orders": orders, "rate": args.rate, "connections": connections,
            "poll_ms": args.poll.as_millis() as u64,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, load_before, load_after, &cpu),
        "orders": {
            "requested": orders, "accepted": accepted, "refused": posted.rejected,
            "seen_synced": synced, "failed": observed.failed.len(), "unseen": unseen,
            "timed_out": observed.timed_out,
            "states_in_postgres": states.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "failed_sample": observed.failed.iter().take(20).map(|(id, code)| json!({"id": id, "code": code})).collect::<Vec<_>>(),
        },
        "post": {
            "statuses": posted.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "transport_errors": posted.transport_errors,
            "retried_orders": posted.retried_orders,
            "errors_sample": posted.errors,
        },
        "throughput": {
            "accepted_per_s": accepted_rate, "synced_per_s": synced_rate, "ratio": ratio,
            "accept_window_s": accept_window, "sync_window_s": sync_window,
            "steady_accepted_per_s": steady_accepted, "steady_synced_per_s": steady_synced,
        },
        "latency_ms": {
            "post_to_201": summary_json(&posted.post_ms),
            "post_to_synced_observed": summary_json(&observed_ms),
            "post_to_synced_in_postgres": summary_json(&applied_ms),
            "post_to_written_in_salesforce": summary_json(&written_ms),
            "send_delay_behind_schedule": summary_json(&queued_ms),
        },
        "stages_ms": stage_json,
        "observer": {
            "poll_ms": args.poll.as_millis() as u64, "list_requests": observed.requests,
            "list_errors": observed.request_errors, "cycles": observed.cycles,
            "mean_cycle_ms": observed.busy.as_secs_f64() * 1e3 / observed.cycles.max(1) as f64,
        },
        "salesforce": {
            "api_calls": calls, "startup_calls": startup_calls,
            "per_1000_orders": calls_per_1000,
            "stats_at_end": stats,
        },
        "peak_rss_mib": common::rss_json(&rss),
        "service_metrics": service_metrics,
        "postgres_per_order": pg_json,
        "verification": verification.to_json(),
        "table": t.to_json(),
    });

    let svg = latency_chart(
        &format!(
            "{} orders at {rate_text}; Salesforce {} ms + 0–{} ms per call",
            thousands(orders as f64),
            args.stack.latency_ms,
            args.stack.jitter_ms
        ),
        &observed_ms,
        &applied_ms,
        &written_ms,
        &posted.post_ms,
    );
    common::finish(stack, &t, &json, &[("latency.svg", svg)])
}

/// Events per second between the 10th and the 90th percentile of their times: the rate once
/// started and before the tail, which the first → last figures include.
fn steady_rate(mut times: Vec<Instant>) -> Option<f64> {
    if times.len() < 20 {
        return None;
    }
    times.sort();
    let (lo, hi) = (times.len() / 10, times.len() * 9 / 10);
    let span = times[hi].duration_since(times[lo]).as_secs_f64();
    (span > 0.0).then(|| (hi - lo) as f64 / span)
}

fn per_second(n: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// CDFs of POST → synced (observed, in Postgres, in Salesforce) and POST → 201.
fn latency_chart(
    describe: &str,
    observed: &[f64],
    applied: &[f64],
    written: &[f64],
    post: &[f64],
) -> String {
    let summary = Summary::of(observed);
    let slowest = summary.map_or(0.0, |s| s.max);
    let p99 = summary.map_or(0.0, |s| s.p99);
    // Wide enough for the target and the p99; a few stragglers may fall off the right.
    let x_max = (p99 * 1.4)
        .max(TARGET_P99_MS * 1.15)
        .min(slowest.max(TARGET_P99_MS * 1.15));
    let subtitle = if slowest > x_max {
        format!("x axis cut at {x_max:.0} ms; slowest order {slowest:.0} ms")
    } else {
        format!("slowest order {slowest:.0} ms")
    };
    let mut markers = Vec::new();
    if let Some(s) = summary {
        for (label, v, p) in [
            ("p50", s.p50, 50.0),
            ("p90", s.p90, 90.0),
            ("p99", s.p99, 99.0),
        ] {
            markers.push(Marker {
                x: v,
                y: p,
                label: format!("{label} {v:.0} ms"),
                color: chart::BLUE,
            });
        }
    }
    chart::render(&Chart {
        title: "POST → synced latency, cumulative".into(),
        subtitle: format!("{describe}; {subtitle}"),
        x_label: "latency from POST (ms)".into(),
        y_label: "orders at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "POST → synced, seen through the API".into(),
                color: chart::BLUE,
                points: chart::cdf_points(observed),
                dashed: false,
            },
            Series {
                name: "POST → synced in Postgres (updated_at)".into(),
                color: chart::GREEN,
                points: chart::cdf_points(applied),
                dashed: true,
            },
            Series {
                name: "POST → written to Salesforce (synced_at)".into(),
                color: chart::ORANGE,
                points: chart::cdf_points(written),
                dashed: true,
            },
            Series {
                name: "POST → 201".into(),
                color: chart::PURPLE,
                points: chart::cdf_points(post),
                dashed: false,
            },
        ],
        markers,
        guides: vec![
            Guide::target(TARGET_P99_MS, "target: p99 ≤ 1 s"),
            Guide::p99(),
        ],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_tracks_the_oldest_pending_order() {
        let mut w = Watch::default();
        let now = Instant::now();
        let s = Sent {
            due: now,
            sent: now,
        };
        let t0 = Utc::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        w.add(b, t0 + chrono::Duration::milliseconds(5), s);
        w.add(a, t0, s);
        assert_eq!(w.oldest(), Some(t0));
        assert!(w.take(a).is_some());
        assert!(w.take(a).is_none());
        assert_eq!(w.oldest(), Some(t0 + chrono::Duration::milliseconds(5)));
        assert_eq!(w.page_size(t0, 3), 1 + 1 + 3 + MARGIN_ROWS);
        assert!(w.take(b).is_some());
        assert_eq!(w.oldest(), None);
        // Seen orders older than the window (less the margin) no longer count.
        assert_eq!(
            w.page_size(t0 + chrono::Duration::seconds(1), 0),
            MARGIN_ROWS
        );
    }

    #[test]
    fn chart_renders_without_data() {
        let svg = latency_chart("t", &[], &[], &[], &[]);
        assert!(svg.contains("target"));
    }
}
