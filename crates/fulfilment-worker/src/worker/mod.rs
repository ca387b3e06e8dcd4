//! The consume → handle → settle loop.
//!
//! ```text
//!  {ns}.fulfilment ──deliveries (manual ack, prefetch FULFILMENT_PREFETCH)──► one task each:
//!     verify signature ─► decode ─► handle (the request row, under its lock) ─► settle
//!     not signed by the relay (or changed) → {ns}.dlx (bad_signature), nothing else
//!     unreadable / unknown event          → {ns}.dlx (undecodable)
//!     retry                               → {ns}.retry "fulfilment.<delay>" → back after the delay
//!     dead letter                         → {ns}.dlx (permanent, attempts_exhausted)
//! ```
//!
//! Every copy is confirmed by the broker before the original is acked. On shutdown the
//! consumer is cancelled, deliveries not started are returned, and the tasks under way finish
//! (up to FULFILMENT_SHUTDOWN_GRACE) before the connection closes; whatever is still unacked
//! then is redelivered, and its request row says what is left.
//!
//! Stages, one file each: `handle` (what the row asks for), `settle` (publishing and acking).

mod handle;
mod settle;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use orderbridge_broker::{
    BrokerConfig, BrokerError, DeadLetterReason, Keyring, Session, Supervisor, Topology,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::call::Caller;
use crate::config::FulfilmentConfig;
use crate::message::{self, Unreadable};
use crate::metrics::Metrics;
use crate::writeback::WriteBack;
pub use handle::Action;

/// A fatal worker error (start-up only; at run time everything is retried).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a message task needs.
struct Ctx {
    config: FulfilmentConfig,
    broker: BrokerConfig,
    topology: Topology,
    /// Verifies every message before it is acted on; signs the copies.
    keyring: Keyring,
    pool: PgPool,
    caller: Caller,
    write_back: WriteBack,
    metrics: Arc<Metrics>,
}

/// The worker.
pub struct Worker {
    supervisor: Supervisor,
    ctx: Arc<Ctx>,
}

/// Why a consuming session ended.
enum Stop {
    Shutdown,
    Lost(String),
}

impl Worker {
    pub fn new(
        config: FulfilmentConfig,
        broker: BrokerConfig,
        pool: PgPool,
        caller: Caller,
        write_back: WriteBack,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WorkerError> {
        let keyring = broker.keyring()?;
        let supervisor = Supervisor::new(broker.clone(), "fulfilment-worker")?;
        let topology = supervisor.topology().clone();
        Ok(Self {
            supervisor,
            ctx: Arc::new(Ctx {
                config,
                broker,
                topology,
                keyring,
                pool,
                caller,
                write_back,
                metrics,
            }),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.ctx.metrics.clone()
    }

    /// Runs until `shutdown` turns true; then stops consuming, lets the messages under way
    /// finish (up to FULFILMENT_SHUTDOWN_GRACE) and returns.
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
            self.ctx.metrics.broker_up.store(false, Relaxed);
            session.close(self.supervisor.config()).await;
            match stop {
                Stop::Shutdown => return Ok(()),
                Stop::Lost(why) => {
                    tracing::warn!(why, "broker session lost");
                    self.ctx
                        .metrics
                        .broker_reconnects_total
                        .fetch_add(1, Relaxed);
                    if started.elapsed() > Duration::from_secs(30) {
                        self.supervisor.session_succeeded();
                    }
                    self.supervisor.session_lost();
                }
            }
        }
    }

    /// One broker session: consume until shutdown or the session breaks.
    async fn session(&self, session: &Session, shutdown: &mut watch::Receiver<bool>) -> Stop {
        let ctx = &self.ctx;
        let config = &ctx.broker;
        // Copies go out on a channel of their own, in confirm mode (the consuming channel's
        // acks do not wait behind confirms).
        let publish = match open_confirm_channel(config, session).await {
            Ok(ch) => ch,
            Err(e) => return Stop::Lost(e.to_string()),
        };
        if let Err(e) = config
            .op(
                "basic.qos",
                session
                    .channel
                    .basic_qos(ctx.config.fulfilment_prefetch, BasicQosOptions::default()),
            )
            .await
        {
            return Stop::Lost(e.to_string());
        }
        let queue = &ctx.topology.fulfilment_queue;
        let tag = format!("fulfilment-worker-{}", Uuid::now_v7());
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
        ctx.metrics.broker_up.store(true, Relaxed);
        tracing::info!(queue, "consuming");

        let mut in_flight: JoinSet<Result<(), BrokerError>> = JoinSet::new();
        let stop = loop {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => break Stop::Shutdown,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let ctx = ctx.clone();
                        let publish = publish.clone();
                        in_flight.spawn(async move { process(&ctx, &publish, delivery).await });
                    }
                    Some(Err(e)) => break Stop::Lost(e.to_string()),
                    None => break Stop::Lost("the broker cancelled the consumer".into()),
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Some(why) = failed_task(done) {
                        break Stop::Lost(why);
                    }
                }
            }
        };

        // Stop intake first; what arrived but was not started goes straight back.
        let _ = config
            .op(
                "basic.cancel",
                session
                    .channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
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
        let grace = ctx.config.shutdown_grace;
        let finish = async {
            while let Some(done) = in_flight.join_next().await {
                failed_task(done);
            }
        };
        if tokio::time::timeout(grace, finish).await.is_err() {
            tracing::warn!(
                ?grace,
                "messages still being handled at the end of the grace period; they are redelivered"
            );
            in_flight.abort_all();
        }
        stop
    }
}

/// A finished task's broker failure, if any (logged).
fn failed_task(done: Result<Result<(), BrokerError>, tokio::task::JoinError>) -> Option<String> {
    match done {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "settling a message failed; it is redelivered");
            Some(e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "a message task ended abnormally; it is redelivered");
            None
        }
    }
}

async fn open_confirm_channel(
    config: &BrokerConfig,
    session: &Session,
) -> Result<Channel, BrokerError> {
    let ch = config
        .op("channel.open", session.connection.create_channel())
        .await?;
    config
        .op(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    Ok(ch)
}

/// One message, from delivery to settled.
async fn process(ctx: &Ctx, publish: &Channel, delivery: Delivery) -> Result<(), BrokerError> {
    let m = message::read(delivery, &ctx.keyring);
    let action = match &m.read {
        Err(e) => {
            let reason = match e {
                Unreadable::Signature(_) => DeadLetterReason::BadSignature,
                Unreadable::Decode(_) => DeadLetterReason::Undecodable,
            };
            tracing::error!(reason = reason.as_str(), error = %e, message_id = ?m.delivery.properties.message_id(), "message not acted on");
            Action::DeadLetter {
                reason,
                code: e.code().into(),
                message: e.to_string(),
            }
        }
        Ok(envelope) => {
            let r = envelope.data.data();
            let span = tracing::info_span!(
                "fulfilment",
                request_id = %r.request_id,
                order_id = %r.order_id,
                event = %envelope.event_type,
                correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
            );
            handle::handle(ctx, r.request_id, m.attempts)
                .instrument(span)
                .await
        }
    };
    settle::settle(ctx, publish, &m, &action).await?;
    match &action {
        Action::Ack => {}
        Action::Retry { .. } => {
            ctx.metrics.retries_total.fetch_add(1, Relaxed);
        }
        Action::DeadLetter { reason, .. } => ctx.metrics.count_dead_letter(reason.as_str()),
    }
    Ok(())
}
