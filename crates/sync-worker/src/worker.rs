//! The consume → batch → write → report → ack loop.
//!
//! ```text
//!  {ns}.sf-sync ──deliveries (manual ack, prefetch = batch × (in-flight + 1))──► batcher
//!                up to WORKER_BATCH_SIZE, or WORKER_BATCH_LINGER stretched by WORKER_LATENCY_TARGET
//!                                                                  │ ≤ WORKER_MAX_IN_FLIGHT batches
//!                                                                  ▼
//!  per batch: decode ─► dedupe per order ─► Writer (Composite calls) ─► per-order outcome
//!     synced      → status `synced`                                        ┐ published on the
//!     retryable   → copy to {ns}.retry (tier by attempt) + status `retrying`│ batch's confirm
//!     permanent / attempts exhausted / unreadable → {ns}.dlx + `failed`   ┘ channel; then ack
//!     call failed as a whole (outage, budget, auth) → nack(requeue) + circuit breaker
//! ```
//!
//! Every outcome is published (and confirmed by the broker) before the original delivery is
//! acked, so a crash anywhere redelivers instead of losing; redelivery is harmless because
//! Salesforce writes are idempotent by external id and status reports are applied monotonically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use orderbridge_broker::{Backoff, BrokerConfig, BrokerError, Session, Supervisor, Topology};
use orderbridge_domain::{
    DecodeError, Envelope, Order, OrderEvent, SyncError, SyncState, SyncStatus,
};
use orderbridge_salesforce::ErrorClass;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::WorkerConfig;
use crate::headers;
use crate::metrics::Metrics;
use crate::writer::{CallFailure, Failure, OrderResult, Writer};

/// Why consumption is paused.
#[derive(Debug, Clone, PartialEq)]
pub enum Pause {
    /// Salesforce is unreachable or failing (503, timeouts, connection refused).
    Outage(String),
    /// The API budget is spent (REQUEST_LIMIT_EXCEEDED, or our usage share reached).
    Budget(String, Option<Duration>),
    /// Authentication, configuration or a request the org refuses as a whole: a person may
    /// need to act (credentials, price book, permissions). Probed with real calls, slowly.
    Blocked(String),
}

impl Pause {
    fn from_call(f: &CallFailure) -> Self {
        let what = format!("{}: {}", f.code, f.message);
        match f.class {
            ErrorClass::RateLimited => Self::Budget(what, f.retry_after),
            ErrorClass::Retryable => Self::Outage(what),
            ErrorClass::Session | ErrorClass::Config | ErrorClass::Permanent => Self::Blocked(what),
        }
    }
}

/// A fatal worker error (start-up only; at run time everything is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a consuming session ended.
enum Stop {
    Shutdown,
    Paused,
    Lost(String),
}

/// The worker.
pub struct Worker {
    config: WorkerConfig,
    supervisor: Supervisor,
    writer: Writer,
    metrics: Arc<Metrics>,
    breaker: watch::Sender<Option<Pause>>,
    /// Outage probe backoff. Kept across pauses, so a Salesforce that answers the probe but
    /// fails real calls is not hammered; reset after a long enough healthy stretch.
    probe_backoff: Mutex<Backoff>,
    /// How long a batch takes from dispatch to settled, smoothed (see [`WriteTime`]).
    write_time: Arc<WriteTime>,
}

/// A moving average of the time a batch takes from dispatch to settled (Salesforce calls,
/// status reports, acks): what a lingering batch must leave for after it goes out.
#[derive(Debug)]
pub struct WriteTime {
    micros: std::sync::atomic::AtomicU64,
}

/// The guess before the first batch: a Composite call at Salesforce's usual latency, the
/// price book lookup a cold cache adds, and the reports. Guessing low made the first batches
/// of a run the slowest orders.
const FIRST_WRITE_GUESS: Duration = Duration::from_millis(400);

impl Default for WriteTime {
    fn default() -> Self {
        Self {
            micros: std::sync::atomic::AtomicU64::new(
                u64::try_from(FIRST_WRITE_GUESS.as_micros()).unwrap_or(u64::MAX),
            ),
        }
    }
}

impl WriteTime {
    fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Folds one observation in (weight 1/4: a few batches adapt it, one outlier does not
    /// decide it).
    fn observe(&self, took: Duration) {
        let new = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self.micros.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| Some(old - old / 4 + new / 4),
        );
    }
}

/// When a batch that is not full goes out: not before `linger` after its first message; with a
/// latency target, as late as its oldest order can still be settled within the target given
/// the recent write time, but never later than the target after its first message.
fn batch_deadline(
    first_at: tokio::time::Instant,
    oldest: Option<DateTime<Utc>>,
    linger: Duration,
    target: Duration,
    write_time: Duration,
) -> tokio::time::Instant {
    let earliest = first_at + linger;
    let (false, Some(oldest)) = (target.is_zero(), oldest) else {
        return earliest;
    };
    // `checked_add`: an absurd target (say `100y`) must not overflow the clock.
    let latest = first_at
        .checked_add(target)
        .unwrap_or(earliest)
        .max(earliest);
    // The order's age by the wall clock (the event was stamped by another process, perhaps on
    // another host: the cap above bounds what a skewed clock can do).
    let age = (Utc::now() - oldest).to_std().unwrap_or_default();
    let left = target.saturating_sub(age).saturating_sub(write_time);
    tokio::time::Instant::now()
        .checked_add(left)
        .unwrap_or(latest)
        .min(latest)
        .max(earliest)
}

/// The `occurred_at` of an event, read without decoding the rest of it.
fn occurred_at(body: &[u8]) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        occurred_at: DateTime<Utc>,
    }
    serde_json::from_slice::<Stamp>(body)
        .ok()
        .map(|s| s.occurred_at)
}

/// Consuming this long without a pause counts as recovered: the next outage starts probing at
/// the shortest interval again.
const HEALTHY_STRETCH: Duration = Duration::from_secs(30);

/// What a batch task needs.
struct Ctx {
    config: WorkerConfig,
    broker: BrokerConfig,
    topology: Topology,
    writer: Writer,
    metrics: Arc<Metrics>,
    breaker: watch::Sender<Option<Pause>>,
    publish_channels: Mutex<Vec<Channel>>,
    write_time: Arc<WriteTime>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        broker: BrokerConfig,
        writer: Writer,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        let supervisor = Supervisor::new(broker, "sync-worker")?;
        let (breaker, _) = watch::channel(None);
        let probe_backoff = Mutex::new(Backoff::new(
            config.breaker_probe_min,
            config.breaker_probe_max,
        ));
        Ok(Self {
            config,
            supervisor,
            writer,
            metrics,
            breaker,
            probe_backoff,
            write_time: Arc::default(),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` turns true; then stops consuming, lets in-flight batches finish
    /// (up to WORKER_SHUTDOWN_GRACE), acks and returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let session = tokio::select! {
                s = self.supervisor.connect() => s,
                _ = shutdown.wait_for(|v| *v) => return Ok(()),
            };
            let started = Instant::now();
            let stop = self.session(&session, &mut shutdown).await;
            self.metrics
                .broker_up
                .store(false, std::sync::atomic::Ordering::Relaxed);
            session.close(self.supervisor.config()).await;
            match stop {
                Stop::Shutdown => return Ok(()),
                Stop::Paused => {}
                Stop::Lost(why) => {
                    tracing::warn!(why, "broker session lost");
                    self.metrics
                        .broker_reconnects_total
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if started.elapsed() > Duration::from_secs(30) {
                        self.supervisor.session_succeeded();
                    }
                    self.supervisor.session_lost();
                }
            }
        }
    }

    /// One broker session: consume while Salesforce is usable, pause while it is not.
    async fn session(&self, session: &Session, shutdown: &mut watch::Receiver<bool>) -> Stop {
        let config = self.supervisor.config();
        let mut publish_channels = Vec::with_capacity(usize::from(self.config.max_in_flight));
        for _ in 0..self.config.max_in_flight {
            let ch = match config
                .op("channel.open", session.connection.create_channel())
                .await
            {
                Ok(ch) => ch,
                Err(e) => return Stop::Lost(e.to_string()),
            };
            if let Err(e) = config
                .op(
                    "confirm.select",
                    ch.confirm_select(ConfirmSelectOptions::default()),
                )
                .await
            {
                return Stop::Lost(e.to_string());
            }
            publish_channels.push(ch);
        }
        if let Err(e) = config
            .op(
                "basic.qos",
                session
                    .channel
                    .basic_qos(self.config.prefetch(), BasicQosOptions::default()),
            )
            .await
        {
            return Stop::Lost(e.to_string());
        }
        let ctx = Arc::new(Ctx {
            config: self.config.clone(),
            broker: config.clone(),
            topology: self.supervisor.topology().clone(),
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            breaker: self.breaker.clone(),
            publish_channels: Mutex::new(publish_channels),
            write_time: self.write_time.clone(),
        });
        self.metrics
            .broker_up
            .store(true, std::sync::atomic::Ordering::Relaxed);

        // Its own channel: a passive declare of a missing queue closes the channel it runs on.
        let count_channel = match config
            .op("channel.open", session.connection.create_channel())
            .await
        {
            Ok(ch) => ch,
            Err(e) => return Stop::Lost(e.to_string()),
        };
        let dlq_counter = tokio::spawn(count_dead_letters(
            count_channel,
            config.clone(),
            self.supervisor.topology().clone(),
            self.config.dlq_check_interval,
            self.metrics.clone(),
        ));
        let stop = loop {
            let paused = self.breaker.borrow().clone();
            if let Some(pause) = paused {
                match self.wait_until_usable(pause, session, shutdown).await {
                    Some(stop) => break stop,
                    None => continue,
                }
            }
            let consuming_since = Instant::now();
            let stop = self.consume(&ctx, session, shutdown).await;
            if consuming_since.elapsed() >= HEALTHY_STRETCH {
                self.probe_backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reset();
            }
            match stop {
                Stop::Paused => continue,
                other => break other,
            }
        };
        dlq_counter.abort();
        stop
    }

    /// Holds consumption until Salesforce answers again (or shutdown / session loss).
    async fn wait_until_usable(
        &self,
        pause: Pause,
        session: &Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Stop> {
        self.metrics
            .paused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(?pause, "Salesforce not usable: consumption paused");
        // The client may say how long its usage guard will refuse calls; that wins.
        let mut told: Option<Duration> = match &pause {
            Pause::Budget(_, after) => *after,
            _ => None,
        };
        loop {
            let wait = match (&pause, told.take()) {
                (_, Some(after)) => after.max(self.config.breaker_probe_min),
                (Pause::Outage(_), None) => self
                    .probe_backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail(),
                (Pause::Budget(..) | Pause::Blocked(_), None) => self.config.budget_probe,
            };
            let mut sleep = std::pin::pin!(tokio::time::sleep(wait));
            // Keep an eye on the session while waiting: a dead session is replaced first.
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    _ = shutdown.wait_for(|v| *v) => return Some(Stop::Shutdown),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !session.is_healthy() {
                            return Some(Stop::Lost("connection closed while paused".into()));
                        }
                    }
                }
            }
            let client = self.writer.client();
            let probe = match &pause {
                Pause::Outage(_) => client.versions().await.map(|_| ()),
                // The real path: a fresh login (a cached token would hide a refused one) and
                // the price book lookup the writes need.
                Pause::Blocked(_) => {
                    let _ = client.logout().await;
                    match client.login().await {
                        Ok(_) => match self.writer.pricebook().resolve().await {
                            Ok(_) => Ok(()),
                            Err(e) => {
                                tracing::info!(error = %e, "Salesforce still refuses");
                                continue;
                            }
                        },
                        Err(e) => Err(e),
                    }
                }
                Pause::Budget(..) => match client.limits().await {
                    Ok(limits) => {
                        let spent = limits.daily_api_requests().is_some_and(|u| u.used >= u.max);
                        if spent || !client.usage_within_share() {
                            tracing::info!(usage = ?client.usage(), "API budget still spent");
                            continue;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            match probe {
                Ok(()) => {
                    tracing::info!("Salesforce answers again: consumption resumes");
                    self.breaker.send_replace(None);
                    self.metrics
                        .paused
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
                Err(e) => {
                    told = e.retry_after();
                    tracing::info!(error = %e, retry_in = ?told, "Salesforce still not usable");
                }
            }
        }
    }

    /// Consumes until shutdown, a breaker trip or session loss; always leaves with nothing
    /// unsettled: buffered deliveries are requeued and in-flight batches have finished.
    async fn consume(
        &self,
        ctx: &Arc<Ctx>,
        session: &Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Stop {
        let config = self.supervisor.config();
        let queue = &ctx.topology.sf_sync_queue;
        let tag = format!("sync-worker-{}", Uuid::now_v7());
        let mut consumer = match config
            .op(
                "basic.consume",
                session.channel.basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Stop::Lost(e.to_string()),
        };
        tracing::info!(queue, "consuming");

        let batch_size = usize::from(self.config.batch_size);
        let max_in_flight = usize::from(self.config.max_in_flight);
        let mut breaker = self.breaker.subscribe();
        let mut in_flight: JoinSet<Result<(), String>> = JoinSet::new();
        let mut buffer: Vec<Delivery> = Vec::with_capacity(batch_size);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut first_at = tokio::time::Instant::now();
        let mut oldest: Option<DateTime<Utc>> = None;

        let mut health = tokio::time::interval(Duration::from_secs(1));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = loop {
            // A batch that just tripped the breaker must not be followed by another one.
            if self.breaker.borrow().is_some() {
                break Stop::Paused;
            }
            let can_dispatch = in_flight.len() < max_in_flight;
            if can_dispatch
                && (buffer.len() >= batch_size
                    || (!buffer.is_empty()
                        && deadline.is_some_and(|d| d <= tokio::time::Instant::now())))
            {
                let batch = std::mem::take(&mut buffer);
                deadline = None;
                let span = tracing::info_span!("batch", size = batch.len());
                in_flight.spawn(process(ctx.clone(), batch).instrument(span));
                continue;
            }
            let want_more = buffer.len() < batch_size;
            let linger = deadline;
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|v| *v) => break Stop::Shutdown,
                _ = breaker.wait_for(Option::is_some) => break Stop::Paused,
                // lapin can miss a dead connection while idle (amqp-rs/lapin #389).
                _ = health.tick() => {
                    if !session.is_healthy() {
                        break Stop::Lost("connection or channel closed".into());
                    }
                }
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Stop::Lost(e),
                        Err(e) => break Stop::Lost(format!("batch task failed: {e}")),
                    }
                }
                next = consumer.next(), if want_more => match next {
                    Some(Ok(delivery)) => {
                        if buffer.is_empty() {
                            first_at = tokio::time::Instant::now();
                            oldest = None;
                        }
                        if !self.config.latency_target.is_zero()
                            && let Some(at) = occurred_at(&delivery.data)
                        {
                            oldest = Some(oldest.map_or(at, |o| o.min(at)));
                        }
                        buffer.push(delivery);
                        deadline = Some(batch_deadline(
                            first_at,
                            oldest,
                            self.config.batch_linger,
                            self.config.latency_target,
                            ctx.write_time.get(),
                        ));
                    }
                    Some(Err(e)) => break Stop::Lost(e.to_string()),
                    None => break Stop::Lost("the broker cancelled the consumer".into()),
                },
                () = async {
                    match linger {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if linger.is_some() && can_dispatch => {}
            }
        };

        // Stop intake first, so nothing new arrives while we settle.
        let _ = config
            .op(
                "basic.cancel",
                session
                    .channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
        // Deliveries that arrived after the cancel was sent are part of the prefetch too.
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            buffer.push(d);
        }
        // Messages that never reached Salesforce. On a pause they go back by republishing
        // (below, once a publish channel is free), which keeps their delivery count: pausing
        // again and again must not walk them towards the delivery limit. Otherwise (shutdown,
        // a broken session) they are simply returned.
        if !matches!(stop, Stop::Paused) || !session.is_healthy() {
            requeue(&buffer, config, &ctx.metrics).await;
            buffer.clear();
        }

        let grace = self.config.shutdown_grace;
        let finish_in_flight = async {
            let mut lost = None;
            while let Some(done) = in_flight.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => lost = Some(e),
                    Err(e) => lost = Some(format!("batch task failed: {e}")),
                }
            }
            lost
        };
        match tokio::time::timeout(grace, finish_in_flight).await {
            Ok(None) if !buffer.is_empty() => {
                let messages: Vec<Message> = buffer.drain(..).map(read).collect();
                let actions = messages.iter().map(|_| Action::Requeue).collect();
                match settle(ctx, &messages, actions).await {
                    Ok(()) => stop,
                    Err(e) => Stop::Lost(e),
                }
            }
            Ok(None) => stop,
            Ok(Some(e)) => match stop {
                Stop::Shutdown => Stop::Shutdown,
                _ => Stop::Lost(e),
            },
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight batches did not finish in time; their messages will be redelivered"
                );
                in_flight.abort_all();
                // Aborted batches leave deliveries unsettled and publish channels taken: only
                // closing the session returns those messages, so never carry on with it.
                match stop {
                    Stop::Shutdown => Stop::Shutdown,
                    _ => Stop::Lost("in-flight batches did not finish in time".into()),
                }
            }
        }
    }
}

trait NowOrNever: std::future::Future + Sized {
    fn now_or_never(self) -> Option<Self::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}

impl<F: std::future::Future> NowOrNever for F {}

async fn requeue(deliveries: &[Delivery], config: &BrokerConfig, metrics: &Metrics) {
    for d in deliveries {
        let _ = config
            .op(
                "basic.nack",
                d.acker.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                }),
            )
            .await;
    }
    metrics.requeued_total.fetch_add(
        deliveries.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

async fn count_dead_letters(
    channel: Channel,
    config: BrokerConfig,
    topology: Topology,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    loop {
        if let Ok(n) = crate::dlq::count(&config, &channel, &topology).await {
            metrics.set_dead_letters(n);
        }
        tokio::time::sleep(every).await;
    }
}

/// One message of a batch, read.
struct Message {
    delivery: Delivery,
    /// `None` when it could not be read; then `decode_error` says why.
    event: Option<Envelope<Order>>,
    decode_error: Option<DecodeError>,
    attempts: u32,
    /// Times the broker has delivered it before without it being settled (`x-delivery-count`).
    returned: u32,
}

/// What to publish for one message before acking it.
enum Action {
    /// Superseded by a newer event for the same order in the same batch: nothing to do.
    Drop,
    Synced(String),
    Retry(Failure),
    DeadLetter {
        reason: &'static str,
        code: String,
        message: String,
    },
    /// The call failed as a whole: back to the queue, untouched.
    Requeue,
}

/// Processes one batch. `Err` means the broker session is unusable (the caller reconnects;
/// unacked messages are redelivered).
async fn process(ctx: Arc<Ctx>, deliveries: Vec<Delivery>) -> Result<(), String> {
    let started = Instant::now();
    let result = process_batch(&ctx, deliveries).await;
    ctx.write_time.observe(started.elapsed());
    result
}

async fn process_batch(ctx: &Arc<Ctx>, deliveries: Vec<Delivery>) -> Result<(), String> {
    ctx.metrics.batch_size.observe(deliveries.len() as f64);

    let messages: Vec<Message> = deliveries.into_iter().map(read).collect();
    let last_delivery = last_delivery(ctx.topology.delivery_limit);

    // One write per order: the newest event (highest order version, then latest) wins; older
    // ones in the same batch are settled without a write of their own.
    let mut newest: HashMap<Uuid, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(e) = &m.event else { continue };
        match newest.get(&e.data.id) {
            Some(&j) => {
                let other = messages[j]
                    .event
                    .as_ref()
                    .map(|o| (o.data.version, o.occurred_at));
                if other < Some((e.data.version, e.occurred_at)) {
                    newest.insert(e.data.id, i);
                }
            }
            None => {
                newest.insert(e.data.id, i);
            }
        }
    }
    // The newest event of an order at its last delivery is dead-lettered untried (below), and
    // its older ones in the batch are dropped with it: writing an older event instead would
    // report `synced` for a version the newest then contradicts.
    let mut writes: Vec<usize> = newest
        .values()
        .copied()
        .filter(|&i| messages[i].returned < last_delivery)
        .collect();
    writes.sort_unstable();
    let newest: std::collections::HashSet<usize> = newest.into_values().collect();
    let orders: Vec<&Order> = writes
        .iter()
        .filter_map(|i| messages[*i].event.as_ref().map(|e| &e.data))
        .collect();
    let correlation_ids: Vec<&str> = writes
        .iter()
        .filter_map(|i| messages[*i].event.as_ref()?.correlation_id.as_deref())
        .collect();
    tracing::debug!(orders = orders.len(), correlation_ids = ?correlation_ids, "writing to Salesforce");
    let results = if orders.is_empty() {
        Vec::new()
    } else {
        ctx.writer.write(&orders).await
    };
    let mut result_of: HashMap<usize, OrderResult> = writes.into_iter().zip(results).collect();

    let max_attempts = ctx.config.max_attempts;
    let mut actions = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let action = match (&m.event, result_of.remove(&i)) {
            (None, _) => {
                let e = m.decode_error.as_ref();
                Action::DeadLetter {
                    reason: "undecodable",
                    code: match e {
                        Some(DecodeError::Unsupported { .. }) => "UNSUPPORTED_EVENT".into(),
                        _ => "MALFORMED_MESSAGE".into(),
                    },
                    message: e.map(ToString::to_string).unwrap_or_default(),
                }
            }
            (Some(_), None) if m.returned >= last_delivery && newest.contains(&i) => {
                Action::DeadLetter {
                    reason: "redelivered",
                    code: "REDELIVERY_LIMIT".into(),
                    message: format!(
                        "returned unsettled {} times (a worker may crash on it): dead-lettered at \
                     its last delivery instead of tried again",
                        m.returned
                    ),
                }
            }
            (Some(_), None) => Action::Drop,
            (Some(_), Some(OrderResult::Synced { salesforce_id })) => Action::Synced(salesforce_id),
            (Some(_), Some(OrderResult::Failed(f))) if !f.retryable => Action::DeadLetter {
                reason: "permanent",
                code: f.code,
                message: f.message,
            },
            (Some(_), Some(OrderResult::Failed(f))) if m.attempts + 1 >= max_attempts => {
                Action::DeadLetter {
                    reason: "attempts_exhausted",
                    code: f.code,
                    message: f.message,
                }
            }
            (Some(_), Some(OrderResult::Failed(f))) => Action::Retry(f),
            (Some(_), Some(OrderResult::CallFailed(f))) => {
                let pause = Pause::from_call(&f);
                let tripped = ctx.breaker.send_if_modified(|state| {
                    if state.is_none() {
                        *state = Some(pause.clone());
                        true
                    } else {
                        false
                    }
                });
                if tripped {
                    tracing::warn!(code = %f.code, error = %f.message, "Salesforce call failed as a whole: pausing");
                    ctx.metrics
                        .breaker_trips_total
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Action::Requeue
            }
        };
        actions.push(action);
    }

    if let Some(pause) = ctx.config.fault_pause_before_ack {
        tracing::warn!(
            ?pause,
            "fault injection: pausing between the Salesforce write and the ack"
        );
        tokio::time::sleep(pause).await;
    }
    settle(ctx, &messages, actions).await
}

/// The `x-delivery-count` of a message's last delivery: the worker dead-letters it itself then
/// instead of trying it again.
///
/// A quorum queue counts every return of a message (a crash, a lost connection, a `nack` with
/// requeue: the worker's own at shutdown too) and dead-letters it when the count would exceed
/// `BROKER_DELIVERY_LIMIT`, so the delivery with the count at the limit is the last one: a
/// message that kills every worker it reaches ends there. But the broker says nothing to the
/// portal, whose order would stay `published` until someone looked. So at that delivery the
/// worker dead-letters the message with a reason and reports the order `failed` (replayable like
/// any dead letter). Pauses and whole-call failures republish instead of returning, so they do
/// not count.
fn last_delivery(delivery_limit: u32) -> u32 {
    delivery_limit
}

fn read(delivery: Delivery) -> Message {
    let attempts = header_u32(&delivery.properties, headers::ATTEMPTS).unwrap_or(0);
    // Set by quorum queues on a message returned to the queue (RabbitMQ 3.x; absent on the first
    // delivery).
    let returned = header_u32(&delivery.properties, "x-delivery-count").unwrap_or(0);
    match OrderEvent::decode(&delivery.data) {
        Ok(env) => {
            let OrderEvent::Submitted(order) = env.data;
            Message {
                event: Some(Envelope {
                    id: env.id,
                    event_type: env.event_type,
                    version: env.version,
                    occurred_at: env.occurred_at,
                    correlation_id: env.correlation_id,
                    data: *order,
                }),
                decode_error: None,
                attempts,
                returned,
                delivery,
            }
        }
        Err(e) => Message {
            delivery,
            event: None,
            decode_error: Some(e),
            attempts,
            returned,
        },
    }
}

fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

fn header_string(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A copy of the delivery's properties with failure headers set (retry, dead letter).
fn failure_properties(
    m: &Message,
    attempts: u32,
    code: &str,
    message: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> BasicProperties {
    let props = &m.delivery.properties;
    let mut table = props.headers().clone().unwrap_or_default();
    let first = header_string(props, headers::FIRST_FAILURE_AT).unwrap_or_else(|| now.to_rfc3339());
    table.insert(
        headers::ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    table.insert(headers::ERROR_CODE.into(), long_string(code));
    // Headers travel in every frame; keep a huge error message from bloating them.
    let message: String = message.chars().take(2000).collect();
    table.insert(headers::ERROR_MESSAGE.into(), long_string(&message));
    table.insert(headers::FIRST_FAILURE_AT.into(), long_string(&first));
    table.insert(
        headers::LAST_FAILURE_AT.into(),
        long_string(&now.to_rfc3339()),
    );
    if let Some(reason) = reason {
        table.insert(headers::REASON.into(), long_string(reason));
    }
    props.clone().with_headers(table).with_delivery_mode(2)
}

/// Publishes every outcome of the batch on one confirm channel, waits for the confirms, then
/// acks what was settled and requeues the rest.
async fn settle(ctx: &Ctx, messages: &[Message], actions: Vec<Action>) -> Result<(), String> {
    let channel = ctx
        .publish_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .ok_or("no publish channel free")?;
    let result = settle_on(ctx, &channel, messages, actions).await;
    ctx.publish_channels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(channel);
    result
}

async fn settle_on(
    ctx: &Ctx,
    channel: &Channel,
    messages: &[Message],
    actions: Vec<Action>,
) -> Result<(), String> {
    let now = Utc::now();
    let topo = &ctx.topology;
    let metrics = &ctx.metrics;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    // (message index, confirm, message_id of what was published, is it the message's copy)
    let mut confirms = Vec::new();
    let mut has_copy = vec![false; messages.len()];
    for (i, (m, action)) in messages.iter().zip(&actions).enumerate() {
        let (status, outbound): (
            Option<SyncStatus>,
            Option<(String, String, BasicProperties)>,
        ) = match action {
            Action::Drop => continue,
            // Back to the tail of the work queue as a new publish, unchanged: unlike a
            // nack(requeue) this does not count against the queue's delivery limit, so an
            // outage never dead-letters messages that were not at fault.
            Action::Requeue => (
                None,
                Some((
                    String::new(),
                    topo.sf_sync_queue.clone(),
                    m.delivery.properties.clone(),
                )),
            ),
            Action::Synced(id) => (
                m.event.as_ref().map(|e| {
                    status_of(e, SyncState::Synced, Some(id.clone()), m.attempts + 1, None)
                }),
                None,
            ),
            Action::Retry(f) => {
                let attempts = m.attempts + 1;
                let tiers = &topo.retry_tiers;
                let tier = &tiers[(attempts as usize - 1).min(tiers.len() - 1)];
                (
                    m.event.as_ref().map(|e| {
                        status_of(
                            e,
                            SyncState::Retrying,
                            None,
                            attempts,
                            Some((&f.code, &f.message)),
                        )
                    }),
                    Some((
                        topo.retry_exchange.clone(),
                        tier.routing_key.clone(),
                        failure_properties(m, attempts, &f.code, &f.message, None, now),
                    )),
                )
            }
            Action::DeadLetter {
                reason,
                code,
                message,
            } => {
                let attempts = if *reason == "undecodable" {
                    m.attempts
                } else {
                    m.attempts + 1
                };
                (
                    m.event.as_ref().map(|e| {
                        status_of(e, SyncState::Failed, None, attempts, Some((code, message)))
                    }),
                    Some((
                        topo.dead_letter_exchange.clone(),
                        m.delivery.routing_key.as_str().to_owned(),
                        failure_properties(m, attempts, code, message, Some(reason), now),
                    )),
                )
            }
        };
        if let Some((exchange, key, props)) = outbound {
            let id = props
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            let c = ctx
                .broker
                .op(
                    "basic.publish",
                    channel.basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        mandatory,
                        &m.delivery.data,
                        props,
                    ),
                )
                .await
                .map_err(|e| e.to_string())?;
            has_copy[i] = true;
            confirms.push((i, c, id, true));
        }
        if let Some(status) = status {
            let correlation = m.event.as_ref().and_then(|e| e.correlation_id.clone());
            let key = status.routing_key();
            let envelope = status.into_envelope(now, correlation.clone());
            let body = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(envelope.id.to_string().into())
                .with_type(envelope.event_type.as_str().into())
                .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0))
                .with_app_id("orderbridge-sync-worker".into());
            if let Some(c) = correlation {
                props = props.with_correlation_id(ShortString::from(
                    c.chars().take(255).collect::<String>(),
                ));
            }
            let c = ctx
                .broker
                .op(
                    "basic.publish",
                    channel.basic_publish(
                        topo.status_exchange.as_str().into(),
                        key.as_str().into(),
                        mandatory,
                        &body,
                        props,
                    ),
                )
                .await
                .map_err(|e| e.to_string())?;
            confirms.push((i, c, envelope.id.to_string(), false));
        }
    }

    // Wait for every confirm. A message is settled (acked) when its copy (retry, dead letter,
    // requeue) is confirmed and not returned; with no copy, when its status report is. A lost
    // status report next to a confirmed copy is only logged: the copy will report again, and
    // requeueing the original too would double the message.
    let mut copy_failed = vec![false; messages.len()];
    let mut status_failed = vec![false; messages.len()];
    let mut returned: Vec<String> = Vec::new();
    let mut broken = None;
    let mut waited = Vec::with_capacity(confirms.len());
    for (i, c, id, is_copy) in confirms {
        let failed = if is_copy {
            &mut copy_failed
        } else {
            &mut status_failed
        };
        match ctx.broker.op("confirm", c).await {
            Ok(Confirmation::Ack(None)) => waited.push((i, id, is_copy)),
            Ok(Confirmation::Ack(Some(r))) => {
                // Attribute by message id below (lapin may attach a return to another confirm).
                match r.properties.message_id() {
                    Some(rid) => returned.push(rid.as_str().to_owned()),
                    None => failed[i] = true,
                }
                waited.push((i, id, is_copy));
            }
            Ok(Confirmation::Nack(_)) | Ok(Confirmation::NotRequested) => failed[i] = true,
            Err(e) => {
                failed[i] = true;
                broken = Some(e.to_string());
            }
        }
    }
    for (i, id, is_copy) in waited {
        if returned.contains(&id) {
            tracing::error!(message_id = %id, is_copy, "outcome message returned unroutable");
            if is_copy {
                copy_failed[i] = true;
            } else {
                status_failed[i] = true;
            }
        }
    }
    if let Some(e) = broken {
        // The channel or connection is gone: acks cannot be trusted either. Everything of this
        // batch is redelivered after the reconnect.
        return Err(format!("publishing outcomes failed: {e}"));
    }

    for (i, (m, action)) in messages.iter().zip(&actions).enumerate() {
        let settle_ok = !copy_failed[i] && (has_copy[i] || !status_failed[i]);
        if has_copy[i] && status_failed[i] {
            tracing::warn!(message_id = ?m.delivery.properties.message_id(), "status report not delivered; the message's next outcome reports again");
        }
        let r = if settle_ok {
            ctx.broker
                .op(
                    "basic.ack",
                    m.delivery.acker.ack(BasicAckOptions::default()),
                )
                .await
        } else {
            ctx.broker
                .op(
                    "basic.nack",
                    m.delivery.acker.nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    }),
                )
                .await
        };
        r.map_err(|e| format!("ack failed: {e}"))?;
        if !settle_ok || matches!(action, Action::Requeue) {
            metrics
                .requeued_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let order = m.event.as_ref().map(|e| e.data.id);
        let correlation_id = m.event.as_ref().and_then(|e| e.correlation_id.as_deref());
        match action {
            Action::Synced(id) => {
                metrics
                    .synced_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(e) = &m.event {
                    let lag = (now - e.occurred_at).to_std().unwrap_or_default();
                    metrics.end_to_end_lag.observe(lag.as_secs_f64());
                }
                tracing::debug!(?order, correlation_id, salesforce_id = %id, "synced");
            }
            Action::Retry(f) => {
                metrics
                    .retried_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(?order, correlation_id, code = %f.code, error = %f.message, attempts = m.attempts + 1, "retry scheduled");
            }
            Action::DeadLetter {
                reason,
                code,
                message,
            } => {
                if *reason == "undecodable" {
                    metrics
                        .undecodable_total
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    metrics
                        .failed_total
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::error!(
                    ?order,
                    correlation_id,
                    reason,
                    code,
                    error = message,
                    "dead-lettered"
                );
            }
            Action::Drop | Action::Requeue => {}
        }
    }
    if let Some(usage) = ctx.writer.client().usage() {
        metrics.set_api_usage(usage.used, usage.max);
    }
    Ok(())
}

fn status_of(
    e: &Envelope<Order>,
    state: SyncState,
    salesforce_id: Option<String>,
    attempts: u32,
    error: Option<(&String, &String)>,
) -> SyncStatus {
    SyncStatus {
        order_id: e.data.id,
        order_version: e.data.version,
        state,
        salesforce_id,
        attempts,
        error: error.map(|(code, message)| SyncError {
            code: code.clone(),
            message: message.chars().take(2000).collect(),
        }),
        source_event_id: e.id,
        source_occurred_at: e.occurred_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_batch_lingers_by_its_oldest_orders_budget() {
        let now = tokio::time::Instant::now();
        let deadline = |age_ms: i64, target: Duration| {
            let oldest = Utc::now() - chrono::Duration::milliseconds(age_ms);
            batch_deadline(now, Some(oldest), 50 * MS, target, 200 * MS) - now
        };
        // A fresh order: the target less its age and the write time (800 − 10 − 200 ≈ 590 ms).
        let fresh = deadline(10, 800 * MS);
        assert!(fresh > 550 * MS && fresh < 600 * MS, "{fresh:?}");
        // An old one (a backlog, a retry): the plain linger.
        assert_eq!(deadline(60_000, 800 * MS), 50 * MS);
        // A stamp from a clock ahead of ours counts as brand new, not as a reason to wait more.
        let ahead = deadline(-60_000, 800 * MS);
        assert!(ahead > 550 * MS && ahead < 610 * MS, "{ahead:?}");
        // Without a target, or without a readable stamp: the plain linger.
        assert_eq!(deadline(10, Duration::ZERO), 50 * MS);
        assert_eq!(
            batch_deadline(now, None, 50 * MS, 800 * MS, 200 * MS) - now,
            50 * MS
        );
    }

    #[test]
    fn an_absurd_target_does_not_overflow_the_clock() {
        let now = tokio::time::Instant::now();
        let target = Duration::from_secs(u64::MAX / 4);
        let d = batch_deadline(now, Some(Utc::now()), 50 * MS, target, 200 * MS);
        assert!(d >= now + 50 * MS);
    }

    #[test]
    fn the_write_time_moves_a_quarter_of_the_way() {
        let w = WriteTime::default();
        assert_eq!(w.get(), FIRST_WRITE_GUESS);
        w.observe(200 * MS);
        assert_eq!(w.get(), 350 * MS);
    }

    #[test]
    fn occurred_at_is_read_from_an_envelope() {
        let body = br#"{"id":"0192","type":"order.submitted","version":1,"occurred_at":"2026-11-24T07:00:00.123Z","data":{"big":[1,2,3]}}"#;
        assert_eq!(
            occurred_at(body).map(|t| t.to_rfc3339()),
            Some("2026-11-24T07:00:00.123+00:00".into())
        );
        assert_eq!(occurred_at(b"not json"), None);
    }
}
