//! The cost report: both sets side by side with after ÷ before, the preload and the sizes; the
//! table, report.json and a latency chart, all from one [`Measured`].

use anyhow::Result;
use chrono::Utc;
use serde_json::{Value, json};

use super::reads::{Kind, Read, Reads};
use super::{Measured, Set, TARGET_DRIFT};
use crate::chart::{self, Chart, Guide, Series};
use crate::common;
use crate::intake::phases::Phases;
use crate::report::{Goal, Table, thousands};
use crate::stack::Stack;
use crate::stats::Summary;

/// Prints and writes the report; `Ok(false)` when a correctness check in the table failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let t = table(stack, m);
    let json = json(stack, m, &t);
    common::finish(stack, &t, &json, &[("latency.svg", chart(m))])
}

/// API orders/s ÷ direct orders/s of one set.
fn ratio(p: &Phases) -> f64 {
    let direct = p.direct.per_second();
    if direct > 0.0 {
        p.api.per_second() / direct
    } else {
        0.0
    }
}

/// after ÷ before, 0 without a before.
fn growth(before: f64, after: f64) -> f64 {
    if before > 0.0 { after / before } else { 0.0 }
}

fn mib(bytes: i64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn table(stack: &Stack, m: &Measured<'_>) -> Table {
    let args = m.args;
    let mut t = Table::new(format!(
        "orderbridge-bench cost: the same measurements on the fresh database and after {} orders were preloaded",
        thousands(args.preload as f64)
    ));
    let (b, a) = (&m.before, &m.after);
    common::machine_context(
        &mut t,
        stack,
        b.phases.api_ctx.load_before,
        a.phases.direct_ctx.load_after,
        &a.phases.api_ctx.cpu,
    );
    t.context(format!(
        "intake: {} clients, {} s per phase in {} rounds after {} s warm-up; reads: {} connections, {} s each after {} s warm-up, GET over {} / {} sampled orders",
        args.connections,
        args.duration.as_secs_f64(),
        args.rounds,
        args.warmup.as_secs_f64(),
        args.read_connections,
        args.read_duration.as_secs_f64(),
        args.read_warmup.as_secs_f64(),
        b.reads.sampled,
        a.reads.sampled
    ));
    t.context(format!(
        "the client's orders when reading: {} before, {} after; preloaded created_at from {} to {}",
        thousands(b.orders as f64),
        thousands(a.orders as f64),
        m.preloaded.from.format("%Y-%m-%d"),
        m.preloaded.to.format("%Y-%m-%d %H:%M")
    ));
    t.context(format!(
        "each phase starts settled: VACUUM (ANALYZE) unless `orders` is empty{}; only order-api runs (DB_MAX_CONNECTIONS={})",
        if m.superuser {
            " and CHECKPOINT"
        } else {
            " (not a superuser: no CHECKPOINT)"
        },
        stack.setting("DB_MAX_CONNECTIONS").unwrap_or("16 (default)")
    ));
    t.context("figures read: before → after (after ÷ before)");
    t.context(format!("output: {}", stack.out.display()));

    preload_rows(&mut t, m);
    intake_rows(&mut t, b, a);
    read_rows(&mut t, m);
    common::rss_rows(&mut t, &m.rss, &[]);
    check_rows(&mut t, m);
    t
}

fn preload_rows(t: &mut Table, m: &Measured<'_>) {
    let p = &m.preloaded;
    t.info(
        "preload: orders (3 lines each), time, orders/s",
        format!(
            "{}, {:.1} s, {}",
            thousands(p.orders as f64),
            p.written_in,
            thousands(p.orders_per_s())
        ),
    );
    t.info(
        "preload: VACUUM (ANALYZE) after it",
        format!("{:.1} s", p.vacuumed_in),
    );
    if let Some((bytes, seconds)) = p.prewarmed {
        t.info(
            "preload: pg_prewarm of the tables and indexes (--prewarm)",
            format!("{} in {seconds:.1} s", mib(bytes)),
        );
    }
    let (b, a) = (&m.before.sizes, &m.after.sizes);
    for ((name, tb, ib), (_, ta, ia)) in b.tables.iter().zip(&a.tables) {
        t.info(
            format!("size {name}: total (of which indexes)"),
            format!("{} ({}) → {} ({})", mib(*tb), mib(*ib), mib(*ta), mib(*ia)),
        );
    }
    t.info(
        "size of the orders' indexes after",
        a.order_indexes
            .iter()
            .map(|(i, s)| format!("{i} {}", mib(*s)))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

fn intake_rows(t: &mut Table, b: &Set, a: &Set) {
    let (rb, ra) = (ratio(&b.phases), ratio(&a.phases));
    for (label, before, after) in [
        (
            "intake: API orders/s",
            b.phases.api.per_second(),
            a.phases.api.per_second(),
        ),
        (
            "intake: direct Postgres orders/s",
            b.phases.direct.per_second(),
            a.phases.direct.per_second(),
        ),
    ] {
        t.info(
            label,
            format!("{before:.0} → {after:.0} ({:.2})", growth(before, after)),
        );
    }
    let g = growth(rb, ra);
    t.target(
        "intake ratio (API ÷ direct)",
        g,
        format!("{rb:.2} → {ra:.2} ({g:.2})"),
        Goal::AtLeast(1.0 - TARGET_DRIFT),
        format!("after >= {:.2} × before", 1.0 - TARGET_DRIFT),
    );
    for (label, before, after) in [
        ("intake: API POST → 201", &b.phases.api, &a.phases.api),
        (
            "intake: direct BEGIN → COMMIT",
            &b.phases.direct,
            &a.phases.direct,
        ),
    ] {
        if let (Some(sb), Some(sa)) = (
            Summary::of(&before.latencies_ms),
            Summary::of(&after.latencies_ms),
        ) {
            t.info(
                format!("{label} p50 / p99"),
                format!(
                    "{:.1} / {:.1} → {:.1} / {:.1} ms",
                    sb.p50, sb.p99, sa.p50, sa.p99
                ),
            );
        }
    }
}

fn read_rows(t: &mut Table, m: &Measured<'_>) {
    let age = m.args.created_after_age;
    for kind in Kind::ALL {
        let (Some(rb), Some(ra)) = (m.before.reads.get(kind), m.after.reads.get(kind)) else {
            continue;
        };
        let label = kind.label(age);
        let (sb, sa) = (
            Summary::of(&rb.result.latencies_ms),
            Summary::of(&ra.result.latencies_ms),
        );
        t.info(
            format!("{label}: requests/s"),
            format!(
                "{:.0} → {:.0} ({:.2})",
                rb.result.per_second(),
                ra.result.per_second(),
                growth(rb.result.per_second(), ra.result.per_second())
            ),
        );
        let (Some(sb), Some(sa)) = (sb, sa) else {
            t.info(format!("{label}: latency"), "? (no request answered 200)");
            continue;
        };
        t.info(
            format!("{label}: p50"),
            format!(
                "{:.2} → {:.2} ms ({:.2})",
                sb.p50,
                sa.p50,
                growth(sb.p50, sa.p50)
            ),
        );
        let g = growth(sb.p99, sa.p99);
        let shown = format!("{:.2} → {:.2} ms ({g:.2})", sb.p99, sa.p99);
        if kind == Kind::Get {
            t.target(
                format!("{label}: p99"),
                g,
                shown,
                Goal::AtMost(1.0 + TARGET_DRIFT),
                format!("after <= {:.2} × before", 1.0 + TARGET_DRIFT),
            );
        } else {
            t.info(format!("{label}: p99"), shown);
        }
        for (set, r) in [("before", rb), ("after", ra)] {
            t.info(
                format!("{label}: {set}"),
                r.profile.summary(r.requests_in_window()),
            );
        }
        if let (Some(ib), Some(ia)) = (rb.items_per_page(), ra.items_per_page()) {
            t.info(
                format!("{label}: orders per page"),
                format!("{ib:.1} → {ia:.1}"),
            );
        }
    }
}

fn check_rows(t: &mut Table, m: &Measured<'_>) {
    for (label, set) in [("before", &m.before), ("after", &m.after)] {
        let (api, direct, v) = (&set.phases.api, &set.phases.direct, &set.verification);
        t.check(
            format!("{label}: intake requests / direct transactions failed (in the window)"),
            format!("{} / {}", api.failed_in_window, direct.failed_in_window),
            api.failed_in_window == 0 && direct.failed_in_window == 0,
        );
        t.check(
            format!("{label}: accepted orders missing, unannounced, incomplete in Postgres"),
            format!(
                "{} / {} / {}",
                v.missing.len(),
                v.unexpected,
                v.incomplete.len()
            ),
            v.ok(),
        );
        t.check(
            format!("{label}: reads not answered 200 (in the windows)"),
            read_failures(&set.reads),
            set.reads.failed() == 0,
        );
    }
}

fn read_failures(r: &Reads) -> String {
    let failed = r.failed();
    if failed == 0 {
        return "0".to_owned();
    }
    let first = r
        .phases
        .iter()
        .find_map(|p| p.result.errors.first())
        .cloned()
        .unwrap_or_default();
    format!("{failed} (e.g. {first})")
}

fn set_json(s: &Set) -> Value {
    json!({
        "intake": {
            "api": s.phases.api.to_json(),
            "direct": s.phases.direct.to_json(),
            "ratio": ratio(&s.phases),
        },
        "reads": s.reads.phases.iter().map(|r| (r.kind.key().to_owned(), r.to_json()))
            .collect::<serde_json::Map<_, _>>(),
        "get_sample": s.reads.sampled,
        "orders": s.orders,
        "sizes": s.sizes.to_json(),
        "verification": s.verification.to_json(),
    })
}

/// after ÷ before of the figures the issue bounds, and of the lists' p99.
fn growth_json(m: &Measured<'_>) -> Value {
    let p99 = |s: &Set, k: Kind| {
        s.reads
            .get(k)
            .and_then(|r| Summary::of(&r.result.latencies_ms))
            .map_or(0.0, |s| s.p99)
    };
    let mut reads = serde_json::Map::new();
    for k in Kind::ALL {
        reads.insert(
            format!("{}_p99", k.key()),
            json!(growth(p99(&m.before, k), p99(&m.after, k))),
        );
    }
    json!({
        "intake_ratio": growth(ratio(&m.before.phases), ratio(&m.after.phases)),
        "reads": reads,
        "target_drift": TARGET_DRIFT,
    })
}

fn json(stack: &Stack, m: &Measured<'_>, t: &Table) -> Value {
    let args = m.args;
    json!({
        "command": "cost",
        "started_at": Utc::now(),
        "args": {
            "preload": args.preload, "chunk": args.chunk, "history_days": args.history_days,
            "duration_s": args.duration.as_secs_f64(), "warmup_s": args.warmup.as_secs_f64(),
            "rounds": args.rounds, "connections": args.connections,
            "read_duration_s": args.read_duration.as_secs_f64(),
            "read_warmup_s": args.read_warmup.as_secs_f64(),
            "read_connections": args.read_connections, "sample": args.sample,
            "created_after_age_s": args.created_after_age.as_secs_f64(),
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.before.phases.api_ctx.load_before,
            m.after.phases.direct_ctx.load_after, &m.after.phases.api_ctx.cpu),
        "superuser": m.superuser,
        "preload": m.preloaded.to_json(),
        "before": set_json(&m.before),
        "after": set_json(&m.after),
        "growth": growth_json(m),
        "peak_rss_mib": common::rss_json(&m.rss),
        "table": t.to_json(),
    })
}

/// CDFs of `GET /v1/orders/{id}` before and after.
fn chart(m: &Measured<'_>) -> String {
    let get = |s: &Set| -> Vec<f64> {
        s.reads
            .get(Kind::Get)
            .map(|r: &Read| r.result.latencies_ms.clone())
            .unwrap_or_default()
    };
    latency_chart(
        &format!(
            "{} orders preloaded, {} connections",
            thousands(m.args.preload as f64),
            m.args.read_connections
        ),
        &get(&m.before),
        &get(&m.after),
    )
}

fn latency_chart(describe: &str, before: &[f64], after: &[f64]) -> String {
    let (sb, sa) = (Summary::of(before), Summary::of(after));
    let p99 = sb.map_or(0.0, |s| s.p99).max(sa.map_or(0.0, |s| s.p99));
    let mut markers = chart::percentile_markers(sb, &[50, 99], 2, chart::BLUE);
    markers.extend(chart::percentile_markers(sa, &[50, 99], 2, chart::ORANGE));
    chart::render(&Chart {
        title: "GET /v1/orders/{id} latency, cumulative".into(),
        subtitle: format!("{describe}; x axis cut at 1.3 × the larger p99"),
        x_label: "latency (ms)".into(),
        y_label: "requests at or below (%)".into(),
        x_max: (p99 * 1.3).max(0.1),
        y_max: 100.0,
        series: vec![
            Series {
                name: "fresh database".into(),
                color: chart::BLUE,
                points: chart::cdf_points(before),
                dashed: false,
            },
            Series {
                name: "after the preload".into(),
                color: chart::ORANGE,
                points: chart::cdf_points(after),
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
    fn chart_renders_with_and_without_data() {
        assert!(latency_chart("t", &[], &[]).starts_with("<svg"));
        assert!(latency_chart("t", &[1.0, 2.0], &[1.5, 3.0]).contains("<polyline"));
    }

    #[test]
    fn growth_is_after_over_before() {
        assert_eq!(growth(2.0, 3.0), 1.5);
        assert_eq!(growth(0.0, 3.0), 0.0);
    }
}
