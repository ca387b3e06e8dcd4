//! The relay's metrics, in the Prometheus text format (see `orderbridge_runtime::metrics`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use orderbridge_runtime::admin::AdminState;
use orderbridge_runtime::metrics::{Histogram, LAG_BUCKETS, LATENCY_BUCKETS, counter, gauge};

/// Why a row was not published; the `reason` label of `outbox_relay_publish_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// basic.return: no queue is bound for the routing key.
    Unroutable,
    /// basic.nack: the broker could not take the message.
    Nack,
    /// The confirm did not arrive in time, or the connection or channel died first.
    BrokerError,
    /// The row cannot be turned into a message (e.g. an event type longer than 255 bytes).
    InvalidRow,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unroutable => "unroutable",
            Self::Nack => "nack",
            Self::BrokerError => "broker_error",
            Self::InvalidRow => "invalid_row",
        }
    }
}

/// Everything `/metrics` shows and `/health/ready` reads.
#[derive(Debug)]
pub struct Metrics {
    pub broker_up: AtomicBool,
    pub db_up: AtomicBool,
    pub listener_up: AtomicBool,
    /// Leads at least one outbox partition.
    pub leader: AtomicBool,
    /// `RELAY_PARTITIONS`.
    partitions: AtomicU64,
    /// Bit p set while this relay leads partition p.
    partitions_led: AtomicU64,
    /// Relays sharing the partitions, this one included, as last seen.
    pub relays: AtomicU64,
    /// Standing by because relays with another `RELAY_PARTITIONS` publish.
    pub partition_conflict: AtomicBool,
    pub published_total: AtomicU64,
    failures: Mutex<BTreeMap<FailureReason, u64>>,
    backlog_rows: AtomicU64,
    /// f64 bits.
    backlog_oldest_age: AtomicU64,
    pub retention_deleted_total: AtomicU64,
    pub broker_reconnects_total: AtomicU64,
    pub confirm_latency: Histogram,
    pub commit_to_confirm_lag: Histogram,
    /// The status applier (see `status`): its broker session and consumer are up.
    pub status_consumer_up: AtomicBool,
    pub status_applied_total: AtomicU64,
    pub status_stale_total: AtomicU64,
    pub status_unknown_order_total: AtomicU64,
    pub status_rejected_total: AtomicU64,
    /// Status messages without a valid signature, dead-lettered unapplied.
    pub status_bad_signature_total: AtomicU64,
    /// From a report's `occurred_at` to its commit on the order.
    pub status_apply_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            broker_up: AtomicBool::new(false),
            db_up: AtomicBool::new(false),
            listener_up: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            partitions: AtomicU64::new(1),
            partitions_led: AtomicU64::new(0),
            relays: AtomicU64::new(0),
            partition_conflict: AtomicBool::new(false),
            published_total: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            backlog_rows: AtomicU64::new(0),
            backlog_oldest_age: AtomicU64::new(0),
            retention_deleted_total: AtomicU64::new(0),
            broker_reconnects_total: AtomicU64::new(0),
            confirm_latency: Histogram::new(LATENCY_BUCKETS),
            commit_to_confirm_lag: Histogram::new(LAG_BUCKETS),
            status_consumer_up: AtomicBool::new(false),
            status_applied_total: AtomicU64::new(0),
            status_stale_total: AtomicU64::new(0),
            status_unknown_order_total: AtomicU64::new(0),
            status_rejected_total: AtomicU64::new(0),
            status_bad_signature_total: AtomicU64::new(0),
            status_apply_lag: Histogram::new(LAG_BUCKETS),
        }
    }
}

impl Metrics {
    /// Ready = both dependencies reachable and the wake-up channel listening.
    pub fn ready(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
            && self.db_up.load(Ordering::Relaxed)
            && self.listener_up.load(Ordering::Relaxed)
    }

    pub fn failure(&self, reason: FailureReason, n: u64) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *f.entry(reason).or_default() += n;
    }

    pub fn failures(&self, reason: FailureReason) -> u64 {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.get(&reason).copied().unwrap_or(0)
    }

    pub fn set_partitions(&self, partitions: u16) {
        self.partitions
            .store(u64::from(partitions), Ordering::Relaxed);
    }

    /// The partitions this relay leads now.
    pub fn set_leadership(&self, led: &BTreeSet<u16>) {
        let bits = led
            .iter()
            .filter(|&&p| p < 64)
            .fold(0u64, |acc, &p| acc | (1 << p));
        self.partitions_led.store(bits, Ordering::Relaxed);
        self.leader.store(bits != 0, Ordering::Relaxed);
    }

    /// The partitions this relay leads, in order.
    pub fn partitions_led(&self) -> Vec<u16> {
        let bits = self.partitions_led.load(Ordering::Relaxed);
        (0..64u16).filter(|p| bits & (1 << p) != 0).collect()
    }

    pub fn set_backlog(&self, rows: u64, oldest_age_seconds: f64) {
        self.backlog_rows.store(rows, Ordering::Relaxed);
        self.backlog_oldest_age
            .store(oldest_age_seconds.to_bits(), Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let b = |a: &AtomicBool| if a.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        gauge(
            &mut out,
            "outbox_relay_broker_up",
            "1 while the broker session is healthy.",
            b(&self.broker_up),
        );
        gauge(
            &mut out,
            "outbox_relay_db_up",
            "1 while Postgres answers.",
            b(&self.db_up),
        );
        gauge(
            &mut out,
            "outbox_relay_listener_up",
            "1 while LISTEN is active.",
            b(&self.listener_up),
        );
        gauge(
            &mut out,
            "outbox_relay_leader",
            "1 while this relay leads (publishes) at least one outbox partition.",
            b(&self.leader),
        );
        let partitions = self.partitions.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "outbox_relay_partitions",
            "Partitions of the outbox (RELAY_PARTITIONS).",
            partitions as f64,
        );
        let _ = writeln!(
            out,
            "# HELP outbox_relay_partition_leader 1 for each outbox partition this relay publishes.\n# TYPE outbox_relay_partition_leader gauge"
        );
        let led = self.partitions_led.load(Ordering::Relaxed);
        for p in 0..partitions.min(64) {
            let _ = writeln!(
                out,
                "outbox_relay_partition_leader{{partition=\"{p}\"}} {}",
                (led >> p) & 1
            );
        }
        gauge(
            &mut out,
            "outbox_relay_relays",
            "Relays sharing the outbox partitions (this one included), as last seen.",
            self.relays.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "outbox_relay_partition_conflict",
            "1 while this relay stands by because relays with another RELAY_PARTITIONS publish.",
            b(&self.partition_conflict),
        );
        gauge(
            &mut out,
            "outbox_relay_backlog_rows",
            "Unpublished outbox rows.",
            self.backlog_rows.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "outbox_relay_backlog_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none).",
            f64::from_bits(self.backlog_oldest_age.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "outbox_relay_published_total",
            "Rows confirmed by the broker and marked published.",
            self.published_total.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP outbox_relay_publish_failures_total Rows not confirmed, by reason; they are retried.\n# TYPE outbox_relay_publish_failures_total counter"
        );
        for reason in [
            FailureReason::Unroutable,
            FailureReason::Nack,
            FailureReason::BrokerError,
            FailureReason::InvalidRow,
        ] {
            let _ = writeln!(
                out,
                "outbox_relay_publish_failures_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.failures(reason)
            );
        }
        counter(
            &mut out,
            "outbox_relay_retention_deleted_total",
            "Published rows deleted by retention.",
            self.retention_deleted_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "outbox_relay_broker_reconnects_total",
            "Broker sessions lost and reopened.",
            self.broker_reconnects_total.load(Ordering::Relaxed),
        );
        self.confirm_latency.render(
            &mut out,
            "outbox_relay_confirm_latency_seconds",
            "From basic.publish to the broker's confirm.",
        );
        self.commit_to_confirm_lag.render(
            &mut out,
            "outbox_relay_commit_to_confirm_lag_seconds",
            "From the outbox insert (just before commit) to the broker's confirm.",
        );
        gauge(
            &mut out,
            "outbox_relay_status_consumer_up",
            "1 while the status applier consumes the status queue.",
            b(&self.status_consumer_up),
        );
        for (name, help, value) in [
            (
                "outbox_relay_status_applied_total",
                "Sync status reports that changed their order.",
                &self.status_applied_total,
            ),
            (
                "outbox_relay_status_stale_total",
                "Sync status reports ignored: about an older event, not newer than what the order holds, or duplicates.",
                &self.status_stale_total,
            ),
            (
                "outbox_relay_status_unknown_order_total",
                "Sync status reports for an order that does not exist (acknowledged and dropped).",
                &self.status_unknown_order_total,
            ),
            (
                "outbox_relay_status_rejected_total",
                "Status messages that cannot be read or applied, dead-lettered.",
                &self.status_rejected_total,
            ),
            (
                "outbox_relay_status_bad_signature_total",
                "Status messages not signed by the sync worker (unsigned, unknown key, or changed), dead-lettered unapplied.",
                &self.status_bad_signature_total,
            ),
        ] {
            counter(&mut out, name, help, value.load(Ordering::Relaxed));
        }
        self.status_apply_lag.render(
            &mut out,
            "outbox_relay_status_apply_lag_seconds",
            "From a sync status report's occurred_at to its commit on the order.",
        );
        out
    }
}

impl AdminState for Metrics {
    fn ready(&self) -> bool {
        Metrics::ready(self)
    }

    fn render(&self) -> String {
        Metrics::render(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_cumulative_buckets_and_failure_labels() {
        let m = Metrics::default();
        m.confirm_latency.observe(0.002);
        m.confirm_latency.observe(0.3);
        m.failure(FailureReason::Unroutable, 2);
        let text = m.render();
        assert!(text.contains("outbox_relay_confirm_latency_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("outbox_relay_confirm_latency_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("outbox_relay_confirm_latency_seconds_count 2"));
        assert!(text.contains("outbox_relay_publish_failures_total{reason=\"unroutable\"} 2"));
        assert!(text.contains("outbox_relay_publish_failures_total{reason=\"nack\"} 0"));
        assert!(!m.ready());
    }

    #[test]
    fn renders_the_partitions_led() {
        let m = Metrics::default();
        m.set_partitions(4);
        m.set_leadership(&[1, 3].into_iter().collect());
        let text = m.render();
        assert!(text.contains("outbox_relay_partitions 4"));
        assert!(text.contains("outbox_relay_partition_leader{partition=\"0\"} 0"));
        assert!(text.contains("outbox_relay_partition_leader{partition=\"1\"} 1"));
        assert!(text.contains("outbox_relay_partition_leader{partition=\"3\"} 1"));
        assert!(!text.contains("partition=\"4\""));
        assert!(text.contains("outbox_relay_leader 1"));
        assert_eq!(m.partitions_led(), vec![1, 3]);
        m.set_leadership(&BTreeSet::new());
        assert!(m.render().contains("outbox_relay_leader 0"));
    }
}
