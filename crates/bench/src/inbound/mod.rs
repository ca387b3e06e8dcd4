//! `inbound`: the return path, Salesforce → sf-subscriber → Postgres → the API. `--orders`
//! orders are posted and synced through the whole pipeline; then, with a portal's event stream
//! open on each of them (`GET /v1/orders/{id}/events`), `--changes` status changes are made in
//! the emulator over REST at `--rate` per second (open loop, as an operator's or a Flow's writes,
//! under another client name than orderbridge's so they are not echo). Measured: Salesforce change
//! (the REST call's answer: the change is committed and its CDC event published) → visible in the
//! API (first SSE event showing it). Then the subscriber is stopped, `--backlog` changes pile up
//! (Collections updates of every order at once), and a new subscriber drains them: changes/s
//! from its start to the last one applied, and its memory.
//!
//! Correctness: every order ends with Salesforce's last status, and its history holds exactly
//! one entry per change (nothing lost, nothing applied twice across the restart).
//!
//! Status values alternate `Activated` / `Draft` (the emulator's Order picklist), which the
//! default status map turns into `activated` / `submitted`. `sse.rs` holds the portal's streams,
//! `report.rs` the table.

mod report;
pub mod sse;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde_json::json;
use uuid::Uuid;

use crate::common::lock;
use crate::poster::{Poster, Retry, post_paced};
use crate::procfs;
use crate::stack::{SUBSCRIBER, Stack, StackArgs, with_stack};
use sse::Watchers;

/// The client name the bench's Salesforce writes carry (`Sforce-Call-Options`): anything but
/// the pipeline's own `orderbridge`, or the subscriber would rightly ignore them as echo.
const OPERATOR_CLIENT: &str = "bench-operator";

/// Setting up: a few attempts per order, each bounded.
const POST_RETRY: Retry = Retry {
    attempts: 5,
    give_up: None,
    timeout: Some(Duration::from_secs(30)),
};

#[derive(Debug, Clone, Args)]
pub struct InboundArgs {
    /// Orders posted and synced first; the changes cycle through them.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub orders: u32,
    /// Status changes made in Salesforce while the subscriber runs (the latency phase).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub changes: u32,
    /// Changes per second in the latency phase (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Changes made while the subscriber is stopped, then drained by a new one (a multiple of
    /// --orders: every order changes once per round).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(0..))]
    pub backlog: u32,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The latency phase as measured.
#[derive(Debug, Default)]
pub struct Live {
    /// Change → visible in the API, ms, one per change seen.
    pub latency_ms: Vec<f64>,
    /// Changes whose REST call failed (not made, so not expected).
    pub failed_calls: Vec<String>,
    /// Changes made but never seen through the API before the deadline.
    pub unseen: usize,
    pub made: usize,
    pub seconds: f64,
    pub sse_events: u64,
    pub sse_reconnects: u64,
}

/// The backlog phase as measured.
#[derive(Debug, Default)]
pub struct Backlog {
    pub changes: usize,
    /// Seconds to make the backlog in Salesforce.
    pub make_s: f64,
    /// From the new subscriber's start to its last change applied.
    pub drain_s: f64,
    /// From its first change applied to its last.
    pub apply_s: f64,
    pub applied: usize,
    pub rss_peak_kib: Option<u64>,
}

pub struct Measured<'a> {
    pub args: &'a InboundArgs,
    pub live: Live,
    pub backlog: Backlog,
    /// Orders whose final status or history length is not what Salesforce's changes imply.
    pub mismatched: Vec<String>,
    pub subscriber_metrics: String,
    pub rss: Vec<(String, Option<u64>)>,
    pub load: [Option<[f64; 3]>; 2],
    pub cpu: procfs::CpuUsage,
}

pub async fn run(args: InboundArgs) -> Result<bool> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if !args.backlog.is_multiple_of(args.orders) {
        bail!("--backlog must be a multiple of --orders (every order changes once per round)");
    }
    with_stack(args.stack.clone(), "inbound", async |stack| {
        measure(stack, &args).await
    })
    .await
}

/// The status a change sets: the `k`-th change of an order (from 0) activates it when `k` is
/// even and takes it back to draft when odd.
pub fn salesforce_status(k: usize) -> &'static str {
    if k.is_multiple_of(2) {
        "Activated"
    } else {
        "Draft"
    }
}

/// The API's status for that Salesforce value under the default status map.
pub fn api_status(k: usize) -> &'static str {
    if k.is_multiple_of(2) {
        "activated"
    } else {
        "submitted"
    }
}

/// One synced order: its id in both systems.
pub struct Target {
    pub id: Uuid,
    pub salesforce_id: String,
}

async fn measure(stack: &mut Stack, args: &InboundArgs) -> Result<bool> {
    // Status changes only: without Flow rules, an activation does not also ask for fulfilment
    // (the emulator's default `provision-on-activate` rule would move the orders on to
    // `provisioning`, which this run does not expect; `fulfilment` measures that loop). Set
    // before the first service starts, ahead of the user's own `--env`.
    stack
        .args
        .env
        .insert(0, ("SF_EMULATOR_FLOWS".to_owned(), "none".to_owned()));
    let (key, api) = stack.start_pipeline().await?;
    let subscriber = stack.spawn_subscriber()?;
    stack.wait_ready_pid(subscriber).await?;
    let targets = post_and_sync(stack, &api, &key, args.orders as usize).await?;
    let salesforce = operator_client(stack)?;
    salesforce
        .login()
        .await
        .context("cannot log in to the emulator")?;

    let load_before = procfs::loadavg();
    let cpu_before = procfs::CpuSnapshot::take(&stack.pids());
    let ids: Vec<Uuid> = targets.iter().map(|t| t.id).collect();
    let watchers = Watchers::open(&api, &key, &ids).await?;
    // Every order's history before the changes: `submitted` from the API (the pipeline's own
    // Salesforce writes are echo and add nothing).
    let base = history_lens(stack, &ids).await?;
    let live = live_phase(args, &targets, &salesforce, &watchers, &base).await?;
    watchers.stop().await;

    let per_order_live: Vec<usize> = (0..targets.len())
        .map(|o| changes_of(o, args.changes as usize, targets.len()))
        .collect();
    let backlog = backlog_phase(
        stack,
        args,
        &targets,
        &salesforce,
        &per_order_live,
        subscriber,
    )
    .await?;
    let cpu = cpu_before.usage_until(&procfs::CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    stack.check_running()?;

    let rounds = (args.backlog / args.orders) as usize;
    let mismatched = check_final(stack, &targets, &base, &per_order_live, rounds).await?;
    let subscriber_metrics = stack
        .scrape_metrics()
        .await
        .into_iter()
        .find(|(name, _)| name == SUBSCRIBER)
        .map(|(_, text)| text)
        .unwrap_or_default();
    let measured = Measured {
        args,
        live,
        backlog,
        mismatched,
        subscriber_metrics,
        rss: stack.peak_rss_kib(),
        load: [load_before, load_after],
        cpu,
    };
    report::finish(stack, &measured)
}

/// Changes order `o` gets among the first `changes` made round-robin over `orders`.
pub fn changes_of(o: usize, changes: usize, orders: usize) -> usize {
    changes / orders + usize::from(o < changes % orders)
}

/// Posts `n` orders and waits until every one is synced; returns their ids. Also the set-up of
/// `fulfilment`.
pub async fn post_and_sync(stack: &Stack, api: &str, key: &str, n: usize) -> Result<Vec<Target>> {
    let poster = Arc::new(Poster::new(
        api.to_owned(),
        key.to_owned(),
        format!("inbound-{}", Uuid::now_v7().simple()),
        16,
        Some(Duration::from_secs(30)),
    )?);
    let failures = Arc::new(Mutex::new(Vec::new()));
    post_paced(
        n,
        0.0,
        16,
        |i, _| {
            let poster = poster.clone();
            async move { poster.post(i, POST_RETRY).await }
        },
        |posted| {
            if posted.id.is_none() {
                lock(&failures).push(posted.error.unwrap_or_default());
            }
        },
    )
    .await;
    if let Some(first) = lock(&failures).first() {
        bail!("posting the orders failed: {first}");
    }
    let deadline = Instant::now() + stack.args.timeout;
    loop {
        let synced: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE sync_state = 'synced'")
                .fetch_one(stack.pool()?)
                .await?;
        if synced as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {synced} of {n} orders synced before --timeout");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, salesforce_id FROM orders ORDER BY created_at, id")
            .fetch_all(stack.pool()?)
            .await?;
    rows.into_iter()
        .map(|(id, sf)| {
            Ok(Target {
                id,
                salesforce_id: sf.ok_or_else(|| anyhow!("order {id} is synced without an id"))?,
            })
        })
        .collect()
}

/// A Salesforce client on the emulator under [`OPERATOR_CLIENT`].
pub fn operator_client(stack: &Stack) -> Result<Client> {
    let config = SalesforceConfig {
        login_url: stack.emulator()?.to_owned(),
        request_timeout: Duration::from_secs(60),
        client_name: OPERATOR_CLIENT.to_owned(),
        // No API-usage guard: after the chaos run's `request-limit` window the guard would
        // refuse every call locally until its reading is stale (5 minutes); the operator's
        // calls are to meet the emulator's own answer, which is back at once.
        max_api_usage_share: 1.0,
        ..SalesforceConfig::default()
    };
    Client::new(&config).context("cannot build the Salesforce client")
}

/// Each order's `status_history` length, in `ids` order.
async fn history_lens(stack: &Stack, ids: &[Uuid]) -> Result<Vec<usize>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT o.id, (SELECT count(*) FROM order_status_history h WHERE h.order_id = o.id)
         FROM orders o",
    )
    .fetch_all(stack.pool()?)
    .await?;
    let lens: std::collections::HashMap<Uuid, i64> = rows.into_iter().collect();
    ids.iter()
        .map(|id| {
            lens.get(id)
                .map(|n| *n as usize)
                .ok_or_else(|| anyhow!("order {id} vanished"))
        })
        .collect()
}

/// `--changes` changes at `--rate`, round-robin over the orders; each one's latency is from its
/// REST call's answer to the first SSE event whose history includes it.
async fn live_phase(
    args: &InboundArgs,
    targets: &[Target],
    salesforce: &Client,
    watchers: &Watchers,
    base: &[usize],
) -> Result<Live> {
    let n = targets.len();
    // (order, its k-th change, when the change was committed) per change made.
    let made: Arc<Mutex<Vec<(usize, usize, Instant)>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    post_paced(
        args.changes as usize,
        args.rate,
        256,
        |j, _due| {
            let (o, k) = (j % n, j / n);
            let sf = salesforce.clone();
            let id = targets[o].salesforce_id.clone();
            let (made, failed) = (made.clone(), failed.clone());
            async move {
                match sf
                    .update("Order", &id, &json!({"Status": salesforce_status(k)}))
                    .await
                {
                    Ok(()) => lock(&made).push((o, k, Instant::now())),
                    Err(e) => lock(&failed).push(format!("{id}: {e}")),
                }
            }
        },
        |()| {},
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let made = std::mem::take(&mut *lock(&made));

    // Wait for the last changes to show, up to 30 s after the last call.
    let visible = |o: usize, k: usize| lock(&watchers.seen[o]).first(base[o] + k + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while made.iter().any(|&(o, k, _)| visible(o, k).is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut live = Live {
        made: made.len(),
        seconds,
        failed_calls: std::mem::take(&mut *lock(&failed)),
        sse_events: watchers.events(),
        sse_reconnects: watchers.reconnects(),
        ..Live::default()
    };
    for &(o, k, committed) in &made {
        match visible(o, k) {
            // Seen before the call answered (the event beat the HTTP response back): zero.
            Some(at) => live
                .latency_ms
                .push(at.saturating_duration_since(committed).as_secs_f64() * 1e3),
            None => live.unseen += 1,
        }
    }
    Ok(live)
}

/// Stops the subscriber, makes `--backlog` changes (every order once per round, one
/// Collections call per 200), starts a new subscriber and times it draining them.
async fn backlog_phase(
    stack: &mut Stack,
    args: &InboundArgs,
    targets: &[Target],
    salesforce: &Client,
    per_order_live: &[usize],
    subscriber: u32,
) -> Result<Backlog> {
    let rounds = (args.backlog / args.orders) as usize;
    let mut backlog = Backlog {
        changes: rounds * targets.len(),
        ..Backlog::default()
    };
    if rounds == 0 {
        return Ok(backlog);
    }
    stack.stop(subscriber, "TERM").await?;
    for (name, pid, status, clean) in stack.reap_stopped().await {
        if !clean {
            bail!("{name} {pid} did not stop cleanly: {status}");
        }
    }
    let applied_before = applied_count(stack).await?;
    let made = Instant::now();
    for r in 0..rounds {
        let records: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(o, t)| {
                json!({"Id": t.salesforce_id, "Status": salesforce_status(per_order_live[o] + r)})
            })
            .collect();
        let results = salesforce
            .update_records("Order", &records, true)
            .await
            .context("a backlog update failed")?;
        if let Some(bad) = results.iter().find(|r| !r.success) {
            bail!("a backlog update was refused: {bad:?}");
        }
    }
    backlog.make_s = made.elapsed().as_secs_f64();

    let started = Instant::now();
    let pid = stack.spawn_subscriber()?;
    let expected = applied_before + backlog.changes;
    let mut first_applied = None;
    let deadline = started + stack.args.timeout;
    loop {
        let applied = applied_count(stack).await?;
        if first_applied.is_none() && applied > applied_before {
            first_applied = Some(Instant::now());
        }
        if applied >= expected {
            backlog.applied = applied - applied_before;
            break;
        }
        if Instant::now() > deadline {
            backlog.applied = applied - applied_before;
            tracing::warn!(applied, expected, "backlog not drained before --timeout");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    backlog.drain_s = (done - started).as_secs_f64();
    backlog.apply_s = first_applied.map_or(0.0, |f| (done - f).as_secs_f64());
    backlog.rss_peak_kib = procfs::peak_rss_kib(pid);
    stack.wait_ready_pid(pid).await?;
    Ok(backlog)
}

/// History entries the subscriber wrote so far.
async fn applied_count(stack: &Stack) -> Result<usize> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_status_history WHERE source = 'salesforce'")
            .fetch_one(stack.pool()?)
            .await?;
    Ok(n as usize)
}

/// Orders whose status or history length differs from what the changes imply.
async fn check_final(
    stack: &Stack,
    targets: &[Target],
    base: &[usize],
    per_order_live: &[usize],
    rounds: usize,
) -> Result<Vec<String>> {
    let ids: Vec<Uuid> = targets.iter().map(|t| t.id).collect();
    let lens = history_lens(stack, &ids).await?;
    let statuses: std::collections::HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders")
            .fetch_all(stack.pool()?)
            .await?
            .into_iter()
            .collect();
    let mut mismatched = Vec::new();
    for (o, t) in targets.iter().enumerate() {
        let changes = per_order_live[o] + rounds;
        let want_len = base[o] + changes;
        let want_status = if changes == 0 {
            "submitted"
        } else {
            api_status(changes - 1)
        };
        let status = statuses.get(&t.id).map_or("?", String::as_str);
        if lens[o] != want_len || status != want_status {
            mismatched.push(format!(
                "{}: status {status} (want {want_status}), {} history entries (want {want_len})",
                t.id, lens[o]
            ));
        }
    }
    Ok(mismatched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_spread_round_robin() {
        assert_eq!(changes_of(0, 10, 4), 3);
        assert_eq!(changes_of(1, 10, 4), 3);
        assert_eq!(changes_of(2, 10, 4), 2);
        assert_eq!((0..4).map(|o| changes_of(o, 10, 4)).sum::<usize>(), 10);
        assert_eq!(api_status(0), "activated");
        assert_eq!(salesforce_status(1), "Draft");
    }
}
