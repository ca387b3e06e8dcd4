//! The return path: the sync worker's `order.sync_status` reports, applied to their orders.
//!
//! ```text
//!  sync-worker ──status──► {ns}.status (topic) ──#──► {ns}.status-events (quorum, DLX {ns}.dlx)
//!                                                         │ prefetch RELAY_STATUS_PREFETCH,
//!                                                         ▼ manual acks
//!                       status applier (every relay process, no leader: competing consumers)
//!                         gather a batch (≤ RELAY_STATUS_BATCH_SIZE, ≤ RELAY_STATUS_LINGER)
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use futures_util::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use orderbridge_broker::{Backoff, BrokerConfig, Session, Supervisor};
use orderbridge_domain::{SyncState, SyncStatus};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{RelayConfig, StatusConfig};
use crate::faults::{
    DbFault, HEALTHY_SESSION, RelayError, db_op, sleep_or_shutdown, wait_shutdown,
};
use crate::metrics::Metrics;

/// Longest error message kept on an order; Salesforce's are far shorter, this only bounds a
/// misbehaving producer.
const MAX_ERROR_MESSAGE_CHARS: usize = 4000;
/// Longest error code or Salesforce id kept.
const MAX_CODE_CHARS: usize = 255;

/// A status report, checked and ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub order_id: Uuid,
    /// `data.version` of the `order.submitted` event the report is about.
    pub order_version: i64,
    /// `retrying`, `synced` or `failed`.
    pub state: SyncState,
    pub salesforce_id: Option<String>,
    pub attempts: i32,
    /// `None` when synced, whatever the message said.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The envelope's `occurred_at`: when the worker made the report.
    pub occurred_at: DateTime<Utc>,
}

impl Report {
    /// Reads and checks a status message. The error says why it cannot be applied; such a
    /// message is dead-lettered, never retried (it would fail the same way every time).
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let envelope = SyncStatus::decode(body).map_err(|e| e.to_string())?;
        let status = envelope.data;
        if !matches!(
            status.state,
            SyncState::Retrying | SyncState::Synced | SyncState::Failed
        ) {
            return Err(format!(
                "state `{}` is not something the sync worker reports",
                status.state
            ));
        }
        if status.order_version < 1 {
            return Err(format!(
                "order_version {} is not a version",
                status.order_version
            ));
        }
        // Postgres refuses timestamps chrono accepts (before 4713 BC); a refused statement
        // would fail the whole batch. No real report is outside these years.
        if !(1..=9999).contains(&envelope.occurred_at.year()) {
            return Err(format!(
                "occurred_at {} is out of range",
                envelope.occurred_at
            ));
        }
        let synced = status.state == SyncState::Synced;
        let (error_code, error_message) = match status.error {
            Some(e) if !synced => (
                Some(clean(&e.code, MAX_CODE_CHARS)),
                Some(clean(&e.message, MAX_ERROR_MESSAGE_CHARS)),
            ),
            _ => (None, None),
        };
        Ok(Self {
            order_id: status.order_id,
            order_version: status.order_version,
            state: status.state,
            salesforce_id: status
                .salesforce_id
                .map(|id| clean(&id, MAX_CODE_CHARS))
                .filter(|id| !id.is_empty()),
            attempts: i32::try_from(status.attempts).unwrap_or(i32::MAX),
            error_code,
            error_message,
            occurred_at: envelope.occurred_at,
        })
    }
}

/// Postgres text cannot hold NUL; and a bound on length, at a character boundary.
fn clean(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

/// What applying one report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order changed (its version, hence its ETag, was bumped).
    Applied,
    /// Ignored: about an older event, not newer than what the order holds, or a duplicate.
    Stale,
    /// No such order.
    UnknownOrder,
}

/// One report against the locked order `o` (`r` is the report). Within one statement every
/// order appears at most once, so each row is judged against its state before the statement.
const APPLY_SQL: &str = "
UPDATE orders o SET
    sync_state = r.state,
    salesforce_id = coalesce(r.salesforce_id, o.salesforce_id),
    sync_attempts = r.attempts,
    last_error_code = r.error_code,
    last_error_message = r.error_message,
    synced_at = CASE WHEN r.state = 'synced' THEN r.occurred_at ELSE o.synced_at END,
    sync_event_version = r.order_version,
    sync_reported_at = r.occurred_at
    -- the orders_bump_version trigger bumps version and updated_at, so the ETag changes
FROM unnest($1::int[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::int[],
            $7::text[], $8::text[], $9::timestamptz[])
     AS r(idx, order_id, order_version, state, salesforce_id, attempts, error_code,
          error_message, occurred_at)
WHERE o.id = r.order_id
  -- An event's data.version never exceeds the order's version: a report claiming more is bogus.
  AND r.order_version <= o.version
  AND (
        -- about a newer event (after a resync): it replaces whatever the older one reported
        r.order_version > o.sync_event_version
        -- about the same event: synced is final; otherwise synced, or not older, wins
     OR (r.order_version = o.sync_event_version
         AND o.sync_state <> 'synced'
         AND (r.state = 'synced' OR o.sync_reported_at IS NULL
              OR r.occurred_at >= o.sync_reported_at))
  )
  -- A redelivered duplicate changes nothing: not counted as applied.
  AND (o.sync_state, o.salesforce_id, o.sync_attempts, o.last_error_code, o.last_error_message,
       o.synced_at, o.sync_event_version, o.sync_reported_at)
      IS DISTINCT FROM
      (r.state, coalesce(r.salesforce_id, o.salesforce_id), r.attempts, r.error_code,
       r.error_message, CASE WHEN r.state = 'synced' THEN r.occurred_at ELSE o.synced_at END,
       r.order_version, r.occurred_at)
RETURNING r.idx";

/// Applies reports in one transaction, in the given order, as if one at a time. Returns what
/// happened to each, in the same order.
///
/// The orders are locked first, in id order: concurrent appliers (and the relay, and the API's
/// resync) then never deadlock among themselves, and every statement below sees the latest
/// committed row. A batch may hold several reports for one order (`retrying` then `synced`);
/// they go out in rounds, the n-th report of each order in the n-th statement, so each is judged
/// against the state the previous one left.
pub async fn apply_reports(
    conn: &mut PgConnection,
    reports: &[Report],
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let ids: Vec<Uuid> = reports.iter().map(|r| r.order_id).collect();
    let known: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let mut outcome: Vec<Applied> = reports
        .iter()
        .map(|r| {
            if known.contains(&r.order_id) {
                Applied::Stale
            } else {
                Applied::UnknownOrder
            }
        })
        .collect();

    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for (i, r) in reports.iter().enumerate() {
        if !known.contains(&r.order_id) {
            continue;
        }
        let n = seen.entry(r.order_id).or_default();
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }

    for round in rounds {
        let mut idx = Vec::with_capacity(round.len());
        let mut order_ids = Vec::with_capacity(round.len());
        let mut versions = Vec::with_capacity(round.len());
        let mut states = Vec::with_capacity(round.len());
        let mut sf_ids = Vec::with_capacity(round.len());
        let mut attempts = Vec::with_capacity(round.len());
        let mut codes = Vec::with_capacity(round.len());
        let mut messages = Vec::with_capacity(round.len());
        let mut occurred = Vec::with_capacity(round.len());
        for i in round {
            let r = &reports[i];
            idx.push(i32::try_from(i).unwrap_or(i32::MAX));
            order_ids.push(r.order_id);
            versions.push(r.order_version);
            states.push(r.state.as_str());
            sf_ids.push(r.salesforce_id.as_deref());
            attempts.push(r.attempts);
            codes.push(r.error_code.as_deref());
            messages.push(r.error_message.as_deref());
            occurred.push(r.occurred_at);
        }
        let applied: Vec<i32> = sqlx::query_scalar(APPLY_SQL)
            .bind(&idx)
            .bind(&order_ids)
            .bind(&versions)
            .bind(&states)
            .bind(&sf_ids)
            .bind(&attempts)
            .bind(&codes)
            .bind(&messages)
            .bind(&occurred)
            .fetch_all(&mut *tx)
            .await?;
        for i in applied {
            if let Some(o) = usize::try_from(i).ok().and_then(|i| outcome.get_mut(i)) {
                *o = Applied::Applied;
            }
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

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
        broker.topology()?;
        let mut config = config;
        // A batch can never hold more than the prefetch; asking for more would only make every
        // batch wait out the linger time.
        config.status_batch_size = config.status_batch_size.min(config.status_prefetch);
        Ok(Self {
            config,
            broker,
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

    /// Applies one batch and settles every delivery in it: unreadable or refused ones are
    /// rejected (dead-lettered), the rest acknowledged after the commit.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use orderbridge_domain::SyncError;

    fn status(state: SyncState) -> SyncStatus {
        SyncStatus {
            order_id: Uuid::now_v7(),
            order_version: 1,
            state,
            salesforce_id: Some("801xx0000000001AAA".into()),
            attempts: 2,
            error: Some(SyncError {
                code: "UNABLE_TO_LOCK_ROW".into(),
                message: "locked\0row".into(),
            }),
            source_event_id: Uuid::now_v7(),
            source_occurred_at: Utc::now(),
        }
    }

    fn body(s: SyncStatus) -> Vec<u8> {
        serde_json::to_vec(&s.into_envelope(Utc::now(), None)).unwrap()
    }

    #[test]
    fn decodes_reports_and_refuses_what_cannot_be_applied() {
        let r = Report::decode(&body(status(SyncState::Retrying))).unwrap();
        assert_eq!(r.error_code.as_deref(), Some("UNABLE_TO_LOCK_ROW"));
        assert_eq!(r.error_message.as_deref(), Some("locked\u{fffd}row"));
        // Synced carries no error, whatever the message says.
        let r = Report::decode(&body(status(SyncState::Synced))).unwrap();
        assert_eq!(r.error_code, None);
        assert_eq!(r.salesforce_id.as_deref(), Some("801xx0000000001AAA"));

        assert!(Report::decode(b"not json").is_err());
        assert!(Report::decode(&body(status(SyncState::Pending))).is_err());
        let mut s = status(SyncState::Failed);
        s.order_version = 0;
        assert!(Report::decode(&body(s)).is_err());
        let mut other =
            serde_json::to_value(status(SyncState::Synced).into_envelope(Utc::now(), None))
                .unwrap();
        other["version"] = 2.into();
        assert!(Report::decode(&serde_json::to_vec(&other).unwrap()).is_err());
        other["version"] = 1.into();
        other["occurred_at"] = "-200000-01-01T00:00:00Z".into();
        assert!(Report::decode(&serde_json::to_vec(&other).unwrap()).is_err());
    }
}
