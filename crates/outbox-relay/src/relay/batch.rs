//! One batch of the publisher: read the oldest unpublished rows, publish them all, collect the
//! broker's confirms, then mark the confirmed rows published.
//!
//! ```text
//!  read_batch (own partitions, skip parked aggregates) ─► basic.publish each (mandatory, persistent; one per
//!  aggregate) ─► collect every confirm ─► attribute returns by message_id ─► mark_published
//! ```
//!
//! Kept apart from the session/leader loop (`relay`), which only decides when a batch may run
//! and what to do with its [`Outcome`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use orderbridge_broker::{BrokerConfig, Keyring, Session, with_timeout};
use sqlx::PgConnection;
use tokio::sync::watch;
use uuid::Uuid;

use super::message::message;
use crate::config::RelayConfig;
use crate::faults::{DbFault, db_op, wait_shutdown};
use crate::metrics::{FailureReason, Metrics};
use crate::outbox;

/// How one batch went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) read: usize,
    pub(crate) published: u64,
    pub(crate) failed: u64,
    /// Rows held back because an earlier row of the same aggregate is in this batch.
    pub(crate) deferred: u64,
    /// The broker session misbehaved: reconnect before the next batch.
    pub(crate) broker_failed: bool,
}

/// What a batch needs from its relay, borrowed for as long as the publishing loop runs.
pub(crate) struct Publisher<'a> {
    pub(crate) config: &'a RelayConfig,
    pub(crate) broker: &'a BrokerConfig,
    pub(crate) keyring: &'a Keyring,
    pub(crate) metrics: &'a Metrics,
}

impl Publisher<'_> {
    /// Runs one batch on the leader connection, over the partitions in `mine` (whose locks that
    /// connection holds). Only Postgres faults are errors (the caller
    /// drops that connection and competes for the lock again); broker trouble is reported in
    /// [`Outcome::broker_failed`] instead, since it calls for a new session, not a new
    /// connection.
    pub(crate) async fn batch(
        &self,
        conn: &mut PgConnection,
        session: &Session,
        exchange: &str,
        parked: &mut HashMap<Uuid, Instant>,
        mine: &[u16],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Outcome, DbFault> {
        let m = self.metrics;
        let now = Instant::now();
        parked.retain(|_, until| *until > now);
        let skip: Vec<Uuid> = parked.keys().copied().collect();
        let rows = db_op(
            self.config.db_timeout,
            outbox::read_batch(
                conn,
                self.config.batch_size,
                &skip,
                self.config.partitions,
                mine,
            ),
        )
        .await?;
        let park_until = now + self.config.poll_interval;
        let mut outcome = Outcome {
            read: rows.len(),
            ..Outcome::default()
        };
        if rows.is_empty() {
            return Ok(outcome);
        }

        // Publish without waiting: the whole batch is the window of unconfirmed messages.
        let mut seen = HashSet::new();
        let mut in_flight = Vec::with_capacity(rows.len());
        for row in &rows {
            if *shutdown.borrow() {
                // Stop sending; what is already out is confirmed (or abandoned) below.
                break;
            }
            // Per-aggregate order: a second event of the same aggregate waits for the next
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
            let sent = Instant::now();
            let publish = session.channel.basic_publish(
                exchange.into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                row.payload.as_bytes(),
                properties,
            );
            match self.broker.op("basic.publish", publish).await {
                Ok(confirm) => in_flight.push((row, confirm, sent)),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed");
                    outcome.broker_failed = true;
                    break;
                }
            }
        }

        // Collect confirms in order. On shutdown the batch gets RELAY_SHUTDOWN_GRACE to finish;
        // after that it is abandoned and its unconfirmed rows stay unpublished.
        let mut grace_rx = shutdown.clone();
        let grace = self.config.shutdown_grace;
        let grace_over = async move {
            wait_shutdown(&mut grace_rx).await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(grace_over);
        // First collect every confirmation of the batch, then decide. lapin attaches a returned
        // (unroutable) message to whichever confirm completes next, and completes the tags of a
        // coalesced `multiple` ack in no particular order, so the return that arrives with a row's
        // confirm may belong to another row. Returns are therefore attributed by their own
        // message_id (= event id), never by which confirm carried them.
        let sent_count = in_flight.len();
        let mut results = Vec::with_capacity(sent_count);
        for (row, confirm, sent) in in_flight {
            // Once the session failed, take only confirms that are already in.
            let limit = if outcome.broker_failed {
                Duration::ZERO
            } else {
                self.broker.broker_op_timeout
            };
            let result = tokio::select! {
                r = with_timeout(limit, "confirm", confirm) => r,
                () = &mut grace_over => {
                    tracing::warn!("shutdown grace over: abandoning the rest of the batch");
                    break;
                }
            };
            if let Err(e) = &result {
                if !outcome.broker_failed {
                    tracing::warn!(error = %e, "no confirm; the rest of the batch stays unpublished");
                }
                outcome.broker_failed = true;
            }
            results.push((row, sent, result));
        }

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

        let mut confirmed = Vec::with_capacity(results.len());
        for (row, sent, result) in results {
            let was_returned = unattributable || returned.contains(&row.event_id.to_string());
            match result {
                Ok(Confirmation::Ack(_)) if !was_returned => {
                    m.confirm_latency.observe(sent.elapsed().as_secs_f64());
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
