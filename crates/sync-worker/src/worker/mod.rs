//! The consume → batch → write → report → ack loop.
//!
//! ```text
//!  {ns}.sf-sync ──deliveries (manual ack, prefetch = batch × (in-flight + 1))──► batcher
//!                up to WORKER_BATCH_SIZE, or WORKER_BATCH_LINGER stretched by WORKER_LATENCY_TARGET
//!                                                                  │ ≤ WORKER_MAX_IN_FLIGHT batches
//!                                                                  ▼
//!  per batch: verify signature ─► decode ─► dedupe per order ─► Router → Writer (Composite) ─► outcome
//!     synced      → status `synced`                                        ┐ published on the
//!     retryable   → copy to {ns}.retry (tier by attempt) + status `retrying`│ batch's confirm
//!     permanent / attempts exhausted / unreadable → {ns}.dlx + `failed`   │ channel; then ack
//!     not signed by the relay (or changed) → {ns}.dlx only, no status     ┘
//!     call failed as a whole (outage, budget, auth) → copy back to the work queue + circuit breaker
//!  Status reports are signed; copies of verified messages are re-signed with the current key.
//! ```
//!
//! Every outcome is published (and confirmed by the broker) before the original delivery is
//! acked, so a crash anywhere redelivers instead of losing; redelivery is harmless because
//! Salesforce writes are idempotent by external id and status reports are applied monotonically.
//!
//! The stages, one file each:
//! - this module: the [`Worker`], its broker sessions and what a batch task shares ([`Ctx`]);
//! - `breaker`: why consumption pauses ([`Pause`]) and the probing until Salesforce answers;
//! - `batcher`: consuming into batches, when a batch goes out, and the shutdown hand-back;
//! - `window`: how many batches may be in flight, adapted to what raises throughput;
//! - `decision`: reading a batch and deciding each message's outcome ([`Action`]);
//! - `settle`: publishing the outcomes with confirms, then acking or requeueing.

mod batcher;
mod breaker;
mod decision;
mod settle;
mod window;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use orderbridge_broker::{
    Backoff, BrokerConfig, BrokerError, Keyring, Session, Supervisor, Topology,
};
use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::writer::Router;
use batcher::WriteTime;
use breaker::HEALTHY_STRETCH;
pub use breaker::Pause;
use window::Window;

/// The most a broker step may take on the way out (cancelling the consumer, closing the
/// connection): past it the process exits anyway and the broker redelivers.
const SHUTDOWN_STEP: Duration = Duration::from_secs(1);

/// A fatal worker error (start-up only; at run time everything is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a batch could not be settled. The broker session is then unusable: the caller
/// reconnects, and whatever the batch had not acked is redelivered.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("no publish channel free")]
    NoPublishChannel,
    #[error("{0}")]
    Publish(#[source] BrokerError),
    #[error("cannot serialize a status report: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("publishing outcomes failed: {0}")]
    Confirm(#[source] BrokerError),
    #[error("ack failed: {0}")]
    Ack(#[source] BrokerError),
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
    keyring: Keyring,
    writer: Router,
    metrics: Arc<Metrics>,
    breaker: watch::Sender<Option<Pause>>,
    /// Outage probe backoff. Kept across pauses, so a Salesforce that answers the probe but
    /// fails real calls is not hammered; reset after a long enough healthy stretch.
    probe_backoff: Mutex<Backoff>,
    /// How long a batch takes from dispatch to settled, smoothed (see [`WriteTime`]).
    write_time: Arc<WriteTime>,
    /// How many batches may be in flight; kept across sessions and pauses.
    window: Mutex<Window>,
}

/// What a batch task needs.
struct Ctx {
    config: WorkerConfig,
    broker: BrokerConfig,
    topology: Topology,
    /// Verifies every message before it is written; signs what the worker publishes.
    keyring: Keyring,
    writer: Router,
    metrics: Arc<Metrics>,
    breaker: watch::Sender<Option<Pause>>,
    publish_channels: Mutex<Vec<Channel>>,
    write_time: Arc<WriteTime>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        broker: BrokerConfig,
        writer: impl Into<Router>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        let writer = writer.into();
        let window = Window::new(usize::from(config.max_in_flight), config.adaptive_window);
        metrics
            .window
            .store(window.size() as u64, std::sync::atomic::Ordering::Relaxed);
        let keyring = broker.keyring()?;
        let supervisor = Supervisor::new(broker, "sync-worker")?;
        let (breaker, _) = watch::channel(None);
        let probe_backoff = Mutex::new(Backoff::new(
            config.breaker_probe_min,
            config.breaker_probe_max,
        ));
        Ok(Self {
            config,
            supervisor,
            keyring,
            writer,
            metrics,
            breaker,
            probe_backoff,
            write_time: Arc::default(),
            window: Mutex::new(window),
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
            if matches!(stop, Stop::Shutdown) {
                // Exiting: the broker returns whatever is unacked when the connection goes,
                // so a close that hangs (a busy broker, channels of aborted batches) must not
                // hold the exit for BROKER_OP_TIMEOUT.
                let _ =
                    tokio::time::timeout(SHUTDOWN_STEP, session.close(self.supervisor.config()))
                        .await;
            } else {
                session.close(self.supervisor.config()).await;
            }
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
            keyring: self.keyring.clone(),
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
            count_channel.clone(),
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
        // Close this session's own channels before the connection goes: a channel merely
        // dropped is left half-closed, and lapin then logs closing the connection over it as an
        // ERROR (`invalid channel state: Closing`) on every clean shutdown.
        let mut channels = vec![count_channel];
        channels.extend(
            ctx.publish_channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        for ch in channels {
            if ch.status().connected() {
                let _ = tokio::time::timeout(SHUTDOWN_STEP, ch.close(200, "bye".into())).await;
            }
        }
        stop
    }
}

/// Keeps the dead-letter and queue-depth gauges current while a session lasts: the work queue,
/// its retry tiers and the dead letters, one passive declare each (no permission needed).
async fn count_dead_letters(
    channel: Channel,
    config: BrokerConfig,
    topology: Topology,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let queues: Vec<String> = std::iter::once(&topology.sf_sync_queue)
        .chain(topology.retry_tiers.iter().map(|t| &t.queue))
        .chain(std::iter::once(&topology.dead_letter_queue))
        .cloned()
        .collect();
    loop {
        for queue in &queues {
            if let Ok(stat) = orderbridge_broker::queue_stat(&config, &channel, queue).await {
                metrics.set_queue(queue, stat.messages, stat.consumers);
                if *queue == topology.dead_letter_queue {
                    metrics.set_dead_letters(stat.messages);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
