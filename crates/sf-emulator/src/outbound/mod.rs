//! Outbound messages (SOAP webhooks) with Salesforce's delivery behaviour: queued by Flow rules,
//! posted in envelopes of up to 100 notifications per endpoint and rule, acknowledged only by
//! HTTP 200 with `<Ack>true</Ack>`; anything else is retried with growing intervals (doubling
//! from `SF_EMULATOR_OM_RETRY_BASE` up to `SF_EMULATOR_OM_RETRY_CAP`) until
//! `SF_EMULATOR_OM_GIVE_UP` has passed, then the notification goes to the failed list.
//! Duplicates are possible (an endpoint that stored a batch but answered late gets it again) and
//! order is not guaranteed, as with Salesforce.
//!
//! ```text
//! Flow rule ─► Outbound::enqueue ─► queue (own mutex) ◄─ take_due / finish ─ deliver::run (task)
//!                                                                            └► POST envelope
//! ```
//!
//! `envelope` writes the XML, `deliver` is the background task; this file is the queue.

pub mod deliver;
pub mod envelope;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::EmulatorConfig;
use crate::ids;

/// Most notifications in one envelope (Salesforce's limit).
pub const MAX_PER_ENVELOPE: usize = 100;
/// Most notifications waiting; beyond it new ones are refused (the rule records the error).
pub const MAX_PENDING: usize = 100_000;
/// Most entries kept in the failed list (older ones are dropped; `failed_total` still counts).
const MAX_FAILED: usize = 10_000;
/// Shortest retry interval, so a zero base cannot spin.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Retry and time-out settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub give_up: Duration,
    pub timeout: Duration,
}

impl Settings {
    pub fn from_config(c: &EmulatorConfig) -> Self {
        Self {
            retry_base: c.om_retry_base.max(MIN_RETRY),
            retry_cap: c.om_retry_cap.max(MIN_RETRY),
            give_up: c.om_give_up,
            timeout: c.om_timeout,
        }
    }

    /// The wait after the `attempts`-th failed attempt: base, 2×base, 4×base … up to the cap.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_cap)
            .min(self.retry_cap)
    }
}

/// One queued notification.
#[derive(Debug, Clone)]
struct Notification {
    /// `04l…`
    id: String,
    rule: String,
    url: String,
    action_id: String,
    object: String,
    fields: Vec<(String, Value)>,
    queued_at: Instant,
    attempts: u32,
    next_at: Instant,
    in_flight: bool,
    last_error: Option<String>,
}

impl Notification {
    fn record_id(&self) -> &str {
        self.fields
            .first()
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    fn to_json(&self, now: Instant) -> Value {
        json!({
            "id": self.id,
            "rule": self.rule,
            "url": self.url,
            "action_id": self.action_id,
            "object": self.object,
            "record_id": self.record_id(),
            "attempts": self.attempts,
            "in_flight": self.in_flight,
            "next_attempt_in_ms": u64::try_from(self.next_at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
            "last_error": self.last_error,
        })
    }
}

/// Per endpoint URL.
#[derive(Debug, Clone, Default)]
struct Endpoint {
    /// POSTs made.
    attempts: u64,
    /// Notifications acknowledged.
    delivered: u64,
    /// POSTs not acknowledged.
    failures: u64,
    last_status: Option<u16>,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Notification>,
    delivered: u64,
    envelopes_delivered: u64,
    attempts: u64,
    failed: VecDeque<Notification>,
    failed_total: u64,
    endpoints: BTreeMap<String, Endpoint>,
    /// Rule name → its ActionId (stable while the emulator runs).
    action_ids: HashMap<String, String>,
    /// Bumped by `clear`, so a POST that was in flight then does not count afterwards.
    generation: u64,
}

/// A batch taken for one POST.
#[derive(Debug, Clone)]
pub struct Batch {
    pub generation: u64,
    pub url: String,
    pub action_id: String,
    pub items: Vec<BatchItem>,
}

/// One notification of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// `04l…`
    pub id: String,
    pub object: String,
    /// Field name → value, `Id` first.
    pub fields: Vec<(String, Value)>,
}

/// How a POST ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Acknowledged,
    NotDelivered { status: Option<u16>, error: String },
}

/// A notification to queue: the rule that fired, its endpoint, the record's object and fields
/// (`Id` first).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub rule: String,
    pub url: String,
    pub object: String,
    pub fields: Vec<(String, Value)>,
}

/// The queue refused a notification.
#[derive(Debug, thiserror::Error)]
#[error("the outbound message queue is full ({MAX_PENDING} notifications waiting)")]
pub struct QueueFull;

/// The outbound-message side of the emulator (one per emulator, in `Shared`).
#[derive(Debug)]
pub struct Outbound {
    queue: Mutex<Queue>,
    /// Wakes the delivery task: something was queued or a retry time changed.
    pub wake: Notify,
    next_id: AtomicU64,
    pub settings: Settings,
}

impl Outbound {
    pub fn new(settings: Settings) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            next_id: AtomicU64::new(0),
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues notifications under one lock, so those of one request are due together and share
    /// envelopes; returns each one's id (`04l…`) or why it was refused.
    pub fn enqueue(&self, messages: Vec<NewMessage>) -> Vec<Result<String, QueueFull>> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(messages.len());
        {
            let mut q = self.lock();
            for m in messages {
                if q.pending.len() >= MAX_PENDING {
                    out.push(Err(QueueFull));
                    continue;
                }
                let id = ids::make_id("04l", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
                let next = q.action_ids.len() as u64 + 1;
                let action_id = q
                    .action_ids
                    .entry(m.rule.clone())
                    .or_insert_with(|| ids::make_id("04k", next))
                    .clone();
                q.pending.push_back(Notification {
                    id: id.clone(),
                    rule: m.rule,
                    url: m.url,
                    action_id,
                    object: m.object,
                    fields: m.fields,
                    queued_at: now,
                    attempts: 0,
                    next_at: now,
                    in_flight: false,
                    last_error: None,
                });
                out.push(Ok(id));
            }
        }
        self.wake.notify_one();
        out
    }

    /// Marks every due notification in flight and groups them into batches of at most 100 per
    /// (URL, ActionId); also says when the next waiting one is due.
    pub fn take_due(&self, now: Instant) -> (Vec<Batch>, Option<Instant>) {
        let mut q = self.lock();
        let generation = q.generation;
        let mut groups: BTreeMap<(String, String), Vec<Batch>> = BTreeMap::new();
        let mut next: Option<Instant> = None;
        for n in q.pending.iter_mut().filter(|n| !n.in_flight) {
            if n.next_at > now {
                next = Some(next.map_or(n.next_at, |t| t.min(n.next_at)));
                continue;
            }
            n.in_flight = true;
            let batches = groups
                .entry((n.url.clone(), n.action_id.clone()))
                .or_default();
            if batches
                .last()
                .is_none_or(|b| b.items.len() >= MAX_PER_ENVELOPE)
            {
                batches.push(Batch {
                    generation,
                    url: n.url.clone(),
                    action_id: n.action_id.clone(),
                    items: Vec::new(),
                });
            }
            if let Some(b) = batches.last_mut() {
                b.items.push(BatchItem {
                    id: n.id.clone(),
                    object: n.object.clone(),
                    fields: n.fields.clone(),
                });
            }
        }
        (groups.into_values().flatten().collect(), next)
    }

    /// Records how a batch's POST ended: acknowledged notifications leave the queue; the others
    /// wait for their next attempt, or go to the failed list once the give-up time has passed.
    pub fn finish(&self, batch: &Batch, outcome: &Outcome) {
        let now = Instant::now();
        let settings = self.settings;
        {
            let mut guard = self.lock();
            // Through a plain reference, so the fields borrow separately.
            let q: &mut Queue = &mut guard;
            if q.generation != batch.generation {
                return;
            }
            q.attempts += 1;
            let ids: std::collections::HashSet<&str> =
                batch.items.iter().map(|i| i.id.as_str()).collect();
            let endpoint = q.endpoints.entry(batch.url.clone()).or_default();
            endpoint.attempts += 1;
            match outcome {
                Outcome::Acknowledged => {
                    endpoint.delivered += ids.len() as u64;
                    endpoint.last_status = Some(200);
                    endpoint.last_error = None;
                    let before = q.pending.len();
                    q.pending.retain(|n| !ids.contains(n.id.as_str()));
                    q.delivered += (before - q.pending.len()) as u64;
                    q.envelopes_delivered += 1;
                }
                Outcome::NotDelivered { status, error } => {
                    endpoint.failures += 1;
                    endpoint.last_status = *status;
                    endpoint.last_error = Some(error.clone());
                    let mut expired = Vec::new();
                    for n in q.pending.iter_mut() {
                        if !ids.contains(n.id.as_str()) {
                            continue;
                        }
                        n.in_flight = false;
                        n.attempts += 1;
                        n.last_error = Some(error.clone());
                        n.next_at = now + settings.backoff(n.attempts);
                        if now.saturating_duration_since(n.queued_at) >= settings.give_up {
                            expired.push(n.id.clone());
                        }
                    }
                    if !expired.is_empty() {
                        let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                            std::mem::take(&mut q.pending)
                                .into_iter()
                                .partition(|n| expired.contains(&n.id));
                        q.pending = kept;
                        for n in gone {
                            tracing::warn!(id = %n.id, url = %n.url, attempts = n.attempts, "outbound message given up");
                            q.failed_total += 1;
                            q.failed.push_back(n);
                            if q.failed.len() > MAX_FAILED {
                                q.failed.pop_front();
                            }
                        }
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// Forgets every notification and counter (`POST /__admin/reset`, `DELETE
    /// /__admin/outbound-messages`).
    pub fn clear(&self) {
        let mut q = self.lock();
        let generation = q.generation + 1;
        let action_ids = std::mem::take(&mut q.action_ids);
        *q = Queue {
            generation,
            action_ids,
            ..Queue::default()
        };
    }

    /// The status for `GET /__admin/outbound-messages`.
    pub fn status(&self) -> Value {
        let now = Instant::now();
        let q = self.lock();
        let endpoints: serde_json::Map<String, Value> = q
            .endpoints
            .iter()
            .map(|(url, e)| {
                (
                    url.clone(),
                    json!({
                        "attempts": e.attempts,
                        "delivered": e.delivered,
                        "failures": e.failures,
                        "last_status": e.last_status,
                        "last_error": e.last_error,
                    }),
                )
            })
            .collect();
        json!({
            "pending": q.pending.len(),
            "in_flight": q.pending.iter().filter(|n| n.in_flight).count(),
            "delivered": q.delivered,
            "envelopes_delivered": q.envelopes_delivered,
            "attempts": q.attempts,
            "failed_total": q.failed_total,
            "failed": q.failed.iter().map(|n| n.to_json(now)).collect::<Vec<_>>(),
            "endpoints": endpoints,
            "queue": q.pending.iter().take(100).map(|n| n.to_json(now)).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(give_up: Duration) -> Settings {
        Settings {
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(5),
            give_up,
            timeout: Duration::from_secs(1),
        }
    }

    fn enqueue(o: &Outbound, rule: &str) {
        let queued = o.enqueue(vec![NewMessage {
            rule: rule.into(),
            url: "http://x/1".into(),
            object: "Order".into(),
            fields: vec![],
        }]);
        assert!(queued[0].is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = settings(Duration::from_secs(60));
        let waits: Vec<u64> = (1..=5).map(|a| s.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        assert_eq!(s.backoff(u32::MAX).as_secs(), 5);
    }

    #[test]
    fn batches_split_at_100_per_endpoint_and_rule() {
        let o = Outbound::new(settings(Duration::from_secs(60)));
        for _ in 0..150 {
            enqueue(&o, "a");
        }
        enqueue(&o, "b");
        let (batches, next) = o.take_due(Instant::now());
        let sizes: Vec<usize> = batches.iter().map(|b| b.items.len()).collect();
        assert_eq!(sizes, vec![100, 50, 1]);
        assert!(next.is_none());
        // Taken ones are in flight: not taken twice.
        assert!(o.take_due(Instant::now()).0.is_empty());
        o.finish(&batches[0], &Outcome::Acknowledged);
        assert_eq!(o.status()["delivered"], json!(100));
        assert_eq!(o.status()["pending"], json!(51));
    }

    #[test]
    fn failures_retry_later_then_give_up() {
        let o = Outbound::new(settings(Duration::ZERO));
        enqueue(&o, "a");
        let (batches, _) = o.take_due(Instant::now());
        let failed = Outcome::NotDelivered {
            status: Some(500),
            error: "HTTP 500".into(),
        };
        o.finish(&batches[0], &failed);
        let status = o.status();
        assert_eq!(status["pending"], json!(0));
        assert_eq!(status["failed"][0]["attempts"], json!(1));
        assert_eq!(status["endpoints"]["http://x/1"]["last_status"], json!(500));

        let o = Outbound::new(settings(Duration::from_secs(60)));
        enqueue(&o, "a");
        let (batches, _) = o.take_due(Instant::now());
        o.finish(&batches[0], &failed);
        let (again, next) = o.take_due(Instant::now());
        assert!(again.is_empty());
        assert!(next.is_some());
    }
}
