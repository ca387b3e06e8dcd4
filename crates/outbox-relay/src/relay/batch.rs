//! The publisher's batches: read the oldest unpublished rows, publish them all, collect the
//! broker's confirms, then mark the confirmed rows published — and, while a backlog lasts, the
//! next batch read and published while the current one's confirms come in.
//!
//! ```text
//!  send:   read_batch (own partitions; skip parked aggregates and those in flight)
//!          ─► basic.publish each (mandatory, persistent; one per aggregate)
//!  settle: collect every confirm ─► attribute returns by message_id ─► mark_published
//!
//!  pipelined:  send A (full) ─► (A's confirms pending) send B ─► settle A ─► settle B …
//!              (A and B on the session's two channels, so each keeps its own returns)
//! ```
//!
//! Why two batches in flight: with one, the relay idles for a broker round trip (~5–40 ms) per
//! batch while a backlog waits; reading and publishing the next batch meanwhile drained a
//! 50,000-row backlog ~25 % faster (BENCHMARKS.md). Only a backlog is pipelined (the batch was
//! full, or held rows back), not each new commit: pipelining on every NOTIFY also sent the rows
//! committed meanwhile as batches of their own, a read and a marking transaction each (1.45–1.67
//! Postgres commits per event at 1,000 events/s against 1.26–1.31 without), for no clear gain in
//! the p99 lag. Per-aggregate order holds because the second batch leaves out every aggregate
//! with a row in the first: an order's later event is read only once the earlier one is
//! confirmed and marked (or refused, and then parked).
//!
//! Kept apart from the session/leader loop (`relay`), which only decides when batches may run
//! and what to do with their [`Outcome`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation, PublisherConfirm};
use orderbridge_broker::{BrokerConfig, BrokerError, Keyring, with_timeout};
use sqlx::PgConnection;
use tokio::sync::watch;
use uuid::Uuid;

use super::message::message;
use crate::config::RelayConfig;
use crate::faults::{DbFault, db_op, wait_shutdown};
use crate::metrics::{FailureReason, Metrics};
use crate::outbox::{self, OutboxRow};

/// How one batch (or a run of pipelined batches) went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    /// Rows the last batch read.
    pub(crate) read: usize,
    pub(crate) published: u64,
    pub(crate) failed: u64,
    /// Rows the last batch held back because an earlier row of the same aggregate was in it.
    pub(crate) deferred: u64,
    /// The broker session misbehaved: reconnect before the next batch.
    pub(crate) broker_failed: bool,
    /// The last batch was read while another was in flight, leaving that one's aggregates out:
    /// their later rows may be waiting, so read again at once.
    pub(crate) again: bool,
}

impl Outcome {
    /// Adds a later batch: counts add up, `read` and `deferred` are the later batch's (they say
    /// whether more is waiting), a broker failure sticks.
    fn then(self, later: Outcome) -> Outcome {
        Outcome {
            read: later.read,
            published: self.published + later.published,
            failed: self.failed + later.failed,
            deferred: later.deferred,
            broker_failed: self.broker_failed || later.broker_failed,
            again: later.again,
        }
    }
}

/// Each sent row's confirmation (by index into the batch's rows) and when it was sent.
type Confirms = Vec<(usize, Instant, Result<Confirmation, BrokerError>)>;

/// A batch read and published whose confirms are still coming in.
struct Sent {
    /// Which of [`Run::channels`] it went out on.
    channel: usize,
    rows: Vec<OutboxRow>,
    /// Aggregates with a row in this batch (sent, deferred or refused): the next batch, read
    /// while this one is in flight, leaves them out.
    aggregates: HashSet<Uuid>,
    outcome: Outcome,
    /// Collects the confirms; polled by `select!` while the next batch is sent, then awaited.
    confirms: Pin<Box<dyn Future<Output = (Confirms, bool)> + Send>>,
}

/// What a batch needs from its relay, borrowed for as long as the publishing loop runs.
pub(crate) struct Publisher<'a> {
    pub(crate) config: &'a RelayConfig,
    pub(crate) broker: &'a BrokerConfig,
    pub(crate) keyring: &'a Keyring,
    pub(crate) metrics: &'a Metrics,
}

/// Where a run of batches publishes, and when it must hand the connection back.
pub(crate) struct Run<'a> {
    /// Two publishing channels of the session, both in confirm mode: a batch goes out on the
    /// other one than the batch still in flight. lapin hands a returned (unroutable) message to
    /// whichever pending confirm *of its channel* a (coalesced) ack completes first, so with
    /// both batches on one channel a row's return could ride on the other batch's confirm, and
    /// the row's own batch would mark it published (`settle` attributes returns by message id,
    /// within the batch). On its own channel a batch's returns stay with its confirms.
    pub(crate) channels: [&'a Channel; 2],
    pub(crate) exchange: &'a str,
    /// The partitions whose locks the leader connection holds.
    pub(crate) mine: &'a [u16],
    /// No new batch is started after this (the leader loop rebalances between runs).
    pub(crate) until: Instant,
}

impl Publisher<'_> {
    /// Runs batches on the leader connection while a backlog lasts (and `run.until` has not
    /// passed, the broker works and no shutdown is asked): the first batch is read at once;
    /// while its confirms are out, the next is read and published if rows are waiting (the
    /// batch was full, or held rows back). Without `RELAY_PIPELINE` one batch runs, then the
    /// loop decides.
    ///
    /// Only Postgres faults are errors (the caller drops that connection and competes for the
    /// locks again; rows sent but not marked go out again later: at-least-once, as always);
    /// broker trouble is reported in [`Outcome::broker_failed`] instead, since it calls for a
    /// new session, not a new connection.
    pub(crate) async fn run(
        &self,
        conn: &mut PgConnection,
        run: &Run<'_>,
        parked: &mut HashMap<Uuid, Instant>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Outcome, DbFault> {
        let no_aggregates = HashSet::new();
        let Some(mut current) = self
            .send(conn, run, 0, parked, &no_aggregates, shutdown)
            .await?
        else {
            return Ok(Outcome::default());
        };
        let mut total = Outcome::default();
        // Whether `current` was read while another batch was in flight.
        let mut pipelined = false;
        loop {
            let more_waiting = current.outcome.read >= self.config.batch_size as usize
                || current.outcome.deferred > 0;
            let may_pipeline = self.config.pipeline
                && !current.outcome.broker_failed
                && !*shutdown.borrow()
                && Instant::now() < run.until;
            // While a backlog lasts, send the next batch before waiting for the confirms.
            let (next, confirms) = if may_pipeline && more_waiting {
                let other = 1 - current.channel;
                let next = self
                    .send(conn, run, other, parked, &current.aggregates, shutdown)
                    .await?;
                (next, (&mut current.confirms).await)
            } else {
                (None, (&mut current.confirms).await)
            };
            let mut outcome = self.settle(conn, current, confirms, parked).await?;
            match next {
                Some(n) => {
                    total = total.then(outcome);
                    current = n;
                    pipelined = true;
                }
                None => {
                    // This batch was read while another was in flight, leaving that one's
                    // aggregates out (and the relay decides on `read`/`deferred` otherwise).
                    outcome.again = pipelined;
                    return Ok(total.then(outcome));
                }
            }
        }
    }

    /// Reads the next batch (leaving out parked aggregates and `in_flight`, those of a batch
    /// still awaiting its confirms) and publishes it without waiting; `None` when nothing is
    /// waiting.
    async fn send(
        &self,
        conn: &mut PgConnection,
        run: &Run<'_>,
        channel: usize,
        parked: &mut HashMap<Uuid, Instant>,
        in_flight: &HashSet<Uuid>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Sent>, DbFault> {
        let m = self.metrics;
        let now = Instant::now();
        parked.retain(|_, until| *until > now);
        let skip: Vec<Uuid> = parked.keys().chain(in_flight).copied().collect();
        let rows = db_op(
            self.config.db_timeout,
            outbox::read_batch(
                conn,
                self.config.batch_size,
                &skip,
                self.config.partitions,
                run.mine,
            ),
        )
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let park_until = now + self.config.poll_interval;
        let mut outcome = Outcome {
            read: rows.len(),
            ..Outcome::default()
        };

        // Publish without waiting: the whole batch is the window of unconfirmed messages.
        let mut aggregates = HashSet::new();
        let mut seen = HashSet::new();
        let mut sent: Vec<(usize, PublisherConfirm, Instant)> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if *shutdown.borrow() {
                // Stop sending; what is already out is confirmed (or abandoned) in `settle`.
                break;
            }
            aggregates.insert(row.aggregate_id);
            // Per-aggregate order: a second event of the same aggregate waits for a later
            // batch, i.e. until the first is confirmed. If the first fails, it is read again
            // first next time, and the second keeps waiting behind it.
            if !seen.insert((row.aggregate_type.as_str(), row.aggregate_id)) {
                outcome.deferred += 1;
                continue;
            }
            let (routing_key, properties) = match message(row, self.keyring) {
                Ok(msg) => msg,
                Err(why) => {
                    tracing::error!(position = row.position, event_id = %row.event_id, why, "outbox row cannot be published");
                    m.failure(FailureReason::InvalidRow, 1);
                    outcome.failed += 1;
                    parked.insert(row.aggregate_id, park_until);
                    continue;
                }
            };
            let at = Instant::now();
            let publish = run.channels[channel].basic_publish(
                run.exchange.into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                row.payload.as_bytes(),
                properties,
            );
            match self.broker.op("basic.publish", publish).await {
                Ok(confirm) => sent.push((i, confirm, at)),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed");
                    outcome.broker_failed = true;
                    break;
                }
            }
        }
        let confirms = Box::pin(collect(
            sent,
            self.broker.broker_op_timeout,
            outcome.broker_failed,
            shutdown.clone(),
            self.config.shutdown_grace,
        ));
        Ok(Some(Sent {
            channel,
            rows,
            aggregates,
            outcome,
            confirms,
        }))
    }

    /// Judges a batch by its confirms and marks the rows the broker took.
    async fn settle(
        &self,
        conn: &mut PgConnection,
        sent: Sent,
        (results, broker_failed): (Confirms, bool),
        parked: &mut HashMap<Uuid, Instant>,
    ) -> Result<Outcome, DbFault> {
        let m = self.metrics;
        let Sent {
            rows, mut outcome, ..
        } = sent;
        outcome.broker_failed |= broker_failed;

        let mut returned: HashSet<String> = HashSet::new();
        let mut unattributable = false;
        for (_, _, result) in &results {
            if let Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) = result {
                match r.properties.message_id() {
                    Some(id) => {
                        tracing::warn!(
                            event_id = %id,
                            routing_key = %r.routing_key,
                            reply_code = r.reply_code,
                            reply_text = %r.reply_text,
                            "broker returned the message (no queue bound for its routing key); it stays unpublished"
                        );
                        returned.insert(id.to_string());
                    }
                    // We always set message_id; without one the return cannot be attributed, so
                    // nothing in this batch may be trusted as delivered.
                    None => unattributable = true,
                }
            }
        }
        if unattributable {
            tracing::error!(
                "a returned message has no message_id; the whole batch stays unpublished"
            );
        }

        let sent_count = results.len();
        let mut confirmed = Vec::with_capacity(results.len());
        for (i, at, result) in results {
            let Some(row) = rows.get(i) else { continue };
            let was_returned = unattributable || returned.contains(&row.event_id.to_string());
            match result {
                Ok(Confirmation::Ack(_)) if !was_returned => {
                    m.confirm_latency.observe(at.elapsed().as_secs_f64());
                    let lag = Utc::now() - row.created_at;
                    m.commit_to_confirm_lag
                        .observe(lag.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
                    confirmed.push(row.position);
                }
                Ok(Confirmation::Ack(_)) => {
                    m.failure(FailureReason::Unroutable, 1);
                    outcome.failed += 1;
                    parked.insert(row.aggregate_id, Instant::now() + self.config.poll_interval);
                }
                Ok(Confirmation::Nack(_)) => {
                    tracing::warn!(position = row.position, event_id = %row.event_id, "broker nacked the message; it stays unpublished");
                    m.failure(FailureReason::Nack, 1);
                    outcome.failed += 1;
                    parked.insert(row.aggregate_id, Instant::now() + self.config.poll_interval);
                }
                Ok(Confirmation::NotRequested) => {
                    tracing::error!("channel is not in confirm mode; reconnecting");
                    m.failure(FailureReason::BrokerError, 1);
                    outcome.failed += 1;
                    outcome.broker_failed = true;
                }
                Err(_) => {
                    m.failure(FailureReason::BrokerError, 1);
                    outcome.failed += 1;
                }
            }
        }
        tracing::debug!(
            read = rows.len(),
            sent = sent_count,
            confirmed = confirmed.len(),
            "batch"
        );

        if !confirmed.is_empty() {
            let n = db_op(
                self.config.db_timeout,
                outbox::mark_published(conn, &confirmed),
            )
            .await?;
            m.published_total.fetch_add(n, Ordering::Relaxed);
            outcome.published = n;
        }
        Ok(outcome)
    }
}

/// Collects the confirms of a batch in order. On shutdown the batch gets `grace` to finish;
/// after that it is abandoned and its unconfirmed rows stay unpublished. Returns each
/// confirmation taken and whether the session failed (a confirm timed out or errored, or
/// `failed` already: then only confirms that are already in are taken).
///
/// Every confirmation of the batch is collected before anything is decided: lapin attaches a
/// returned (unroutable) message to whichever confirm completes next, and completes the tags of
/// a coalesced `multiple` ack in no particular order, so the return that arrives with a row's
/// confirm may belong to another row. `settle` attributes returns by their own message_id (=
/// event id), never by which confirm carried them.
async fn collect(
    sent: Vec<(usize, PublisherConfirm, Instant)>,
    op_timeout: Duration,
    mut failed: bool,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> (Confirms, bool) {
    let grace_over = async move {
        wait_shutdown(&mut shutdown).await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(grace_over);
    let mut results = Vec::with_capacity(sent.len());
    for (i, confirm, at) in sent {
        let limit = if failed { Duration::ZERO } else { op_timeout };
        let result = tokio::select! {
            r = with_timeout(limit, "confirm", confirm) => r,
            () = &mut grace_over => {
                tracing::warn!("shutdown grace over: abandoning the rest of the batch");
                break;
            }
        };
        if let Err(e) = &result {
            if !failed {
                tracing::warn!(error = %e, "no confirm; the rest of the batch stays unpublished");
            }
            failed = true;
        }
        results.push((i, at, result));
    }
    (results, failed)
}
