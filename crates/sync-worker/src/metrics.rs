//! The worker's metrics (`/metrics` on `WORKER_ADMIN_ADDR`), Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use orderbridge_runtime::admin::AdminState;
use orderbridge_runtime::metrics::{
    Histogram, LAG_BUCKETS, LATENCY_BUCKETS, counter, gauge, labelled_counter,
};

use crate::writer::{CallObserver, OrderResult};

const BATCH_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
    50000.0,
];

/// Everything `/metrics` shows and `/health/ready` reads.
#[derive(Debug)]
pub struct Metrics {
    pub broker_up: AtomicBool,
    /// 1 while consumption is paused by the circuit breaker.
    pub paused: AtomicBool,
    /// Why it is paused: an index into [`PAUSE_REASONS`] + 1, 0 while not paused.
    pause_reason: AtomicU8,
    pub synced_total: AtomicU64,
    pub retried_total: AtomicU64,
    pub failed_total: AtomicU64,
    /// Messages dead-lettered at once because they could not be read.
    pub undecodable_total: AtomicU64,
    /// Messages dead-lettered at once because their signature is missing or does not verify.
    pub bad_signature_total: AtomicU64,
    /// Messages returned to the queue because Salesforce could not be reached.
    pub requeued_total: AtomicU64,
    pub broker_reconnects_total: AtomicU64,
    pub breaker_trips_total: AtomicU64,
    /// Batches that may be written at once now (the adaptive window, `worker::window`).
    pub window: AtomicU64,
    pub salesforce_calls_total: AtomicU64,
    /// Bulk API 2.0 jobs run to the end (a job is several calls: create, upload, complete, polls,
    /// results), and how long each took.
    pub bulk_jobs_total: AtomicU64,
    pub bulk_job_seconds: Histogram,
    /// Messages in the dead-letter queue, from the last check (-1 before the first: f64 bits).
    dead_letters: AtomicU64,
    /// Queue → (ready messages, consumers): the work queue, its retry tiers and the dead
    /// letters, from the last check.
    queues: Mutex<BTreeMap<String, (u32, u32)>>,
    api_used: AtomicU64,
    api_max: AtomicU64,
    salesforce_errors: Mutex<BTreeMap<String, u64>>,
    /// Per target (division), by name: what its writer did.
    targets: Mutex<BTreeMap<String, TargetCounts>>,
    pub batch_size: Histogram,
    pub salesforce_latency: Histogram,
    /// From the event's `occurred_at` (commit time of the order) to its `synced` report.
    pub end_to_end_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            broker_up: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            pause_reason: AtomicU8::new(0),
            synced_total: AtomicU64::new(0),
            retried_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            undecodable_total: AtomicU64::new(0),
            bad_signature_total: AtomicU64::new(0),
            requeued_total: AtomicU64::new(0),
            broker_reconnects_total: AtomicU64::new(0),
            breaker_trips_total: AtomicU64::new(0),
            window: AtomicU64::new(0),
            salesforce_calls_total: AtomicU64::new(0),
            bulk_jobs_total: AtomicU64::new(0),
            bulk_job_seconds: Histogram::new(LAG_BUCKETS),
            dead_letters: AtomicU64::new((-1.0f64).to_bits()),
            queues: Mutex::new(BTreeMap::new()),
            api_used: AtomicU64::new(0),
            api_max: AtomicU64::new(0),
            salesforce_errors: Mutex::new(BTreeMap::new()),
            targets: Mutex::new(BTreeMap::new()),
            batch_size: Histogram::new(BATCH_BUCKETS),
            salesforce_latency: Histogram::new(LATENCY_BUCKETS),
            end_to_end_lag: Histogram::new(LAG_BUCKETS),
        }
    }
}

/// One target's counters.
#[derive(Debug, Default, Clone, Copy)]
struct TargetCounts {
    synced: u64,
    failed: u64,
    call_failed: u64,
    calls: u64,
    /// Daily API requests used and allowed in the target's org, from its last answer.
    api: Option<(u64, u64)>,
}

/// A target's writer's observer: the worker's metrics, and the target's own counts.
struct TargetObserver {
    target: String,
    metrics: std::sync::Arc<Metrics>,
}

impl CallObserver for TargetObserver {
    fn call(&self, what: &'static str, elapsed: Duration, error_code: Option<&str>) {
        self.metrics.call(what, elapsed, error_code);
        if what != "bulk_job" {
            self.metrics.with_target(&self.target, |c| c.calls += 1);
        }
    }

    fn target_results(&self, target: &str, results: &[OrderResult]) {
        self.metrics.target_results(target, results);
    }
}

/// The `reason` label values of `sync_worker_pause_reason`, as the breaker's causes
/// (`worker::breaker::Pause`): Salesforce failing, the API budget spent, or refused as a whole
/// (credentials, configuration) so that a person has to act.
pub const PAUSE_REASONS: [&str; 3] = ["outage", "budget", "blocked"];

impl Metrics {
    /// Paused for `reason` (one of [`PAUSE_REASONS`]), or resumed (`None`).
    pub fn set_pause(&self, reason: Option<&str>) {
        let index = reason
            .and_then(|r| PAUSE_REASONS.iter().position(|p| *p == r))
            .and_then(|i| u8::try_from(i + 1).ok())
            .unwrap_or(0);
        self.pause_reason.store(index, Ordering::Relaxed);
        self.paused.store(reason.is_some(), Ordering::Relaxed);
    }

    pub fn set_dead_letters(&self, n: u32) {
        self.dead_letters
            .store(f64::from(n).to_bits(), Ordering::Relaxed);
    }

    /// One queue's depth, as a passive declare told it.
    pub fn set_queue(&self, queue: &str, messages: u32, consumers: u32) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        q.insert(queue.to_owned(), (messages, consumers));
    }

    pub fn set_api_usage(&self, used: u64, max: u64) {
        self.api_used.store(used, Ordering::Relaxed);
        self.api_max.store(max, Ordering::Relaxed);
    }

    /// The observer for a target's writer; the target shows in `/metrics` from now on.
    pub fn target_observer(
        self: &std::sync::Arc<Self>,
        target: &str,
    ) -> std::sync::Arc<dyn CallObserver> {
        self.with_target(target, |_| {});
        std::sync::Arc::new(TargetObserver {
            target: target.to_owned(),
            metrics: self.clone(),
        })
    }

    fn with_target(&self, target: &str, f: impl FnOnce(&mut TargetCounts)) {
        let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        f(t.entry(target.to_owned()).or_default());
    }

    /// A target's org's API usage. The unlabelled `sync_worker_salesforce_api_used/max` show
    /// the org closest to its allocation, so one alert covers every target.
    pub fn set_target_api_usage(&self, target: &str, used: u64, max: u64) {
        self.with_target(target, |c| c.api = Some((used, max)));
        let t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let share = |(u, m): (u64, u64)| if m == 0 { 0.0 } else { u as f64 / m as f64 };
        if let Some((u, m)) = t
            .values()
            .filter_map(|c| c.api)
            .max_by(|a, b| share(*a).total_cmp(&share(*b)))
        {
            self.set_api_usage(u, m);
        }
    }

    /// One target's orders' results, counted by kind.
    pub fn target_results(&self, target: &str, results: &[OrderResult]) {
        self.with_target(target, |c| {
            for r in results {
                match r {
                    OrderResult::Synced { .. } => c.synced += 1,
                    OrderResult::Failed(_) => c.failed += 1,
                    OrderResult::CallFailed(_) => c.call_failed += 1,
                }
            }
        });
    }

    /// A target's (synced, failed, call-failed) counts, for tests.
    pub fn target_counts(&self, target: &str) -> Option<(u64, u64, u64)> {
        let t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        t.get(target).map(|c| (c.synced, c.failed, c.call_failed))
    }

    pub fn salesforce_errors(&self, code: &str) -> u64 {
        let e = self
            .salesforce_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.get(code).copied().unwrap_or(0)
    }

    pub fn count_salesforce_error(&self, code: &str) {
        let mut e = self
            .salesforce_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *e.entry(code.to_owned()).or_default() += 1;
    }
}

impl CallObserver for Metrics {
    fn call(&self, what: &'static str, elapsed: Duration, error_code: Option<&str>) {
        if what == "bulk_job" {
            self.bulk_jobs_total.fetch_add(1, Ordering::Relaxed);
            self.bulk_job_seconds.observe(elapsed.as_secs_f64());
        } else {
            self.salesforce_calls_total.fetch_add(1, Ordering::Relaxed);
            self.salesforce_latency.observe(elapsed.as_secs_f64());
        }
        if let Some(code) = error_code {
            self.count_salesforce_error(code);
        }
    }

    fn target_results(&self, target: &str, results: &[OrderResult]) {
        Metrics::target_results(self, target, results);
    }
}

impl Metrics {
    fn render_targets(&self, out: &mut String) {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP sync_worker_target_orders_total Orders each target (division) was given, by \
             result: synced; failed (refused by Salesforce, the mapping or the routing); \
             call_failed (the call failed as a whole and the order went back to the queue).\n\
             # TYPE sync_worker_target_orders_total counter"
        );
        for (name, c) in targets.iter() {
            for (result, n) in [
                ("synced", c.synced),
                ("failed", c.failed),
                ("call_failed", c.call_failed),
            ] {
                let _ = writeln!(
                    out,
                    "sync_worker_target_orders_total{{target=\"{name}\",result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sync_worker_target_salesforce_calls_total Salesforce API calls made for each \
             target, with its credentials.\n# TYPE sync_worker_target_salesforce_calls_total counter"
        );
        for (name, c) in targets.iter() {
            let _ = writeln!(
                out,
                "sync_worker_target_salesforce_calls_total{{target=\"{name}\"}} {}",
                c.calls
            );
        }
        let _ = writeln!(
            out,
            "# HELP sync_worker_target_api_used Daily API requests used in each target's org, from \
             its last answer.\n# TYPE sync_worker_target_api_used gauge"
        );
        for (name, (used, _)) in targets.iter().filter_map(|(n, c)| Some((n, c.api?))) {
            let _ = writeln!(
                out,
                "sync_worker_target_api_used{{target=\"{name}\"}} {used}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sync_worker_target_api_max Daily API request allocation of each target's org.\n\
             # TYPE sync_worker_target_api_max gauge"
        );
        for (name, (_, max)) in targets.iter().filter_map(|(n, c)| Some((n, c.api?))) {
            let _ = writeln!(out, "sync_worker_target_api_max{{target=\"{name}\"}} {max}");
        }
    }
}

impl AdminState for Metrics {
    /// Ready while connected to the broker and not paused: a paused worker is alive but is not
    /// doing its job, which is what an operator (and a load balancer of admin checks) wants to see.
    fn ready(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed) && !self.paused.load(Ordering::Relaxed)
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let b = |a: &AtomicBool| if a.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "sync_worker_broker_up",
            "1 while the broker session is healthy.",
            b(&self.broker_up),
        );
        gauge(
            &mut out,
            "sync_worker_paused",
            "1 while the circuit breaker holds consumption (Salesforce down or API budget spent).",
            b(&self.paused),
        );
        let reason = usize::from(self.pause_reason.load(Ordering::Relaxed));
        out.push_str(
            "# HELP sync_worker_pause_reason 1 for the reason consumption is paused (outage: \
             Salesforce failing; budget: API budget spent; blocked: refused as a whole, a person \
             must act), 0 for the others.\n# TYPE sync_worker_pause_reason gauge\n",
        );
        for (i, r) in PAUSE_REASONS.iter().enumerate() {
            let v = u8::from(reason == i + 1);
            let _ = writeln!(out, "sync_worker_pause_reason{{reason=\"{r}\"}} {v}");
        }
        counter(
            &mut out,
            "sync_worker_orders_synced_total",
            "Orders written to Salesforce (or found already written).",
            n(&self.synced_total),
        );
        counter(
            &mut out,
            "sync_worker_orders_retried_total",
            "Orders sent to a delay tier after a retryable failure.",
            n(&self.retried_total),
        );
        counter(
            &mut out,
            "sync_worker_orders_failed_total",
            "Orders dead-lettered (permanent failure or attempts exhausted).",
            n(&self.failed_total),
        );
        counter(
            &mut out,
            "sync_worker_messages_undecodable_total",
            "Messages dead-lettered because they could not be read.",
            n(&self.undecodable_total),
        );
        counter(
            &mut out,
            "sync_worker_messages_bad_signature_total",
            "Messages dead-lettered unwritten because they are not signed by the outbox relay (unsigned, unknown key, or changed).",
            n(&self.bad_signature_total),
        );
        counter(
            &mut out,
            "sync_worker_messages_requeued_total",
            "Messages returned to the work queue because a Salesforce call failed as a whole.",
            n(&self.requeued_total),
        );
        counter(
            &mut out,
            "sync_worker_breaker_trips_total",
            "Times consumption was paused by the circuit breaker.",
            n(&self.breaker_trips_total),
        );
        counter(
            &mut out,
            "sync_worker_broker_reconnects_total",
            "Broker sessions lost and reopened.",
            n(&self.broker_reconnects_total),
        );
        counter(
            &mut out,
            "sync_worker_salesforce_calls_total",
            "Salesforce API calls made (composite, queries; Bulk jobs are counted apart).",
            n(&self.salesforce_calls_total),
        );
        counter(
            &mut out,
            "sync_worker_bulk_jobs_total",
            "Bulk API 2.0 ingest jobs run (each several calls), failed ones included.",
            n(&self.bulk_jobs_total),
        );
        {
            let errors = self
                .salesforce_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            labelled_counter(
                &mut out,
                "sync_worker_salesforce_errors_total",
                "Salesforce calls that failed as a whole, by error code.",
                "code",
                errors.iter().map(|(k, v)| (k.as_str(), *v)),
            );
        }
        gauge(
            &mut out,
            "sync_worker_dead_letters",
            "Messages in the dead-letter queue at the last check (-1: not checked yet).",
            f64::from_bits(self.dead_letters.load(Ordering::Relaxed)),
        );
        {
            let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                out,
                "# HELP sync_worker_queue_messages Ready messages in the work queue, its retry tiers \
                 and the dead letters, from the worker's last check.\n# TYPE sync_worker_queue_messages gauge"
            );
            for (queue, (messages, _)) in queues.iter() {
                let _ = writeln!(
                    out,
                    "sync_worker_queue_messages{{queue=\"{queue}\"}} {messages}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP sync_worker_queue_consumers Consumers of those queues (retry tiers and dead \
                 letters have none), from the worker's last check.\n# TYPE sync_worker_queue_consumers gauge"
            );
            for (queue, (_, consumers)) in queues.iter() {
                let _ = writeln!(
                    out,
                    "sync_worker_queue_consumers{{queue=\"{queue}\"}} {consumers}"
                );
            }
        }
        gauge(
            &mut out,
            "sync_worker_salesforce_api_used",
            "Daily API requests used, from the last Sforce-Limit-Info header.",
            n(&self.api_used) as f64,
        );
        gauge(
            &mut out,
            "sync_worker_salesforce_api_max",
            "Daily API request allocation, from the last Sforce-Limit-Info header.",
            n(&self.api_max) as f64,
        );
        gauge(
            &mut out,
            "sync_worker_window",
            "Batches that may be written to Salesforce at once now (adapted during backlogs, \
             at most WORKER_MAX_IN_FLIGHT).",
            n(&self.window) as f64,
        );
        self.render_targets(&mut out);
        self.batch_size.render(
            &mut out,
            "sync_worker_batch_size",
            "Orders per batch written to Salesforce.",
        );
        self.salesforce_latency.render(
            &mut out,
            "sync_worker_salesforce_call_seconds",
            "Salesforce API call latency.",
        );
        self.bulk_job_seconds.render(
            &mut out,
            "sync_worker_bulk_job_seconds",
            "Bulk API 2.0 job time, from creating it to its results read.",
        );
        self.end_to_end_lag.render(
            &mut out,
            "sync_worker_end_to_end_lag_seconds",
            "From the order's event time to its synced report.",
        );
        out
    }
}
