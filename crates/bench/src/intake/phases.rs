//! Intake's two phases, API and direct Postgres, alternating in rounds on the closed-loop
//! driver ([`load::drive`]), with the CPU, Postgres and load readings each round's window
//! takes. Both phases go through the same [`round`] so that they are measured alike.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use chrono::{SubsecRound, Utc};
use orderbridge_db::create::{self, Idempotency, create_order};
use orderbridge_domain::ClientScope;
use sqlx::PgPool;
use uuid::Uuid;

use super::IntakeArgs;
use crate::common;
use crate::load::{self, LoadResult, Outcome, Window};
use crate::poster::{Posted, Poster, Retry};
use crate::procfs::{self, CpuSnapshot, CpuUsage};
use crate::stack::Stack;
use crate::workload;

/// One attempt: intake measures what each request costs, and a retry would hide a refusal.
const ONCE: Retry = Retry {
    attempts: 1,
    give_up: None,
    timeout: None,
};

/// What happened around one phase (all its rounds): CPU, Postgres counters, load.
pub struct PhaseContext {
    pub cpu: CpuUsage,
    /// Postgres's counters over the measured windows.
    pub pg: common::PgCounters,
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    /// (orders/s, 1-min load at the window's start) of each round.
    pub rounds: Vec<(f64, Option<f64>)>,
}

impl PhaseContext {
    fn new() -> Self {
        Self {
            cpu: CpuUsage {
                wall_s: 0.0,
                seconds: std::collections::BTreeMap::new(),
                machine_busy: None,
            },
            pg: common::PgCounters::default(),
            load_before: None,
            load_after: None,
            rounds: Vec::new(),
        }
    }

    fn add_cpu(&mut self, cpu: &CpuUsage) {
        let wall = self.cpu.wall_s + cpu.wall_s;
        self.cpu.machine_busy = match (self.cpu.machine_busy, cpu.machine_busy) {
            (Some(a), Some(b)) if wall > 0.0 => Some((a * self.cpu.wall_s + b * cpu.wall_s) / wall),
            (a, b) => a.or(b),
        };
        self.cpu.wall_s = wall;
        for (name, s) in &cpu.seconds {
            *self.cpu.seconds.entry(name.clone()).or_insert(0.0) += s;
        }
    }
}

/// Both phases' figures over all rounds.
pub struct Phases {
    pub api: LoadResult,
    pub direct: LoadResult,
    pub api_ctx: PhaseContext,
    pub direct_ctx: PhaseContext,
}

/// Runs `--rounds` rounds of API then direct, `--duration` split evenly between them.
pub async fn alternate(
    stack: &Stack,
    args: &IntakeArgs,
    poster: Arc<Poster>,
    pool: PgPool,
    client_id: Uuid,
) -> Result<Phases> {
    let connections = args.connections as usize;
    let api_op = Arc::new(move |i| {
        let poster = poster.clone();
        async move { post(&poster, i).await }
    });
    let direct_run = format!("direct-{}", Uuid::now_v7().simple());
    let client = workload::client_scope(&pool, client_id).await?;
    let shared = Arc::new((pool, client, direct_run));
    let direct_op = Arc::new(move |i| {
        let shared = shared.clone();
        async move {
            let (pool, client, run) = &*shared;
            match direct_order(pool, client, run, i).await {
                Ok(id) => (Outcome::Accepted(id), None),
                Err(e) => (Outcome::Unknown(format!("{e:#}")), None),
            }
        }
    });
    let (api_next, direct_next) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut p = Phases {
        api: LoadResult::default(),
        direct: LoadResult::default(),
        api_ctx: PhaseContext::new(),
        direct_ctx: PhaseContext::new(),
    };
    let rounds = args.rounds.max(1);
    let slice = args.duration / rounds;
    for r in 0..rounds {
        // The first round of each phase warms up fully; later ones only let the switch settle.
        let warmup = if r == 0 {
            args.warmup
        } else {
            args.warmup.min(Duration::from_secs(1))
        };
        tracing::info!(round = r + 1, rounds, connections, "API");
        round(
            stack,
            connections,
            warmup,
            slice,
            api_op.clone(),
            api_next.clone(),
            &mut p.api,
            &mut p.api_ctx,
        )
        .await?;
        tracing::info!(round = r + 1, rounds, connections, "direct");
        round(
            stack,
            connections,
            warmup,
            slice,
            direct_op.clone(),
            direct_next.clone(),
            &mut p.direct,
            &mut p.direct_ctx,
        )
        .await?;
    }
    Ok(p)
}

/// One round of a phase: `drive` for `warmup` + `duration`, with CPU and Postgres counters
/// snapshotted at the window's edges; adds its figures to `result` and `ctx`.
#[allow(clippy::too_many_arguments)]
async fn round<F, Fut>(
    stack: &Stack,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    op: Arc<F>,
    next: Arc<AtomicUsize>,
    result: &mut LoadResult,
    ctx: &mut PhaseContext,
) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Outcome, Option<u16>)> + Send,
{
    let window = Window::new(Instant::now(), warmup, duration);
    let pids = stack.pids();
    let pool = stack.pool()?.clone();
    let sampler = async move {
        tokio::time::sleep_until(window.from.into()).await;
        let before = (
            CpuSnapshot::take(&pids),
            common::PgCounters::take(&pool).await,
            procfs::loadavg(),
        );
        tokio::time::sleep_until(window.to.into()).await;
        let cpu_after = CpuSnapshot::take(&pids);
        let load_after = procfs::loadavg();
        // Backends report their counters at transaction end, at most once a second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let pg_after = common::PgCounters::take(&pool).await;
        (before, cpu_after, load_after, pg_after)
    };
    let (r, ((cpu0, pg0, load_before), cpu1, load_after, pg1)) =
        tokio::join!(load::drive(connections, window, op, next), sampler);
    ctx.add_cpu(&cpu0.usage_until(&cpu1));
    ctx.pg.add(&pg0?.delta(&pg1?));
    ctx.load_before = ctx.load_before.or(load_before);
    ctx.load_after = load_after;
    ctx.rounds.push((r.per_second(), load_before.map(|l| l[0])));
    result.merge(r);
    Ok(())
}

/// One `POST /v1/orders`, not retried. A 503 or a transport error may still have committed (the
/// API's transaction is never cancelled half-way), so its outcome is unknown.
async fn post(poster: &Poster, i: usize) -> (Outcome, Option<u16>) {
    let p = poster.post(i, ONCE).await;
    let status = p.statuses.last().copied();
    (outcome(p), status)
}

fn outcome(p: Posted) -> Outcome {
    if p.duplicate_client_ref {
        return Outcome::Refused("409 Conflict: duplicate client_ref".to_owned());
    }
    if let (Some(id), Some(_)) = (p.id, p.created_at) {
        return Outcome::Accepted(id);
    }
    let error = p.error.unwrap_or_else(|| "unknown".to_owned());
    // A 201 whose body did not parse was accepted all the same, under an id we do not know.
    if p.transport_errors > 0 || matches!(p.statuses.last(), Some(201 | 503)) {
        Outcome::Unknown(error)
    } else {
        Outcome::Refused(error)
    }
}

/// The API's order-creating transaction, `orderbridge_db::create::create_order`, called directly:
/// the same function, SQL and round trips, without HTTP.
async fn direct_order(pool: &PgPool, client: &ClientScope, run: &str, i: usize) -> Result<Uuid> {
    // Postgres keeps microseconds; the API truncates the same way.
    let order = workload::stored_order(run, i, Uuid::now_v7(), Utc::now().trunc_subsecs(6))?;
    let key = format!("{run}-{i}");
    // The API stores SHA-256 of the request; any 32 bytes cost Postgres the same.
    let mut fingerprint = [0u8; 32];
    fingerprint[..16].copy_from_slice(order.id.get().as_bytes());
    let idempotency = Idempotency {
        key: key.clone(),
        fingerprint,
        expires_at: Utc::now() + chrono::Duration::hours(24),
    };
    match create_order(pool, client, Some(&idempotency), order, Some(key)).await? {
        create::Created::New { order, .. } => Ok(order.id.get()),
        create::Created::Replayed(_) => {
            Err(anyhow!("idempotency key {} already used", idempotency.key))
        }
    }
}
