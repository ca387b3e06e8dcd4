//! Rows, context and output shared by the subcommands: the machine, memory, CPU, the
//! Salesforce check, writing the files; and the small conversions every suite's figures go
//! through (durations to ms, rates, instants to wall-clock times), so that two suites never
//! compute one figure in two ways.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::procfs::{self, CpuUsage};
use crate::report::{self, Goal, Table};
use crate::stack::Stack;
use crate::verify::Verification;

/// Issue 6: Salesforce calls per 1,000 orders streamed through Composite (`e2e`).
pub const TARGET_CALLS_PER_1000: f64 = 6.0;
/// Issue 15: Salesforce calls per 1,000 orders of a backlog (`drain`), what Bulk API 2.0 is
/// for (Composite's floor is 5).
pub const TARGET_DRAIN_CALLS_PER_1000: f64 = 0.5;
/// Issue 15: peak RSS of every service in every bench (issue 6 had allowed 64 MiB).
pub const TARGET_RSS_MIB: f64 = 32.0;
/// Issue 12 (slowloris): order-api's RSS while held connections attack it.
pub const TARGET_RSS_UNDER_ATTACK_MIB: f64 = 64.0;

/// The 1-minute load average as the context lines show it.
pub fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or_else(|| "?".to_owned(), |l| format!("{:.2}", l[0]))
}

/// Locks state shared with the suite's tasks. A task that panicked while holding it leaves
/// what it recorded so far, which is still worth reporting.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A span between two server timestamps in milliseconds (microseconds kept, as Postgres
/// stores them).
pub fn ms(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3
}

/// The same in seconds.
pub fn secs(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// `n` per second over `seconds`; 0 for an empty span.
pub fn per_second(n: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// A run's start on both clocks: the bench measures with [`Instant`]s, the services stamp
/// rows with wall-clock times, and comparing the two needs one moment known on both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    pub started_wall: DateTime<Utc>,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            started_wall: Utc::now(),
        }
    }

    /// The wall-clock time of `i` (no earlier than the start).
    pub fn wall(&self, i: Instant) -> DateTime<Utc> {
        self.started_wall
            + chrono::Duration::from_std(i.saturating_duration_since(self.started))
                .unwrap_or_default()
    }
}

/// Context lines: cores, load, how busy the machine was, which binaries.
pub fn machine_context(
    t: &mut Table,
    stack: &Stack,
    before: Option<[f64; 3]>,
    after: Option<[f64; 3]>,
    cpu: &CpuUsage,
) {
    let busy = cpu.machine_busy.map_or_else(String::new, |b| {
        format!(
            "; all cores {:.0}% busy during the run (anyone's work)",
            b * 100.0
        )
    });
    t.context(format!(
        "machine: {} cores, 1-min load {} before, {} after{busy}",
        procfs::cores(),
        load_text(before),
        load_text(after)
    ));
    let profile = stack.profile();
    let warning = if profile == "release" {
        ""
    } else {
        " — NOT release binaries: figures are not comparable"
    };
    t.context(format!(
        "binaries: {} ({profile}){warning}",
        stack.bin_dir.display()
    ));
    if !stack.args.env.is_empty() {
        t.context(format!(
            "service environment: {}",
            stack.args.env_pairs().join(" ")
        ));
    }
}

pub fn machine_json(
    stack: &Stack,
    before: Option<[f64; 3]>,
    after: Option<[f64; 3]>,
    cpu: &CpuUsage,
) -> Value {
    json!({
        "cores": procfs::cores(),
        "loadavg_before": before,
        "loadavg_after": after,
        "cpu_busy_share": cpu.machine_busy,
        "cpu_seconds": cpu.seconds,
        "cpu_window_s": cpu.wall_s,
        "bin_dir": stack.bin_dir.display().to_string(),
        "profile": stack.profile(),
        "database": stack.database,
        "namespace": stack.namespace,
    })
}

/// Peak RSS per service; those in `no_target` (the emulator: a stand-in) get no target.
pub fn rss_rows(t: &mut Table, rss: &[(String, Option<u64>)], no_target: &[&str]) {
    for (name, kib) in rss {
        let Some(kib) = kib else {
            t.info(format!("peak RSS {name}"), "?");
            continue;
        };
        let mib = *kib as f64 / 1024.0;
        if no_target.contains(&name.as_str()) {
            t.info(
                format!("peak RSS {name} (stand-in)"),
                format!("{mib:.1} MiB"),
            );
        } else {
            t.target(
                format!("peak RSS {name}"),
                mib,
                format!("{mib:.1} MiB"),
                Goal::AtMost(TARGET_RSS_MIB),
                "<= 32 MiB",
            );
        }
    }
}

pub fn rss_json(rss: &[(String, Option<u64>)]) -> Value {
    Value::Object(
        rss.iter()
            .map(|(name, kib)| {
                (
                    name.clone(),
                    kib.map_or(Value::Null, |k| {
                        json!(crate::stats::round(k as f64 / 1024.0))
                    }),
                )
            })
            .collect(),
    )
}

/// CPU seconds per process over the run, and per order.
pub fn cpu_rows(t: &mut Table, cpu: &CpuUsage, orders: usize) {
    for (name, secs) in &cpu.seconds {
        let per_order = if orders > 0 {
            format!(", {:.2} ms/order", secs * 1e3 / orders as f64)
        } else {
            String::new()
        };
        t.info(
            format!("CPU {name}"),
            format!(
                "{secs:.1} s ({:.0}% of a core{per_order})",
                100.0 * secs / cpu.wall_s.max(1e-9)
            ),
        );
    }
}

/// The rows of the end-of-run reconciliation (`orderbridge_cli::reconcile`).
pub fn verification_rows(t: &mut Table, v: &Verification) {
    let mib =
        |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    t.info(
        "reconcile: orders compared, time, bench RSS before → peak during",
        format!(
            "{}, {:.1} s{}, {} → {}",
            v.orders,
            v.reconcile_secs,
            if v.reconcile_bulk {
                " (Bulk query)"
            } else {
                ""
            },
            mib(v.rss_before_kib),
            mib(v.peak_rss_during_kib)
        ),
    );
    t.check(
        "lost: accepted, no Salesforce Order",
        v.missing.len().to_string(),
        v.missing.is_empty(),
    );
    t.check(
        "duplicated: external id on > 1 Salesforce Order",
        v.duplicated.len().to_string(),
        v.duplicated.is_empty(),
    );
    t.check(
        "unexpected: Salesforce Order for no accepted order",
        v.unexpected.len().to_string(),
        v.unexpected.is_empty(),
    );
    t.check(
        "mismatched: record exists, other Salesforce id or order not synced",
        v.mismatched.len().to_string(),
        v.mismatched.is_empty(),
    );
    t.check(
        "order lines missing / duplicated / unexpected in Salesforce",
        format!(
            "{} / {} / {}",
            v.items_missing, v.items_duplicated, v.items_unexpected
        ),
        v.items_missing == 0 && v.items_duplicated == 0 && v.items_unexpected == 0,
    );
}

/// The bench database's activity counters (`pg_stat_database`): what Postgres did per order.
/// Backends report them at transaction end (idle ones within seconds), so take the second
/// snapshot a little after the run.
///
/// `commits` counts every transaction, reads included (each `GET` a client polls with, each
/// readiness check); `writes` counts the transactions that wrote, i.e. were given a
/// transaction id: the next id to be assigned (`pg_current_snapshot()`'s xmax, which reading
/// does not advance) before and after. Transaction ids are server-wide, so `writes` also counts
/// other databases' writes: meaningful on a machine where only the bench runs. `pages_hit` and
/// `pages_read` are the pages found in `shared_buffers` and those read into them (from the OS).
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct PgCounters {
    commits: i64,
    writes: i64,
    returned: i64,
    fetched: i64,
    inserted: i64,
    updated: i64,
    deleted: i64,
    pages_hit: i64,
    pages_read: i64,
}

impl PgCounters {
    pub async fn take(pool: &sqlx::PgPool) -> Result<Self> {
        Ok(sqlx::query_as(
            "SELECT xact_commit AS commits,
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS writes,
                    tup_returned AS returned, tup_fetched AS fetched, tup_inserted AS inserted,
                    tup_updated AS updated, tup_deleted AS deleted,
                    blks_hit AS pages_hit, blks_read AS pages_read
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?)
    }

    /// `later` − `self`: what happened in between.
    pub fn delta(&self, later: &Self) -> Self {
        Self {
            commits: later.commits - self.commits,
            writes: later.writes - self.writes,
            returned: later.returned - self.returned,
            fetched: later.fetched - self.fetched,
            inserted: later.inserted - self.inserted,
            updated: later.updated - self.updated,
            deleted: later.deleted - self.deleted,
            pages_hit: later.pages_hit - self.pages_hit,
            pages_read: later.pages_read - self.pages_read,
        }
    }

    /// Pages found in `shared_buffers` and pages read into them (of a delta: in between).
    pub fn pages(&self) -> (i64, i64) {
        (self.pages_hit, self.pages_read)
    }

    /// Sums two deltas.
    pub fn add(&mut self, other: &Self) {
        self.commits += other.commits;
        self.writes += other.writes;
        self.returned += other.returned;
        self.fetched += other.fetched;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.pages_hit += other.pages_hit;
        self.pages_read += other.pages_read;
    }

    /// Per-order deltas from `self` to `later`, as a row and JSON.
    pub fn rows(&self, later: &Self, orders: usize, t: &mut Table) -> Value {
        self.rows_labelled(
            later,
            orders,
            "Postgres per order: commits (writing), rows inserted / updated / fetched",
            t,
        )
    }

    /// [`Self::rows`] under another label.
    pub fn rows_labelled(&self, later: &Self, orders: usize, label: &str, t: &mut Table) -> Value {
        let n = orders.max(1) as f64;
        let per = |a: i64, b: i64| (b - a) as f64 / n;
        let (commits, writes, inserted, updated, fetched, returned, deleted) = (
            per(self.commits, later.commits),
            per(self.writes, later.writes),
            per(self.inserted, later.inserted),
            per(self.updated, later.updated),
            per(self.fetched, later.fetched),
            per(self.returned, later.returned),
            per(self.deleted, later.deleted),
        );
        t.info(
            label,
            format!("{commits:.2} ({writes:.2}), {inserted:.1} / {updated:.1} / {fetched:.1}"),
        );
        json!({"commits": commits, "writing_commits": writes, "inserted": inserted, "updated": updated,
               "fetched": fetched, "returned": returned, "deleted": deleted})
    }
}

/// `sum / count` of a Prometheus histogram in an exposition text.
pub fn metric_mean(text: &str, name: &str) -> Option<f64> {
    let value = |suffix: &str| -> Option<f64> {
        let key = format!("{name}_{suffix} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
    };
    let (sum, count) = (value("sum")?, value("count")?);
    (count > 0.0).then(|| sum / count)
}

/// An unlabelled gauge's value in an exposition text.
fn metric_gauge(text: &str, name: &str) -> Option<f64> {
    let key = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

fn metric_count(text: &str, name: &str) -> Option<f64> {
    metric_gauge(text, &format!("{name}_count"))
}

/// What the services' own metrics say about batching and latency, as table rows and JSON.
/// With a `backlog` (rows written before the relay ran) commit → confirm measures the backlog's
/// age, not the relay, and is left out of the table.
pub fn metrics_rows(t: &mut Table, scraped: &[(String, String)], backlog: bool) -> Value {
    let mut json = serde_json::Map::new();
    for (service, text) in scraped {
        match service.as_str() {
            crate::stack::WORKER => {
                let batches = metric_count(text, "sync_worker_batch_size");
                let size = metric_mean(text, "sync_worker_batch_size");
                let call = metric_mean(text, "sync_worker_salesforce_call_seconds");
                let lag = metric_mean(text, "sync_worker_end_to_end_lag_seconds");
                // The adaptive window's size when the run ended (it holds once the backlog
                // is gone; each change is in the worker's log: "worker window changed").
                let window = metric_gauge(text, "sync_worker_window");
                if let (Some(b), Some(s), Some(c)) = (batches, size, call) {
                    t.info(
                        "worker: batches, mean batch, mean Salesforce call, window at the end",
                        format!(
                            "{b:.0}, {s:.1} orders, {:.0} ms, {}",
                            c * 1e3,
                            window.map_or("-".into(), |w| format!("{w:.0}"))
                        ),
                    );
                }
                json.insert(
                    service.clone(),
                    json!({"batches": batches, "mean_batch_size": size,
                           "mean_salesforce_call_s": call, "mean_event_to_synced_s": lag,
                           "window_at_end": window}),
                );
            }
            crate::stack::RELAY => {
                let confirm = metric_mean(text, "outbox_relay_confirm_latency_seconds");
                let lag = metric_mean(text, "outbox_relay_commit_to_confirm_lag_seconds");
                let apply = metric_mean(text, "outbox_relay_status_apply_lag_seconds");
                match (confirm, lag) {
                    (Some(c), Some(l)) if !backlog => t.info(
                        "relay: mean publish → confirm, commit → confirm",
                        format!("{:.1} ms, {:.1} ms", c * 1e3, l * 1e3),
                    ),
                    (Some(c), _) => t.info(
                        "relay: mean publish → confirm",
                        format!("{:.1} ms", c * 1e3),
                    ),
                    _ => {}
                }
                json.insert(
                    service.clone(),
                    json!({"mean_publish_to_confirm_s": confirm, "mean_commit_to_confirm_s": lag,
                           "mean_status_apply_lag_s": apply}),
                );
            }
            _ => {}
        }
    }
    Value::Object(json)
}

/// Writes the files, prints the table; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, t: &Table, json: &Value, charts: &[(&str, String)]) -> Result<bool> {
    let written = report::write(&stack.out, t, json, charts)?;
    println!("{}", t.render());
    for path in written {
        println!("wrote {}", path.display());
    }
    println!("service logs: {}", stack.out.join("logs").display());
    Ok(!t.failed())
}

/// What the pipeline suites (`e2e`, `drain`, `relay`) measured around their run, for
/// [`footer_rows`].
pub struct Footer<'a> {
    pub scraped: &'a [(String, String)],
    /// The relay read from a backlog (its batch-size metrics are the interesting ones).
    pub backlog: bool,
    pub pg_before: &'a PgCounters,
    pub pg_after: &'a PgCounters,
    /// Orders the per-order figures divide by.
    pub orders: usize,
    pub rss: &'a [(String, Option<u64>)],
    /// Services measured without a memory target (stand-ins such as the emulator).
    pub rss_no_target: &'a [&'a str],
    pub cpu: &'a CpuUsage,
}

/// The rows every pipeline suite ends its table with, in the same order: the services' own
/// metrics, Postgres work per order, peak memory, CPU. Returns the service metrics and the
/// Postgres figures for the JSON report.
pub fn footer_rows(t: &mut Table, f: &Footer<'_>) -> (Value, Value) {
    let service_metrics = metrics_rows(t, f.scraped, f.backlog);
    let pg = f.pg_before.rows(f.pg_after, f.orders, t);
    rss_rows(t, f.rss, f.rss_no_target);
    cpu_rows(t, f.cpu, f.orders);
    (service_metrics, pg)
}

/// The Salesforce API call rows (total, and per 1,000 orders against `target`, at most that
/// many); returns the calls per 1,000 orders.
pub fn salesforce_call_rows(
    t: &mut Table,
    calls: u64,
    startup_calls: u64,
    orders: usize,
    target: f64,
) -> f64 {
    let per_1000 = if orders > 0 {
        calls as f64 * 1000.0 / orders as f64
    } else {
        0.0
    };
    t.info(
        "Salesforce API calls (after the worker's start-up)",
        format!("{calls} (+{startup_calls} at start-up)"),
    );
    t.target(
        "Salesforce API calls per 1,000 orders",
        per_1000,
        format!("{per_1000:.2}"),
        Goal::AtMost(target),
        format!("<= {target}"),
    );
    per_1000
}

/// A latency's p50 / p90, its p99 (against `target` when the run is one the target is about,
/// else as information with `off_target` saying when it applies) and its max.
pub fn latency_rows(
    t: &mut Table,
    label: &str,
    s: &crate::stats::Summary,
    decimals: usize,
    target: Option<(f64, &str)>,
    off_target: &str,
) {
    let ms = |v: f64| format!("{v:.decimals$} ms");
    t.info(
        format!("{label} p50 / p90"),
        format!("{:.decimals$} / {:.decimals$} ms", s.p50, s.p90),
    );
    match target {
        Some((limit, text)) => t.target(
            format!("{label} p99"),
            s.p99,
            ms(s.p99),
            Goal::AtMost(limit),
            text,
        ),
        None => t.info(format!("{label} p99 ({off_target})"), ms(s.p99)),
    }
    t.info(format!("{label} max"), ms(s.max));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_mean_from_exposition() {
        let text = "# HELP x_seconds h\nx_seconds_bucket{le=\"1\"} 2\nx_seconds_sum 3.5\nx_seconds_count 2\n";
        assert_eq!(metric_mean(text, "x_seconds"), Some(1.75));
        assert_eq!(metric_count(text, "x_seconds"), Some(2.0));
        assert_eq!(metric_mean(text, "y"), None);
        assert_eq!(metric_mean("x_sum 0\nx_count 0\n", "x"), None);
    }
}
