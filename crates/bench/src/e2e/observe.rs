//! The e2e load and its observation, running side by side: the open-loop poster (each accepted
//! order joins the [`Watch`] as its 201 arrives) and the observer listing newly synced orders
//! through the API (the paging rule is in `mod.rs`). What they saw is a [`Flow`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::E2eArgs;
use super::watch::{ORDER_MARGIN, Sent, Watch};
use crate::common::lock;
use crate::poster::{Posted, Poster, Retry, Tally, post_paced};

/// Attempts per order on 429/503/409-in-flight or a transport error, same Idempotency-Key.
/// Up to 10 attempts per order, each within the client's 30 s timeout.
const RETRY: Retry = Retry {
    attempts: 10,
    give_up: None,
    timeout: None,
};

/// What the posting and the observing produced.
pub struct Flow {
    pub posted: PostTotals,
    pub observed: ObserveTotals,
    /// Accepted orders neither seen synced nor failed by the end.
    pub unseen: usize,
}

/// Posts every order (see [`post_all`]) while [`observe`] watches them sync, until every
/// accepted order was seen synced or failed, or `deadline`.
pub async fn run(poster: Arc<Poster>, args: &E2eArgs, deadline: Instant) -> Result<Flow> {
    let orders = args.orders as usize;
    let connections = args.connections as usize;
    let watch = Arc::new(Mutex::new(Watch::default()));
    let posting_done = Arc::new(AtomicBool::new(false));
    let posting = {
        let (poster, watch, done) = (poster.clone(), watch.clone(), posting_done.clone());
        let rate = args.rate;
        tokio::spawn(async move {
            let totals = post_all(poster, watch, orders, rate, connections).await;
            done.store(true, Ordering::Release);
            totals
        })
    };
    let observer = tokio::spawn(observe(
        poster,
        watch.clone(),
        posting_done,
        args.poll,
        connections,
        deadline,
    ));
    let (posted, observed) = tokio::join!(posting, observer);
    let (posted, observed) = (posted?, observed?);
    let unseen = lock(&watch).pending.len();
    Ok(Flow {
        posted,
        observed,
        unseen,
    })
}

#[derive(Default)]
pub struct PostTotals {
    pub accepted: usize,
    pub rejected: usize,
    pub tally: Tally,
    pub errors: Vec<String>,
    pub post_ms: Vec<f64>,
    pub answered: Vec<Instant>,
    pub first_sent: Option<Instant>,
    pub last_answered: Option<Instant>,
}

impl PostTotals {
    fn absorb(&mut self, r: Posted) {
        self.tally.add(&r);
        self.first_sent = Some(self.first_sent.map_or(r.sent, |f| f.min(r.sent)));
        // A duplicate client_ref is a failure of idempotency here, not an acceptance.
        if r.created_at.is_some() {
            self.accepted += 1;
            self.post_ms
                .push(r.answered.duration_since(r.sent).as_secs_f64() * 1e3);
            self.answered.push(r.answered);
            self.last_answered = Some(self.last_answered.map_or(r.answered, |l| l.max(r.answered)));
        } else {
            self.rejected += 1;
            if self.errors.len() < 10 {
                self.errors
                    .push(r.error.unwrap_or_else(|| "unknown".into()));
            }
        }
    }
}

/// Posts every order at `rate` (see [`post_paced`]), each until accepted ([`RETRY`]); an
/// accepted order joins the watch list as soon as its 201 arrives.
async fn post_all(
    poster: Arc<Poster>,
    watch: Arc<Mutex<Watch>>,
    orders: usize,
    rate: f64,
    connections: usize,
) -> PostTotals {
    let mut totals = PostTotals::default();
    let job = |i, due| {
        let (poster, watch) = (poster.clone(), watch.clone());
        async move {
            let p = poster.post(i, RETRY).await;
            if let (Some(id), Some(created_at)) = (p.id, p.created_at) {
                lock(&watch).add(id, created_at, Sent { due, sent: p.sent });
            }
            p
        }
    };
    post_paced(orders, rate, connections, job, |p| totals.absorb(p)).await;
    totals
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    id: Uuid,
    sync: ItemSync,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ItemSync {
    synced_at: Option<DateTime<Utc>>,
    last_error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    code: String,
}

/// An order seen synced.
pub struct Seen {
    pub sent: Sent,
    pub seen: Instant,
    pub updated_at: DateTime<Utc>,
    pub synced_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct ObserveTotals {
    pub seen: Vec<Seen>,
    pub failed: Vec<(Uuid, String)>,
    pub requests: u64,
    pub request_errors: u64,
    pub cycles: u64,
    pub busy: Duration,
    pub timed_out: bool,
}

/// Lists the orders in `state` created after `after`, all pages; `found` gets each item and the
/// time its page arrived.
async fn list(
    ctx: &Poster,
    totals: &mut ObserveTotals,
    state: &str,
    oldest: DateTime<Utc>,
    limit: usize,
    mut found: impl FnMut(Item, Instant),
) {
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/v1/orders?sync_state={state}&limit={}",
            ctx.api,
            limit.clamp(1, 200)
        );
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        totals.requests += 1;
        let page: Option<Page> = match ctx.http.get(url).bearer_auth(&ctx.key).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r.json().await.ok(),
            _ => None,
        };
        let Some(page) = page else {
            totals.request_errors += 1;
            return;
        };
        let at = Instant::now();
        // Newest first: once a page reaches orders older than the oldest one still watched,
        // everything further down is too, but for ids and creation times taken a moment apart
        // by concurrent requests (a preempted thread): hence the margin.
        let reached_older = page
            .items
            .last()
            .is_some_and(|i| i.created_at < oldest - ORDER_MARGIN);
        for item in page.items {
            found(item, at);
        }
        match page.next_cursor {
            Some(c) if !reached_older => cursor = Some(c),
            _ => return,
        }
    }
}

async fn observe(
    ctx: Arc<Poster>,
    watch: Arc<Mutex<Watch>>,
    posting_done: Arc<AtomicBool>,
    poll: Duration,
    in_flight_posts: usize,
    deadline: Instant,
) -> ObserveTotals {
    let mut totals = ObserveTotals::default();
    let mut next_failed_check = Instant::now() + Duration::from_secs(1);
    loop {
        let cycle = Instant::now();
        // Read before the listing: orders accepted after this are caught by the next poll.
        let done_posting = posting_done.load(Ordering::Acquire);
        let window = {
            let mut w = lock(&watch);
            w.oldest()
                .map(|oldest| (oldest, w.page_size(oldest, in_flight_posts)))
        };
        if let Some((oldest, limit)) = window {
            let mut seen = Vec::new();
            list(&ctx, &mut totals, "synced", oldest, limit, |item, at| {
                if let Some(sent) = lock(&watch).take(item.id) {
                    seen.push(Seen {
                        sent,
                        seen: at,
                        updated_at: item.updated_at,
                        synced_at: item.sync.synced_at,
                    });
                }
            })
            .await;
            totals.seen.extend(seen);
            if cycle >= next_failed_check {
                next_failed_check = cycle + Duration::from_secs(1);
                let mut failed = Vec::new();
                list(&ctx, &mut totals, "failed", oldest, limit, |item, _| {
                    if lock(&watch).take(item.id).is_some() {
                        let code = item.sync.last_error.map(|e| e.code).unwrap_or_default();
                        failed.push((item.id, code));
                    }
                })
                .await;
                totals.failed.extend(failed);
            }
        }
        totals.cycles += 1;
        totals.busy += cycle.elapsed();
        if done_posting && lock(&watch).pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            totals.timed_out = true;
            break;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(cycle + poll)).await;
    }
    totals
}
