//! The relay report: the table, report.json and the lag chart, all from one [`Measured`].

use anyhow::Result;
use serde_json::{Value, json};

use super::{Measured, TARGET_P99_MS, TARGET_RATE};
use crate::chart::{self, Chart, Guide, Series};
use crate::common::{self, Footer, load_text};
use crate::report::{Table, thousands};
use crate::stack::Stack;
use crate::stats::{Summary, summary_json};

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let (t, service_metrics, pg) = table(stack, m);
    let json = json(stack, m, &t, service_metrics, pg);
    common::finish(stack, &t, &json, &[("lag.svg", chart(m))])
}

/// The table, and the service metrics and Postgres figures its footer computed.
fn table(stack: &Stack, m: &Measured<'_>) -> (Table, Value, Value) {
    let (args, fixed) = (m.args, &m.fixed);
    let mut t = Table::new(format!(
        "orderbridge-bench relay: {} relay(s), {} events/s for {} s (after {} s warm-up), backlog {}, raw loop {} messages",
        args.relays,
        thousands(args.rate),
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        thousands(m.sat.backlog as f64),
        thousands(f64::from(args.raw_messages))
    ));
    context(&mut t, stack, m);
    raw_rows(&mut t, m);
    saturation_rows(&mut t, m);
    fixed_rate_rows(&mut t, m);
    let (service_metrics, pg) = common::footer_rows(
        &mut t,
        &Footer {
            scraped: &fixed.scraped,
            backlog: true,
            pg_before: &fixed.pg_before,
            pg_after: &fixed.pg_after,
            orders: fixed.rate.committed.len(),
            rss: &fixed.rss,
            rss_no_target: &[],
            cpu: &fixed.cpu,
        },
    );
    check_rows(&mut t, m);
    (t, service_metrics, pg)
}

fn context(t: &mut Table, stack: &Stack, m: &Measured<'_>) {
    let fixed = &m.fixed;
    common::machine_context(t, stack, fixed.load_before, fixed.load_after, &fixed.cpu);
    t.context(format!(
        "1-min load: {} at the start, {} before the relay started; CPU figures below are the fixed-rate phase's",
        load_text(m.load_start),
        load_text(m.sat.load_before)
    ));
    t.context(format!(
        "only outbox-relay runs; the bench commits the orders and consumes {} (acks every 200 messages or 20 ms)",
        m.work_queue
    ));
    t.context(if m.args.events_only {
        "fixed rate: one transaction per event, the outbox row only (--events-only)"
    } else {
        "fixed rate: one transaction per order: the order, its 3 lines, its outbox row"
    });
    t.context("lag = client's moment after COMMIT returned → message received by the bench (message_id = event id)");
    t.context(format!("output: {}", stack.out.display()));
}

fn raw_rows(t: &mut Table, m: &Measured<'_>) {
    let Some(r) = &m.raw else { return };
    t.info(
        "raw publish-with-confirms: messages/s",
        format!(
            "{:.0} ({} × {} B in {:.1} s, windows of {})",
            r.per_second(),
            thousands(r.messages as f64),
            r.payload_bytes,
            r.seconds,
            m.args.raw_batch
        ),
    );
    if let Some(s) = Summary::of(&r.confirm_ms) {
        t.info(
            "raw: publish → confirm p50 / p99",
            format!("{:.1} / {:.1} ms", s.p50, s.p99),
        );
    }
    if let Some(s) = Summary::of(&r.publish_to_receive_ms) {
        t.info(
            "raw: publish → received p50 / p99",
            format!("{:.1} / {:.1} ms ({} received)", s.p50, s.p99, r.received),
        );
    }
}

fn saturation_rows(t: &mut Table, m: &Measured<'_>) {
    let (f, sat) = (&m.figures, &m.sat);
    let Some(r) = f.sat_rate else { return };
    t.info(
        "saturation: relay events/s (first → last published_at)",
        format!(
            "{r:.0} (first {:.2} s, last {:.2} s after the relay was started)",
            f.sat_first, f.sat_last
        ),
    );
    if let Some(raw_rate) = f.raw_rate {
        t.info(
            "saturation: relay ÷ raw loop",
            format!("{:.2}", r / raw_rate.max(1e-9)),
        );
    }
    t.info(
        "saturation: backlog received by the bench",
        format!(
            "{} in {:.1} s from starting the relay{}",
            thousands(sat.backlog as f64),
            sat.drain_received,
            if sat.drained { "" } else { " (timed out)" }
        ),
    );
}

fn fixed_rate_rows(t: &mut Table, m: &Measured<'_>) {
    let f = &m.figures;
    t.info(
        "fixed rate: committed / received events/s in the window",
        format!("{:.0} / {:.0}", f.committed_rate, f.received_rate),
    );
    if let Some(s) = Summary::of(&f.behind_ms) {
        t.info(
            "fixed rate: commit behind schedule p50 / p99",
            format!("{:.1} / {:.1} ms", s.p50, s.p99),
        );
    }
    if let Some(s) = Summary::of(&f.lag_ms) {
        let at_target_rate = f.committed_rate >= TARGET_RATE * 0.95;
        common::latency_rows(
            t,
            "commit → received",
            &s,
            1,
            at_target_rate.then_some((TARGET_P99_MS, "<= 25 ms at 1,000/s")),
            "target is at 1,000/s",
        );
    }
    if let Some(s) = Summary::of(&f.marked_ms) {
        t.info(
            "commit → published_at (relay's mark after the confirm) p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p99, s.max),
        );
    }
}

fn check_rows(t: &mut Table, m: &Measured<'_>) {
    let (f, rate, got) = (&m.figures, &m.fixed.rate, &m.fixed.got);
    t.check(
        "fixed-rate transactions that failed",
        rate.errors.to_string(),
        rate.errors == 0,
    );
    t.check(
        "committed events never received",
        format!(
            "{}{}",
            f.not_received,
            if m.fixed.all_received {
                ""
            } else {
                " (timed out)"
            }
        ),
        f.not_received == 0 && got.at.len() >= f.expected,
    );
    t.check(
        "events received more than once / without an event id",
        format!("{} / {}", got.duplicates, got.unreadable),
        got.duplicates == 0 && got.unreadable == 0,
    );
    t.check(
        "outbox rows unpublished at the end",
        f.unpublished.to_string(),
        f.unpublished == 0,
    );
}

fn json(stack: &Stack, m: &Measured<'_>, t: &Table, service_metrics: Value, pg: Value) -> Value {
    let (args, f, sat, fixed) = (m.args, &m.figures, &m.sat, &m.fixed);
    let (rate, got) = (&fixed.rate, &fixed.got);
    json!({
        "command": "relay",
        "started_at": sat.clock.started_wall,
        "args": {
            "rate": args.rate, "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(), "connections": args.connections,
            "backlog": sat.backlog, "raw_messages": args.raw_messages, "raw_batch": args.raw_batch,
            "events_only": args.events_only, "relays": args.relays,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, fixed.load_before, fixed.load_after, &fixed.cpu),
        "loadavg_start": m.load_start,
        "raw": m.raw.as_ref().map(|r| json!({
            "messages": r.messages, "seconds": r.seconds,
            "messages_per_s": r.per_second(),
            "payload_bytes": r.payload_bytes, "window": args.raw_batch,
            "publish_to_confirm_ms": summary_json(&r.confirm_ms),
            "publish_to_received_ms": summary_json(&r.publish_to_receive_ms),
            "received": r.received,
        })),
        "saturation": {
            "backlog": sat.backlog, "events_per_s": f.sat_rate,
            "first_published_s": f.sat_first, "last_published_s": f.sat_last,
            "received_all_after_s": sat.drain_received, "drained": sat.drained,
            "cpu_seconds": sat.cpu.seconds, "cpu_busy_share": sat.cpu.machine_busy,
        },
        "fixed_rate": {
            "rate": args.rate, "window_s": f.window_s,
            "committed_in_window": f.in_window, "committed_total": rate.committed.len(),
            "committed_per_s": f.committed_rate, "received_per_s": f.received_rate,
            "tail_s": f.tail_s,
            "errors": rate.errors, "errors_sample": rate.error_sample,
            "commit_behind_schedule_ms": summary_json(&f.behind_ms),
            "commit_to_received_ms": summary_json(&f.lag_ms),
            "commit_to_published_at_ms": summary_json(&f.marked_ms),
        },
        "received": {"messages": got.at.len(), "duplicates": got.duplicates,
                     "unreadable": got.unreadable, "not_received": f.not_received},
        "unpublished_at_end": f.unpublished,
        "peak_rss_mib": common::rss_json(&fixed.rss),
        "service_metrics": service_metrics,
        "postgres_per_event": pg,
        "table": t.to_json(),
    })
}

fn chart(m: &Measured<'_>) -> String {
    let f = &m.figures;
    let not_run = || "not run".to_owned();
    lag_chart(
        &format!(
            "{:.0} events/s committed; relay at saturation {}; raw loop {}",
            f.committed_rate,
            f.sat_rate.map_or_else(not_run, |r| format!("{r:.0}/s")),
            f.raw_rate.map_or_else(not_run, |r| format!("{r:.0}/s")),
        ),
        &f.lag_ms,
        &f.marked_ms,
    )
}

/// CDFs of commit → received and commit → published_at at the fixed rate.
pub(super) fn lag_chart(describe: &str, received: &[f64], marked: &[f64]) -> String {
    let s = Summary::of(received);
    let p99 = s.map_or(0.0, |s| s.p99);
    let x_max = (p99 * 1.3).max(TARGET_P99_MS * 1.3);
    let slowest = s.map_or(0.0, |s| s.max);
    let describe = if slowest > x_max {
        format!("{describe}; x axis cut at {x_max:.0} ms, slowest {slowest:.0} ms")
    } else {
        describe.to_owned()
    };
    chart::render(&Chart {
        title: "Outbox commit → publish lag, cumulative".into(),
        subtitle: describe,
        x_label: "lag from COMMIT (ms)".into(),
        y_label: "events at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "commit → received from the work queue".into(),
                color: chart::BLUE,
                points: chart::cdf_points(received),
                dashed: false,
            },
            Series {
                name: "commit → published_at (marked after confirm)".into(),
                color: chart::ORANGE,
                points: chart::cdf_points(marked),
                dashed: true,
            },
        ],
        markers: chart::percentile_markers(s, &[50, 90, 99], 1, chart::BLUE),
        guides: vec![
            Guide::target(TARGET_P99_MS, "target: p99 ≤ 25 ms"),
            Guide::p99(),
        ],
        ..Default::default()
    })
}
