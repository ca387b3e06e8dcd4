//! The chaos run's approvals: while orders are posted and faults happen, a share of the synced
//! orders is approved in Salesforce (Status = `Activated` over the emulator's REST, under the
//! operator's client name, as `fulfilment`'s approvals), which the emulator's
//! `provision-on-activate` Flow rule turns into `OrderProvisionRequested__e` — the start of
//! the fulfilment loop (sf-subscriber → fulfilment-worker → receiver → write-back).
//!
//! Which orders are approved is drawn from the seed and the order's id (`--approve` is the
//! share), so the choice does not depend on when an order happens to be synced. Approvals run
//! as orders get synced, at most [`IN_FLIGHT`] at once, each retried through Salesforce's
//! faults (outage, spent budget, expired session, latency) until it succeeds or the run gives
//! up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderbridge_salesforce::Client;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::plan::SplitMix64;
use crate::common::lock;

/// Most approval calls in flight at once.
const IN_FLIGHT: usize = 16;
/// How often the synced orders are looked for.
const POLL: Duration = Duration::from_millis(500);
/// First and longest pause between two attempts of one approval.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Whether the order is one of the run's approved share: a number drawn from the seed and the
/// order id, below `share`.
pub fn chosen(seed: u64, id: Uuid, share: f64) -> bool {
    let (hi, lo) = id.as_u64_pair();
    // Mixed twice so ids that differ in few bits (v7: time-ordered) still spread evenly.
    let mut rng = SplitMix64::new(seed ^ SplitMix64::new(hi ^ lo.rotate_left(29)).next_u64());
    rng.unit() < share
}

/// What the approvals did, for the classification and the report.
#[derive(Debug, Default)]
pub struct Approvals {
    /// Orders seen synced (chosen or not), with their Salesforce id.
    pub seen: HashMap<Uuid, String>,
    /// Orders drawn for approval.
    pub chosen: HashSet<Uuid>,
    /// Orders approved (the call succeeded), with when: seconds since the run's start.
    pub approved: HashMap<Uuid, f64>,
    /// Chosen orders whose approval never succeeded before the run gave up, with the last error.
    pub given_up: Vec<(Uuid, String)>,
    /// Approval calls made, and of those the ones that failed (and were retried).
    pub calls: u64,
    pub failed_calls: u64,
}

struct Shared {
    state: Mutex<Approvals>,
    /// Set once no more orders will be synced: the task looks once more, finishes its approvals
    /// and ends.
    finish: Notify,
    finishing: std::sync::atomic::AtomicBool,
}

/// The running approvals; [`Approver::finish`] ends them.
pub struct Approver {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Approver {
    /// Starts approving `share` of the synced orders of the run's database (none when `share`
    /// is 0), until [`Self::finish`] or `give_up`.
    pub fn start(
        pool: PgPool,
        salesforce: Client,
        seed: u64,
        share: f64,
        started: Instant,
        give_up: Instant,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            finish: Notify::new(),
            finishing: false.into(),
        });
        let task = tokio::spawn(approve_loop(
            shared.clone(),
            pool,
            salesforce,
            seed,
            share,
            started,
            give_up,
        ));
        Self { shared, task }
    }

    /// Approvals made so far.
    pub fn approved(&self) -> usize {
        lock(&self.shared.state).approved.len()
    }

    /// Tells the approvals that every order is synced (or failed): one more look for synced
    /// orders, then every approval finished or given up. Returns what was done.
    pub async fn finish(self) -> Approvals {
        self.shared
            .finishing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.finish.notify_one();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the approval task ended abnormally");
        }
        std::mem::take(&mut *lock(&self.shared.state))
    }
}

async fn approve_loop(
    shared: Arc<Shared>,
    pool: PgPool,
    salesforce: Client,
    seed: u64,
    share: f64,
    started: Instant,
    give_up: Instant,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut calls = tokio::task::JoinSet::new();
    loop {
        let last = shared.finishing.load(std::sync::atomic::Ordering::SeqCst);
        match synced_orders(&pool).await {
            Ok(rows) => {
                for (id, salesforce_id) in rows {
                    let new = {
                        let mut guard = lock(&shared.state);
                        // Through the guard once, so the two fields borrow apart.
                        let state = &mut *guard;
                        match state.seen.entry(id) {
                            std::collections::hash_map::Entry::Occupied(_) => false,
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(salesforce_id.clone());
                                let chosen = share > 0.0 && chosen(seed, id, share);
                                if chosen {
                                    state.chosen.insert(id);
                                }
                                chosen
                            }
                        }
                    };
                    if new {
                        calls.spawn(approve_one(
                            shared.clone(),
                            slots.clone(),
                            salesforce.clone(),
                            id,
                            salesforce_id,
                            started,
                            give_up,
                        ));
                    }
                }
            }
            // Backends are terminated on purpose during the run: look again next time.
            Err(e) => tracing::debug!(error = %e, "cannot read the synced orders"),
        }
        if last || Instant::now() > give_up {
            break;
        }
        // Finished calls are collected as they end, so the set stays small.
        while calls.try_join_next().is_some() {}
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shared.finish.notified() => {}
        }
    }
    while calls.join_next().await.is_some() {}
}

/// Synced orders and their Salesforce ids.
async fn synced_orders(pool: &PgPool) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, salesforce_id FROM orders
         WHERE sync_state = 'synced' AND salesforce_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await
}

/// Approves one order, retrying until it succeeds or `give_up`.
async fn approve_one(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    salesforce: Client,
    id: Uuid,
    salesforce_id: String,
    started: Instant,
    give_up: Instant,
) {
    let Ok(_slot) = slots.acquire_owned().await else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = salesforce
            .update("Order", &salesforce_id, &json!({"Status": "Activated"}))
            .await;
        {
            let mut state = lock(&shared.state);
            state.calls += 1;
            match result {
                Ok(()) => {
                    state.approved.insert(id, started.elapsed().as_secs_f64());
                    return;
                }
                Err(e) => {
                    state.failed_calls += 1;
                    if Instant::now() + backoff > give_up {
                        state.given_up.push((id, e.to_string()));
                        return;
                    }
                    tracing::debug!(order = %id, error = %e, "approval failed; retrying");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_about_right_and_repeatable() {
        let ids: Vec<Uuid> = (0..4000).map(|_| Uuid::now_v7()).collect();
        let n = ids.iter().filter(|id| chosen(9, **id, 0.5)).count();
        assert!((1700..2300).contains(&n), "{n}");
        assert!(
            ids.iter()
                .all(|id| chosen(9, *id, 0.5) == chosen(9, *id, 0.5))
        );
        assert!(ids.iter().all(|id| chosen(9, *id, 1.0)));
        assert!(!ids.iter().any(|id| chosen(9, *id, 0.0)));
    }
}
