//! The worker's metrics (`/metrics` on `FULFILMENT_ADMIN_ADDR`), Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use orderbridge_runtime::admin::AdminState;
use orderbridge_runtime::metrics::{Histogram, LATENCY_BUCKETS, counter, gauge, labelled_counter};

/// Everything `/metrics` shows and `/health/ready` reads.
#[derive(Debug)]
pub struct Metrics {
    pub broker_up: AtomicBool,
    /// Calls to the fulfilment system by what came of them (`provisioned`, `failed`,
    /// `accepted`, `retry`, `refused`).
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Results written to the Salesforce order.
    pub write_backs_total: AtomicU64,
    /// Write-backs that failed (retried or dead-lettered).
    pub write_back_errors_total: AtomicU64,
    /// Copies sent to a delay tier (a failed call, a failed write-back, a request busy
    /// elsewhere, the database unavailable).
    pub retries_total: AtomicU64,
    /// Messages dead-lettered, by reason.
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
    /// Messages that needed nothing (already decided and written back, accepted and waiting for
    /// the callback, unknown request).
    pub noops_total: AtomicU64,
    pub broker_reconnects_total: AtomicU64,
    /// Queued requests the sweeper queued again (their message was lost).
    pub sweeper_requeued_total: AtomicU64,
    /// Accepted requests the sweeper failed (no callback within FULFILMENT_CALLBACK_TIMEOUT).
    pub sweeper_timed_out_total: AtomicU64,
    /// Duration of each call to the fulfilment system.
    pub call_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            broker_up: AtomicBool::new(false),
            requests: Mutex::new(BTreeMap::new()),
            write_backs_total: AtomicU64::new(0),
            write_back_errors_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            dead_letters: Mutex::new(BTreeMap::new()),
            noops_total: AtomicU64::new(0),
            broker_reconnects_total: AtomicU64::new(0),
            sweeper_requeued_total: AtomicU64::new(0),
            sweeper_timed_out_total: AtomicU64::new(0),
            call_latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, outcome: &'static str) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    /// Calls that ended with `outcome` so far.
    pub fn requests(&self, outcome: &str) -> u64 {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(outcome)
            .copied()
            .unwrap_or(0)
    }

    pub fn count_dead_letter(&self, reason: &'static str) {
        *self
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Messages dead-lettered with `reason` so far.
    pub fn dead_letters(&self, reason: &str) -> u64 {
        self.dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

impl AdminState for Metrics {
    fn ready(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "fulfilment_worker_broker_up",
            "1 while the broker session is healthy.",
            if self.broker_up.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            labelled_counter(
                &mut out,
                "fulfilment_worker_requests_total",
                "Calls to the fulfilment system, by outcome (provisioned, failed, accepted, retry, refused).",
                "outcome",
                requests.iter().map(|(k, v)| (*k, *v)),
            );
        }
        self.call_latency.render(
            &mut out,
            "fulfilment_worker_call_seconds",
            "Duration of a call to the fulfilment system.",
        );
        counter(
            &mut out,
            "fulfilment_worker_write_backs_total",
            "Results written back to the Salesforce order.",
            n(&self.write_backs_total),
        );
        counter(
            &mut out,
            "fulfilment_worker_write_back_errors_total",
            "Salesforce write-backs that failed (retried or dead-lettered).",
            n(&self.write_back_errors_total),
        );
        counter(
            &mut out,
            "fulfilment_worker_sweeper_requeued_total",
            "Queued requests untouched for FULFILMENT_REQUEUE_AFTER (their message lost), queued again.",
            n(&self.sweeper_requeued_total),
        );
        counter(
            &mut out,
            "fulfilment_worker_sweeper_timed_out_total",
            "Accepted requests failed for want of a callback within FULFILMENT_CALLBACK_TIMEOUT.",
            n(&self.sweeper_timed_out_total),
        );
        counter(
            &mut out,
            "fulfilment_worker_retries_total",
            "Messages sent to a delay tier.",
            n(&self.retries_total),
        );
        {
            let dead = self.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
            labelled_counter(
                &mut out,
                "fulfilment_worker_dead_letters_total",
                "Messages dead-lettered, by reason.",
                "reason",
                dead.iter().map(|(k, v)| (*k, *v)),
            );
        }
        counter(
            &mut out,
            "fulfilment_worker_noops_total",
            "Messages that needed nothing (already done, or waiting for the callback).",
            n(&self.noops_total),
        );
        counter(
            &mut out,
            "fulfilment_worker_broker_reconnects_total",
            "Broker sessions lost and reopened.",
            n(&self.broker_reconnects_total),
        );
        out
    }
}
