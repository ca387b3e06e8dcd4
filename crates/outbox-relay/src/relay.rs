//! The publishing loop: keeps a broker session and the leader lock, and runs one batch after
//! another while it holds both.
//!
//! ```text
//!            ┌──────────── supervise broker ◄───────────────┐  connection or channel lost,
//!            ▼                                              │  publish/confirm timed out
//!   ensure session (backoff+jitter, declare topology, confirm.select)
//!            ▼
//!   rebalance on the leader connection ──no partition free──► standby: again every
//!            ▼ holds the locks of ≥ 1 outbox partition            RELAY_STANDBY_INTERVAL
//!   read batch (own partitions) ─► publish all (mandatory, persistent) ─► collect confirms
//!            ▲    (backlog: the next batch published meanwhile)     ─► mark confirmed rows
//!            └──── NOTIFY / poll interval / more rows waiting ◄────────┘  (rebalance again
//!                                                                 every standby interval)
//! ```
//!
//! Each stage has a module of its own: which partitions this relay leads (`leadership`), the
//! batch (`batch`, with the row → message mapping in `message`), the LISTEN wake-ups
//! (`listen`), and retention and the backlog gauge (`housekeeping`), which run beside the loop
//! on the pool.

mod batch;
mod housekeeping;
mod leadership;
mod listen;
mod message;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::ConfirmSelectOptions;
use orderbridge_broker::{Backoff, BrokerConfig, Keyring, Session, Supervisor};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use self::batch::{Publisher, Run};
use self::housekeeping::{backlog_loop, retention_loop};
use self::leadership::{Leadership, Rebalanced};
use self::listen::listen_loop;
use crate::config::RelayConfig;
use crate::faults::{HEALTHY_SESSION, sleep_or_shutdown, wait_shutdown};
use crate::metrics::Metrics;

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
    /// `pool` is used for LISTEN, retention and the backlog gauge; the leader connection (which
    /// holds the partition locks, reads and marks) is a
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
        let metrics = Metrics::default();
        metrics.set_partitions(config.partitions);
        Ok(Self {
            config,
            broker,
            keyring,
            pool,
            connect_options,
            metrics: Arc::new(metrics),
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
        // The session's second publishing channel, for a pipelined batch (`batch::Run::channels`).
        let mut spare: Option<Channel> = None;
        let mut session_started = Instant::now();
        // The connection that holds (or keeps trying for) the partition locks.
        let mut lead = Leadership::new(self.config.partitions);
        // Set while relays with another RELAY_PARTITIONS publish (logged once per episode).
        let mut conflict: Option<u16> = None;
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
            if !session.as_ref().is_some_and(Session::is_healthy)
                || !spare.as_ref().is_some_and(|c| c.status().connected())
            {
                m.broker_up.store(false, Ordering::Relaxed);
                if lead.joined() {
                    // Hand publishing to a relay that may still reach the broker, and leave the
                    // membership (also when leading nothing), so the others' shares count
                    // without this relay and no partition waits for it.
                    lead.release_all(self.db_timeout).await;
                    m.set_leadership(lead.held());
                    tracing::info!(
                        "released the outbox partitions while the broker is unreachable"
                    );
                }
                spare = None; // closed with its connection
                if let Some(old) = session.take() {
                    m.broker_reconnects_total.fetch_add(1, Ordering::Relaxed);
                    supervisor.session_lost();
                    self.discard(old);
                }
                let s = tokio::select! {
                    s = supervisor.connect() => s,
                    () = wait_shutdown(&mut shutdown) => break,
                };
                let second = async {
                    s.enable_confirms(&self.broker).await?;
                    let ch = self
                        .broker
                        .op("channel.open", s.connection.create_channel())
                        .await?;
                    self.broker
                        .op(
                            "confirm.select",
                            ch.confirm_select(ConfirmSelectOptions::default()),
                        )
                        .await?;
                    Ok::<_, orderbridge_broker::BrokerError>(ch)
                };
                match second.await {
                    Ok(ch) => spare = Some(ch),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot enable publisher confirms");
                        supervisor.session_lost();
                        s.close(&self.broker).await;
                        continue;
                    }
                }
                session = Some(s);
                session_started = Instant::now();
                m.broker_up.store(true, Ordering::Relaxed);
            }

            // 2. Leadership: publish the partitions whose locks this relay holds; rebalance
            //    between batches every standby interval, at once while leading nothing.
            if lead.due(self.config.standby_interval) {
                let attempt = tokio::select! {
                    r = lead.rebalance(&self.connect_options, self.db_timeout) => r,
                    () = wait_shutdown(&mut shutdown) => break,
                };
                match attempt {
                    Ok(change) => {
                        m.db_up.store(true, Ordering::Relaxed);
                        db_backoff.reset();
                        m.set_leadership(lead.held());
                        m.relays.store(change.members as u64, Ordering::Relaxed);
                        self.report(&change, lead.held(), &mut conflict);
                    }
                    Err(e) => {
                        m.db_up.store(false, Ordering::Relaxed);
                        lead.lost();
                        m.set_leadership(lead.held());
                        let delay = db_backoff.fail();
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot reach Postgres");
                        sleep_or_shutdown(delay, &mut shutdown).await;
                        continue;
                    }
                }
                if lead.held().is_empty() {
                    tracing::debug!("other relays lead every partition: standing by");
                    sleep_or_shutdown(self.config.standby_interval, &mut shutdown).await;
                    continue;
                }
            }
            let mine: Vec<u16> = lead.held().iter().copied().collect();
            // Batches run until the next rebalancing is due, then hand the connection back.
            let until = lead.next_due(self.config.standby_interval);
            let (Some(conn), Some(s), Some(second)) =
                (lead.conn(), session.as_ref(), spare.as_ref())
            else {
                continue;
            };

            // 3. Batches; while a backlog lasts, the next read while the current one's
            //    confirms come in.
            let run = Run {
                channels: [&s.channel, second],
                exchange: &exchange,
                mine: &mine,
                until,
            };
            match publisher.run(conn, &run, &mut parked, &shutdown).await {
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
                        spare = None; // closed with its connection
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
                    if outcome.deferred > 0 || full || outcome.again {
                        continue; // more is waiting
                    }
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        () = wait_shutdown(&mut shutdown) => {}
                    }
                }
                Err(e) => {
                    // The leader connection is gone or wedged: drop it (which releases the locks
                    // if the server still holds them) and compete again.
                    tracing::warn!(error = %e, "lost the leader connection");
                    lead.lost();
                    m.set_leadership(lead.held());
                    m.db_up.store(false, Ordering::Relaxed);
                    let delay = db_backoff.fail();
                    sleep_or_shutdown(delay, &mut shutdown).await;
                }
            }
        }

        m.set_leadership(&Default::default());
        lead.close(self.db_timeout).await;
        // The spare channel first: one merely dropped is left half-closed, and closing the
        // connection over it makes lapin log an error on a clean shutdown.
        if let Some(ch) = spare.filter(|c| c.status().connected()) {
            let _ = self
                .broker
                .op("channel.close", ch.close(200, "bye".into()))
                .await;
        }
        if let Some(s) = session {
            s.close(&self.broker).await;
        }
        Ok(())
    }

    /// Logs what a rebalancing pass changed.
    fn report(&self, change: &Rebalanced, held: &BTreeSet<u16>, conflict: &mut Option<u16>) {
        let n = self.config.partitions;
        let m = &self.metrics;
        if change.other_count != *conflict {
            *conflict = change.other_count;
            m.partition_conflict
                .store(conflict.is_some(), Ordering::Relaxed);
            match conflict {
                Some(other) => tracing::error!(
                    partitions = n,
                    other_relays_partitions = other,
                    "relays configured with another RELAY_PARTITIONS are publishing: standing by \
                     (their partitions would overlap this relay's; give every relay the same value)"
                ),
                None => tracing::info!(
                    partitions = n,
                    "no relay with another RELAY_PARTITIONS is left"
                ),
            }
        }
        if change.taken.is_empty() && change.released.is_empty() {
            return;
        }
        if n == 1 {
            if change.taken.is_empty() {
                tracing::info!("gave the leader lock up");
            } else {
                tracing::info!("took the leader lock: publishing");
            }
            return;
        }
        tracing::info!(
            partitions = n,
            taken = ?change.taken,
            released = ?change.released,
            leading = ?held,
            relays = change.members,
            "rebalanced the outbox partitions"
        );
    }

    /// Closes a failed session in the background: on a wedged connection the close itself can
    /// take the whole operation timeout, which must not delay the reconnect.
    fn discard(&self, session: Session) {
        let config = self.broker.clone();
        tokio::spawn(async move { session.close(&config).await });
    }
}
