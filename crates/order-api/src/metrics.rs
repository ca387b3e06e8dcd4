//! The API's Prometheus metrics, served on the admin port (`ORDER_API_ADMIN_ADDR`, like every
//! other service's), never on the public API port: requests by route template, method and
//! status, their latency, requests in flight, orders accepted, and whether Postgres answers.
//!
//! Routes are labelled by their template (`/v1/orders/{id}`), never by the path a client sent:
//! one series per route, whatever ids or junk paths arrive (those count as `unmatched`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use orderbridge_runtime::admin::AdminState;
use orderbridge_runtime::metrics::{Histogram, LATENCY_BUCKETS, counter, gauge};
use sqlx::PgPool;
use std::fmt::Write as _;
use std::sync::Arc;

/// (route template, method, status).
type Key = (String, &'static str, u16);

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Mutex<BTreeMap<Key, u64>>,
    request_seconds: Histogram,
    in_flight: AtomicI64,
    /// Orders accepted (201 for a new order; idempotent replays are not counted again).
    pub orders_created_total: AtomicU64,
    /// Postgres answered the last probe ([`spawn_db_probe`]).
    db_up: AtomicBool,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            request_seconds: Histogram::new(LATENCY_BUCKETS),
            in_flight: AtomicI64::new(0),
            orders_created_total: AtomicU64::new(0),
            // The server starts only after migrating, so Postgres has just answered.
            db_up: AtomicBool::new(true),
        }
    }
}

/// Only the methods the API serves get a label of their own; anything else is `other`, so a
/// client cannot make new series with made-up methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

impl ApiMetrics {
    fn record(&self, route: String, method: &'static str, status: u16, elapsed: Duration) {
        self.request_seconds.observe(elapsed.as_secs_f64());
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry((route, method, status)).or_default() += 1;
    }

    /// Requests counted for `route` (a template) so far, any method and status.
    pub fn requests_for(&self, route: &str) -> u64 {
        let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .filter(|((rt, _, _), _)| rt == route)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP order_api_requests_total HTTP requests answered, by route template, method \
             and status.\n# TYPE order_api_requests_total counter"
        );
        {
            let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, method, status), n) in r.iter() {
                let route = route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "order_api_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        self.request_seconds.render(
            &mut out,
            "order_api_request_seconds",
            "Time to answer a request (to the response head; an event stream's body is not timed).",
        );
        gauge(
            &mut out,
            "order_api_requests_in_flight",
            "Requests being answered now.",
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "order_api_orders_created_total",
            "Orders accepted (new orders; idempotent replays are not counted again).",
            self.orders_created_total.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "order_api_db_up",
            "1 while Postgres answers the API's probe.",
            if self.db_up.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        out
    }
}

/// The middleware that counts and times every request.
pub async fn track(State(metrics): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(req).await;
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics.record(route, method, response.status().as_u16(), started.elapsed());
    response
}

/// The admin server's view: ready while Postgres answers.
pub struct Admin(pub Arc<ApiMetrics>);

impl AdminState for Admin {
    fn ready(&self) -> bool {
        self.0.db_up.load(Ordering::Relaxed)
    }

    fn render(&self) -> String {
        self.0.render()
    }
}

/// Probes Postgres every `every` for `order_api_db_up` and the admin readiness. Runs until
/// aborted.
pub fn spawn_db_probe(
    pool: PgPool,
    metrics: Arc<ApiMetrics>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let probe = sqlx::query("SELECT 1").execute(&pool);
            let up = matches!(
                tokio::time::timeout(Duration::from_secs(2), probe).await,
                Ok(Ok(_))
            );
            metrics.db_up.store(up, Ordering::Relaxed);
        }
    })
}
