//! What the broker holds for one order. The queues nobody consumes (the retry tiers and the
//! dead letters) are looked through with `basic.get`, each message held unacknowledged while the
//! command looks and given back with `basic.nack` + requeue, as `dlq list` does; a message is
//! the order's when its `message_id` is one of the order's event ids. The work queue is only
//! counted: its messages belong to the sync workers consuming it, and taking them, even for a
//! moment, would delay the very orders being looked for.
//!
//! A retry-tier message held for the look cannot expire meanwhile: it goes back into the work
//! queue a few milliseconds later than it would have.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use orderbridge_broker::headers;
use orderbridge_broker::{BrokerConfig, BrokerError, Session, Topology, queue_stat};
use serde::Serialize;

/// One of the order's messages found in a queue.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub queue: String,
    /// The retry tier's delay (`1m`), for a retry tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    pub message_id: String,
    pub attempts: Option<u32>,
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// A queue looked through, or only counted.
#[derive(Debug, Clone, Serialize)]
pub struct Looked {
    pub queue: String,
    pub messages: u32,
    pub consumers: u32,
    /// Messages looked at: fewer than `messages` when `--scan-limit` stopped the look (or the
    /// work queue, which is never looked through).
    pub looked_at: u32,
}

/// What the broker holds for the order.
#[derive(Debug, Clone, Serialize)]
pub struct InQueues {
    /// The sync worker's work queue (counted only).
    pub work: Looked,
    /// Retry tiers, then the dead-letter queue.
    pub looked: Vec<Looked>,
    pub found: Vec<Found>,
}

impl InQueues {
    /// Whether every queue that was looked through was looked through to the end.
    pub fn complete(&self) -> bool {
        self.looked.iter().all(|l| l.looked_at >= l.messages)
    }
}

/// Looks for messages whose `message_id` is one of `ids`, at most `scan_limit` per queue.
pub async fn find(
    config: &BrokerConfig,
    topology: &Topology,
    session: &Session,
    ids: &[String],
    scan_limit: u32,
) -> Result<InQueues, BrokerError> {
    let channel = &session.channel;
    let work = queue_stat(config, channel, &topology.sf_sync_queue).await?;
    let mut looked = Vec::new();
    let mut found = Vec::new();
    let mut queues: Vec<(&str, Option<String>)> = topology
        .retry_tiers
        .iter()
        .map(|t| (t.queue.as_str(), Some(t.routing_key.clone())))
        .collect();
    queues.push((topology.dead_letter_queue.as_str(), None));
    for (queue, tier) in queues {
        let stat = queue_stat(config, channel, queue).await?;
        let mut seen = 0;
        let mut last_tag = None;
        // Bounded by what is there now, so messages arriving meanwhile do not keep it going.
        while seen < stat.messages.min(scan_limit) {
            let got = config
                .op(
                    "basic.get",
                    channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
                )
                .await?;
            let Some(m) = got else { break };
            seen += 1;
            last_tag = Some(m.delivery.delivery_tag);
            let props = &m.delivery.properties;
            if let Some(id) = props.message_id()
                && ids.iter().any(|i| i == id.as_str())
            {
                found.push(describe(queue, tier.clone(), id.to_string(), props));
            }
        }
        if let Some(tag) = last_tag {
            config
                .op(
                    "basic.nack",
                    channel.basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    ),
                )
                .await?;
        }
        looked.push(Looked {
            queue: queue.to_owned(),
            messages: stat.messages,
            consumers: stat.consumers,
            looked_at: seen,
        });
    }
    Ok(InQueues {
        work: Looked {
            queue: topology.sf_sync_queue.clone(),
            messages: work.messages,
            consumers: work.consumers,
            looked_at: 0,
        },
        looked,
        found,
    })
}

fn describe(queue: &str, tier: Option<String>, id: String, props: &BasicProperties) -> Found {
    let time = |name| {
        headers::text(props, name)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    Found {
        queue: queue.to_owned(),
        tier,
        message_id: id,
        attempts: headers::count(props, headers::ATTEMPTS),
        reason: headers::text(props, headers::REASON),
        error_code: headers::text(props, headers::ERROR_CODE),
        error_message: headers::text(props, headers::ERROR_MESSAGE),
        last_failure_at: time(headers::LAST_FAILURE_AT),
    }
}
