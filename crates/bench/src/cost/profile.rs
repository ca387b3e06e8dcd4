//! Where a read phase's time went, over its measured window only: CPU seconds of each process
//! (`procfs`) and Postgres's shared-buffer traffic (`pg_stat_database`: pages found in
//! `shared_buffers`, and pages it had to read — from the OS page cache or the disk), each per
//! request. This is the profile behind the GET p99 target: on two shared cores a closed loop's
//! latency is its requests' CPU cost plus queueing, so a p99 that grows with the table either
//! shows a larger cost per request here (more pages read, more CPU in Postgres) or does not, in
//! which case the difference is the machine's, not the query's.
//!
//! Postgres publishes a busy backend's counters at most once a second, so both snapshots lag
//! the window's edges by up to a second, alike at both ends (the phase is running at each).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::PgCounters;
use crate::procfs::{CpuSnapshot, CpuUsage};

/// Sleeps until `from`, takes the counters, sleeps until `to` and returns what was used in
/// between.
pub async fn window(
    pool: &PgPool,
    services: &[(String, u32)],
    from: Instant,
    to: Instant,
) -> Result<Profile> {
    tokio::time::sleep_until(from.into()).await;
    let (cpu, pg) = (CpuSnapshot::take(services), PgCounters::take(pool).await?);
    tokio::time::sleep_until(to.into()).await;
    let (hit, read) = pg.delta(&PgCounters::take(pool).await?).pages();
    Ok(Profile {
        cpu: cpu.usage_until(&CpuSnapshot::take(services)),
        hit,
        read,
    })
}

/// One window's usage.
#[derive(Debug, Clone)]
pub struct Profile {
    pub cpu: CpuUsage,
    /// Pages found in `shared_buffers`.
    pub hit: i64,
    /// Pages Postgres had to read into `shared_buffers`.
    pub read: i64,
}

impl Profile {
    /// CPU milliseconds per request of each process.
    pub fn cpu_ms_per_request(&self, requests: usize) -> BTreeMap<String, f64> {
        let n = requests.max(1) as f64;
        self.cpu
            .seconds
            .iter()
            .map(|(name, s)| (name.clone(), s * 1e3 / n))
            .collect()
    }

    /// Pages per request: (found in shared_buffers, read into them).
    pub fn pages_per_request(&self, requests: usize) -> (f64, f64) {
        let n = requests.max(1) as f64;
        (self.hit as f64 / n, self.read as f64 / n)
    }

    /// The table's one-line summary: the processes' CPU per request, the machine's busy share,
    /// the pages per request.
    pub fn summary(&self, requests: usize) -> String {
        let cpu: Vec<String> = self
            .cpu_ms_per_request(requests)
            .into_iter()
            .filter(|(_, ms)| *ms >= 0.005)
            .map(|(name, ms)| format!("{} {ms:.2}", short(&name)))
            .collect();
        let (hit, read) = self.pages_per_request(requests);
        let busy = self
            .cpu
            .machine_busy
            .map_or_else(|| "?".to_owned(), |b| format!("{:.0} %", b * 100.0));
        format!(
            "CPU ms/request {}; machine {busy} busy; pages/request {hit:.1} in shared_buffers, {read:.2} read in",
            cpu.join(", ")
        )
    }

    pub fn to_json(&self, requests: usize) -> Value {
        let (hit, read) = self.pages_per_request(requests);
        json!({
            "requests": requests,
            "cpu_ms_per_request": self.cpu_ms_per_request(requests),
            "machine_busy": self.cpu.machine_busy,
            "pages_hit_per_request": hit,
            "pages_read_per_request": read,
        })
    }
}

/// "postgres (server-wide)" → "postgres", "bench (load + observer)" → "bench".
fn short(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_figures_divide_by_requests() {
        let profile = Profile {
            cpu: CpuUsage {
                wall_s: 10.0,
                seconds: BTreeMap::from([
                    ("order-api".to_owned(), 2.0),
                    ("postgres (server-wide)".to_owned(), 4.0),
                ]),
                machine_busy: Some(0.9),
            },
            hit: 40_000,
            read: 1_000,
        };
        let ms = profile.cpu_ms_per_request(2_000);
        assert_eq!(ms["order-api"], 1.0);
        assert_eq!(ms["postgres (server-wide)"], 2.0);
        assert_eq!(profile.pages_per_request(2_000), (20.0, 0.5));
        assert_eq!(
            profile.summary(2_000),
            "CPU ms/request order-api 1.00, postgres 2.00; machine 90 % busy; \
             pages/request 20.0 in shared_buffers, 0.50 read in"
        );
    }
}
