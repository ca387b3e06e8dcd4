//! What the pipeline suites read from the running stack around their measured part, and what
//! the database holds at the end.
//!
//! `e2e` and `drain` take the same readings before and after the orders flow ([`Baseline`],
//! [`Totals`]), in the same order, so their per-order figures (Salesforce calls, Postgres work,
//! CPU) are computed alike; the queries on the outbox and the orders' states are shared by the
//! suites that report them.

use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::{self, Footer, PgCounters};
use crate::procfs::{self, CpuSnapshot, CpuUsage};
use crate::report::Table;
use crate::stack::{EMULATOR, Stack};
use crate::verify::Verification;

/// The readings just before the orders start to flow.
pub struct Baseline {
    /// Salesforce calls so far: the worker's start-up (mapping check, login), not the orders'
    /// cost.
    pub startup_calls: u64,
    pub pg: PgCounters,
    pub load: Option<[f64; 3]>,
    pub cpu: CpuSnapshot,
    pub emulator: EmulatorMemory,
}

/// Salesforce API calls the emulator has counted, from its `/__admin/stats` answer.
fn api_calls(stats: &Value) -> Result<u64> {
    stats
        .get("api_calls_total")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("emulator stats lack api_calls_total"))
}

impl Baseline {
    pub async fn take(stack: &Stack) -> Result<Self> {
        let stats = stack.emulator_stats().await?;
        Ok(Self {
            startup_calls: api_calls(&stats)?,
            pg: PgCounters::take(stack.pool()?).await?,
            load: procfs::loadavg(),
            cpu: CpuSnapshot::take(&stack.pids()),
            emulator: EmulatorMemory::read(stack, &stats),
        })
    }
}

/// The emulator's resident memory and the records it holds, read together: their growth over
/// a run is what a stored record costs (the figure issue 15 asks to be reported). Resident
/// memory rather than live allocations, so freed blocks the allocator keeps count too: an
/// upper bound.
#[derive(Debug, Clone, Copy)]
pub struct EmulatorMemory {
    pub rss_kib: Option<u64>,
    pub records: u64,
}

impl EmulatorMemory {
    fn read(stack: &Stack, stats: &Value) -> Self {
        Self {
            rss_kib: stack.rss_kib_of(EMULATOR),
            records: stored_records(stats),
        }
    }

    /// Bytes of resident memory per record stored since `before`; `None` when nothing was
    /// stored or a reading is missing.
    pub fn bytes_per_record_since(&self, before: &Self) -> Option<f64> {
        let grown = self.rss_kib?.saturating_sub(before.rss_kib?) as f64 * 1024.0;
        let stored = self
            .records
            .checked_sub(before.records)
            .filter(|n| *n > 0)?;
        Some(grown / stored as f64)
    }

    fn row(&self, t: &mut Table, before: &Self) {
        let mib =
            |kib: Option<u64>| kib.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let stored = self.records.saturating_sub(before.records);
        let per_record = self
            .bytes_per_record_since(before)
            .map_or("?".to_owned(), |b| format!("{b:.0} B"));
        t.info(
            "sf-emulator memory per stored record (stand-in)",
            format!(
                "{per_record}: RSS {} → {} MiB for {} records stored",
                mib(before.rss_kib),
                mib(self.rss_kib),
                crate::report::thousands(stored as f64)
            ),
        );
    }

    fn to_json(self, before: &Self) -> Value {
        json!({
            "rss_kib_before": before.rss_kib, "rss_kib_after": self.rss_kib,
            "records_before": before.records, "records_after": self.records,
            "bytes_per_record": self.bytes_per_record_since(before),
        })
    }
}

/// Records the emulator holds, every object (its `/__admin/stats` `records`).
fn stored_records(stats: &Value) -> u64 {
    stats["records"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// The readings once the orders are through, against a [`Baseline`].
pub struct Totals {
    pub cpu: CpuUsage,
    pub load: Option<[f64; 3]>,
    pub rss: Vec<(String, Option<u64>)>,
    pub scraped: Vec<(String, String)>,
    pub pg: PgCounters,
    /// The emulator's counters at the end.
    pub stats: Value,
    /// Salesforce calls after the start-up ones.
    pub calls: u64,
    pub emulator: EmulatorMemory,
}

impl Totals {
    /// CPU and load first, as close to the end of the flow as possible; the Postgres counters
    /// last, because backends report them at most once a second.
    pub async fn take(stack: &Stack, baseline: &Baseline) -> Result<Self> {
        let cpu = baseline.cpu.usage_until(&CpuSnapshot::take(&stack.pids()));
        let load = procfs::loadavg();
        let rss = stack.peak_rss_kib();
        let emulator_rss_kib = stack.rss_kib_of(EMULATOR);
        let scraped = stack.scrape_metrics().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pg = PgCounters::take(stack.pool()?).await?;
        let stats = stack.emulator_stats().await?;
        let calls = api_calls(&stats)?.saturating_sub(baseline.startup_calls);
        let emulator = EmulatorMemory {
            rss_kib: emulator_rss_kib,
            records: stored_records(&stats),
        };
        Ok(Self {
            cpu,
            load,
            rss,
            scraped,
            pg,
            stats,
            calls,
            emulator,
        })
    }

    /// The rows `e2e` and `drain` close their table with: Salesforce calls per 1,000 of the
    /// `synced` orders (against `calls_target`), then the shared footer (per order of `orders`;
    /// `backlog`: the relay read a backlog, see [`common::metrics_rows`]).
    pub fn closing_rows(
        &self,
        t: &mut Table,
        baseline: &Baseline,
        synced: usize,
        orders: usize,
        backlog: bool,
        calls_target: f64,
    ) -> Closing {
        let calls_per_1000 = common::salesforce_call_rows(
            t,
            self.calls,
            baseline.startup_calls,
            synced,
            calls_target,
        );
        let (service_metrics, pg) = common::footer_rows(
            t,
            &Footer {
                scraped: &self.scraped,
                backlog,
                pg_before: &baseline.pg,
                pg_after: &self.pg,
                orders,
                rss: &self.rss,
                rss_no_target: &[EMULATOR],
                cpu: &self.cpu,
            },
        );
        self.emulator.row(t, &baseline.emulator);
        Closing {
            calls_per_1000,
            service_metrics,
            pg,
        }
    }

    /// The keys `e2e` and `drain` end their report.json with, after their own: Salesforce
    /// calls, memory, the services' metrics, Postgres per order, the reconciliation and the
    /// table.
    pub fn append_json(
        &self,
        json: &mut Value,
        baseline: &Baseline,
        closing: Closing,
        verification: &Verification,
        t: &Table,
    ) {
        let Value::Object(object) = json else { return };
        let closing_keys = json!({
            "salesforce": {
                "api_calls": self.calls, "startup_calls": baseline.startup_calls,
                "per_1000_orders": closing.calls_per_1000, "stats_at_end": self.stats,
            },
            "peak_rss_mib": common::rss_json(&self.rss),
            "emulator_memory": self.emulator.to_json(&baseline.emulator),
            "service_metrics": closing.service_metrics,
            "postgres_per_order": closing.pg,
            "verification": verification.to_json(),
            "table": t.to_json(),
        });
        if let Value::Object(closing_keys) = closing_keys {
            object.extend(closing_keys);
        }
    }
}

/// What [`Totals::closing_rows`] computed, for the JSON.
pub struct Closing {
    pub calls_per_1000: f64,
    pub service_metrics: Value,
    pub pg: Value,
}

/// How many orders are in each sync state, as a JSON object for the report.
pub async fn order_states(pool: &PgPool) -> Result<Value> {
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT sync_state, count(*) FROM orders GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    Ok(Value::Object(
        states.into_iter().map(|(s, n)| (s, json!(n))).collect(),
    ))
}

/// Every `published_at` in the outbox, earliest first.
pub async fn published_times(pool: &PgPool) -> Result<Vec<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT published_at FROM outbox WHERE published_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Outbox rows not published yet.
pub async fn unpublished(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}
