//! A closed-loop load driver: `connections` tasks each run one operation after another for a
//! warm-up and then a measured window; shared by intake's two phases so both are measured the
//! same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::poster::statuses_json;
use crate::stats::summary_json;

/// How one operation ended.
pub enum Outcome {
    /// Done, with the order's id.
    Accepted(Uuid),
    /// Refused with this status (nothing was written).
    Refused(String),
    /// Failed in a way that may or may not have committed (transport error, timeout, 503).
    Unknown(String),
}

/// What a run of the driver measured.
#[derive(Default)]
pub struct LoadResult {
    /// Latency (ms) of each operation that ended inside the measured window.
    pub latencies_ms: Vec<f64>,
    /// Operations accepted inside the window.
    pub accepted_in_window: usize,
    pub failed_in_window: usize,
    pub window_s: f64,
    /// Every accepted id, warm-up and tail included.
    pub accepted: Vec<Uuid>,
    pub unknown: usize,
    pub refused: usize,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: Vec<String>,
}

impl LoadResult {
    /// Adds another window's figures (the rounds of one phase).
    pub fn merge(&mut self, other: LoadResult) {
        self.latencies_ms.extend(other.latencies_ms);
        self.accepted_in_window += other.accepted_in_window;
        self.failed_in_window += other.failed_in_window;
        self.window_s += other.window_s;
        self.accepted.extend(other.accepted);
        self.unknown += other.unknown;
        self.refused += other.refused;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_insert(0) += n;
        }
        for e in other.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
    }

    pub fn per_second(&self) -> f64 {
        if self.window_s > 0.0 {
            self.accepted_in_window as f64 / self.window_s
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "orders_per_s": self.per_second(),
            "accepted_in_window": self.accepted_in_window,
            "failed_in_window": self.failed_in_window,
            "window_s": self.window_s,
            "accepted_total": self.accepted.len(),
            "refused": self.refused,
            "unknown_outcome": self.unknown,
            "statuses": statuses_json(&self.statuses),
            "errors_sample": self.errors,
            "latency_ms": summary_json(&self.latencies_ms),
        })
    }
}

/// The measured window: `[start + warmup, start + warmup + duration)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub to: Instant,
}

impl Window {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        Self {
            from: start + warmup,
            to: start + warmup + duration,
        }
    }
}

/// Runs `op(i)` for i = `next`, `next` + 1, … on `connections` concurrent tasks until the
/// window ends; operations started before then finish and count if they end inside it. `next`
/// carries on across calls, so every operation of a run gets its own index.
pub async fn drive<F, Fut>(
    connections: usize,
    window: Window,
    op: Arc<F>,
    next: Arc<AtomicUsize>,
) -> LoadResult
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Outcome, Option<u16>)> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut r = LoadResult::default();
            loop {
                let start = Instant::now();
                if start >= window.to {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (outcome, status) = op(i).await;
                let end = Instant::now();
                if let Some(s) = status {
                    *r.statuses.entry(s).or_insert(0) += 1;
                }
                let in_window = end >= window.from && end < window.to;
                match outcome {
                    Outcome::Accepted(id) => {
                        r.accepted.push(id);
                        if in_window {
                            r.accepted_in_window += 1;
                            r.latencies_ms
                                .push(end.duration_since(start).as_secs_f64() * 1e3);
                        }
                    }
                    Outcome::Refused(e) => {
                        r.refused += 1;
                        r.failed(e, in_window).await;
                    }
                    Outcome::Unknown(e) => {
                        r.unknown += 1;
                        r.failed(e, in_window).await;
                    }
                }
            }
            r
        });
    }
    let mut total = LoadResult {
        window_s: window.to.duration_since(window.from).as_secs_f64(),
        ..LoadResult::default()
    };
    while let Some(done) = tasks.join_next().await {
        // A task's own window_s is 0: the total keeps the window's length.
        if let Ok(r) = done {
            total.merge(r);
        }
    }
    total
}

impl LoadResult {
    async fn failed(&mut self, error: String, in_window: bool) {
        if self.errors.len() < 10 {
            self.errors.push(error);
        }
        if in_window {
            self.failed_in_window += 1;
        }
        // A failing target must not turn the loop into a busy spin.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
