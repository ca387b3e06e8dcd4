//! `slowloris`: order-api under `--connections` (2,000) half-open connections, each having sent
//! half a request line, reconnecting whenever the server closes them. Measured: the latency of
//! normal requests (`GET /health/live` and a 3-line `POST /v1/orders`, each on a new
//! connection, as a new client arrives) before, during and after the attack, and order-api's
//! resident memory during it. Targets (issue 12): a normal request well under a second, RSS
//! under 64 MiB.
//!
//! Only order-api runs. Its connection settings are the defaults unless `--env` changes them
//! (`--env ORDER_API_MAX_CONNECTIONS=…`). `attack.rs` holds the attackers, `report.rs` the
//! table.

mod attack;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use uuid::Uuid;

use crate::procfs;
use crate::stack::{API, Stack, StackArgs, with_stack};
use crate::workload;
use attack::Attack;

#[derive(Debug, Clone, Args)]
pub struct SlowlorisArgs {
    /// Half-open connections held against the API (re-opened when the server closes them).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=15000))]
    pub connections: u32,
    /// Normal requests timed in each phase (before, during, after the attack), half of them
    /// GET /health/live and half POST /v1/orders, each on a new connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=10000))]
    pub samples: u32,
    /// How long the attack runs before the timed requests start.
    #[arg(long, default_value = "3s", value_parser = orderbridge_runtime::parse_interval)]
    pub settle: Duration,
    /// Pause before an attacker whose connection the server closed connects again.
    #[arg(long, default_value = "1s", value_parser = orderbridge_runtime::parse_interval)]
    pub reconnect_after: Duration,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Normal requests of one phase.
#[derive(Debug, Default)]
pub struct Phase {
    pub get_ms: Vec<f64>,
    pub post_ms: Vec<f64>,
    /// What went wrong with the requests that did not get their 200 or 201.
    pub failures: Vec<String>,
}

/// What the attack looked like from both sides.
#[derive(Debug)]
pub struct AttackFigures {
    /// Attackers connected (half a line sent) when the timed requests started and ended.
    pub open_at_start: usize,
    pub open_at_end: usize,
    pub connects: u64,
    pub closed_by_server: u64,
    pub failed_connects: u64,
    pub seconds: f64,
}

pub struct Measured<'a> {
    pub args: &'a SlowlorisArgs,
    pub before: Phase,
    pub during: Phase,
    pub after: Phase,
    pub attack: AttackFigures,
    /// order-api's resident set, KiB: before the attack, highest sampled during it, and the
    /// peak of the whole run (VmHWM, start-up included).
    pub rss_before: Option<u64>,
    pub rss_during_max: u64,
    pub rss_peak: Option<u64>,
    /// CPU and load while the normal requests were timed under attack.
    pub cpu: procfs::CpuUsage,
    pub load: [Option<[f64; 3]>; 2],
}

pub async fn run(args: SlowlorisArgs) -> Result<bool> {
    with_stack(args.stack.clone(), "slowloris", async |stack| {
        measure(stack, &args).await
    })
    .await
}

async fn measure(stack: &mut Stack, args: &SlowlorisArgs) -> Result<bool> {
    let key = stack.create_api_key().await?;
    let pid = stack.spawn_api()?;
    stack.wait_ready(API).await?;
    let api = stack
        .api_url
        .clone()
        .ok_or_else(|| anyhow!("order-api has no URL"))?;
    let addr: SocketAddr = api
        .trim_start_matches("http://")
        .parse()
        .context("order-api's address")?;
    let normal = Normal::new(api, key)?;

    let before = normal.phase(args.samples).await;
    let rss_before = procfs::rss_kib(pid);

    tracing::info!(connections = args.connections, "starting the attack");
    let started = Instant::now();
    let attack = Attack::start(addr, args.connections as usize, args.reconnect_after);
    let counters = attack.counters.clone();
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    while counters.connects.load(Ordering::Relaxed) < u64::from(args.connections)
        && Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(args.settle).await;

    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let rss_max = rss_max.clone();
        async move {
            loop {
                if let Some(kib) = procfs::rss_kib(pid) {
                    rss_max.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let load_before = procfs::loadavg();
    let cpu_before = procfs::CpuSnapshot::take(&stack.pids());
    let open_at_start = counters.open.load(Ordering::Relaxed);
    tracing::info!(
        open = open_at_start,
        "attack under way; timing normal requests"
    );
    let during = normal.phase(args.samples).await;
    let open_at_end = counters.open.load(Ordering::Relaxed);
    sampler.abort();
    let cpu = cpu_before.usage_until(&procfs::CpuSnapshot::take(&stack.pids()));
    let load_after = procfs::loadavg();
    let figures = AttackFigures {
        open_at_start,
        open_at_end,
        connects: counters.connects.load(Ordering::Relaxed),
        closed_by_server: counters.closed_by_server.load(Ordering::Relaxed),
        failed_connects: counters.failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    attack.stop().await;

    let after = normal.phase(args.samples).await;
    stack.check_running()?;
    let measured = Measured {
        args,
        before,
        during,
        after,
        attack: figures,
        rss_before,
        rss_during_max: rss_max.load(Ordering::Relaxed),
        rss_peak: procfs::peak_rss_kib(pid),
        cpu,
        load: [load_before, load_after],
    };
    report::finish(stack, &measured)
}

/// A normal client: every request on a new connection.
struct Normal {
    http: reqwest::Client,
    api: String,
    key: String,
    /// Makes `client_ref`s unique across the phases.
    run: String,
    posted: AtomicUsize,
}

impl Normal {
    fn new(api: String, key: String) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()?,
            api,
            key,
            run: format!("slowloris-{}", Uuid::now_v7().simple()),
            posted: AtomicUsize::new(0),
        })
    }

    async fn phase(&self, samples: u32) -> Phase {
        let mut phase = Phase::default();
        for i in 0..samples as usize {
            let started = Instant::now();
            let (result, ms) = if i % 2 == 0 {
                let r = self.get().await;
                (r, &mut phase.get_ms)
            } else {
                let r = self.post().await;
                (r, &mut phase.post_ms)
            };
            match result {
                Ok(()) => ms.push(started.elapsed().as_secs_f64() * 1e3),
                Err(e) => phase.failures.push(format!("{e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        phase
    }

    async fn get(&self) -> Result<()> {
        let res = self
            .http
            .get(format!("{}/health/live", self.api))
            .send()
            .await?;
        let status = res.status();
        res.bytes().await?;
        anyhow::ensure!(status == 200, "GET /health/live: {status}");
        Ok(())
    }

    async fn post(&self) -> Result<()> {
        let res = self
            .http
            .post(format!("{}/v1/orders", self.api))
            .bearer_auth(&self.key)
            .json(&workload::order_request(
                &self.run,
                self.posted.fetch_add(1, Ordering::Relaxed),
            ))
            .send()
            .await?;
        let status = res.status();
        res.bytes().await?;
        anyhow::ensure!(status == 201, "POST /v1/orders: {status}");
        Ok(())
    }
}
