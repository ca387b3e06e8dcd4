//! The publishing loop: keeps a broker session and the leader lock, and runs one batch after
//! another while it holds both.
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
//!
//! Each stage has a module of its own: the batch (`batch`, with the row → message mapping in
//! `message`), the LISTEN wake-ups (`listen`), and retention and the backlog gauge
//! (`housekeeping`), which run beside the loop on the pool.

mod batch;
mod housekeeping;
mod listen;
mod message;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use orderbridge_broker::{Backoff, BrokerConfig, Keyring, Session, Supervisor};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use self::batch::Publisher;
use self::housekeeping::{backlog_loop, retention_loop};
use self::listen::listen_loop;
use crate::config::RelayConfig;
use crate::faults::{HEALTHY_SESSION, db_op, sleep_or_shutdown, wait_shutdown};
use crate::metrics::Metrics;
use crate::outbox;

// Their public paths stay `relay::…`: tests and other crates name them there.
pub use self::housekeeping::retention_pass;
pub use crate::faults::{DbFault, RelayError};

/// One relay process: configuration, the pool, and the metrics it reports.
pub struct Relay {
    config: RelayConfig,
    broker: BrokerConfig,
    /// Signs every event published (the sync worker verifies).
    keyring: Keyring,
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
        let keyring = broker.keyring()?;
        let connect_options = (*pool.connect_options()).clone();
        let db_timeout = config.db_timeout;
        Ok(Self {
            config,
            broker,
            keyring,
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
        let publisher = Publisher {
            config: &self.config,
            broker: &self.broker,
            keyring: &self.keyring,
            metrics: &self.metrics,
        };

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
            match publisher
                .batch(conn, s, &exchange, &mut parked, &shutdown)
                .await
            {
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
}
