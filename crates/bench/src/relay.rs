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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SubsecRound, Utc};
use clap::Args;
use futures_util::StreamExt;
use orderbridge_broker::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use orderbridge_broker::lapin::types::{AMQPValue, FieldTable, LongString};
use orderbridge_broker::lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use orderbridge_broker::{BrokerConfig, Supervisor};
use orderbridge_domain::OrderEvent;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::chart::{self, Chart, Guide, Marker, Series};
use crate::procfs::{self, CpuSnapshot};
use crate::report::{Table, thousands};
use crate::stack::{RELAY, Stack, StackArgs, with_stack};
use crate::stats::{Summary, summary_json};
use crate::{common, workload};

/// The target: commit → publish lag p99 ≤ 50 ms at 1,000 orders/s.
const TARGET_P99_MS: f64 = 50.0;
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
    /// Messages of the raw publish-with-confirms loop; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub raw_messages: u32,
    /// Unconfirmed messages per window in the raw loop (the relay's RELAY_BATCH_SIZE default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub raw_batch: u32,
    #[command(flatten)]
    pub stack: StackArgs,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a consumer received: first receive time per message id, and repeats.
#[derive(Default)]
struct Received {
    at: HashMap<Uuid, Instant>,
    duplicates: usize,
    unreadable: usize,
}

/// Consumes `queue` until `stop`, recording receive times; acks in batches (`multiple`).
async fn consume(
    channel: Channel,
    config: BrokerConfig,
    queue: String,
    into: Arc<Mutex<Received>>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    config
        .op(
            "basic.qos",
            channel.basic_qos(2000, BasicQosOptions::default()),
        )
        .await?;
    let mut consumer = config
        .op(
            "basic.consume",
            channel.basic_consume(
                queue.as_str().into(),
                format!("orderbridge-bench-{}", Uuid::now_v7()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    let mut last_tag: Option<u64> = None;
    let mut unacked = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            d = consumer.next() => {
                let Some(d) = d else { break };
                let d = d.context("consumer failed")?;
                let now = Instant::now();
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|m| Uuid::parse_str(m.as_str()).ok());
                {
                    let mut r = lock(&into);
                    match id {
                        Some(id) => {
                            if r.at.insert(id, now).is_some() {
                                r.duplicates += 1;
                            }
                        }
                        None => r.unreadable += 1,
                    }
                }
                last_tag = Some(d.delivery_tag);
                unacked += 1;
                if unacked >= 200 {
                    ack(&channel, &config, &mut last_tag, &mut unacked).await?;
                }
            }
            _ = tick.tick() => ack(&channel, &config, &mut last_tag, &mut unacked).await?,
            // The guard `wait_for` returns is not Send: drop it inside.
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    ack(&channel, &config, &mut last_tag, &mut unacked).await
}

async fn ack(
    channel: &Channel,
    config: &BrokerConfig,
    last_tag: &mut Option<u64>,
    unacked: &mut u32,
) -> Result<()> {
    if let Some(tag) = last_tag.take() {
        config
            .op(
                "basic.ack",
                channel.basic_ack(tag, BasicAckOptions { multiple: true }),
            )
            .await?;
        *unacked = 0;
    }
    Ok(())
}

/// Waits until `into` holds `n` messages, or `limit` passes; returns whether it got there.
async fn wait_received(into: &Mutex<Received>, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if lock(into).at.len() >= n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The raw loop's figures.
struct RawResult {
    messages: usize,
    seconds: f64,
    confirm_ms: Vec<f64>,
    publish_to_receive_ms: Vec<f64>,
    received: usize,
    payload_bytes: usize,
}

/// An order event's body, as the relay publishes it (the stored envelope's JSON).
fn sample_payload() -> Result<Vec<u8>> {
    let order = workload::stored_order("raw", 1, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let envelope = OrderEvent::Submitted(Box::new(order.clone()))
        .into_envelope(order.created_at, Some("raw-1".into()));
    Ok(serde_json::to_vec(&envelope)?)
}

async fn raw_loop(
    supervisor: &Supervisor,
    config: &BrokerConfig,
    stack: &Stack,
    args: &RelayArgs,
) -> Result<RawResult> {
    let session = supervisor.try_connect().await?;
    let name = format!("{}.bench-raw", stack.namespace);
    let publish = config
        .op("channel.open", session.connection.create_channel())
        .await?;
    config
        .op(
            "confirm.select",
            publish.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    config
        .op(
            "exchange.declare",
            publish.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes().to_vec())),
    );
    config
        .op(
            "queue.declare",
            publish.queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), quorum),
        )
        .await?;
    config
        .op(
            "queue.bind",
            publish.queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    let received = Arc::new(Mutex::new(Received::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer_channel = config
        .op("channel.open", session.connection.create_channel())
        .await?;
    let consumer = tokio::spawn(consume(
        consumer_channel,
        config.clone(),
        name.clone(),
        received.clone(),
        stop_rx,
    ));

    let body = sample_payload()?;
    let n = args.raw_messages as usize;
    let window = args.raw_batch as usize;
    let mut sent_at: HashMap<Uuid, Instant> = HashMap::with_capacity(n);
    let mut confirm_ms = Vec::with_capacity(n);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + window).min(n);
        let mut in_flight = Vec::with_capacity(end - i);
        for _ in i..end {
            let id = Uuid::now_v7();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(id.to_string().into())
                .with_type("order.submitted".into())
                .with_app_id("orderbridge-bench".into());
            let sent = Instant::now();
            let confirm = config
                .op(
                    "basic.publish",
                    publish.basic_publish(
                        name.as_str().into(),
                        "order.submitted".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        props,
                    ),
                )
                .await?;
            sent_at.insert(id, sent);
            in_flight.push((confirm, sent));
        }
        for (confirm, sent) in in_flight {
            match config.op("confirm", confirm).await? {
                Confirmation::Ack(None) => {
                    confirm_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                other => bail!("raw publish not confirmed: {other:?}"),
            }
        }
        i = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    let all = wait_received(&received, n, Duration::from_secs(60)).await;
    let _ = stop_tx.send(true);
    let _ = consumer.await;
    let r = std::mem::take(&mut *lock(&received));
    let publish_to_receive_ms: Vec<f64> =
        r.at.iter()
            .filter_map(|(id, at)| {
                sent_at
                    .get(id)
                    .map(|s| at.duration_since(*s).as_secs_f64() * 1e3)
            })
            .collect();
    if !all {
        tracing::warn!(
            received = r.at.len(),
            n,
            "the raw queue's consumer did not get everything"
        );
    }
    // Throwaway: delete what this loop created.
    config
        .op(
            "queue.delete",
            publish.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await?;
    config
        .op(
            "exchange.delete",
            publish.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await?;
    session.close(config).await;
    Ok(RawResult {
        messages: n,
        seconds,
        confirm_ms,
        publish_to_receive_ms,
        received: r.at.len(),
        payload_bytes: body.len(),
    })
}

/// One committed event of the fixed-rate phase.
#[derive(Clone, Copy)]
struct Committed {
    event_id: Uuid,
    due: Instant,
    committed: Instant,
}

/// An order with its event in one transaction, as the API writes them (without the idempotency
/// key, which the relay never reads).
async fn commit_order(
    pool: &PgPool,
    client_id: Uuid,
    run: &str,
    i: usize,
    events_only: bool,
) -> Result<Uuid> {
    let order = workload::stored_order(run, i, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let envelope = OrderEvent::Submitted(Box::new(order.clone()))
        .into_envelope(order.created_at, Some(format!("{run}-{i}")));
    let mut tx = pool.begin().await?;
    if !events_only {
        orderbridge_db::create::insert_order(&mut tx, client_id, &order).await?;
    }
    orderbridge_db::outbox::enqueue(&mut *tx, "order", order.id, &envelope).await?;
    tx.commit().await?;
    Ok(envelope.id)
}

struct RateResult {
    committed: Vec<Committed>,
    errors: usize,
    error_sample: Vec<String>,
    window: (Instant, Instant),
}

async fn fixed_rate(
    pool: PgPool,
    client_id: Uuid,
    args: &RelayArgs,
    run: String,
) -> Result<RateResult> {
    let permits = Arc::new(Semaphore::new(args.connections as usize));
    let start = Instant::now();
    let window = (start + args.warmup, start + args.warmup + args.duration);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).ceil() as usize;
    let run = Arc::new(run);
    let events_only = args.events_only;
    let mut tasks = JoinSet::new();
    let mut result = RateResult {
        committed: Vec::with_capacity(total),
        errors: 0,
        error_sample: Vec::new(),
        window,
    };
    let mut absorb = |r: Result<Result<Committed>, tokio::task::JoinError>| match r {
        Ok(Ok(c)) => result.committed.push(c),
        Ok(Err(e)) => {
            result.errors += 1;
            if result.error_sample.len() < 5 {
                result.error_sample.push(format!("{e:#}"));
            }
        }
        Err(e) => {
            result.errors += 1;
            if result.error_sample.len() < 5 {
                result.error_sample.push(e.to_string());
            }
        }
    };
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let (pool, run) = (pool.clone(), run.clone());
        tasks.spawn(async move {
            let id = commit_order(&pool, client_id, &run, i, events_only).await;
            let committed = Instant::now();
            drop(permit);
            Ok(Committed {
                event_id: id?,
                due,
                committed,
            })
        });
        while let Some(done) = tasks.try_join_next() {
            absorb(done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        absorb(done);
    }
    Ok(result)
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

    // 1. The raw limit.
    let raw = if args.raw_messages > 0 {
        tracing::info!(
            messages = args.raw_messages,
            "raw publish-with-confirms loop"
        );
        Some(raw_loop(&supervisor, &config, stack, args).await?)
    } else {
        None
    };

    // 2. Saturation: a backlog, then the relay.
    let backlog = args.backlog as usize;
    if backlog > 0 {
        tracing::info!(backlog, "writing the backlog");
        let run = format!("backlog-{}", Uuid::now_v7().simple());
        workload::insert_backlog(stack.pool()?, client_id, &run, backlog, 1000).await?;
        sqlx::query("ANALYZE orders, order_lines, outbox")
            .execute(stack.pool()?)
            .await?;
    }
    let received = Arc::new(Mutex::new(Received::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer_channel = config
        .op("channel.open", session.connection.create_channel())
        .await?;
    let consumer = tokio::spawn(consume(
        consumer_channel,
        config.clone(),
        work_queue.clone(),
        received.clone(),
        stop_rx,
    ));
    let load_before = procfs::loadavg();
    let relay_started_wall = Utc::now();
    let relay_started = Instant::now();
    stack.spawn_relay()?;
    let cpu_before = CpuSnapshot::take(&[]).with_new_processes(&stack.pids());
    stack.wait_ready(RELAY).await?;
    let drained = if backlog > 0 {
        wait_received(&received, backlog, stack.args.timeout).await
    } else {
        true
    };
    let drain_received = relay_started.elapsed().as_secs_f64();
    // The bench may receive a batch before the relay's marking transaction commits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while backlog > 0 && Instant::now() < deadline {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(stack.pool()?)
                .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog_published: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT published_at FROM outbox WHERE published_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(stack.pool()?)
    .await?;
    let cpu_drain = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    stack.check_running()?;

    // 3. The fixed rate.
    let writers = PgPoolOptions::new()
        .max_connections(args.connections)
        .min_connections(args.connections)
        .connect(&stack.database_url)
        .await?;
    let pg_before = common::PgCounters::take(stack.pool()?).await?;
    let cpu_before = CpuSnapshot::take(&stack.pids());
    let load_rate_before = procfs::loadavg();
    let run = format!("rate-{}", Uuid::now_v7().simple());
    tracing::info!(rate = args.rate, "fixed-rate phase");
    let rate = fixed_rate(writers.clone(), client_id, args, run).await?;
    let rate_ended = Instant::now();
    let cpu_rate = cpu_before.usage_until(&CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    let all_received = wait_received(
        &received,
        backlog + rate.committed.len(),
        Duration::from_secs(60),
    )
    .await;
    writers.close().await;
    let _ = stop_tx.send(true);
    let _ = consumer.await;
    stack.check_running()?;
    let scraped = stack.scrape_metrics().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pg_after = common::PgCounters::take(stack.pool()?).await?;
    let rss = stack.peak_rss_kib();
    let got = std::mem::take(&mut *lock(&received));

    // Lags of the events committed inside the window.
    let (from, to) = rate.window;
    let in_window: Vec<&Committed> = rate
        .committed
        .iter()
        .filter(|c| c.committed >= from && c.committed < to)
        .collect();
    let lag_ms: Vec<f64> = in_window
        .iter()
        .filter_map(|c| {
            got.at
                .get(&c.event_id)
                .map(|r| r.saturating_duration_since(c.committed).as_secs_f64() * 1e3)
        })
        .collect();
    let behind_ms: Vec<f64> = in_window
        .iter()
        .map(|c| c.committed.duration_since(c.due).as_secs_f64() * 1e3)
        .collect();
    // Server side: commit (client clock, same machine) → published_at (after the confirm).
    let ids: Vec<Uuid> = in_window.iter().map(|c| c.event_id).collect();
    let published: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT event_id, created_at, published_at FROM outbox WHERE event_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(stack.pool()?)
    .await?;
    let wall = |i: Instant| {
        relay_started_wall
            + chrono::Duration::from_std(i.saturating_duration_since(relay_started))
                .unwrap_or_default()
    };
    let committed_wall: HashMap<Uuid, DateTime<Utc>> = in_window
        .iter()
        .map(|c| (c.event_id, wall(c.committed)))
        .collect();
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
    let marked_ms: Vec<f64> = published
        .iter()
        .filter_map(|(id, _, p)| Some(ms((*p)? - *committed_wall.get(id)?)))
        .collect();
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(stack.pool()?)
            .await?;
    let window_s = to.duration_since(from).as_secs_f64();
    let committed_rate = in_window.len() as f64 / window_s;
    let received_in_window = got.at.values().filter(|t| **t >= from && **t < to).count();
    let received_rate = received_in_window as f64 / window_s;
    let tail_s = rate_ended.duration_since(to).as_secs_f64();
    let expected = backlog + rate.committed.len();
    let not_received = rate
        .committed
        .iter()
        .filter(|c| !got.at.contains_key(&c.event_id))
        .count();

    // Saturation figures from the server's timestamps.
    let secs = |d: chrono::Duration| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
    let (sat_rate, sat_first, sat_last) =
        match (backlog_published.first(), backlog_published.last()) {
            (Some(f), Some(l)) if backlog > 0 => {
                let (first, last) = (secs(*f - relay_started_wall), secs(*l - relay_started_wall));
                // Rows marked in one transaction share their published_at: with a single batch
                // there is no span, so count from the relay's start instead.
                let r = if last > first {
                    (backlog_published.len() - 1) as f64 / (last - first)
                } else {
                    backlog_published.len() as f64 / last.max(1e-3)
                };
                (Some(r), first, last)
            }
            _ => (None, 0.0, 0.0),
        };
    let raw_rate = raw
        .as_ref()
        .map(|r| r.messages as f64 / r.seconds.max(1e-9));

    // The table.
    let mut t = Table::new(format!(
        "orderbridge-bench relay: {} events/s for {} s (after {} s warm-up), backlog {}, raw loop {} messages",
        thousands(args.rate),
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        thousands(backlog as f64),
        thousands(f64::from(args.raw_messages))
    ));
    common::machine_context(&mut t, stack, load_rate_before, load_after, &cpu_rate);
    t.context(format!(
        "1-min load: {} at the start, {} before the relay started; CPU figures below are the fixed-rate phase's",
        load_text(load_start),
        load_text(load_before)
    ));
    t.context(format!(
        "only outbox-relay runs; the bench commits the orders and consumes {work_queue} (acks every 200 messages or 20 ms)"
    ));
    t.context(if args.events_only {
        "fixed rate: one transaction per event, the outbox row only (--events-only)"
    } else {
        "fixed rate: one transaction per order: the order, its 3 lines, its outbox row"
    });
    t.context("lag = client's moment after COMMIT returned → message received by the bench (message_id = event id)");
    t.context(format!("output: {}", stack.out.display()));

    if let Some(r) = &raw {
        t.info(
            "raw publish-with-confirms: messages/s",
            format!(
                "{:.0} ({} × {} B in {:.1} s, windows of {})",
                r.messages as f64 / r.seconds.max(1e-9),
                thousands(r.messages as f64),
                r.payload_bytes,
                r.seconds,
                args.raw_batch
            ),
        );
        if let Some(s) = Summary::of(&r.confirm_ms) {
            t.info(
                "raw: publish → confirm p50 / p99",
                format!("{:.1} / {:.1} ms", s.p50, s.p99),
            );
        }
        if let Some(s) = Summary::of(&r.publish_to_receive_ms) {
            t.info(
                "raw: publish → received p50 / p99",
                format!("{:.1} / {:.1} ms ({} received)", s.p50, s.p99, r.received),
            );
        }
    }
    if let Some(r) = sat_rate {
        t.info(
            "saturation: relay events/s (first → last published_at)",
            format!(
                "{r:.0} (first {sat_first:.2} s, last {sat_last:.2} s after the relay was started)"
            ),
        );
        if let Some(raw_rate) = raw_rate {
            t.info(
                "saturation: relay ÷ raw loop",
                format!("{:.2}", r / raw_rate.max(1e-9)),
            );
        }
        t.info(
            "saturation: backlog received by the bench",
            format!(
                "{} in {drain_received:.1} s from starting the relay{}",
                thousands(backlog as f64),
                if drained { "" } else { " (timed out)" }
            ),
        );
    }
    t.info(
        "fixed rate: committed / received events/s in the window",
        format!("{committed_rate:.0} / {received_rate:.0}"),
    );
    if let Some(s) = Summary::of(&behind_ms) {
        t.info(
            "fixed rate: commit behind schedule p50 / p99",
            format!("{:.1} / {:.1} ms", s.p50, s.p99),
        );
    }
    if let Some(s) = Summary::of(&lag_ms) {
        let at_target_rate = committed_rate >= TARGET_RATE * 0.95;
        common::latency_rows(
            &mut t,
            "commit → received",
            &s,
            1,
            at_target_rate.then_some((TARGET_P99_MS, "<= 50 ms at 1,000/s")),
            "target is at 1,000/s",
        );
    }
    if let Some(s) = Summary::of(&marked_ms) {
        t.info(
            "commit → published_at (relay's mark after the confirm) p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p99, s.max),
        );
    }
    let (service_metrics, pg_json) = common::footer_rows(
        &mut t,
        &common::Footer {
            scraped: &scraped,
            backlog: true,
            pg_before: &pg_before,
            pg_after: &pg_after,
            orders: rate.committed.len(),
            rss: &rss,
            rss_no_target: &[],
            cpu: &cpu_rate,
        },
    );
    t.check(
        "fixed-rate transactions that failed",
        rate.errors.to_string(),
        rate.errors == 0,
    );
    t.check(
        "committed events never received",
        format!(
            "{not_received}{}",
            if all_received { "" } else { " (timed out)" }
        ),
        not_received == 0 && got.at.len() >= expected,
    );
    t.check(
        "events received more than once / without an event id",
        format!("{} / {}", got.duplicates, got.unreadable),
        got.duplicates == 0 && got.unreadable == 0,
    );
    t.check(
        "outbox rows unpublished at the end",
        unpublished.to_string(),
        unpublished == 0,
    );

    let json = json!({
        "command": "relay",
        "started_at": relay_started_wall,
        "args": {
            "rate": args.rate, "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(), "connections": args.connections,
            "backlog": backlog, "raw_messages": args.raw_messages, "raw_batch": args.raw_batch,
            "events_only": args.events_only,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, load_rate_before, load_after, &cpu_rate),
        "loadavg_start": load_start,
        "raw": raw.as_ref().map(|r| json!({
            "messages": r.messages, "seconds": r.seconds,
            "messages_per_s": r.messages as f64 / r.seconds.max(1e-9),
            "payload_bytes": r.payload_bytes, "window": args.raw_batch,
            "publish_to_confirm_ms": summary_json(&r.confirm_ms),
            "publish_to_received_ms": summary_json(&r.publish_to_receive_ms),
            "received": r.received,
        })),
        "saturation": {
            "backlog": backlog, "events_per_s": sat_rate,
            "first_published_s": sat_first, "last_published_s": sat_last,
            "received_all_after_s": drain_received, "drained": drained,
            "cpu_seconds": cpu_drain.seconds, "cpu_busy_share": cpu_drain.machine_busy,
        },
        "fixed_rate": {
            "rate": args.rate, "window_s": window_s,
            "committed_in_window": in_window.len(), "committed_total": rate.committed.len(),
            "committed_per_s": committed_rate, "received_per_s": received_rate,
            "tail_s": tail_s,
            "errors": rate.errors, "errors_sample": rate.error_sample,
            "commit_behind_schedule_ms": summary_json(&behind_ms),
            "commit_to_received_ms": summary_json(&lag_ms),
            "commit_to_published_at_ms": summary_json(&marked_ms),
        },
        "received": {"messages": got.at.len(), "duplicates": got.duplicates,
                     "unreadable": got.unreadable, "not_received": not_received},
        "unpublished_at_end": unpublished,
        "peak_rss_mib": common::rss_json(&rss),
        "service_metrics": service_metrics,
        "postgres_per_event": pg_json,
        "table": t.to_json(),
    });
    let svg = lag_chart(
        &format!(
            "{committed_rate:.0} events/s committed; relay at saturation {}; raw loop {}",
            sat_rate.map_or_else(|| "not run".to_owned(), |r| format!("{r:.0}/s")),
            raw_rate.map_or_else(|| "not run".to_owned(), |r| format!("{r:.0}/s")),
        ),
        &lag_ms,
        &marked_ms,
    );
    session.close(&config).await;
    common::finish(stack, &t, &json, &[("lag.svg", svg)])
}

fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or_else(|| "?".to_owned(), |l| format!("{:.2}", l[0]))
}

/// CDFs of commit → received and commit → published_at at the fixed rate.
fn lag_chart(describe: &str, received: &[f64], marked: &[f64]) -> String {
    let s = Summary::of(received);
    let p99 = s.map_or(0.0, |s| s.p99);
    let x_max = (p99 * 1.3).max(TARGET_P99_MS * 1.3);
    let slowest = s.map_or(0.0, |s| s.max);
    let describe = if slowest > x_max {
        format!("{describe}; x axis cut at {x_max:.0} ms, slowest {slowest:.0} ms")
    } else {
        describe.to_owned()
    };
    let mut markers = Vec::new();
    if let Some(s) = s {
        for (label, v, p) in [
            ("p50", s.p50, 50.0),
            ("p90", s.p90, 90.0),
            ("p99", s.p99, 99.0),
        ] {
            markers.push(Marker {
                x: v,
                y: p,
                label: format!("{label} {v:.1} ms"),
                color: chart::BLUE,
            });
        }
    }
    chart::render(&Chart {
        title: "Outbox commit → publish lag, cumulative".into(),
        subtitle: describe,
        x_label: "lag from COMMIT (ms)".into(),
        y_label: "events at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "commit → received from the work queue".into(),
                color: chart::BLUE,
                points: chart::cdf_points(received),
                dashed: false,
            },
            Series {
                name: "commit → published_at (marked after confirm)".into(),
                color: chart::ORANGE,
                points: chart::cdf_points(marked),
                dashed: true,
            },
        ],
        markers,
        guides: vec![
            Guide::target(TARGET_P99_MS, "target: p99 ≤ 50 ms"),
            Guide::p99(),
        ],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_and_payload() {
        assert!(lag_chart("t", &[], &[]).contains("target"));
        assert!(lag_chart("t", &[1.0, 5.0], &[2.0]).contains("<polyline"));
        let p = sample_payload().unwrap_or_default();
        assert!(p.len() > 500, "an order event is about 1 kB: {}", p.len());
    }
}
