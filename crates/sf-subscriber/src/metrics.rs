//! What `/metrics`, `/health/ready` and `/health/sf-events` show (Prometheus text by hand, see
//! `orderbridge_runtime::metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use orderbridge_runtime::metrics::{counter, gauge, labelled_counter};
use serde::Serialize;

/// Counters, one per outcome.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events delivered by the server (duplicates included).
    pub received: AtomicU64,
    /// Status changes that changed an order.
    pub applied: AtomicU64,
    /// Our own writes coming back (changeOrigin names our client), ignored.
    pub echo: AtomicU64,
    /// Events already in the inbox, ignored.
    pub duplicate: AtomicU64,
    /// Status changes older than the order's current status, already in its history.
    pub stale: AtomicU64,
    /// Status changes older than the order's current status, added to its history only.
    pub late: AtomicU64,
    /// Status changes equal to the order's current status.
    pub unchanged: AtomicU64,
    /// Status changes for a Salesforce record no order is synced to.
    pub unknown_order: AtomicU64,
    /// Events that did not decode (bad Avro, bad header, unusable value).
    pub decode_failures: AtomicU64,
    /// Rows written to pubsub_dead_letters.
    pub dead_letters: AtomicU64,
    /// Stored replay ids refused by the server (expired): fell back to SUBSCRIBER_REPLAY_FALLBACK.
    pub replay_fallbacks: AtomicU64,
    /// Streams re-opened after an error or end.
    pub reconnects: AtomicU64,
    /// Token refreshes after an auth error on the stream.
    pub auth_refreshes: AtomicU64,
    /// Records re-read over REST (gap events, unknown changed fields, extra status fields).
    pub rereads: AtomicU64,
    /// Platform events recorded.
    pub platform_events: AtomicU64,
    /// Fulfilment requests queued (a provisioning event or the configured Status).
    pub provision_requested: AtomicU64,
    /// Provisioning triggers that queued nothing: the same key again, an open request, or the
    /// order already provisioned.
    pub provision_ignored: AtomicU64,
    /// Provisioning triggers naming a Salesforce Order no order is synced to.
    pub provision_unknown_order: AtomicU64,
}

/// One topic's state, for `/health/sf-events` and readiness.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicState {
    /// Subscribed: the server accepted the stream (first response or keepalive seen, or the
    /// subscribe call answered).
    pub subscribed: bool,
    /// The stored replay id (hex), after the last committed batch.
    pub replay_id: Option<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Commit time (in Salesforce) of the last event handled.
    pub last_commit_at: Option<DateTime<Utc>>,
    /// From the last event's commit in Salesforce to its commit here, in seconds.
    pub lag_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Everything the admin server reads.
#[derive(Debug, Default)]
pub struct Metrics {
    pub counters: Counters,
    topics: Mutex<BTreeMap<String, TopicState>>,
}

impl Metrics {
    pub fn new(topics: &[String]) -> Self {
        let m = Self::default();
        {
            let mut t = m.lock();
            for topic in topics {
                t.insert(topic.clone(), TopicState::default());
            }
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TopicState>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes one topic's state.
    pub fn topic(&self, topic: &str, f: impl FnOnce(&mut TopicState)) {
        f(self.lock().entry(topic.to_owned()).or_default());
    }

    /// A copy of every topic's state.
    pub fn topics(&self) -> BTreeMap<String, TopicState> {
        self.lock().clone()
    }

    /// Ready = every topic's stream is subscribed.
    pub fn ready(&self) -> bool {
        let t = self.lock();
        !t.is_empty() && t.values().all(|s| s.subscribed)
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let c = &self.counters;
        for (name, help, value) in [
            (
                "sf_subscriber_events_received_total",
                "Events delivered by the Pub/Sub API (duplicates included).",
                &c.received,
            ),
            (
                "sf_subscriber_events_applied_total",
                "Status changes that changed an order.",
                &c.applied,
            ),
            (
                "sf_subscriber_events_echo_total",
                "Changes made by this integration itself (changeOrigin names SF_CLIENT_NAME), ignored.",
                &c.echo,
            ),
            (
                "sf_subscriber_events_duplicate_total",
                "Events already handled (found in the inbox), ignored.",
                &c.duplicate,
            ),
            (
                "sf_subscriber_events_stale_total",
                "Status changes older than the order's current status and already in its history (replays), ignored.",
                &c.stale,
            ),
            (
                "sf_subscriber_events_late_total",
                "Status changes older than the order's current status (overtaken on another stream), added to its history without changing the status.",
                &c.late,
            ),
            (
                "sf_subscriber_events_unchanged_total",
                "Status changes equal to the order's current status.",
                &c.unchanged,
            ),
            (
                "sf_subscriber_events_unknown_order_total",
                "Status changes for a Salesforce record no order is synced to.",
                &c.unknown_order,
            ),
            (
                "sf_subscriber_decode_failures_total",
                "Events that could not be decoded.",
                &c.decode_failures,
            ),
            (
                "sf_subscriber_dead_letters_total",
                "Events recorded in pubsub_dead_letters.",
                &c.dead_letters,
            ),
            (
                "sf_subscriber_replay_fallbacks_total",
                "Stored replay ids the server refused (expired): events may have been missed; see pubsub_gaps.",
                &c.replay_fallbacks,
            ),
            (
                "sf_subscriber_reconnects_total",
                "Streams re-opened after an error or their end.",
                &c.reconnects,
            ),
            (
                "sf_subscriber_auth_refreshes_total",
                "Access tokens refreshed after the Pub/Sub API refused one.",
                &c.auth_refreshes,
            ),
            (
                "sf_subscriber_rereads_total",
                "Records re-read over REST (gap events, unknown fields, extra status fields).",
                &c.rereads,
            ),
            (
                "sf_subscriber_platform_events_total",
                "Platform events recorded.",
                &c.platform_events,
            ),
            (
                "sf_subscriber_provision_requested_total",
                "Fulfilment requests queued by a provisioning event or the configured Status.",
                &c.provision_requested,
            ),
            (
                "sf_subscriber_provision_ignored_total",
                "Provisioning triggers that queued nothing (same key again, a request already open, order already provisioned).",
                &c.provision_ignored,
            ),
            (
                "sf_subscriber_provision_unknown_order_total",
                "Provisioning triggers naming a Salesforce Order no order is synced to.",
                &c.provision_unknown_order,
            ),
        ] {
            counter(&mut out, name, help, value.load(Ordering::Relaxed));
        }
        let topics = self.topics();
        labelled_counter(
            &mut out,
            "sf_subscriber_subscribed",
            "1 while the topic's stream is subscribed.",
            "topic",
            topics
                .iter()
                .map(|(t, s)| (t.as_str(), u64::from(s.subscribed))),
        );
        gauge(
            &mut out,
            "sf_subscriber_lag_seconds",
            "Largest, over the topics, of: from the last event's commit in Salesforce to its commit here.",
            topics
                .values()
                .filter_map(|s| s.lag_seconds)
                .fold(0.0, f64::max),
        );
        out
    }
}

impl orderbridge_runtime::admin::AdminState for Metrics {
    fn ready(&self) -> bool {
        Metrics::ready(self)
    }

    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Lower-case hex of a replay id, for logs and `/health/sf-events`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_topic_is_subscribed() {
        let m = Metrics::new(&["/data/A".into(), "/event/B__e".into()]);
        assert!(!m.ready());
        m.topic("/data/A", |s| s.subscribed = true);
        assert!(!m.ready());
        m.topic("/event/B__e", |s| s.subscribed = true);
        assert!(m.ready());
        Metrics::inc(&m.counters.echo);
        let text = m.render();
        assert!(text.contains("sf_subscriber_events_echo_total 1"), "{text}");
        assert!(
            text.contains("sf_subscriber_subscribed{topic=\"/data/A\"} 1"),
            "{text}"
        );
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
