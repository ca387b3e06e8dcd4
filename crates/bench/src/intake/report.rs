//! The intake report: the table, report.json and the latency chart, all from one
//! [`Measured`].

use anyhow::Result;
use chrono::Utc;
use serde_json::{Value, json};

use super::phases::PhaseContext;
use super::{Measured, TARGET_RATIO};
use crate::chart::{self, Chart, Guide, Series};
use crate::common;
use crate::procfs::CpuUsage;
use crate::report::{Goal, Table};
use crate::stack::Stack;
use crate::stats::Summary;

/// API orders/s ÷ direct orders/s, both over their measured windows.
struct Rates {
    api: f64,
    direct: f64,
    ratio: f64,
}

impl Rates {
    fn of(m: &Measured<'_>) -> Self {
        let api = m.phases.api.per_second();
        let direct = m.phases.direct.per_second();
        let ratio = if direct > 0.0 { api / direct } else { 0.0 };
        Self { api, direct, ratio }
    }
}

/// Prints and writes the report; `Ok(false)` when a correctness check in the table failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let rates = Rates::of(m);
    let (t, api_pg, direct_pg) = table(stack, m, &rates);
    let json = json(stack, m, &rates, &t, api_pg, direct_pg);
    common::finish(stack, &t, &json, &[("latency.svg", chart(m, &rates))])
}

/// The table, and each phase's Postgres work per order for the JSON.
fn table(stack: &Stack, m: &Measured<'_>, rates: &Rates) -> (Table, Value, Value) {
    let args = m.args;
    let mut t = Table::new(format!(
        "orderbridge-bench intake: {} concurrent clients, {} s measured per phase in {} alternating rounds, after {} s warm-up",
        args.connections,
        args.duration.as_secs_f64(),
        args.rounds,
        args.warmup.as_secs_f64()
    ));
    context(&mut t, stack, m);
    rate_rows(&mut t, m, rates);
    let p = &m.phases;
    let zero = common::PgCounters::default();
    let api_pg = zero.rows_labelled(
        &p.api_ctx.pg,
        p.api.accepted_in_window,
        "API: Postgres per order: commits (writing), rows inserted / updated / fetched",
        &mut t,
    );
    let direct_pg = zero.rows_labelled(
        &p.direct_ctx.pg,
        p.direct.accepted_in_window,
        "direct: Postgres per order: commits (writing), rows inserted / updated / fetched",
        &mut t,
    );
    phase_cpu_rows(&mut t, "API", &p.api_ctx.cpu, p.api.accepted_in_window);
    phase_cpu_rows(
        &mut t,
        "direct",
        &p.direct_ctx.cpu,
        p.direct.accepted_in_window,
    );
    common::rss_rows(&mut t, &m.rss, &[]);
    check_rows(&mut t, m);
    (t, api_pg, direct_pg)
}

fn context(t: &mut Table, stack: &Stack, m: &Measured<'_>) {
    let (api_ctx, direct_ctx) = (&m.phases.api_ctx, &m.phases.direct_ctx);
    common::machine_context(
        t,
        stack,
        api_ctx.load_before,
        direct_ctx.load_after,
        &api_ctx.cpu,
    );
    t.context(format!(
        "rounds, orders/s API / direct (1-min load): {}",
        api_ctx
            .rounds
            .iter()
            .zip(&direct_ctx.rounds)
            .map(|((a, la), (d, _))| format!(
                "{a:.0} / {d:.0} ({})",
                la.map_or_else(|| "?".to_owned(), |l| format!("{l:.1}"))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    t.context(format!(
        "all cores busy: API {}, direct {}",
        busy_text(&api_ctx.cpu),
        busy_text(&direct_ctx.cpu)
    ));
    t.context(format!(
        "only order-api runs (no relay, worker or emulator: intake ends at the commit); its pool: DB_MAX_CONNECTIONS={}",
        stack.setting("DB_MAX_CONNECTIONS").unwrap_or("16 (default)")
    ));
    t.context(
        "direct = the API's transaction via its own functions (advisory lock, idempotency lookup, order + lines, outbox event, idempotency key), one per order",
    );
    t.context(format!("output: {}", stack.out.display()));
}

fn rate_rows(t: &mut Table, m: &Measured<'_>, rates: &Rates) {
    t.info(
        "API: orders/s (201s in the window)",
        format!("{:.0}", rates.api),
    );
    t.info(
        "direct Postgres: orders/s (commits in the window)",
        format!("{:.0}", rates.direct),
    );
    t.target(
        "API ÷ direct Postgres",
        rates.ratio,
        format!("{:.2}", rates.ratio),
        Goal::AtLeast(TARGET_RATIO),
        format!(">= {TARGET_RATIO}"),
    );
    for (label, r) in [
        ("API: POST → 201", &m.phases.api),
        ("direct: BEGIN → COMMIT", &m.phases.direct),
    ] {
        if let Some(s) = Summary::of(&r.latencies_ms) {
            t.info(
                format!("{label} p50 / p90 / p99 / max"),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms",
                    s.p50, s.p90, s.p99, s.max
                ),
            );
        }
    }
}

fn check_rows(t: &mut Table, m: &Measured<'_>) {
    let (api, direct, v) = (&m.phases.api, &m.phases.direct, &m.verification);
    t.check(
        "API requests refused or failed (in the window)",
        format!(
            "{} ({} refused, {} unknown outcome in all)",
            api.failed_in_window, api.refused, api.unknown
        ),
        api.failed_in_window == 0,
    );
    t.check(
        "direct transactions failed (in the window)",
        direct.failed_in_window.to_string(),
        direct.failed_in_window == 0,
    );
    t.check(
        "accepted (201) orders not in Postgres",
        v.missing.len().to_string(),
        v.missing.is_empty(),
    );
    t.check(
        "orders in Postgres no 201 announced",
        v.unexpected.to_string(),
        v.unexpected == 0,
    );
    t.check(
        "accepted orders without 3 lines, 1 event, 1 idempotency key",
        v.incomplete.len().to_string(),
        v.incomplete.is_empty(),
    );
}

fn json(
    stack: &Stack,
    m: &Measured<'_>,
    rates: &Rates,
    t: &Table,
    api_pg: Value,
    direct_pg: Value,
) -> Value {
    let (args, p) = (m.args, &m.phases);
    json!({
        "command": "intake",
        "started_at": Utc::now(),
        "args": {
            "duration_s": args.duration.as_secs_f64(), "warmup_s": args.warmup.as_secs_f64(),
            "connections": args.connections as usize, "rounds": args.rounds,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, p.api_ctx.load_before, p.direct_ctx.load_after, &p.api_ctx.cpu),
        "api": p.api.to_json(),
        "direct": p.direct.to_json(),
        "ratio": rates.ratio,
        "target_ratio": TARGET_RATIO,
        "phases": {
            "api": phase_json(&p.api_ctx, api_pg),
            "direct": phase_json(&p.direct_ctx, direct_pg),
        },
        "peak_rss_mib": common::rss_json(&m.rss),
        "verification": m.verification.to_json(),
        "table": t.to_json(),
    })
}

fn chart(m: &Measured<'_>, rates: &Rates) -> String {
    latency_chart(
        &format!(
            "{} clients; API {:.0} orders/s, direct {:.0}/s (ratio {:.2})",
            m.args.connections, rates.api, rates.direct, rates.ratio
        ),
        &m.phases.api.latencies_ms,
        &m.phases.direct.latencies_ms,
    )
}

fn busy_text(cpu: &CpuUsage) -> String {
    cpu.machine_busy
        .map_or_else(|| "?".to_owned(), |b| format!("{:.0}%", b * 100.0))
}

/// CPU per order of the processes that matter in a phase.
fn phase_cpu_rows(t: &mut Table, label: &str, cpu: &CpuUsage, orders: usize) {
    let n = orders.max(1) as f64;
    let parts: Vec<String> = cpu
        .seconds
        .iter()
        .filter(|(_, s)| **s * 1e3 / n >= 0.005)
        .map(|(name, s)| format!("{name} {:.2}", s * 1e3 / n))
        .collect();
    t.info(
        format!("{label}: CPU ms per order"),
        if parts.is_empty() {
            "?".to_owned()
        } else {
            parts.join(", ")
        },
    );
}

fn phase_json(c: &PhaseContext, pg: Value) -> Value {
    json!({
        "loadavg_before": c.load_before,
        "loadavg_after": c.load_after,
        "rounds": c.rounds.iter().map(|(r, l)| json!({"orders_per_s": r, "loadavg_1m": l})).collect::<Vec<_>>(),
        "cpu_busy_share": c.cpu.machine_busy,
        "cpu_seconds": c.cpu.seconds,
        "cpu_window_s": c.cpu.wall_s,
        "postgres_per_order": pg,
    })
}

/// CDFs of the API's POST → 201 and of the direct transaction.
fn latency_chart(describe: &str, api: &[f64], direct: &[f64]) -> String {
    let api_s = Summary::of(api);
    let direct_s = Summary::of(direct);
    let p99 = api_s
        .map_or(0.0, |s| s.p99)
        .max(direct_s.map_or(0.0, |s| s.p99));
    let x_max = (p99 * 1.3).max(1.0);
    let mut markers = chart::percentile_markers(api_s, &[50, 99], 1, chart::BLUE);
    markers.extend(chart::percentile_markers(
        direct_s,
        &[50, 99],
        1,
        chart::GREEN,
    ));
    chart::render(&Chart {
        title: "Intake latency, cumulative".into(),
        subtitle: format!("{describe}; x axis cut at 1.3 × the larger p99"),
        x_label: "latency (ms)".into(),
        y_label: "orders at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "API: POST → 201".into(),
                color: chart::BLUE,
                points: chart::cdf_points(api),
                dashed: false,
            },
            Series {
                name: "direct Postgres: BEGIN → COMMIT".into(),
                color: chart::GREEN,
                points: chart::cdf_points(direct),
                dashed: false,
            },
        ],
        markers,
        guides: vec![Guide::p99()],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_renders_without_data() {
        let svg = latency_chart("t", &[], &[]);
        assert!(svg.starts_with("<svg"));
        let svg = latency_chart("t", &[1.0, 2.0, 3.0], &[0.5, 1.0]);
        assert!(svg.contains("<polyline"));
    }
}
