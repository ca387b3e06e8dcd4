//! Posting the workload's orders to `POST /v1/orders` as a careful client does, for every suite
//! that posts (`e2e`, `chaos`; `intake` with a single attempt): one order ([`Poster::post`])
//! retried with its Idempotency-Key, and many at a pace ([`post_paced`]).
//!
//! One retry rule for every suite: transport errors, 5xx, 408, 409 "key in flight" and 429 are
//! retried with the same key (a request that timed out may have committed: the retry then
//! replays its answer); a 409 `duplicate-client-ref` means the key did not replay an order that
//! exists, which [`Posted::duplicate_client_ref`] reports; every other answer is final.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::workload;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest `Retry-After` honoured: a bench run should not sleep through its window.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where the orders go, and as whom.
pub struct Poster {
    pub http: reqwest::Client,
    /// The API's base URL.
    pub api: String,
    /// An API key.
    pub key: String,
    /// The run's id: it makes `client_ref`s and Idempotency-Keys unique.
    pub run: String,
}

/// When [`Poster::post`] stops retrying.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts at most.
    pub attempts: u32,
    /// No attempt starts after this.
    pub give_up: Option<Instant>,
    /// A request's own time limit.
    pub timeout: Option<Duration>,
}

/// One order's POSTs.
#[derive(Debug)]
pub struct Posted {
    /// The accepted order's id (from the 201, or the existing order of a duplicate client_ref).
    pub id: Option<Uuid>,
    /// `created_at` from the 201 body.
    pub created_at: Option<DateTime<Utc>>,
    /// When the first attempt was sent, and the last one answered.
    pub sent: Instant,
    pub answered: Instant,
    pub attempts: u32,
    pub statuses: Vec<u16>,
    pub transport_errors: u32,
    /// A 409 `duplicate-client-ref`: idempotency did not replay an order that exists.
    pub duplicate_client_ref: bool,
    /// Why the order was not accepted (the last failure).
    pub error: Option<String>,
}

impl Posted {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            id: None,
            created_at: None,
            sent: now,
            answered: now,
            attempts: 0,
            statuses: Vec::new(),
            transport_errors: 0,
            duplicate_client_ref: false,
            error: None,
        }
    }

    /// Took more than one attempt.
    pub fn retried(&self) -> bool {
        self.attempts > 1
    }
}

/// Many orders' POSTs summed, as every posting suite reports them.
#[derive(Debug, Default)]
pub struct Tally {
    pub attempts: u64,
    /// Orders that needed more than one attempt.
    pub retried_orders: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
}

impl Tally {
    pub fn add(&mut self, p: &Posted) {
        self.attempts += u64::from(p.attempts);
        if p.retried() {
            self.retried_orders += 1;
        }
        for s in &p.statuses {
            *self.statuses.entry(*s).or_insert(0) += 1;
        }
        self.transport_errors += u64::from(p.transport_errors);
    }
}

/// Counts by HTTP status as a JSON object (`{"201": n, …}`).
pub fn statuses_json(statuses: &BTreeMap<u16, u64>) -> Value {
    Value::Object(
        statuses
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
    )
}

#[derive(Deserialize)]
struct Created {
    id: Uuid,
    created_at: DateTime<Utc>,
}

impl Poster {
    /// A poster on a client of its own, keeping a keep-alive connection for each of the
    /// `connections` requests in flight (and one spare); `timeout` bounds every request.
    pub fn new(
        api: String,
        key: String,
        run: String,
        connections: usize,
        timeout: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder().pool_max_idle_per_host(connections + 1);
        if let Some(t) = timeout {
            http = http.timeout(t);
        }
        Ok(Self {
            http: http.build()?,
            api,
            key,
            run,
        })
    }

    /// Posts the workload's order `i` until the API accepts it, the answer is final, or `retry`
    /// runs out.
    pub async fn post(&self, i: usize, retry: Retry) -> Posted {
        let mut posted = Posted::new();
        let body = match serde_json::to_vec(&workload::order_request(&self.run, i)) {
            Ok(b) => b,
            Err(e) => {
                posted.error = Some(format!("cannot serialise order {i}: {e}"));
                return posted;
            }
        };
        let key = format!("{}-{i}", self.run);
        let mut backoff = FIRST_BACKOFF;
        while posted.attempts < retry.attempts {
            posted.attempts += 1;
            let mut request = self
                .http
                .post(format!("{}/v1/orders", self.api))
                .bearer_auth(&self.key)
                .header("Idempotency-Key", &key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(t) = retry.timeout {
                request = request.timeout(t);
            }
            let sent = request.send().await;
            posted.answered = Instant::now();
            let mut wait = backoff;
            match sent {
                Err(e) => {
                    posted.transport_errors += 1;
                    posted.error = Some(format!("transport: {e}"));
                }
                Ok(resp) => match answer(&mut posted, resp).await {
                    Next::Done => return posted,
                    Next::Retry(None) => {}
                    Next::Retry(Some(after)) => wait = after.min(MAX_RETRY_AFTER),
                },
            }
            // No pause after the last attempt: the caller gets its answer at once.
            if posted.attempts >= retry.attempts
                || retry.give_up.is_some_and(|g| Instant::now() + wait > g)
            {
                break;
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        posted
    }
}

enum Next {
    Done,
    /// Try again, after the `Retry-After` if the answer gave one.
    Retry(Option<Duration>),
}

/// Reads one answer into `posted`.
async fn answer(posted: &mut Posted, resp: reqwest::Response) -> Next {
    let status = resp.status();
    posted.statuses.push(status.as_u16());
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    posted.answered = Instant::now();
    if status == reqwest::StatusCode::CREATED {
        return match serde_json::from_str::<Created>(&text) {
            Ok(c) => {
                posted.id = Some(c.id);
                posted.created_at = Some(c.created_at);
                posted.error = None;
                Next::Done
            }
            Err(e) => {
                posted.error = Some(format!("unreadable 201 body: {e}"));
                Next::Done
            }
        };
    }
    if status == reqwest::StatusCode::CONFLICT && text.contains("duplicate-client-ref") {
        // The order exists but the key did not replay it: idempotency failed. The suites count
        // it; the existing order is the one accepted.
        posted.duplicate_client_ref = true;
        posted.id = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v.get("existing_order_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        });
        if posted.id.is_none() {
            posted.error = Some(format!("409 without existing_order_id: {text}"));
        }
        return Next::Done;
    }
    posted.error = Some(format!(
        "{status}: {}",
        orderbridge_domain::text::truncate(&text, 300)
    ));
    if status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 429) {
        Next::Retry(retry_after)
    } else {
        Next::Done
    }
}

/// Runs `job(i, due)` for `i` in `0..orders`, started at `rate` per second (open loop: a slow
/// answer does not delay the next start; `0` = as fast as `connections` allow), at most
/// `connections` at once, and hands each result to `absorb` as it finishes. A job that panics
/// is not handed on. Not only for POSTs: `relay` paces its fixed-rate commits with it too, so
/// every open-loop load in the bench keeps the same schedule.
pub async fn post_paced<T, F, Fut>(
    orders: usize,
    rate: f64,
    connections: usize,
    mut job: F,
    mut absorb: impl FnMut(T),
) where
    F: FnMut(usize, Instant) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(connections.max(1)));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for i in 0..orders {
        let slot = (rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 / rate));
        if let Some(slot) = slot {
            tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let due = slot.unwrap_or_else(Instant::now);
        let work = job(i, due);
        tasks.spawn(async move {
            let r = work.await;
            drop(permit);
            r
        });
        while let Some(done) = tasks.try_join_next() {
            if let Ok(r) = done {
                absorb(r);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            absorb(r);
        }
    }
}
