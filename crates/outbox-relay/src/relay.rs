//! The publishing loop and its helpers (listener, retention, backlog gauge).
//!
//! ```text
//!            ┌──────────── supervise broker ◄───────────────┐  connection or channel lost,
//!            ▼                                              │  publish/confirm timed out
//!   ensure session (backoff+jitter, declare topology, confirm.select)
//!            ▼
//!   ensure leader connection ──lock held elsewhere──► standby: retry every RELAY_STANDBY_INTERVAL
//!            ▼ pg_try_advisory_lock = true
//!   read batch ─► publish all (mandatory, persistent) ─► collect confirms ─► mark confirmed rows
//!            ▲                                                                 │
//!            └──── NOTIFY / poll interval / more rows waiting ◄────────────────┘
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use orderbridge_broker::{Backoff, BrokerConfig, Session, Supervisor, with_timeout};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::config::RelayConfig;
use crate::faults::{HEALTHY_SESSION, db_op, sleep_or_shutdown, wait_shutdown};
use crate::metrics::{FailureReason, Metrics};
use crate::outbox::{self, OutboxRow};

// Their public paths stay `relay::…`: tests and other crates name them there.
pub use crate::faults::{DbFault, RelayError};

/// How one batch went.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    read: usize,
    published: u64,
    failed: u64,
    /// Rows held back because an earlier row of the same aggregate is in this batch.
    deferred: u64,
    /// The broker session misbehaved: reconnect before the next batch.
    broker_failed: bool,
}

/// One relay process: configuration, the pool, and the metrics it reports.
pub struct Relay {
    config: RelayConfig,
    broker: BrokerConfig,
    pool: PgPool,
    connect_options: PgConnectOptions,
    metrics: Arc<Metrics>,
    db_timeout: Duration,
}

impl Relay {
    /// `pool` is used for LISTEN, retention and the backlog gauge; the leader connection is a
    /// separate connection opened with the pool's connect options (so it carries the same
    /// `application_name` and statement timeout).
    pub fn new(
        config: RelayConfig,
        broker: BrokerConfig,
        pool: PgPool,
    ) -> Result<Self, RelayError> {
        // Validate the broker settings now rather than in the retry loop.
        broker.topology()?;
        let connect_options = (*pool.connect_options()).clone();
        let db_timeout = config.db_timeout;
        Ok(Self {
            config,
            broker,
            pool,
            connect_options,
            metrics: Arc::new(Metrics::default()),
            db_timeout,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` turns true (or its sender is dropped). Database and broker faults
    /// are waited out, never returned.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), RelayError> {
        let wake = Arc::new(Notify::new());
        let tasks = [
            tokio::spawn(listen_loop(
                self.pool.clone(),
                wake.clone(),
                self.metrics.clone(),
                self.db_timeout,
            )),
            tokio::spawn(retention_loop(
                self.pool.clone(),
                self.config.clone(),
                self.metrics.clone(),
                self.db_timeout,
            )),
            tokio::spawn(backlog_loop(
                self.pool.clone(),
                self.metrics.clone(),
                self.db_timeout,
            )),
        ];
        let result = self.publish_loop(wake, shutdown).await;
        for t in tasks {
            t.abort();
        }
        tracing::info!("relay stopped");
        result
    }

    async fn publish_loop(
        &self,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let m = &self.metrics;
        let mut supervisor = Supervisor::new(
            self.broker.clone(),
            &format!("{} (outbox-relay)", self.config.db_application_name),
        )?;
        let exchange = supervisor.topology().events_exchange.clone();
        let mut session: Option<Session> = None;
        let mut session_started = Instant::now();
        // The connection that holds (or keeps trying for) the leader lock.
        let mut db: Option<PgConnection> = None;
        let mut is_leader = false;
        // Aggregates whose oldest unpublished row the broker refused, until when: their rows are
        // left out of reads meanwhile, so refused rows neither spin nor block other orders (even
        // a whole batch of them), while later events of the same order keep waiting behind.
        let mut parked: HashMap<Uuid, Instant> = HashMap::new();
        let mut db_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

        while !*shutdown.borrow() {
            // 1. A healthy broker session in confirm mode.
            if !session.as_ref().is_some_and(Session::is_healthy) {
                m.broker_up.store(false, Ordering::Relaxed);
                if is_leader {
                    // Hand publishing to a standby that may still reach the broker.
                    is_leader = false;
                    m.leader.store(false, Ordering::Relaxed);
                    self.release_lead(&mut db).await;
                }
                if let Some(old) = session.take() {
                    m.broker_reconnects_total.fetch_add(1, Ordering::Relaxed);
                    supervisor.session_lost();
                    self.discard(old);
                }
                let s = tokio::select! {
                    s = supervisor.connect() => s,
                    () = wait_shutdown(&mut shutdown) => break,
                };
                if let Err(e) = s.enable_confirms(&self.broker).await {
                    tracing::warn!(error = %e, "cannot enable publisher confirms");
                    supervisor.session_lost();
                    s.close(&self.broker).await;
                    continue;
                }
                session = Some(s);
                session_started = Instant::now();
                m.broker_up.store(true, Ordering::Relaxed);
            }

            // 2. Leadership: only the holder of the advisory lock publishes.
            if !is_leader {
                let attempt = tokio::select! {
                    r = self.try_lead(&mut db) => r,
                    () = wait_shutdown(&mut shutdown) => break,
                };
                match attempt {
                    Ok(true) => {
                        is_leader = true;
                        m.leader.store(true, Ordering::Relaxed);
                        m.db_up.store(true, Ordering::Relaxed);
                        db_backoff.reset();
                        tracing::info!("took the leader lock: publishing");
                    }
                    Ok(false) => {
                        m.db_up.store(true, Ordering::Relaxed);
                        db_backoff.reset();
                        tracing::debug!("another relay is publishing: standing by");
                        sleep_or_shutdown(self.config.standby_interval, &mut shutdown).await;
                        continue;
                    }
                    Err(e) => {
                        m.db_up.store(false, Ordering::Relaxed);
                        db = None;
                        let delay = db_backoff.fail();
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot reach Postgres");
                        sleep_or_shutdown(delay, &mut shutdown).await;
                        continue;
                    }
                }
            }
            let (Some(conn), Some(s)) = (db.as_mut(), session.as_ref()) else {
                continue;
            };

            // 3. One batch.
            match self.batch(conn, s, &exchange, &mut parked, &shutdown).await {
                Ok(outcome) => {
                    m.db_up.store(true, Ordering::Relaxed);
                    // A session that has stayed healthy for a while resets the reconnect
                    // backoff (also for an idle leader), so blips days apart each start from
                    // the shortest delay, while a flapping broker still backs off.
                    if !outcome.broker_failed && session_started.elapsed() >= HEALTHY_SESSION {
                        supervisor.session_succeeded();
                    }
                    if outcome.broker_failed {
                        // Force a fresh session: a timed-out confirm may mean a wedged channel
                        // that lapin still reports as connected.
                        if let Some(old) = session.take() {
                            m.broker_up.store(false, Ordering::Relaxed);
                            m.broker_reconnects_total.fetch_add(1, Ordering::Relaxed);
                            supervisor.session_lost();
                            self.discard(old);
                        }
                        continue;
                    }
                    // Every row read was published, parked or deferred, so going again at once
                    // always makes progress.
                    let full = outcome.read >= self.config.batch_size as usize;
                    if outcome.deferred > 0 || full {
                        continue; // more is waiting
                    }
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        () = wait_shutdown(&mut shutdown) => {}
                    }
                }
                Err(e) => {
                    // The leader connection is gone or wedged: drop it (which releases the lock
                    // if the server still holds it) and compete again.
                    tracing::warn!(error = %e, "lost the leader connection");
                    db = None;
                    is_leader = false;
                    m.leader.store(false, Ordering::Relaxed);
                    m.db_up.store(false, Ordering::Relaxed);
                    let delay = db_backoff.fail();
                    sleep_or_shutdown(delay, &mut shutdown).await;
                }
            }
        }

        m.leader.store(false, Ordering::Relaxed);
        if let Some(conn) = db {
            let _ = tokio::time::timeout(self.db_timeout, conn.close()).await;
        }
        if let Some(s) = session {
            s.close(&self.broker).await;
        }
        Ok(())
    }

    /// Opens the leader connection if needed and tries the lock on it. The connection is kept
    /// either way, so a standby does not reconnect every interval.
    async fn try_lead(&self, db: &mut Option<PgConnection>) -> Result<bool, DbFault> {
        if db.is_none() {
            *db = Some(
                db_op(
                    self.db_timeout,
                    PgConnection::connect_with(&self.connect_options),
                )
                .await?,
            );
        }
        let Some(conn) = db.as_mut() else {
            return Ok(false);
        };
        db_op(self.db_timeout, outbox::try_lock_leader(conn)).await
    }

    /// Closes a failed session in the background: on a wedged connection the close itself can
    /// take the whole operation timeout, which must not delay the reconnect.
    fn discard(&self, session: Session) {
        let config = self.broker.clone();
        tokio::spawn(async move { session.close(&config).await });
    }

    /// Gives up the leader lock but keeps the connection (or drops it if it is broken, which
    /// releases the lock too).
    async fn release_lead(&self, db: &mut Option<PgConnection>) {
        if let Some(conn) = db.as_mut()
            && db_op(self.db_timeout, outbox::unlock_leader(conn))
                .await
                .is_err()
        {
            *db = None;
        }
        tracing::info!("released the leader lock while the broker is unreachable");
    }

    async fn batch(
        &self,
        conn: &mut PgConnection,
        session: &Session,
        exchange: &str,
        parked: &mut HashMap<Uuid, Instant>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Outcome, DbFault> {
        let m = &self.metrics;
        let now = Instant::now();
        parked.retain(|_, until| *until > now);
        let skip: Vec<Uuid> = parked.keys().copied().collect();
        let rows = db_op(
            self.db_timeout,
            outbox::read_batch(conn, self.config.batch_size, &skip),
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
            let (routing_key, properties) = match message(row) {
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
            let n = db_op(self.db_timeout, outbox::mark_published(conn, &confirmed)).await?;
            m.published_total.fetch_add(n, Ordering::Relaxed);
            outcome.published = n;
        }
        Ok(outcome)
    }
}

/// The routing key and properties for a row.
fn message(row: &OutboxRow) -> Result<(ShortString, BasicProperties), &'static str> {
    let event_type = ShortString::try_new(row.event_type.as_str())
        .map_err(|_| "event type longer than 255 bytes")?;
    let mut headers = FieldTable::default();
    headers.insert("aggregate_type".into(), long_string(&row.aggregate_type));
    headers.insert(
        "aggregate_id".into(),
        long_string(&row.aggregate_id.to_string()),
    );
    let mut correlation_id = None;
    if let Value::Object(map) = &row.headers.0 {
        for (k, v) in map {
            if k == "correlation_id" {
                correlation_id = v.as_str().map(|s| ShortString::from(truncate(s, 255)));
                continue;
            }
            let Ok(key) = ShortString::try_new(k.as_str()) else {
                continue;
            };
            let value = match v {
                Value::Null => continue,
                Value::Bool(b) => AMQPValue::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => AMQPValue::LongLongInt(i),
                    None => long_string(&n.to_string()),
                },
                Value::String(s) => long_string(s),
                other => long_string(&other.to_string()),
            };
            headers.insert(key, value);
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(row.event_id.to_string().into())
        .with_type(event_type.clone())
        .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0))
        .with_app_id("orderbridge-outbox-relay".into())
        .with_headers(headers);
    if let Some(c) = correlation_id {
        properties = properties.with_correlation_id(c);
    }
    Ok((event_type, properties))
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Keeps a LISTEN open and turns notifications into wake-ups. A lost connection is replaced
/// (with backoff), and the publisher is woken once on every (re)connect, since notifications
/// sent while the connection was down are gone.
async fn listen_loop(pool: PgPool, wake: Arc<Notify>, metrics: Arc<Metrics>, limit: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let connect = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(orderbridge_db::outbox::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match db_op(limit, connect).await {
            Ok(mut listener) => {
                metrics.listener_up.store(true, Ordering::Relaxed);
                backoff.reset();
                wake.notify_one();
                tracing::debug!("listening for outbox notifications");
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        Ok(None) => {
                            tracing::warn!("LISTEN connection lost");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection failed");
                            break;
                        }
                    }
                }
                metrics.listener_up.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.listener_up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications");
            }
        }
        tokio::time::sleep(backoff.fail()).await;
    }
}

/// Deletes published rows older than the retention, in small batches, until none are left.
/// Returns how many were deleted. Runs on the pool, never on the publishing connection.
pub async fn retention_pass(
    pool: &PgPool,
    retention: Duration,
    batch: u32,
    metrics: &Metrics,
    limit: Duration,
) -> Result<u64, DbFault> {
    let mut total = 0;
    loop {
        let n = db_op(limit, outbox::delete_published(pool, retention, batch)).await?;
        total += n;
        metrics
            .retention_deleted_total
            .fetch_add(n, Ordering::Relaxed);
        if n < u64::from(batch) {
            return Ok(total);
        }
        // Let the hot path breathe between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn retention_loop(pool: PgPool, config: RelayConfig, metrics: Arc<Metrics>, limit: Duration) {
    loop {
        tokio::time::sleep(config.retention_interval).await;
        match retention_pass(
            &pool,
            config.retention,
            config.retention_batch,
            &metrics,
            limit,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention removed published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "retention failed; will retry"),
        }
    }
}

async fn backlog_loop(pool: PgPool, metrics: Arc<Metrics>, limit: Duration) {
    loop {
        match db_op(limit, outbox::backlog(&pool)).await {
            Ok((rows, age)) => metrics.set_backlog(rows, age),
            Err(e) => tracing::debug!(error = %e, "cannot measure the backlog"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
