//! Shared emulator state: the org's data, sessions, fault settings, call counters. One mutex
//! guards it all; no await happens while it is held, so requests serialise like single-row
//! transactions and an `allOrNone` rollback only has to undo the store's own journal (no other
//! request can have seen the changes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rsa::RsaPublicKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::EmulatorConfig;
use crate::flows::{Flows, Rule};
use crate::ids;
use crate::outbound::{Outbound, Settings};
use crate::pubsub::Hub;
use crate::schema::Schema;
use crate::soql::Rows;
use crate::store::{Locks, Store};

/// An access token's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub last_used: Instant,
}

/// Injected faults (see `POST /__admin/faults`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Added to every call under `/services`.
    pub latency_ms: u64,
    /// Up to this much random extra latency.
    pub jitter_ms: u64,
    /// Error code → probability (0..1) that a counted API call fails with it.
    pub error_rates: BTreeMap<String, f64>,
    /// Error code → how many of the next counted API calls fail with it (deterministic).
    pub fail_next: BTreeMap<String, u32>,
    /// Every call under `/services` answers 503.
    pub outage: bool,
    /// The next this many Bulk ingest jobs fail half-way (the rest of their rows unprocessed).
    #[serde(default)]
    pub bulk_fail_jobs: u32,
    /// The next this many Bulk query jobs fail (`Failed`, with an `errorMessage`).
    #[serde(default)]
    pub bulk_fail_query_jobs: u32,
    /// Bulk processing speed, rows per second (0: as fast as the store goes): ingest jobs write
    /// at this pace; a query job stays `InProgress` for its rows ÷ this many seconds.
    #[serde(default)]
    pub bulk_rows_per_second: u64,
    /// Calls under `/services/data` served at once (0: no limit); the others wait their turn,
    /// injected latency included. A saturated org, or a CPU that cannot go faster: more calls
    /// in flight only make each one slower.
    #[serde(default)]
    pub max_concurrent_calls: u32,
}

/// Call counters (see `GET /__admin/stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// API calls counted against the daily allocation.
    pub api_calls_total: u64,
    /// Counted calls per route template, e.g. `PATCH /sobjects/{sobject}/{field}/{value}`.
    pub api_calls_by_route: BTreeMap<String, u64>,
    /// Counted calls per `Sforce-Call-Options: client=<name>`.
    pub api_calls_by_client: BTreeMap<String, u64>,
    /// Token requests per grant type (not API calls).
    pub token_requests: BTreeMap<String, u64>,
    /// Token requests refused.
    pub token_failures: u64,
    /// Subrequests executed inside Composite calls (each Composite is one API call).
    pub composite_subrequests: u64,
    /// Records written through sObject Collections.
    pub collection_records: u64,
    /// Bulk API 2.0 query jobs created.
    pub bulk_query_jobs: u64,
    /// Requests refused before counting, by error code (INVALID_SESSION_ID, REQUEST_LIMIT_EXCEEDED…).
    pub rejected: BTreeMap<String, u64>,
    /// Injected faults served, by error code.
    pub faults_injected: BTreeMap<String, u64>,
    /// Requests held by injected latency, counted when they arrive (before the delay), so a
    /// test can tell that a call is in flight before it is answered or counted.
    pub delayed_requests: u64,
    /// The most calls under `/services/data` ever served at once (a client's concurrency).
    pub peak_concurrent_calls: u64,
}

/// Daily API usage over a rolling 24 hours, in one-minute buckets (at most 1,440 of them, so
/// memory stays flat however many calls are made).
#[derive(Debug)]
pub struct Usage {
    origin: Instant,
    buckets: VecDeque<(u64, u64)>,
    /// Usage set through the admin API (`daily_limit_remaining`); it does not roll off.
    base: u64,
}

const WINDOW_MINUTES: u64 = 24 * 60;

impl Default for Usage {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            buckets: VecDeque::new(),
            base: 0,
        }
    }
}

impl Usage {
    fn minute(&self) -> u64 {
        self.origin.elapsed().as_secs() / 60
    }

    /// Calls counted in the last 24 hours.
    pub fn used(&self) -> u64 {
        let now = self.minute();
        self.base
            + self
                .buckets
                .iter()
                .filter(|(m, _)| now.saturating_sub(*m) < WINDOW_MINUTES)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    /// Counts one call.
    pub fn record(&mut self) {
        let now = self.minute();
        while self
            .buckets
            .front()
            .is_some_and(|(m, _)| now.saturating_sub(*m) >= WINDOW_MINUTES)
        {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((m, n)) if *m == now => *n += 1,
            _ => self.buckets.push_back((now, 1)),
        }
    }

    /// Makes exactly `remaining` calls of `max` available.
    pub fn set_remaining(&mut self, max: u64, remaining: u64) {
        self.buckets.clear();
        self.base = max.saturating_sub(remaining);
    }
}

/// A query cursor for `nextRecordsUrl`: the matched records by id, rendered a page at a time.
pub struct Cursor {
    pub rows: Rows,
    pub total: usize,
    pub batch: usize,
    /// When it was opened (the cursor counter), so the oldest is the one released.
    pub opened: u64,
}

/// Mutable state under the lock.
pub struct Inner {
    pub store: Store,
    pub locks: Locks,
    pub faults: Faults,
    pub sessions: HashMap<String, Session>,
    pub stats: Stats,
    /// API calls used in the rolling day.
    pub usage: Usage,
    /// Data changed since the data file was last written.
    pub dirty: bool,
    pub cursors: HashMap<String, Cursor>,
    pub next_cursor: u64,
    /// Flow rules, evaluated against each request's committed changes.
    pub flows: Flows,
    /// Bulk API 2.0 ingest and query jobs.
    pub bulk: crate::bulk::Jobs,
    /// The slots behind `faults.max_concurrent_calls`, made for the limit they were made for.
    pub call_slots: Option<(u32, Arc<tokio::sync::Semaphore>)>,
}

/// Everything a handler needs.
pub struct Shared {
    pub config: EmulatorConfig,
    pub instance_url: String,
    pub jwt_key: Option<RsaPublicKey>,
    pub schema: Arc<Schema>,
    pub seed: Option<Value>,
    pub org_id: String,
    pub user_id: String,
    /// The Pub/Sub side (topics, schemas, events); its own lock, taken after `inner`'s.
    pub pubsub: Hub,
    /// Outbound messages waiting for delivery (shared with the delivery task); its own lock,
    /// never held with `inner`'s.
    pub outbound: Arc<Outbound>,
    /// The Flow rules the org starts with (and gets back on reset).
    pub flows_at_start: Vec<Rule>,
    inner: Mutex<Inner>,
    /// Calls under `/services/data` being served now (see [`CallGuard`]).
    calls_in_flight: std::sync::atomic::AtomicU64,
}

/// A call under `/services/data` being served: counted for `peak_concurrent_calls`, and
/// holding its slot while `max_concurrent_calls` limits them, until dropped (the end of the
/// call, or the client going away).
pub struct CallGuard<'a> {
    shared: &'a Shared,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .calls_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Cheap handle to the shared state.
pub type AppState = Arc<Shared>;

impl Shared {
    /// Starts serving a call: waits for a slot while `max_concurrent_calls` is set, then
    /// counts it. Calls that hold or wait for a slot under an earlier limit keep to that one
    /// (a change of the limit is exact for the calls that arrive after it).
    pub async fn enter_call(&self) -> CallGuard<'_> {
        let slot = self.call_slot().await;
        let now = self
            .calls_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut inner = self.lock();
        inner.stats.peak_concurrent_calls = inner.stats.peak_concurrent_calls.max(now);
        CallGuard {
            shared: self,
            _slot: slot,
        }
    }

    async fn call_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = {
            let mut inner = self.lock();
            let limit = inner.faults.max_concurrent_calls;
            if limit == 0 {
                inner.call_slots = None;
                return None;
            }
            match &inner.call_slots {
                Some((made_for, slots)) if *made_for == limit => Arc::clone(slots),
                _ => {
                    let slots = Arc::new(tokio::sync::Semaphore::new(limit as usize));
                    inner.call_slots = Some((limit, Arc::clone(&slots)));
                    slots
                }
            }
        };
        slots.acquire_owned().await.ok()
    }

    pub fn new(
        config: EmulatorConfig,
        instance_url: String,
        jwt_key: Option<RsaPublicKey>,
        schema: Arc<Schema>,
        seed: Option<Value>,
        pubsub: Hub,
        flows: Vec<Rule>,
    ) -> Self {
        let mut store = Store::new(Arc::clone(&schema));
        store.capture_changes(pubsub.captured.iter().cloned());
        let outbound = Arc::new(Outbound::new(Settings::from_config(&config)));
        let mut inner = Inner {
            store,
            locks: Locks::default(),
            faults: Faults::default(),
            sessions: HashMap::new(),
            stats: Stats::default(),
            usage: Usage::default(),
            dirty: false,
            cursors: HashMap::new(),
            next_cursor: 0,
            flows: Flows::new(flows.clone()),
            bulk: crate::bulk::Jobs::default(),
            call_slots: None,
        };
        capture(&pubsub, &mut inner);
        Self {
            config,
            instance_url,
            jwt_key,
            schema,
            seed,
            org_id: ids::make_id("00D", 1),
            user_id: ids::make_id("005", 1),
            pubsub,
            outbound,
            flows_at_start: flows,
            inner: Mutex::new(inner),
            calls_in_flight: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Locks the state. A panic while holding the lock would poison it; the state is still
    /// consistent enough for an emulator, so carry on rather than fail every later request.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn session_timeout(&self) -> Duration {
        self.config.session_timeout
    }

    /// Records the changes of the CDC objects and of every object a Flow rule watches; call it
    /// whenever the rules change.
    pub fn capture(&self, inner: &mut Inner) {
        capture(&self.pubsub, inner);
    }
}

fn capture(pubsub: &Hub, inner: &mut Inner) {
    let mut objects = inner.flows.objects();
    objects.extend(pubsub.captured.iter().cloned());
    inner.store.capture_changes(objects);
}

impl Inner {
    /// Data back to a fresh org (standard price book only); stats, usage, faults and cursors
    /// cleared. Sessions survive, so a test can reset between cases without logging in again.
    /// Flow rules are the caller's (see `admin::reset`).
    pub fn reset(&mut self, schema: &Arc<Schema>) {
        let captured = self.store.captured_objects();
        self.store = Store::new(Arc::clone(schema));
        self.store.capture_changes(captured.iter().cloned());
        self.locks = Locks::default();
        self.faults = Faults::default();
        self.stats = Stats::default();
        self.usage = Usage::default();
        self.dirty = true;
        self.cursors.clear();
        self.bulk = crate::bulk::Jobs::default();
    }
}
