//! The slowloris report: the table and report.json from one [`Measured`].

use anyhow::Result;
use serde_json::{Value, json};

use super::{Measured, Phase};
use crate::common::{self, TARGET_RSS_UNDER_ATTACK_MIB};
use crate::report::{Goal, Table, thousands};
use crate::stack::Stack;
use crate::stats::{self, Summary};

/// "Well under a second" (issue 12), for the p99 of a normal request under attack.
const TARGET_UNDER_ATTACK_MS: f64 = 1000.0;

/// Prints and writes the report; `Ok(false)` when a normal request failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let t = table(stack, m);
    let json = json!({
        "command": "slowloris",
        "args": {
            "connections": m.args.connections,
            "samples": m.args.samples,
            "settle_s": m.args.settle.as_secs_f64(),
            "reconnect_after_s": m.args.reconnect_after.as_secs_f64(),
            "env": m.args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, m.load[0], m.load[1], &m.cpu),
        "phases": {
            "before": phase_json(&m.before),
            "during": phase_json(&m.during),
            "after": phase_json(&m.after),
        },
        "attack": {
            "open_at_start": m.attack.open_at_start,
            "open_at_end": m.attack.open_at_end,
            "connects": m.attack.connects,
            "closed_by_server": m.attack.closed_by_server,
            "failed_connects": m.attack.failed_connects,
            "seconds": stats::round(m.attack.seconds),
        },
        "rss_mib": {
            "before": m.rss_before.map(mib),
            "during_max": mib(m.rss_during_max),
            "peak": m.rss_peak.map(mib),
        },
        "table": t.to_json(),
    });
    common::finish(stack, &t, &json, &[])
}

fn mib(kib: u64) -> f64 {
    stats::round(kib as f64 / 1024.0)
}

fn phase_json(p: &Phase) -> Value {
    json!({
        "get_ms": stats::summary_json(&p.get_ms),
        "post_ms": stats::summary_json(&p.post_ms),
        "failures": p.failures,
    })
}

fn table(stack: &Stack, m: &Measured<'_>) -> Table {
    let a = &m.attack;
    let mut t = Table::new(format!(
        "orderbridge-bench slowloris: {} half-open connections (half a request line each, \
         reconnecting {} s after the server closes one) against order-api; {} normal requests \
         per phase, each on a new connection",
        thousands(f64::from(m.args.connections)),
        m.args.reconnect_after.as_secs_f64(),
        m.args.samples
    ));
    common::machine_context(&mut t, stack, m.load[0], m.load[1], &m.cpu);
    t.context(format!(
        "order-api CPU while timed under attack: {:.1} s in {:.1} s",
        m.cpu.seconds.get("order-api").copied().unwrap_or_default(),
        m.cpu.wall_s
    ));

    t.info(
        "attackers connected, client side (start / end of the timed requests)",
        format!(
            "{} / {}",
            thousands(a.open_at_start as f64),
            thousands(a.open_at_end as f64)
        ),
    );
    t.info(
        "attacking connections made / closed by the server",
        format!(
            "{} / {} in {:.1} s ({}/s closed)",
            thousands(a.connects as f64),
            thousands(a.closed_by_server as f64),
            a.seconds,
            thousands(common::per_second(a.closed_by_server as usize, a.seconds))
        ),
    );
    if a.failed_connects > 0 {
        t.info(
            "attacking connections that could not connect",
            thousands(a.failed_connects as f64),
        );
    }

    for (name, phase, target) in [
        ("before the attack", &m.before, false),
        ("under attack", &m.during, true),
        ("after the attack", &m.after, false),
    ] {
        for (what, sample) in [
            ("GET /health/live", &phase.get_ms),
            ("POST /v1/orders", &phase.post_ms),
        ] {
            let label = format!("{what} {name}");
            match Summary::of(sample) {
                Some(s) => common::latency_rows(
                    &mut t,
                    &label,
                    &s,
                    1,
                    target.then_some((TARGET_UNDER_ATTACK_MS, "< 1 s")),
                    "no target",
                ),
                None => t.info(label, "no answer"),
            }
        }
    }
    let failures: Vec<&String> = [&m.before, &m.during, &m.after]
        .iter()
        .flat_map(|p| &p.failures)
        .collect();
    t.check(
        "normal requests without their 200/201",
        match failures.first() {
            Some(first) => format!("{} (first: {first})", failures.len()),
            None => "0".to_owned(),
        },
        failures.is_empty(),
    );

    if let Some(kib) = m.rss_before {
        t.info(
            "order-api RSS before the attack",
            format!("{:.1} MiB", mib(kib)),
        );
    }
    let during = mib(m.rss_during_max);
    t.target(
        "order-api RSS under attack (highest sample)",
        during,
        format!("{during:.1} MiB"),
        Goal::AtMost(TARGET_RSS_UNDER_ATTACK_MIB),
        "< 64 MiB",
    );
    if let Some(kib) = m.rss_peak {
        t.info(
            "order-api peak RSS of the run (VmHWM, start-up included)",
            format!("{:.1} MiB", mib(kib)),
        );
    }
    t
}
