//! The outbound-message report: the table and report.json from one [`Measured`].

use anyhow::Result;
use serde_json::json;

use super::Measured;
use crate::common;
use crate::poster::statuses_json;
use crate::report::{Goal, Table, thousands};
use crate::stack::{API, EMULATOR, Stack};
use crate::stats::{self, Summary};

/// Issue 14's target: notifications/s with 100 notifications per envelope.
const TARGET_PER_S: f64 = 1000.0;
const TARGET_PER_ENVELOPE: u32 = 100;

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let t = table(stack, m);
    let (live, d, c) = (&m.live, &m.duplicates, &m.checks);
    let json = json!({
        "command": "outbound",
        "args": {
            "orders": m.args.orders,
            "envelopes": m.args.envelopes,
            "per_envelope": m.args.per_envelope,
            "connections": m.args.connections,
            "duplicates": m.args.duplicates,
            "env": m.args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.load[0], m.load[1], &m.cpu),
        "live": {
            "envelopes": m.args.envelopes,
            "notifications": m.args.notifications(),
            "seconds": stats::round(live.seconds),
            "notifications_per_s": stats::round(notifications_per_s(m)),
            "envelope_latency_ms": stats::summary_json(&live.latency_ms),
            "statuses": statuses_json(&live.statuses),
            "not_acked": live.not_acked_count,
            "not_acked_first": live.not_acked,
            "waited_for_earlier": live.waited,
        },
        "duplicates": {
            "posted": d.posted,
            "not_acked": d.not_acked,
            "new_rows": d.new_rows,
            "new_history": d.new_history,
            "version_delta": d.version_delta,
        },
        "checks": {
            "expected": c.expected,
            "rows": c.rows,
            "ids_found": c.ids_found,
            "history_entries": c.history_entries,
            "mismatched": c.mismatched.iter().take(20).collect::<Vec<_>>(),
            "mismatched_count": c.mismatched.len(),
        },
        "rss": common::rss_json(&m.rss),
        "table": t.to_json(),
    });
    common::finish(stack, &t, &json, &[])
}

fn notifications_per_s(m: &Measured<'_>) -> f64 {
    common::per_second(m.args.notifications(), m.live.seconds)
}

/// A count and the first description, for a table cell.
fn first(count: usize, list: &[String]) -> String {
    match list.first() {
        Some(f) => format!("{count} (first: {f})"),
        None => count.to_string(),
    }
}

fn table(stack: &Stack, m: &Measured<'_>) -> Table {
    let a = m.args;
    let mut t = Table::new(format!(
        "orderbridge-bench outbound: {} SOAP envelopes × {} notifications (sf:Order Id + Status) \
         on {} connections, closed loop, over {} synced orders; each stored with its status \
         change before the Ack",
        a.envelopes, a.per_envelope, a.connections, a.orders
    ));
    common::machine_context(&mut t, stack, m.load[0], m.load[1], &m.cpu);
    t.context(
        "an envelope is sent once the envelopes holding its orders' previous notifications are \
         answered (statuses apply in order); its latency counts from its send",
    );

    let live = &m.live;
    let per_s = notifications_per_s(m);
    let shown = format!(
        "{} ({} in {:.2} s)",
        thousands(per_s),
        thousands(a.notifications() as f64),
        live.seconds
    );
    if a.per_envelope == TARGET_PER_ENVELOPE {
        t.target(
            "notifications stored and acknowledged per second",
            per_s,
            shown,
            Goal::AtLeast(TARGET_PER_S),
            ">= 1,000 at 100/envelope",
        );
    } else {
        t.info(
            "notifications stored and acknowledged per second (target applies at 100/envelope)",
            shown,
        );
    }
    t.info(
        "envelopes per second",
        format!(
            "{:.1}",
            common::per_second(a.envelopes as usize, live.seconds)
        ),
    );
    match Summary::of(&live.latency_ms) {
        Some(s) => common::latency_rows(&mut t, "envelope send → Ack", &s, 1, None, "no target"),
        None => t.info("envelope send → Ack", "nothing answered"),
    }
    t.info(
        "envelopes that waited for an earlier one",
        live.waited.to_string(),
    );
    t.check(
        "envelopes not answered 200 <Ack>true</Ack>",
        first(live.not_acked_count, &live.not_acked),
        live.not_acked_count == 0,
    );

    let c = &m.checks;
    let expected = c.expected as i64;
    t.check_target(
        "notifications stored (rows / of the run's ids)",
        format!("{} / {}", c.rows, c.ids_found),
        format!("{expected} / {expected}"),
        c.rows == expected && c.ids_found == expected,
    );
    t.check_target(
        "status changes applied (outbound_message history entries)",
        thousands(c.history_entries as f64),
        thousands(expected as f64),
        c.history_entries == expected,
    );
    t.check(
        "orders whose history or status is not what their notifications said",
        first(c.mismatched.len(), &c.mismatched),
        c.mismatched.is_empty(),
    );

    let d = &m.duplicates;
    if d.posted > 0 {
        t.check(
            format!("redelivered envelopes ({}) not acknowledged", d.posted),
            first(d.not_acked.len(), &d.not_acked),
            d.not_acked.is_empty(),
        );
        t.check(
            "redeliveries: new rows / history entries / order versions",
            format!("{} / {} / {}", d.new_rows, d.new_history, d.version_delta),
            d.new_rows == 0 && d.new_history == 0 && d.version_delta == 0,
        );
    }

    common::rss_rows(&mut t, &m.rss, &[EMULATOR]);
    common::cpu_rows(&mut t, &m.cpu, 0);
    if let Some(api) = m.cpu.seconds.get(API)
        && a.notifications() > 0
    {
        t.info(
            "CPU order-api per notification",
            format!("{:.3} ms", api * 1e3 / a.notifications() as f64),
        );
    }
    t
}
