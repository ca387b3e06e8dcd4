//! The chaos run's load: every order posted at a steady rate and retried with its
//! Idempotency-Key until accepted or the run gives up, through the shared [`Poster`]; what the
//! answers were, including every sign that idempotency failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::poster::{Posted, Poster, Retry, Tally, post_paced};

/// The longest the client waits for one POST before retrying it (same Idempotency-Key).
const POST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct PostTotals {
    pub accepted: HashMap<Uuid, usize>,
    pub refused: Vec<(usize, String)>,
    pub tally: Tally,
    pub duplicate_client_ref: u64,
    /// Orders accepted twice under different ids (a second 201 with another id for one index).
    pub double_accepted: u64,
    pub last_accepted: Option<Instant>,
}

/// Posts every order at `rate`, each until accepted or `give_up` (see [`Poster::post`]).
pub async fn post_all(
    poster: Arc<Poster>,
    orders: usize,
    rate: f64,
    connections: usize,
    give_up: Instant,
) -> PostTotals {
    let retry = Retry {
        attempts: u32::MAX,
        give_up: Some(give_up),
        timeout: Some(POST_TIMEOUT),
    };
    let mut totals = PostTotals::default();
    let job = |i, _due| {
        let poster = poster.clone();
        async move { (i, poster.post(i, retry).await) }
    };
    let absorb = |(i, p): (usize, Posted)| {
        totals.tally.add(&p);
        totals.duplicate_client_ref += u64::from(p.duplicate_client_ref);
        match p.id {
            Some(id) => {
                if totals.accepted.insert(id, i).is_some() {
                    totals.double_accepted += 1;
                }
                totals.last_accepted = Some(Instant::now());
            }
            None => totals
                .refused
                .push((i, p.error.unwrap_or_else(|| "unknown".into()))),
        }
    };
    post_paced(orders, rate, connections, job, absorb).await;
    totals
}
