//! The return path: the sync worker's `order.sync_status` reports, applied to their orders.
//!
//! ```text
//!  sync-worker ──status──► {ns}.status (topic) ──#──► {ns}.status-events (quorum, DLX {ns}.dlx)
//!                                                         │ prefetch RELAY_STATUS_PREFETCH,
//!                                                         ▼ manual acks
//!                       status applier (every relay process, no leader: competing consumers)
//!                         gather a batch (≤ RELAY_STATUS_BATCH_SIZE, ≤ RELAY_STATUS_LINGER)
//!                         not signed by the worker ──copy with the reason──► {ns}.dlx, confirmed; ack
//!                         unreadable ──basic.reject(requeue=false)──► {ns}.dlx ──► {ns}.dead-letters
//!                         readable ──one transaction──► UPDATE orders (monotonic rule) ──commit──► ack
//! ```
//!
//! Applying is idempotent and monotonic, so any number of appliers may consume the queue and a
//! message may arrive any number of times, in any order:
//!
//! - a report about an older event than the order's `sync_event_version` is stale (a resync sent
//!   a newer event since) and ignored; one about a newer event is applied;
//! - for the same event version, `synced` is final; otherwise a `synced` report, or one that
//!   occurred no earlier than the last applied one (`sync_reported_at`), is applied.
//!
//! A report is acknowledged only after the transaction that applied (or ignored) it committed;
//! if the process dies in between, the broker redelivers and re-applying is a no-op.
//!
//! Every report must carry the sync worker's signature (`orderbridge_broker::signing`), checked
//! before anything else: one that is unsigned or does not verify never reaches Postgres. It is
//! dead-lettered with the reason `bad_signature` (a copy published to `{ns}.dlx` with the
//! failure headers, confirmed, then the original acknowledged; should that publish fail, the
//! original is rejected and the broker dead-letters it without the headers).
//!
//! Reading a message is in `report`, the SQL that applies a batch in `apply`; this module is the
//! consume/batch loop that connects the two to the broker and Postgres.

mod apply;
mod report;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Confirmation, Consumer};
use orderbridge_broker::headers::{self, DeadLetterReason, long_string};
use orderbridge_broker::{
    Backoff, BrokerConfig, Keyring, Session, SignatureError, Supervisor, Topology,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{RelayConfig, StatusConfig};
use crate::faults::{
    DbFault, HEALTHY_SESSION, RelayError, db_op, sleep_or_shutdown, wait_shutdown,
};
use crate::metrics::Metrics;

pub use self::apply::{Applied, apply_reports};
pub use self::report::Report;

/// Postgres refused the data itself (class 22 data exception, 23 integrity violation): the same
/// statement would fail again, so retrying cannot help.
fn is_refused(e: &DbFault) -> bool {
    matches!(e, DbFault::Sql(sqlx::Error::Database(db))
        if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// A report's fate once its batch is through.
#[derive(Debug, Clone)]
enum Verdict {
    Done(Applied),
    /// Postgres refused this report on its own: dead-letter it.
    Refused(String),
}

/// Why consuming stopped.
enum End {
    Shutdown,
    SessionLost,
}

/// Consumes the status queue and applies the reports to their orders. One per relay process,
/// independent of the publishing leadership.
pub struct StatusApplier {
    config: StatusConfig,
    broker: BrokerConfig,
    topology: Topology,
    /// Verifies the sync worker's signature on every report.
    keyring: Keyring,
    connect_options: PgConnectOptions,
    db_timeout: Duration,
    connection_name: String,
    metrics: Arc<Metrics>,
}

impl StatusApplier {
    /// Uses a connection of its own, opened with `pool`'s options (so it carries the relay's
    /// `application_name` and statement timeout), and reports into `metrics` (the relay's, so
    /// one `/metrics` shows both).
    pub fn new(
        config: StatusConfig,
        relay: &RelayConfig,
        broker: BrokerConfig,
        pool: &PgPool,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RelayError> {
        let topology = broker.topology()?;
        let keyring = broker.keyring()?;
        let mut config = config;
        // A batch can never hold more than the prefetch; asking for more would only make every
        // batch wait out the linger time.
        config.status_batch_size = config.status_batch_size.min(config.status_prefetch);
        Ok(Self {
            config,
            broker,
            topology,
            keyring,
            connect_options: (*pool.connect_options()).clone(),
            db_timeout: relay.db_timeout,
            connection_name: format!("{} (status applier)", relay.db_application_name),
            metrics,
        })
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): then it stops taking
    /// messages, finishes and acknowledges the batch in hand, and returns. Broker and database
    /// faults are waited out, never returned.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RelayError> {
        let mut supervisor = Supervisor::new(self.broker.clone(), &self.connection_name)?;
        let queue = supervisor.topology().status_queue.clone();
        let mut db: Option<PgConnection> = None;
        let mut db_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        while !*shutdown.borrow() {
            let (session, mut consumer) = tokio::select! {
                opened = self.open(&mut supervisor, &queue) => opened,
                () = wait_shutdown(&mut shutdown) => break,
            };
            self.metrics
                .status_consumer_up
                .store(true, Ordering::Relaxed);
            let end = self
                .consume(
                    &session,
                    &mut consumer,
                    &mut supervisor,
                    &mut db,
                    &mut db_backoff,
                    &mut shutdown,
                )
                .await;
            self.metrics
                .status_consumer_up
                .store(false, Ordering::Relaxed);
            match end {
                End::Shutdown => {
                    // Closing returns the prefetched, unacknowledged messages to the queue.
                    session.close(&self.broker).await;
                    break;
                }
                End::SessionLost => {
                    supervisor.session_lost();
                    // A wedged connection's close can take the whole operation timeout.
                    let config = self.broker.clone();
                    tokio::spawn(async move { session.close(&config).await });
                }
            }
        }
        if let Some(conn) = db {
            let _ = tokio::time::timeout(self.db_timeout, conn.close()).await;
        }
        tracing::info!("status applier stopped");
        Ok(())
    }

    /// A session with a consumer on the status queue; retries until it has one.
    async fn open(&self, supervisor: &mut Supervisor, queue: &str) -> (Session, Consumer) {
        loop {
            let session = supervisor.connect().await;
            let consumer = async {
                // Confirms: a forged report is acknowledged only once its dead letter is safe.
                session.enable_confirms(&self.broker).await?;
                self.broker
                    .op(
                        "basic.qos",
                        session
                            .channel
                            .basic_qos(self.config.status_prefetch, BasicQosOptions::default()),
                    )
                    .await?;
                self.broker
                    .op(
                        "basic.consume",
                        session.channel.basic_consume(
                            queue.into(),
                            format!("status-applier-{}", Uuid::now_v7()).into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        ),
                    )
                    .await
            }
            .await;
            match consumer {
                Ok(consumer) => {
                    tracing::info!(queue, "consuming sync status reports");
                    return (session, consumer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot consume the status queue");
                    supervisor.session_lost();
                    session.close(&self.broker).await;
                }
            }
        }
    }

    async fn consume(
        &self,
        session: &Session,
        consumer: &mut Consumer,
        supervisor: &mut Supervisor,
        db: &mut Option<PgConnection>,
        db_backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let started = Instant::now();
        // Heartbeat loss or a closed channel flips the session's status; an idle consumer
        // would otherwise only notice on its next delivery.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                // Shutdown first: with messages always ready, an unbiased select could keep
                // taking batches after it was requested.
                biased;
                () = wait_shutdown(shutdown) => return End::Shutdown,
                d = consumer.next() => d,
                _ = check.tick() => {
                    if !session.is_healthy() {
                        tracing::warn!("status consumer's broker session lost");
                        return End::SessionLost;
                    }
                    if started.elapsed() >= HEALTHY_SESSION {
                        supervisor.session_succeeded();
                    }
                    continue;
                }
            };
            let mut batch = match first {
                Some(Ok(d)) => vec![d],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "status consumer failed");
                    return End::SessionLost;
                }
                None => {
                    tracing::warn!("the broker cancelled the status consumer");
                    return End::SessionLost;
                }
            };
            // Take what is arriving anyway, for at most the linger time.
            let deadline = tokio::time::Instant::now() + self.config.status_linger;
            while batch.len() < usize::from(self.config.status_batch_size) {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    Ok(Some(Err(e))) => {
                        // Unacknowledged messages come back on the next session.
                        tracing::warn!(error = %e, "status consumer failed");
                        return End::SessionLost;
                    }
                    Ok(None) => return End::SessionLost,
                    Err(_) => break,
                }
            }
            if let Err(end) = self.handle(session, &batch, db, db_backoff, shutdown).await {
                return end;
            }
        }
    }

    /// Applies one batch and settles every delivery in it: those without a valid signature are
    /// dead-lettered with the reason, unreadable or refused ones rejected (dead-lettered by the
    /// broker), the rest acknowledged after the commit.
    async fn handle(
        &self,
        session: &Session,
        batch: &[Delivery],
        db: &mut Option<PgConnection>,
        db_backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        let m = &self.metrics;
        let mut readable: Vec<(&Delivery, Report)> = Vec::with_capacity(batch.len());
        for d in batch {
            if let Err(why) = self.keyring.verify(&d.properties, &d.data) {
                tracing::warn!(
                    message_id = ?d.properties.message_id(),
                    routing_key = %d.routing_key,
                    code = why.code(),
                    %why,
                    "status message without a valid signature: dead-lettering it"
                );
                self.dead_letter(session, d, &why).await?;
                m.status_bad_signature_total.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match Report::decode(&d.data) {
                Ok(r) => readable.push((d, r)),
                Err(why) => {
                    tracing::warn!(
                        message_id = ?d.properties.message_id(),
                        routing_key = %d.routing_key,
                        why,
                        "unreadable status message: dead-lettering it"
                    );
                    self.reject(session, d).await?;
                    m.status_rejected_total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if readable.is_empty() {
            return Ok(());
        }
        let reports: Vec<Report> = readable.iter().map(|(_, r)| r.clone()).collect();
        let verdicts = self
            .apply_until_done(session, &reports, db, db_backoff, shutdown)
            .await?;

        let now = Utc::now();
        let mut last_ack = None;
        for ((d, r), verdict) in readable.iter().zip(verdicts) {
            match verdict {
                Verdict::Done(Applied::Applied) => {
                    m.status_applied_total.fetch_add(1, Ordering::Relaxed);
                    let lag = (now - r.occurred_at).num_microseconds().unwrap_or(i64::MAX);
                    m.status_apply_lag.observe(lag as f64 / 1e6);
                }
                Verdict::Done(Applied::Stale) => {
                    m.status_stale_total.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Done(Applied::UnknownOrder) => {
                    m.status_unknown_order_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        order_id = %r.order_id,
                        message_id = ?d.properties.message_id(),
                        "sync status for an unknown order: dropped"
                    );
                }
                Verdict::Refused(why) => {
                    tracing::error!(
                        order_id = %r.order_id,
                        message_id = ?d.properties.message_id(),
                        why,
                        "Postgres refused a sync status report: dead-lettering it"
                    );
                    self.reject(session, d).await?;
                    m.status_rejected_total.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            last_ack = last_ack.max(Some(d.delivery_tag));
        }
        // One ack for the batch: `multiple` covers every outstanding delivery up to the last
        // tag, i.e. exactly this batch's (tags rise, earlier ones are already settled, and the
        // rejected ones were settled just above).
        if let Some(tag) = last_ack {
            let ack = session
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: true });
            if let Err(e) = self.broker.op("basic.ack", ack).await {
                // Committed but not acknowledged: redelivered, and re-applying is a no-op.
                tracing::warn!(error = %e, "cannot acknowledge status reports");
                return Err(End::SessionLost);
            }
        }
        tracing::debug!(reports = batch.len(), "status batch applied");
        Ok(())
    }

    /// Publishes a copy of `d` with the failure headers to the dead-letter exchange and, once
    /// the broker confirmed it, acknowledges `d`. If the copy is not taken, `d` is rejected
    /// instead: dead-lettered by the broker, without our headers, but never applied or lost.
    async fn dead_letter(
        &self,
        session: &Session,
        d: &Delivery,
        why: &SignatureError,
    ) -> Result<(), End> {
        let properties = bad_signature_properties(&d.properties, why, &self.topology.status_queue);
        let publish = session.channel.basic_publish(
            self.topology.dead_letter_exchange.as_str().into(),
            d.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &d.data,
            properties,
        );
        let confirm = self.broker.op("basic.publish", publish).await;
        let taken = match confirm {
            Ok(confirm) => match self.broker.op("confirm", confirm).await {
                Ok(Confirmation::Ack(None)) => true,
                Ok(other) => {
                    tracing::warn!(
                        ?other,
                        "dead letter not taken by the broker; rejecting the message instead"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no confirm for a dead letter");
                    return Err(End::SessionLost);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish a dead letter");
                return Err(End::SessionLost);
            }
        };
        if !taken {
            return self.reject(session, d).await;
        }
        let ack = session
            .channel
            .basic_ack(d.delivery_tag, BasicAckOptions { multiple: false });
        self.broker.op("basic.ack", ack).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot acknowledge a dead-lettered status message");
            End::SessionLost
        })
    }

    async fn reject(&self, session: &Session, d: &Delivery) -> Result<(), End> {
        let reject = session
            .channel
            .basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false });
        self.broker.op("basic.reject", reject).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot reject a status message");
            End::SessionLost
        })
    }

    /// Applies the batch, waiting out database faults with backoff. Gives up (leaving the
    /// batch unacknowledged, to be redelivered) on shutdown or when the broker session is
    /// gone, since its deliveries can no longer be acknowledged anyway.
    async fn apply_until_done(
        &self,
        session: &Session,
        reports: &[Report],
        db: &mut Option<PgConnection>,
        db_backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<Verdict>, End> {
        loop {
            let fault = match db.as_mut() {
                Some(conn) => match self.apply(conn, reports).await {
                    Ok(verdicts) => {
                        db_backoff.reset();
                        return Ok(verdicts);
                    }
                    Err(e) => e,
                },
                None => match db_op(
                    self.db_timeout,
                    PgConnection::connect_with(&self.connect_options),
                )
                .await
                {
                    Ok(conn) => {
                        *db = Some(conn);
                        continue;
                    }
                    Err(e) => e,
                },
            };
            // The connection may be broken or mid-transaction: start afresh.
            *db = None;
            let delay = db_backoff.fail();
            tracing::warn!(error = %fault, retry_in = ?delay, "cannot apply sync status reports");
            sleep_or_shutdown(delay, shutdown).await;
            if *shutdown.borrow() {
                return Err(End::Shutdown);
            }
            if !session.is_healthy() {
                return Err(End::SessionLost);
            }
        }
    }

    /// One attempt. If Postgres refuses the batch's data, the reports are applied one per
    /// transaction so only the offending ones are dead-lettered and the rest go through.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        reports: &[Report],
    ) -> Result<Vec<Verdict>, DbFault> {
        match db_op(self.db_timeout, apply_reports(conn, reports)).await {
            Ok(applied) => Ok(applied.into_iter().map(Verdict::Done).collect()),
            Err(e) if is_refused(&e) => {
                tracing::warn!(error = %e, "Postgres refused a status batch; applying it one report at a time");
                let mut verdicts = Vec::with_capacity(reports.len());
                for r in reports {
                    match db_op(
                        self.db_timeout,
                        apply_reports(conn, std::slice::from_ref(r)),
                    )
                    .await
                    {
                        Ok(mut applied) => verdicts.push(Verdict::Done(
                            applied.pop().unwrap_or(Applied::UnknownOrder),
                        )),
                        Err(e) if is_refused(&e) => verdicts.push(Verdict::Refused(e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
                Ok(verdicts)
            }
            Err(e) => Err(e),
        }
    }
}

/// The dead letter's properties: the original's (less `user_id`), with the failure headers.
/// The message's own signature headers stay as they came, so a replay can tell it was never
/// ours.
fn bad_signature_properties(
    original: &lapin::BasicProperties,
    why: &SignatureError,
    origin_queue: &str,
) -> lapin::BasicProperties {
    let now = Utc::now().to_rfc3339();
    let mut table = original.headers().clone().unwrap_or_default();
    table.insert(
        headers::REASON.into(),
        long_string(DeadLetterReason::BadSignature.as_str()),
    );
    table.insert(headers::ERROR_CODE.into(), long_string(why.code()));
    table.insert(headers::ERROR_MESSAGE.into(), long_string(&why.to_string()));
    table.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(0));
    table.insert(headers::FIRST_FAILURE_AT.into(), long_string(&now));
    table.insert(headers::LAST_FAILURE_AT.into(), long_string(&now));
    table.insert(headers::ORIGIN_QUEUE.into(), long_string(origin_queue));
    headers::republishable(original)
        .with_headers(table)
        .with_delivery_mode(2)
}
