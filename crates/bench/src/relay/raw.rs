//! Phase 1 of `relay`, the limit: a publish-with-confirms loop on a throwaway quorum queue,
//! published the way the relay publishes (a window of messages sent without waiting, then every
//! confirm awaited), with the relay's own [`Consumer`] draining the queue meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chrono::{SubsecRound, Utc};
use orderbridge_broker::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use orderbridge_broker::lapin::types::{AMQPValue, FieldTable, LongString};
use orderbridge_broker::lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use orderbridge_broker::{BrokerConfig, Supervisor};
use uuid::Uuid;

use super::RelayArgs;
use super::consume::Consumer;
use crate::stack::Stack;
use crate::workload;

/// The raw loop's figures.
pub struct RawResult {
    pub messages: usize,
    pub seconds: f64,
    pub confirm_ms: Vec<f64>,
    pub publish_to_receive_ms: Vec<f64>,
    pub received: usize,
    pub payload_bytes: usize,
}

impl RawResult {
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

/// An order event's body, as the relay publishes it (the stored envelope's JSON).
pub(super) fn sample_payload() -> Result<Vec<u8>> {
    let order = workload::stored_order("raw", 1, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let client = orderbridge_domain::ClientScope {
        id: Uuid::nil().into(),
        external_id_prefix: "bench:".into(),
    };
    let envelope = workload::submitted(&order, &client, "raw-1".into());
    Ok(serde_json::to_vec(&envelope)?)
}

/// Declares the throwaway exchange and queue, runs the loop, deletes them.
pub async fn run(
    supervisor: &Supervisor,
    config: &BrokerConfig,
    stack: &Stack,
    args: &RelayArgs,
) -> Result<RawResult> {
    let session = supervisor.try_connect().await?;
    let name = stack.raw_queue_name();
    let publish = config
        .op("channel.open", session.connection.create_channel())
        .await?;
    declare(config, &publish, &name).await?;
    let consumer = Consumer::start(&session, config, name.clone()).await?;

    let body = sample_payload()?;
    let n = args.raw_messages as usize;
    let (sent_at, confirm_ms, seconds) =
        publish_windows(config, &publish, &name, &body, n, args.raw_batch as usize).await?;
    let all = consumer.wait_for(n, Duration::from_secs(60)).await;
    let r = consumer.stop().await;
    let publish_to_receive_ms: Vec<f64> =
        r.at.iter()
            .filter_map(|(id, at)| {
                sent_at
                    .get(id)
                    .map(|s| at.duration_since(*s).as_secs_f64() * 1e3)
            })
            .collect();
    if !all {
        tracing::warn!(
            received = r.at.len(),
            n,
            "the raw queue's consumer did not get everything"
        );
    }
    delete(config, &publish, &name).await?;
    session.close(config).await;
    Ok(RawResult {
        messages: n,
        seconds,
        confirm_ms,
        publish_to_receive_ms,
        received: r.at.len(),
        payload_bytes: body.len(),
    })
}

/// A durable topic exchange and a quorum queue (like the work queue) bound to all of it, on a
/// channel in confirm mode.
async fn declare(config: &BrokerConfig, publish: &Channel, name: &str) -> Result<()> {
    config
        .op(
            "confirm.select",
            publish.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    config
        .op(
            "exchange.declare",
            publish.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes().to_vec())),
    );
    config
        .op(
            "queue.declare",
            publish.queue_declare(name.into(), QueueDeclareOptions::durable(), quorum),
        )
        .await?;
    config
        .op(
            "queue.bind",
            publish.queue_bind(
                name.into(),
                name.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    Ok(())
}

/// Publishes `n` messages in windows of `window`, each window's confirms awaited before the
/// next; returns each message's send time, each publish → confirm in ms, and the seconds the
/// whole loop took.
async fn publish_windows(
    config: &BrokerConfig,
    publish: &Channel,
    name: &str,
    body: &[u8],
    n: usize,
    window: usize,
) -> Result<(HashMap<Uuid, Instant>, Vec<f64>, f64)> {
    // Signed as the relay signs, so the messages are the relay's size and the loop pays the
    // same per-message cost.
    let keyring = config.keyring()?;
    let mut sent_at: HashMap<Uuid, Instant> = HashMap::with_capacity(n);
    let mut confirm_ms = Vec::with_capacity(n);
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + window).min(n);
        let mut in_flight = Vec::with_capacity(end - i);
        for _ in i..end {
            let id = Uuid::now_v7();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(id.to_string().into())
                .with_type("order.submitted".into())
                .with_app_id("orderbridge-bench".into());
            let props = keyring.sign(props, body);
            let sent = Instant::now();
            let confirm = config
                .op(
                    "basic.publish",
                    publish.basic_publish(
                        name.into(),
                        "order.submitted".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        body,
                        props,
                    ),
                )
                .await?;
            sent_at.insert(id, sent);
            in_flight.push((confirm, sent));
        }
        for (confirm, sent) in in_flight {
            match config.op("confirm", confirm).await? {
                Confirmation::Ack(None) => {
                    confirm_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                other => bail!("raw publish not confirmed: {other:?}"),
            }
        }
        i = end;
    }
    Ok((sent_at, confirm_ms, started.elapsed().as_secs_f64()))
}

/// Throwaway: deletes what [`declare`] created.
async fn delete(config: &BrokerConfig, publish: &Channel, name: &str) -> Result<()> {
    config
        .op(
            "queue.delete",
            publish.queue_delete(name.into(), QueueDeleteOptions::default()),
        )
        .await?;
    config
        .op(
            "exchange.delete",
            publish.exchange_delete(name.into(), ExchangeDeleteOptions::default()),
        )
        .await?;
    Ok(())
}
