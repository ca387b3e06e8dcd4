//! The bench's consumer of what the relay publishes (and of the raw loop's queue): receive
//! times by message id, acks in batches. Both relay phases and the raw loop read through one
//! [`Consumer`], so their "received" figures are measured the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use orderbridge_broker::lapin::Channel;
use orderbridge_broker::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
};
use orderbridge_broker::lapin::types::FieldTable;
use orderbridge_broker::{BrokerConfig, Session};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::common::lock;

/// What a consumer received: first receive time per message id, and repeats.
#[derive(Default)]
pub struct Received {
    pub at: HashMap<Uuid, Instant>,
    pub duplicates: usize,
    pub unreadable: usize,
}

/// A consumer running on a task of its own until [`Consumer::stop`].
pub struct Consumer {
    received: Arc<Mutex<Received>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl Consumer {
    /// Starts consuming `queue` on a new channel of `session`'s connection.
    pub async fn start(session: &Session, config: &BrokerConfig, queue: String) -> Result<Self> {
        let received = Arc::new(Mutex::new(Received::default()));
        let (stop, stop_rx) = watch::channel(false);
        let channel = config
            .op("channel.open", session.connection.create_channel())
            .await?;
        let task = tokio::spawn(consume(
            channel,
            config.clone(),
            queue,
            received.clone(),
            stop_rx,
        ));
        Ok(Self {
            received,
            stop,
            task,
        })
    }

    /// Waits until `n` messages were received, or `limit` passes; returns whether they were.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        wait_received(&self.received, n, limit).await
    }

    /// Stops consuming (acking what it got) and returns what was received.
    pub async fn stop(self) -> Received {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        std::mem::take(&mut *lock(&self.received))
    }
}

/// Consumes `queue` until `stop`, recording receive times; acks in batches (`multiple`).
async fn consume(
    channel: Channel,
    config: BrokerConfig,
    queue: String,
    into: Arc<Mutex<Received>>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    config
        .op(
            "basic.qos",
            channel.basic_qos(2000, BasicQosOptions::default()),
        )
        .await?;
    let mut consumer = config
        .op(
            "basic.consume",
            channel.basic_consume(
                queue.as_str().into(),
                format!("orderbridge-bench-{}", Uuid::now_v7()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    let mut last_tag: Option<u64> = None;
    let mut unacked = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            d = consumer.next() => {
                let Some(d) = d else { break };
                let d = d.context("consumer failed")?;
                let now = Instant::now();
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|m| Uuid::parse_str(m.as_str()).ok());
                {
                    let mut r = lock(&into);
                    match id {
                        Some(id) => {
                            if r.at.insert(id, now).is_some() {
                                r.duplicates += 1;
                            }
                        }
                        None => r.unreadable += 1,
                    }
                }
                last_tag = Some(d.delivery_tag);
                unacked += 1;
                if unacked >= 200 {
                    ack(&channel, &config, &mut last_tag, &mut unacked).await?;
                }
            }
            _ = tick.tick() => ack(&channel, &config, &mut last_tag, &mut unacked).await?,
            // The guard `wait_for` returns is not Send: drop it inside.
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    ack(&channel, &config, &mut last_tag, &mut unacked).await?;
    // Cancelled and confirmed before the channel goes: dropping the consumer and the channel
    // together sends basic.cancel and channel.close at once, and a cancel-ok arriving after
    // the close is a protocol error that takes the whole connection down (seen under load:
    // the raw loop's queue.delete then failed on the same connection).
    config
        .op(
            "basic.cancel",
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await?;
    Ok(())
}

async fn ack(
    channel: &Channel,
    config: &BrokerConfig,
    last_tag: &mut Option<u64>,
    unacked: &mut u32,
) -> Result<()> {
    if let Some(tag) = last_tag.take() {
        config
            .op(
                "basic.ack",
                channel.basic_ack(tag, BasicAckOptions { multiple: true }),
            )
            .await?;
        *unacked = 0;
    }
    Ok(())
}

/// Waits until `into` holds `n` messages, or `limit` passes; returns whether it got there.
async fn wait_received(into: &Mutex<Received>, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if lock(into).at.len() >= n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
