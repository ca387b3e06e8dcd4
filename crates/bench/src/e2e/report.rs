//! The e2e report: the table, report.json and the latency chart, all from one [`Measured`].

use anyhow::Result;
use serde_json::{Value, json};

use super::{Measured, TARGET_P99_MS, TARGET_P99_RATE, TARGET_RATIO};
use crate::chart::{self, Chart, Guide, Series};
use crate::common;
use crate::poster::statuses_json;
use crate::report::{Goal, Table, thousands};
use crate::snapshot::Closing;
use crate::stack::Stack;
use crate::stats::{Summary, summary_json};

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let (t, closing) = table(stack, m);
    let json = json(stack, m, &t, closing);
    common::finish(stack, &t, &json, &[("latency.svg", chart(m))])
}

fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{}/s", thousands(rate))
    } else {
        "saturation (--rate 0)".to_owned()
    }
}

fn table(stack: &Stack, m: &Measured<'_>) -> (Table, Closing) {
    let args = m.args;
    let mut t = Table::new(format!(
        "orderbridge-bench e2e: {} orders at {}, {} connections; Salesforce emulated at {} ms + 0–{} ms per call",
        thousands(f64::from(args.orders)),
        rate_text(args.rate),
        args.connections,
        args.stack.latency_ms,
        args.stack.jitter_ms
    ));
    context(&mut t, stack, m);
    throughput_rows(&mut t, m);
    latency_rows(&mut t, m);
    let f = &m.figures;
    let closing = m.totals.closing_rows(
        &mut t,
        &m.baseline,
        f.accepted,
        f.accepted,
        false,
        common::TARGET_CALLS_PER_1000,
    );
    check_rows(&mut t, m);
    (t, closing)
}

fn context(t: &mut Table, stack: &Stack, m: &Measured<'_>) {
    let observed = &m.flow.observed;
    common::machine_context(t, stack, m.baseline.load, m.totals.load, &m.totals.cpu);
    t.context(format!(
        "observer: GET /v1/orders?sync_state=synced (newest first) every {} ms: {} list requests ({} failed), mean poll {:.1} ms",
        m.args.poll.as_millis(),
        observed.requests,
        observed.request_errors,
        observed.busy.as_secs_f64() * 1e3 / observed.cycles.max(1) as f64
    ));
    t.context(if m.args.rate > 0.0 {
        "latencies count from each order's scheduled send time (open loop)"
    } else {
        "latencies count from each order's actual send"
    });
    t.context(format!("output: {}", stack.out.display()));
}

fn throughput_rows(t: &mut Table, m: &Measured<'_>) {
    let f = &m.figures;
    t.info(
        "orders accepted (201)",
        format!(
            "{} of {}",
            thousands(f.accepted as f64),
            thousands(f64::from(m.args.orders))
        ),
    );
    t.info(
        "accepted orders/s (first POST → last 201)",
        format!("{:.0}", f.accepted_rate),
    );
    t.info(
        "synced orders/s (first POST → last seen synced)",
        format!("{:.0}", f.synced_rate),
    );
    if let (Some(a), Some(s)) = (f.steady_accepted, f.steady_synced) {
        t.info(
            "steady state (10% → 90% of each): accepted/s, synced/s",
            format!("{a:.0}, {s:.0}"),
        );
    }
    t.target(
        "synced/s ÷ accepted/s",
        f.ratio,
        format!("{:.2}", f.ratio),
        Goal::AtLeast(TARGET_RATIO),
        format!(">= {TARGET_RATIO}"),
    );
}

fn latency_rows(t: &mut Table, m: &Measured<'_>) {
    let f = &m.figures;
    if let Some(s) = Summary::of(&m.flow.posted.post_ms) {
        t.info(
            "POST → 201 p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", s.p50, s.p99, s.max),
        );
    }
    if let Some(s) = Summary::of(&f.observed_ms) {
        let at_target_rate = m.args.rate > 0.0 && m.args.rate <= TARGET_P99_RATE;
        common::latency_rows(
            t,
            "POST → synced (observed)",
            &s,
            0,
            at_target_rate.then_some((TARGET_P99_MS, "<= 1,000 ms at 500/s")),
            "target is at <= 500/s",
        );
    }
    if let Some(s) = Summary::of(&f.applied_ms) {
        t.info(
            "POST → synced in Postgres (updated_at) p50 / p99",
            format!("{:.0} / {:.0} ms", s.p50, s.p99),
        );
    }
    if let Some(s) = Summary::of(&f.written_ms) {
        t.info(
            "POST → written to Salesforce (synced_at) p50 / p99",
            format!("{:.0} / {:.0} ms", s.p50, s.p99),
        );
    }
    for (name, values) in &f.stages {
        if let Some(s) = Summary::of(values) {
            t.info(
                format!("  stage {name} p50 / p99"),
                format!("{:.1} / {:.1} ms", s.p50, s.p99),
            );
        }
    }
}

fn check_rows(t: &mut Table, m: &Measured<'_>) {
    let (posted, observed, unseen) = (&m.flow.posted, &m.flow.observed, m.flow.unseen);
    t.check(
        "orders the API refused (after retries)",
        posted.rejected.to_string(),
        posted.rejected == 0,
    );
    t.check(
        "accepted orders not synced by the end",
        format!(
            "{} ({} failed{})",
            unseen + observed.failed.len(),
            observed.failed.len(),
            if observed.timed_out {
                ", timed out"
            } else {
                ""
            }
        ),
        unseen == 0 && observed.failed.is_empty(),
    );
    common::verification_rows(t, &m.verification);
}

fn json(stack: &Stack, m: &Measured<'_>, t: &Table, closing: Closing) -> Value {
    let (args, f, totals) = (m.args, &m.figures, &m.totals);
    let (posted, observed) = (&m.flow.posted, &m.flow.observed);
    let stage_json: serde_json::Map<String, Value> = f
        .stages
        .iter()
        .map(|(name, values)| ((*name).to_owned(), summary_json(values)))
        .collect();
    let mut json = json!({
        "command": "e2e",
        "started_at": m.clock.started_wall,
        "args": {
            "orders": args.orders as usize, "rate": args.rate,
            "connections": args.connections as usize,
            "poll_ms": args.poll.as_millis() as u64,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.baseline.load, totals.load, &totals.cpu),
        "orders": {
            "requested": args.orders as usize, "accepted": f.accepted,
            "refused": posted.rejected, "seen_synced": f.synced,
            "failed": observed.failed.len(), "unseen": m.flow.unseen,
            "timed_out": observed.timed_out,
            "states_in_postgres": m.states,
            "failed_sample": observed.failed.iter().take(20).map(|(id, code)| json!({"id": id, "code": code})).collect::<Vec<_>>(),
        },
        "post": {
            "statuses": statuses_json(&posted.tally.statuses),
            "transport_errors": posted.tally.transport_errors,
            "retried_orders": posted.tally.retried_orders,
            "errors_sample": posted.errors,
        },
        "throughput": {
            "accepted_per_s": f.accepted_rate, "synced_per_s": f.synced_rate, "ratio": f.ratio,
            "accept_window_s": f.accept_window, "sync_window_s": f.sync_window,
            "steady_accepted_per_s": f.steady_accepted, "steady_synced_per_s": f.steady_synced,
        },
        "latency_ms": {
            "post_to_201": summary_json(&posted.post_ms),
            "post_to_synced_observed": summary_json(&f.observed_ms),
            "post_to_synced_in_postgres": summary_json(&f.applied_ms),
            "post_to_written_in_salesforce": summary_json(&f.written_ms),
            "send_delay_behind_schedule": summary_json(&f.queued_ms),
        },
        "stages_ms": stage_json,
        "observer": {
            "poll_ms": args.poll.as_millis() as u64, "list_requests": observed.requests,
            "list_errors": observed.request_errors, "cycles": observed.cycles,
            "mean_cycle_ms": observed.busy.as_secs_f64() * 1e3 / observed.cycles.max(1) as f64,
        },
    });
    totals.append_json(&mut json, &m.baseline, closing, &m.verification, t);
    json
}

fn chart(m: &Measured<'_>) -> String {
    let args = m.args;
    let f = &m.figures;
    latency_chart(
        &format!(
            "{} orders at {}; Salesforce {} ms + 0–{} ms per call",
            thousands(f64::from(args.orders)),
            rate_text(args.rate),
            args.stack.latency_ms,
            args.stack.jitter_ms
        ),
        &f.observed_ms,
        &f.applied_ms,
        &f.written_ms,
        &m.flow.posted.post_ms,
    )
}

/// CDFs of POST → synced (observed, in Postgres, in Salesforce) and POST → 201.
fn latency_chart(
    describe: &str,
    observed: &[f64],
    applied: &[f64],
    written: &[f64],
    post: &[f64],
) -> String {
    let summary = Summary::of(observed);
    let slowest = summary.map_or(0.0, |s| s.max);
    let p99 = summary.map_or(0.0, |s| s.p99);
    // Wide enough for the target and the p99; a few stragglers may fall off the right.
    let x_max = (p99 * 1.4)
        .max(TARGET_P99_MS * 1.15)
        .min(slowest.max(TARGET_P99_MS * 1.15));
    let subtitle = if slowest > x_max {
        format!("x axis cut at {x_max:.0} ms; slowest order {slowest:.0} ms")
    } else {
        format!("slowest order {slowest:.0} ms")
    };
    chart::render(&Chart {
        title: "POST → synced latency, cumulative".into(),
        subtitle: format!("{describe}; {subtitle}"),
        x_label: "latency from POST (ms)".into(),
        y_label: "orders at or below (%)".into(),
        x_max,
        y_max: 100.0,
        series: vec![
            Series {
                name: "POST → synced, seen through the API".into(),
                color: chart::BLUE,
                points: chart::cdf_points(observed),
                dashed: false,
            },
            Series {
                name: "POST → synced in Postgres (updated_at)".into(),
                color: chart::GREEN,
                points: chart::cdf_points(applied),
                dashed: true,
            },
            Series {
                name: "POST → written to Salesforce (synced_at)".into(),
                color: chart::ORANGE,
                points: chart::cdf_points(written),
                dashed: true,
            },
            Series {
                name: "POST → 201".into(),
                color: chart::PURPLE,
                points: chart::cdf_points(post),
                dashed: false,
            },
        ],
        markers: chart::percentile_markers(summary, &[50, 90, 99], 0, chart::BLUE),
        guides: vec![
            Guide::target(TARGET_P99_MS, "target: p99 ≤ 1 s"),
            Guide::p99(),
        ],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_renders_without_data() {
        let svg = latency_chart("t", &[], &[], &[], &[]);
        assert!(svg.contains("target"));
    }
}
