//! Consuming into batches: a batch goes out when full, or when its linger (stretched by the
//! latency target, see [`batch_deadline`]) runs out; at most the window's size (`window`, up
//! to `WORKER_MAX_IN_FLIGHT`) batches are in flight. On the way out (shutdown, pause, lost
//! session) nothing is left unsettled.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use orderbridge_broker::{BrokerConfig, Session};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use super::decision::{Action, Message, process, read};
use super::settle::settle;
use super::window::Window;
use super::{BatchError, Ctx, Stop, Worker};
use crate::metrics::Metrics;

/// A moving average of the time a batch takes from dispatch to settled (Salesforce calls,
/// status reports, acks): what a lingering batch must leave for after it goes out.
#[derive(Debug)]
pub(super) struct WriteTime {
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
    pub(super) fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Folds one observation in (weight 1/4: a few batches adapt it, one outlier does not
    /// decide it).
    pub(super) fn observe(&self, took: Duration) {
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

impl Worker {
    /// Consumes until shutdown, a breaker trip or session loss; always leaves with nothing
    /// unsettled: buffered deliveries are requeued and in-flight batches have finished.
    pub(super) async fn consume(
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
        // Whatever was being measured before a pause or a lost session says nothing now.
        self.with_window(Window::interrupted);

        let batch_size = usize::from(self.config.batch_size);
        let bulk_size = self.config.bulk_batch_size as usize;
        // The current batch's size limit: WORKER_BATCH_SIZE, or the Bulk size once the batch
        // shows it is part of a backlog.
        let mut limit = batch_size;
        let mut breaker = self.breaker.subscribe();
        // Each task answers with whether it went out into a full window, for the window.
        let mut in_flight: JoinSet<(bool, Result<usize, BatchError>)> = JoinSet::new();
        let mut buffer: Vec<Delivery> = Vec::with_capacity(batch_size);
        let mut bulk_batches = 0u64;
        // Whether a full batch has waited for a slot since the last dispatch.
        let mut waited = false;
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
            let can_dispatch = in_flight.len() < self.window_size();
            if !can_dispatch && buffer.len() >= limit {
                // A full batch waits for a slot.
                waited = true;
            }
            let now = tokio::time::Instant::now();
            // Filled to WORKER_BATCH_SIZE before its deadline: messages are waiting (a
            // backlog), so with Bulk on the batch keeps filling, for a bounded while.
            if self.config.bulk_enabled()
                && limit == batch_size
                && buffer.len() >= batch_size
                && deadline.is_some_and(|d| d > now)
            {
                limit = bulk_size;
                deadline = now.checked_add(self.config.bulk_linger);
                bulk_batches += 1;
                tracing::debug!(bulk_batches, "backlog: filling a Bulk batch");
                continue;
            }
            if can_dispatch
                && (buffer.len() >= limit
                    || (!buffer.is_empty() && deadline.is_some_and(|d| d <= now)))
            {
                let batch = std::mem::take(&mut buffer);
                deadline = None;
                // A full Composite batch that waited for its slot or fills the window: the
                // work is there and the window is what holds it back (a backlog), so its
                // completion is a measure of the window. A batch sent on its deadline, or
                // into a window with room, or a Bulk batch (the window adapts for Composite
                // only) is not.
                let backlog = limit == batch_size
                    && batch.len() >= batch_size
                    && (std::mem::take(&mut waited) || in_flight.len() + 1 >= self.window_size());
                limit = batch_size;
                let span = tracing::info_span!("batch", size = batch.len());
                let task = process(ctx.clone(), batch);
                in_flight.spawn(async move { (backlog, task.await) }.instrument(span));
                continue;
            }
            let want_more = buffer.len() < limit;
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
                        Ok((backlog, Ok(synced))) => self.window_completed(synced, backlog),
                        Ok((_, Err(e))) => break Stop::Lost(e.to_string()),
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
                        if limit > batch_size {
                            // A backlog batch keeps the deadline it was given.
                            continue;
                        }
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

        // Stop intake first, so nothing new arrives while we settle. On shutdown this is
        // bounded by the shutdown step: a cancel the broker is slow to confirm must not eat
        // the grace in-flight batches get.
        let cancel = config.op(
            "basic.cancel",
            session
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        );
        if matches!(stop, Stop::Shutdown) {
            let _ = tokio::time::timeout(super::SHUTDOWN_STEP, cancel).await;
        } else {
            let _ = cancel.await;
        }
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
                    Ok((_, Ok(_))) => {}
                    Ok((_, Err(e))) => lost = Some(e.to_string()),
                    Err(e) => lost = Some(format!("batch task failed: {e}")),
                }
            }
            lost
        };
        match tokio::time::timeout(grace, finish_in_flight).await {
            Ok(None) if !buffer.is_empty() => {
                let messages: Vec<Message> =
                    buffer.drain(..).map(|d| read(d, &ctx.keyring)).collect();
                let actions = messages.iter().map(|_| Action::Requeue).collect();
                match settle(ctx, &messages, actions).await {
                    Ok(()) => stop,
                    Err(e) => Stop::Lost(e.to_string()),
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

    fn window_size(&self) -> usize {
        self.window.lock().unwrap_or_else(|p| p.into_inner()).size()
    }

    /// Tells the window a batch finished with `synced` orders.
    fn window_completed(&self, synced: usize, backlog: bool) {
        self.with_window(|w| w.completed(std::time::Instant::now(), synced, backlog));
    }

    /// Tells the window something; its size then shows in the metrics.
    fn with_window(&self, f: impl FnOnce(&mut Window)) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut window);
        self.metrics
            .window
            .store(window.size() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

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
