//! The inbound report: the table and report.json from one [`Measured`].

use anyhow::Result;
use serde_json::json;

use super::Measured;
use crate::common;
use crate::report::{Goal, Table, thousands};
use crate::stack::{SUBSCRIBER, Stack};
use crate::stats::{self, Summary};

/// Issue 13's targets on this machine.
const TARGET_P99_MS: f64 = 500.0;
const TARGET_BACKLOG_PER_S: f64 = 2000.0;
const TARGET_SUBSCRIBER_RSS_MIB: f64 = 32.0;

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let t = table(stack, m);
    let backlog_rate = common::per_second(m.backlog.applied, m.backlog.drain_s);
    let json = json!({
        "command": "inbound",
        "args": {
            "orders": m.args.orders,
            "changes": m.args.changes,
            "rate": m.args.rate,
            "backlog": m.args.backlog,
            "latency_ms": m.args.stack.latency_ms,
            "env": m.args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.load[0], m.load[1], &m.cpu),
        "live": {
            "made": m.live.made,
            "seconds": stats::round(m.live.seconds),
            "change_to_api_ms": stats::summary_json(&m.live.latency_ms),
            "unseen": m.live.unseen,
            "failed_calls": m.live.failed_calls,
            "sse_events": m.live.sse_events,
            "sse_reconnects": m.live.sse_reconnects,
        },
        "backlog": {
            "changes": m.backlog.changes,
            "applied": m.backlog.applied,
            "make_s": stats::round(m.backlog.make_s),
            "drain_s": stats::round(m.backlog.drain_s),
            "apply_s": stats::round(m.backlog.apply_s),
            "per_s": stats::round(backlog_rate),
            "subscriber_rss_peak_mib": m.backlog.rss_peak_kib.map(mib),
        },
        "mismatched": m.mismatched.iter().take(20).collect::<Vec<_>>(),
        "rss": common::rss_json(&m.rss),
        "table": t.to_json(),
    });
    common::finish(stack, &t, &json, &[])
}

fn mib(kib: u64) -> f64 {
    stats::round(kib as f64 / 1024.0)
}

fn table(stack: &Stack, m: &Measured<'_>) -> Table {
    let a = m.args;
    let mut t = Table::new(format!(
        "orderbridge-bench inbound: {} orders synced, then {} status changes in Salesforce at \
         {}/s watched through the API (one SSE stream per order), then a backlog of {} drained \
         by a restarted sf-subscriber",
        a.orders,
        thousands(f64::from(a.changes)),
        a.rate,
        thousands(f64::from(a.backlog)),
    ));
    common::machine_context(&mut t, stack, m.load[0], m.load[1], &m.cpu);
    t.context(format!(
        "emulator REST latency {} ms (+ up to {} ms); a change counts from its REST call's answer",
        a.stack.latency_ms, a.stack.jitter_ms
    ));

    let live = &m.live;
    t.info(
        "changes made (latency phase)",
        format!(
            "{} in {:.1} s ({}/s)",
            thousands(live.made as f64),
            live.seconds,
            thousands(common::per_second(live.made, live.seconds))
        ),
    );
    match Summary::of(&live.latency_ms) {
        Some(s) => common::latency_rows(
            &mut t,
            "Salesforce change → visible in the API",
            &s,
            1,
            Some((TARGET_P99_MS, "≤ 500 ms")),
            "",
        ),
        None => t.info("Salesforce change → visible in the API", "nothing seen"),
    }
    t.check(
        "changes never seen through the API",
        live.unseen.to_string(),
        live.unseen == 0,
    );
    t.check(
        "REST changes the emulator refused",
        match live.failed_calls.first() {
            Some(first) => format!("{} (first: {first})", live.failed_calls.len()),
            None => "0".to_owned(),
        },
        live.failed_calls.is_empty(),
    );
    t.info(
        "SSE events received / streams re-opened",
        format!("{} / {}", live.sse_events, live.sse_reconnects),
    );

    let b = &m.backlog;
    if b.changes > 0 {
        t.info(
            "backlog made in Salesforce (subscriber stopped)",
            format!(
                "{} changes in {:.1} s",
                thousands(b.changes as f64),
                b.make_s
            ),
        );
        let rate = common::per_second(b.applied, b.drain_s);
        t.target(
            "backlog drained by a new subscriber (from its start)",
            rate,
            format!(
                "{}/s ({} in {:.2} s)",
                thousands(rate),
                thousands(b.applied as f64),
                b.drain_s
            ),
            Goal::AtLeast(TARGET_BACKLOG_PER_S),
            "≥ 2,000/s",
        );
        t.info(
            "the same, first change applied to last",
            format!(
                "{}/s in {:.2} s",
                thousands(common::per_second(b.applied, b.apply_s)),
                b.apply_s
            ),
        );
        t.check_target(
            "backlog changes applied",
            format!("{} of {}", b.applied, b.changes),
            "all",
            b.applied == b.changes,
        );
        if let Some(kib) = b.rss_peak_kib {
            let v = mib(kib);
            t.target(
                "sf-subscriber peak RSS while draining (VmHWM)",
                v,
                format!("{v:.1} MiB"),
                Goal::AtMost(TARGET_SUBSCRIBER_RSS_MIB),
                "≤ 32 MiB",
            );
        }
    }
    t.check(
        "orders whose final status or history differs from Salesforce's changes",
        match m.mismatched.first() {
            Some(first) => format!("{} (first: {first})", m.mismatched.len()),
            None => "0".to_owned(),
        },
        m.mismatched.is_empty(),
    );
    for (metric, label) in [
        ("sf_subscriber_events_echo_total", "events ignored as echo"),
        ("sf_subscriber_events_duplicate_total", "duplicate events"),
        ("sf_subscriber_dead_letters_total", "events dead-lettered"),
    ] {
        if let Some(v) = counter(&m.subscriber_metrics, metric) {
            t.info(
                format!("{SUBSCRIBER} {label} (restarted process)"),
                thousands(v),
            );
        }
    }
    common::rss_rows(&mut t, &m.rss, &["sf-emulator"]);
    t
}

/// A counter's value summed over its label sets, from a Prometheus exposition text.
fn counter(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.split_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::counter;

    #[test]
    fn counters_sum_over_labels() {
        let text =
            "# HELP x\nx_total{topic=\"a\"} 2\nx_total{topic=\"b\"} 3\nx_total_more 9\ny 1\n";
        assert_eq!(counter(text, "x_total"), Some(5.0));
        assert_eq!(counter(text, "y"), Some(1.0));
        assert_eq!(counter(text, "z"), None);
    }
}
