//! The drain report: the table, report.json and the progress chart, all from one [`Measured`].

use anyhow::Result;
use serde_json::{Value, json};

use super::{Measured, TARGET_ORDERS_PER_S};
use crate::chart::{self, Chart, Series};
use crate::common::{self, per_second, secs};
use crate::report::{Goal, Table, thousands};
use crate::snapshot::Closing;
use crate::stack::Stack;

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let (t, closing) = table(stack, m);
    let json = json(stack, m, &t, closing);
    common::finish(stack, &t, &json, &[("progress.svg", chart(m))])
}

fn table(stack: &Stack, m: &Measured<'_>) -> (Table, Closing) {
    let (args, f) = (m.args, &m.figures);
    let orders = args.orders as usize;
    let mut t = Table::new(format!(
        "orderbridge-bench drain: {} orders already in the outbox; Salesforce emulated at {} ms + 0–{} ms per call",
        thousands(orders as f64),
        args.stack.latency_ms,
        args.stack.jitter_ms
    ));
    common::machine_context(&mut t, stack, m.baseline.load, m.totals.load, &m.totals.cpu);
    t.context(format!(
        "backlog written in {:.1} s ({} orders/s, {} per transaction); worker ready after {:.1} s, before the clock starts",
        m.set_up.written_in,
        thousands(per_second(orders, m.set_up.written_in)),
        args.chunk,
        m.set_up.worker_ready_in
    ));
    t.context("clock: from starting the relay; times are the server's (published_at, updated_at)");
    t.context(format!("output: {}", stack.out.display()));
    rate_rows(&mut t, m);
    let closing = m.totals.closing_rows(
        &mut t,
        &m.baseline,
        f.synced.len(),
        orders,
        true,
        common::TARGET_DRAIN_CALLS_PER_1000,
    );
    t.check(
        "orders not synced by the end",
        format!(
            "{}{}",
            f.not_synced,
            if m.timed_out { " (timed out)" } else { "" }
        ),
        f.not_synced == 0,
    );
    common::verification_rows(&mut t, &m.verification);
    (t, closing)
}

fn rate_rows(t: &mut Table, m: &Measured<'_>) {
    let f = &m.figures;
    t.info(
        "orders synced",
        format!(
            "{} of {}",
            thousands(f.synced.len() as f64),
            thousands(f64::from(m.args.orders))
        ),
    );
    t.target(
        "orders/s, relay start → last synced",
        f.drain_rate,
        format!("{:.0} ({:.1} s)", f.drain_rate, f.last_synced),
        Goal::AtLeast(TARGET_ORDERS_PER_S),
        ">= 5,000",
    );
    t.info(
        "orders/s, first → last synced (steady state)",
        format!("{:.0} (first after {:.2} s)", f.steady_rate, f.first_synced),
    );
    t.info(
        "outbox drained (all published)",
        format!(
            "after {:.1} s: {:.0} events/s (first after {:.2} s)",
            f.last_published, f.publish_rate, f.first_published
        ),
    );
}

fn json(stack: &Stack, m: &Measured<'_>, t: &Table, closing: Closing) -> Value {
    let (args, f, totals) = (m.args, &m.figures, &m.totals);
    let orders = args.orders as usize;
    let mut json = json!({
        "command": "drain",
        "started_at": m.clock.started_wall,
        "args": {
            "orders": orders, "chunk": args.chunk, "poll_ms": args.poll.as_millis() as u64,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.baseline.load, totals.load, &totals.cpu),
        "backlog": {"written_in_s": m.set_up.written_in, "worker_ready_in_s": m.set_up.worker_ready_in},
        "orders": {
            "requested": orders, "synced": f.synced.len(), "not_synced": f.not_synced,
            "timed_out": m.timed_out,
            "states_in_postgres": m.states,
        },
        "throughput": {
            "orders_per_s": f.drain_rate, "steady_orders_per_s": f.steady_rate,
            "last_synced_s": f.last_synced, "first_synced_s": f.first_synced,
            "published_per_s": f.publish_rate, "last_published_s": f.last_published,
            "first_published_s": f.first_published,
        },
    });
    totals.append_json(&mut json, &m.baseline, closing, &m.verification, t);
    json
}

/// Published and synced orders over time, beside the target's pace.
fn chart(m: &Measured<'_>) -> String {
    let (args, f) = (m.args, &m.figures);
    let orders = args.orders as usize;
    let cumulative = |times: &[chrono::DateTime<chrono::Utc>]| {
        let since_start = times
            .iter()
            .map(|t| secs(*t - m.clock.started_wall))
            .collect();
        chart::cumulative(since_start, 1000)
    };
    let target_end = orders as f64 / TARGET_ORDERS_PER_S;
    let x_max = f.last_synced.max(f.last_published).max(target_end) * 1.05;
    chart::render(&Chart {
        title: format!(
            "Draining {} orders: {:.0} orders/s to the last synced",
            thousands(orders as f64),
            f.drain_rate
        ),
        subtitle: format!(
            "outbox drained at {:.0} events/s; Salesforce emulated at {} ms + 0–{} ms per call",
            f.publish_rate, args.stack.latency_ms, args.stack.jitter_ms
        ),
        x_label: "seconds since the relay started".into(),
        y_label: "orders".into(),
        x_max,
        y_max: orders as f64 * 1.02,
        series: vec![
            Series {
                name: "published (outbox.published_at)".into(),
                color: chart::ORANGE,
                points: cumulative(&f.published),
                dashed: false,
            },
            Series {
                name: "synced (orders.updated_at)".into(),
                color: chart::BLUE,
                points: cumulative(&f.synced),
                dashed: false,
            },
            Series {
                name: "target: 5,000 orders/s".into(),
                color: chart::RED,
                points: vec![(0.0, 0.0), (target_end, orders as f64)],
                dashed: true,
            },
        ],
        markers: Vec::new(),
        guides: Vec::new(),
        ..Default::default()
    })
}
