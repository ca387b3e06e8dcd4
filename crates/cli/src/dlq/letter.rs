//! One message fetched from the dead-letter queue, and what it says: its id, who dead-lettered
//! it and why, and the queue a replay sends it back to.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use orderbridge_broker::Topology;
use orderbridge_broker::headers::{self, as_int, as_text};
use serde::Serialize;

/// One message fetched from the dead-letter queue.
pub(super) struct DeadLetter {
    pub(super) tag: u64,
    pub(super) id: String,
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
}

/// One `x-death` entry, the fields `list` needs.
struct Death {
    queue: Option<String>,
    reason: Option<String>,
    time: Option<DateTime<Utc>>,
}

/// What `list` shows of a dead letter (and `--json` prints).
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) id: String,
    pub(super) message_id: Option<String>,
    pub(super) event_type: Option<String>,
    pub(super) correlation_id: Option<String>,
    /// `worker` (our headers), `broker` (x-death) or `unknown`.
    pub(super) dead_lettered_by: &'static str,
    /// Where `replay` sends it.
    pub(super) origin_queue: String,
    pub(super) reason: Option<String>,
    pub(super) error_code: Option<String>,
    pub(super) error_message: Option<String>,
    pub(super) attempts: Option<i64>,
    pub(super) first_failure_at: Option<String>,
    pub(super) last_failure_at: Option<String>,
    pub(super) body_bytes: usize,
}

impl DeadLetter {
    pub(super) fn new(tag: u64, properties: BasicProperties, body: Vec<u8>) -> Self {
        let id = match properties.message_id() {
            Some(id) if !id.as_str().is_empty() => id.to_string(),
            _ => body_id(&body),
        };
        Self {
            tag,
            id,
            properties,
            body,
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<&AMQPValue> {
        headers::get(&self.properties, name)
    }

    pub(super) fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(as_text)
    }

    fn dead_lettered_by_worker(&self) -> bool {
        self.header(headers::REASON).is_some()
    }

    /// The broker's deaths, most recent first (the order RabbitMQ keeps `x-death` in).
    fn deaths(&self) -> Vec<Death> {
        let Some(AMQPValue::FieldArray(entries)) = self.header("x-death") else {
            return Vec::new();
        };
        entries
            .as_slice()
            .iter()
            .filter_map(|e| match e {
                AMQPValue::FieldTable(t) => {
                    let t = t.inner();
                    Some(Death {
                        queue: t.get("queue").and_then(as_text),
                        reason: t.get("reason").and_then(as_text),
                        time: t.get("time").and_then(as_time),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The queue the message died in, which `replay` sends it back to.
    ///
    /// The worker only dead-letters what it consumed from the work queue. For the broker's dead
    /// letters it is the queue of the latest death, the one that brought it here (a message
    /// that went through a retry tier and then hit the delivery limit has the tier as its
    /// *first* death). A retry tier always feeds the work queue, so it is mapped there rather
    /// than making a replay wait out the tier's delay.
    pub(super) fn origin(&self, topology: &Topology) -> String {
        // Named by whoever dead-lettered it (the worker, the status applier).
        if let Some(q) = self.header_str(headers::ORIGIN_QUEUE) {
            return q;
        }
        let died_in = if self.dead_lettered_by_worker() {
            None
        } else {
            self.header_str("x-last-death-queue")
                .or_else(|| self.deaths().into_iter().find_map(|d| d.queue))
                .or_else(|| self.header_str("x-first-death-queue"))
        };
        match died_in {
            Some(q) if !topology.retry_tiers.iter().any(|t| t.queue == q) => q,
            _ => topology.sf_sync_queue.clone(),
        }
    }

    pub(super) fn summary(&self, topology: &Topology) -> Summary {
        let deaths = self.deaths();
        let by_worker = self.dead_lettered_by_worker();
        let broker_reason = || {
            self.header_str("x-last-death-reason")
                .or_else(|| deaths.iter().find_map(|d| d.reason.clone()))
                .or_else(|| self.header_str("x-first-death-reason"))
        };
        let death_times = deaths.iter().filter_map(|d| d.time);
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        Summary {
            id: self.id.clone(),
            message_id: self.properties.message_id().as_ref().map(|s| s.to_string()),
            event_type: self.properties.kind().as_ref().map(|s| s.to_string()),
            correlation_id: self
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string()),
            dead_lettered_by: if by_worker {
                "worker"
            } else if !deaths.is_empty() {
                "broker"
            } else {
                "unknown"
            },
            origin_queue: self.origin(topology),
            reason: self.header_str(headers::REASON).or_else(broker_reason),
            error_code: self.header_str(headers::ERROR_CODE),
            error_message: self.header_str(headers::ERROR_MESSAGE),
            attempts: self.header(headers::ATTEMPTS).and_then(as_int),
            first_failure_at: self
                .header_str(headers::FIRST_FAILURE_AT)
                .or_else(|| death_times.clone().min().map(fmt)),
            last_failure_at: self
                .header_str(headers::LAST_FAILURE_AT)
                .or_else(|| death_times.max().map(fmt)),
            body_bytes: self.body.len(),
        }
    }
}

/// `body-` and 12 hex digits of the body's FNV-1a hash: stable across builds and platforms
/// (unlike std's hasher), so an id printed by one version of the tool works in the next.
fn body_id(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("body-{:012x}", h >> 16)
}

fn as_time(v: &AMQPValue) -> Option<DateTime<Utc>> {
    match *v {
        AMQPValue::Timestamp(t) => DateTime::from_timestamp(i64::try_from(t).ok()?, 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use lapin::types::FieldTable;

    use super::*;
    use crate::dlq::test_support::{table, text};

    #[test]
    fn origin_is_the_latest_death_with_retry_tiers_mapped_to_the_work_queue() {
        let t = Topology::new("ns", 5, &[std::time::Duration::from_secs(5)]).unwrap();
        let death = |q: &str| AMQPValue::FieldTable(table(&[("queue", text(q))]));
        let letter = |h: FieldTable| {
            DeadLetter::new(
                1,
                BasicProperties::default().with_headers(h),
                b"{}".to_vec(),
            )
        };
        let deaths = |qs: &[&str]| {
            AMQPValue::FieldArray(qs.iter().map(|q| death(q)).collect::<Vec<_>>().into())
        };
        // Latest first: delivery limit on the work queue after a retry tier.
        let l = letter(table(&[
            (
                "x-death",
                deaths(&["ns.status-events", "ns.sf-sync.retry.5s"]),
            ),
            ("x-first-death-queue", text("ns.sf-sync.retry.5s")),
        ]));
        assert_eq!(l.origin(&t), "ns.status-events");
        let l = letter(table(&[("x-death", deaths(&["ns.sf-sync.retry.5s"]))]));
        assert_eq!(l.origin(&t), "ns.sf-sync");
        // Ours wins over x-death: the worker consumes the work queue.
        let l = letter(table(&[
            (headers::REASON, text("permanent")),
            ("x-death", deaths(&["ns.status-events"])),
        ]));
        assert_eq!(l.origin(&t), "ns.sf-sync");
        assert_eq!(letter(FieldTable::default()).origin(&t), "ns.sf-sync");
        // Named outright (a status report the applier dead-lettered): that queue.
        let l = letter(table(&[
            (headers::REASON, text("bad_signature")),
            (headers::ORIGIN_QUEUE, text("ns.status-events")),
        ]));
        assert_eq!(l.origin(&t), "ns.status-events");
    }

    #[test]
    fn ids_fall_back_to_a_stable_body_hash() {
        let l = DeadLetter::new(1, BasicProperties::default(), b"hello".to_vec());
        assert_eq!(l.id, body_id(b"hello"));
        assert_eq!(l.id.len(), "body-".len() + 12);
        assert_ne!(body_id(b"hello"), body_id(b"hellp"));
        let l = DeadLetter::new(
            1,
            BasicProperties::default().with_message_id("m".into()),
            b"hello".to_vec(),
        );
        assert_eq!(l.id, "m");
    }
}
