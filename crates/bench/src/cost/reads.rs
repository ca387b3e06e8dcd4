//! The read phases: `GET /v1/orders/{id}` for random existing orders, then three lists, each
//! a closed loop on the shared driver ([`load::drive`]) for a warm-up and a measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use uuid::Uuid;

use super::CostArgs;
use super::profile::{self, Profile};
use crate::load::{self, LoadResult, Outcome, Window};
use crate::stack::Stack;

/// What a list asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Get,
    Newest,
    Synced,
    CreatedAfter,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Get, Kind::Newest, Kind::Synced, Kind::CreatedAfter];

    /// The key in report.json.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Newest => "list_newest",
            Kind::Synced => "list_synced",
            Kind::CreatedAfter => "list_created_after",
        }
    }

    /// How the table names it; `age` is `--created-after-age`.
    pub fn label(self, age: Duration) -> String {
        match self {
            Kind::Get => "GET /v1/orders/{id}".to_owned(),
            Kind::Newest => "GET /v1/orders?limit=50".to_owned(),
            Kind::Synced => "GET /v1/orders?limit=50&sync_state=synced".to_owned(),
            Kind::CreatedAfter => format!(
                "GET /v1/orders?limit=50&created_after=<{} s ago>",
                age.as_secs_f64()
            ),
        }
    }
}

/// One read phase's figures.
pub struct Read {
    pub kind: Kind,
    pub result: LoadResult,
    /// Orders returned by the lists (0 for GET), over every answered request.
    pub items: usize,
    pub answered: usize,
    /// CPU and Postgres pages over the measured window.
    pub profile: Profile,
}

impl Read {
    /// Requests that ended in the measured window, answered or not.
    pub fn requests_in_window(&self) -> usize {
        self.result.accepted_in_window + self.result.failed_in_window
    }

    pub fn items_per_page(&self) -> Option<f64> {
        (self.kind != Kind::Get && self.answered > 0)
            .then(|| self.items as f64 / self.answered as f64)
    }

    pub fn to_json(&self) -> Value {
        let mut v = self.result.to_json();
        if let Value::Object(m) = &mut v {
            // The driver names its figures after orders; here they are requests.
            m.remove("orders_per_s");
            m.insert("requests_per_s".into(), json!(self.result.per_second()));
            m.insert("items_per_page".into(), json!(self.items_per_page()));
            m.remove("accepted_total");
            m.insert(
                "profile".into(),
                self.profile.to_json(self.requests_in_window()),
            );
        }
        v
    }
}

/// Every read phase of one set.
pub struct Reads {
    pub phases: Vec<Read>,
    /// Orders the GET phase drew from.
    pub sampled: usize,
}

impl Reads {
    pub fn get(&self, kind: Kind) -> Option<&Read> {
        self.phases.iter().find(|r| r.kind == kind)
    }

    /// Requests in the measured windows that were not answered 200.
    pub fn failed(&self) -> usize {
        self.phases.iter().map(|r| r.result.failed_in_window).sum()
    }
}

#[derive(Deserialize)]
struct Page {
    items: Vec<IgnoredAny>,
}

/// Runs the four phases one after another, each profiled over its measured window.
pub async fn measure(
    stack: &Stack,
    args: &CostArgs,
    api: &str,
    key: &str,
    client_id: Uuid,
) -> Result<Reads> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM orders WHERE client_id = $1 ORDER BY random() LIMIT $2")
            .bind(client_id)
            .bind(i64::from(args.sample))
            .fetch_all(stack.pool()?)
            .await?;
    let connections = args.read_connections as usize;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections + 1)
        .timeout(Duration::from_secs(60))
        .build()?;
    let ids = Arc::new(ids);
    let services = stack.pids();
    let pool = stack.pool()?;
    let mut phases = Vec::new();
    for kind in Kind::ALL {
        tracing::info!(phase = kind.key(), connections, "reads");
        let items = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            http: http.clone(),
            api: api.to_owned(),
            key: key.to_owned(),
            ids: ids.clone(),
            kind,
            age: chrono::Duration::from_std(args.created_after_age)?,
            items: items.clone(),
            answered: answered.clone(),
        });
        let op = Arc::new(move |i| {
            let shared = shared.clone();
            async move { shared.request(i).await }
        });
        let window = Window::new(Instant::now(), args.read_warmup, args.read_duration);
        let (result, profile) = tokio::join!(
            load::drive(connections, window, op, Arc::new(AtomicUsize::new(0))),
            profile::window(pool, &services, window.from, window.to),
        );
        phases.push(Read {
            kind,
            result,
            items: items.load(Ordering::Relaxed),
            answered: answered.load(Ordering::Relaxed),
            profile: profile?,
        });
    }
    Ok(Reads {
        sampled: ids.len(),
        phases,
    })
}

struct Shared {
    http: reqwest::Client,
    api: String,
    key: String,
    ids: Arc<Vec<Uuid>>,
    kind: Kind,
    age: chrono::Duration,
    items: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Shared {
    fn url(&self, i: usize) -> Option<String> {
        let api = &self.api;
        Some(match self.kind {
            Kind::Get => {
                let id = self.ids.get(i % self.ids.len().max(1))?;
                format!("{api}/v1/orders/{id}")
            }
            Kind::Newest => format!("{api}/v1/orders?limit=50"),
            Kind::Synced => format!("{api}/v1/orders?limit=50&sync_state=synced"),
            Kind::CreatedAfter => format!(
                "{api}/v1/orders?limit=50&created_after={}",
                (Utc::now() - self.age).to_rfc3339_opts(SecondsFormat::Micros, true)
            ),
        })
    }

    /// One request: accepted when answered 200 with a body that parses.
    async fn request(&self, i: usize) -> (Outcome, Option<u16>) {
        let Some(url) = self.url(i) else {
            return (Outcome::Refused("no order to read".into()), None);
        };
        let response = match self.http.get(&url).bearer_auth(&self.key).send().await {
            Ok(r) => r,
            Err(e) => return (Outcome::Unknown(format!("{e}")), None),
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return (Outcome::Unknown(format!("{e}")), Some(status)),
        };
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return (Outcome::Refused(format!("{status}: {text}")), Some(status));
        }
        let items = if self.kind == Kind::Get {
            0
        } else {
            match serde_json::from_slice::<Page>(&body) {
                Ok(p) => p.items.len(),
                Err(e) => return (Outcome::Refused(format!("bad page: {e}")), Some(status)),
            }
        };
        self.items.fetch_add(items, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        (Outcome::Accepted(Uuid::nil()), Some(status))
    }
}
