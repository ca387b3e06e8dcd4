//! The chaos report: the table, report.json and the timeline chart, all from one
//! [`Measured`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Measured;
use super::classify;
use super::faults::{self, CloseScope};
use super::plan::FaultKind;
use super::settle::OrderRow;
use crate::chart::{self, Band, Chart, Series};
use crate::common;
use crate::poster::statuses_json;
use crate::report::{Table, thousands};
use crate::stack::Stack;

/// Prints and writes the report; `Ok(false)` when a correctness check failed.
pub fn finish(stack: &Stack, m: &Measured<'_>) -> Result<bool> {
    let mut t = Table::new(format!(
        "orderbridge-bench chaos: {} orders at {}/s under {} faults and {} poison messages; seed {}",
        thousands(f64::from(m.args.orders)),
        m.args.rate,
        m.schedule.iter().filter(|p| p.kind.is_some()).count(),
        m.run.poison_sent.len(),
        m.seed
    ));
    context(&mut t, stack, m);
    run_rows(&mut t, m);
    check_rows(&mut t, m);
    let json = json(stack, m, &t);
    common::finish(stack, &t, &json, &[("timeline.svg", chart(m))])
}

/// `service pid: status` of each process that did not exit cleanly after its signal.
fn unclean(stopped: &[(String, u32, String, bool)]) -> Vec<String> {
    stopped
        .iter()
        .filter(|(_, _, _, clean)| !clean)
        .map(|(name, pid, status, _)| format!("{name} {pid}: {status}"))
        .collect()
}

fn context(t: &mut Table, stack: &Stack, m: &Measured<'_>) {
    let (args, seed, kinds, run) = (m.args, m.seed, m.kinds, &m.run);
    let orders = args.orders as usize;
    common::machine_context(t, stack, run.load_before, run.load_after, &run.cpu);
    t.context(format!(
        "repeat the schedule: orderbridge-bench chaos --seed {seed} --orders {orders} --rate {} --fault-gap {} --fault-window {} --poison {} --approve {}{}{}",
        args.rate,
        format_ms(args.fault_gap),
        format_ms(args.fault_window),
        args.poison,
        args.approve,
        if args.rabbitmq_cluster {
            " --rabbitmq-cluster"
        } else {
            ""
        },
        if args.faults.is_empty() {
            String::new()
        } else {
            format!(
                " --faults {}",
                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
            )
        }
    ));
    t.context(format!(
        "Salesforce emulated at {} ms + 0–{} ms per call; broker-close closes {} connections",
        args.stack.latency_ms,
        args.stack.jitter_ms,
        match args.close_connections {
            CloseScope::Own => "the services' own",
            CloseScope::All => "ALL the broker's",
        }
    ));
    if args.rabbitmq_cluster {
        t.context(
            "RabbitMQ: the 3-node cluster of scripts/rabbitmq-cluster (quorum queues on every node); the services got all three node URLs"
                .to_owned(),
        );
    }
    t.context(format!("output: {}", stack.out.display()));
}

/// The faults carried out, the posting, quiescence and the dead letters.
fn run_rows(t: &mut Table, m: &Measured<'_>) {
    let (orders, run) = (m.args.orders as usize, &m.run);
    let (events, posted, accepted) = (&run.events, &run.posted, &m.found.accepted);
    let (posting_done_s, posting_s, quiet_at_s, quiet) = (
        run.posting_done_s,
        run.posting_s,
        run.quiet_at_s,
        &run.quiet,
    );
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.phase == "begin") {
        let entry = by_kind.entry(e.fault).or_insert((0, 0));
        entry.0 += 1;
        if !e.ok {
            entry.1 += 1;
        }
    }
    for (kind, (n, failed)) in &by_kind {
        let failed = if *failed > 0 {
            format!(" ({failed} could not be done)")
        } else {
            String::new()
        };
        t.info(format!("fault {kind}"), format!("{n}{failed}"));
    }
    t.info(
        "orders accepted (201)",
        format!(
            "{} of {}",
            thousands(accepted.len() as f64),
            thousands(orders as f64)
        ),
    );
    let statuses: Vec<String> = posted
        .tally
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    t.info(
        "POST attempts (answers; transport errors)",
        format!(
            "{} ({}; {})",
            posted.tally.attempts,
            statuses.join(", "),
            posted.tally.transport_errors
        ),
    );
    t.info(
        "orders that needed retries (same Idempotency-Key)",
        posted.tally.retried_orders.to_string(),
    );
    let a = &run.approvals;
    t.info(
        "orders approved in Salesforce (share; calls, failed and retried)",
        format!(
            "{} of {} synced ({}; {} calls, {} failed)",
            a.approved.len(),
            a.seen.len(),
            m.args.approve,
            a.calls,
            a.failed_calls
        ),
    );
    let f = &m.found.fulfil;
    t.info(
        "fulfilment receiver calls (duplicates answered from memory; errors; hung)",
        format!(
            "{} ({}; {}; {})",
            f.received, f.duplicates, f.errors, f.hung
        ),
    );
    t.info(
        "posting and faults done after",
        format!("{posting_done_s:.1} s (schedule {posting_s:.1} s)"),
    );
    t.info(
        "quiet after",
        format!(
            "{quiet_at_s:.1} s ({:.1} s after the last fault step)",
            quiet.waited_s
        ),
    );
    let reasons = classify::reasons(&m.found.letters);
    t.info(
        "dead letters by reason",
        if reasons.is_empty() {
            "none".into()
        } else {
            reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
}

fn check_rows(t: &mut Table, m: &Measured<'_>) {
    let (run, outcome) = (&m.run, &m.found.outcome);
    let (posted, poison_sent, quiet) = (&run.posted, &run.poison_sent, &run.quiet);
    let stopped = &run.stopped;
    let unclean = unclean(stopped);
    // Memory is the benchmarks' subject (peak RSS is in report.json); processes restarted and
    // doubled here make a per-service figure meaningless.
    t.check_target(
        "ok: synced, exactly once in Salesforce with every item",
        format!("{} of {}", outcome.ok, outcome.accepted),
        "all",
        outcome.ok == outcome.accepted,
    );
    t.check(
        "lost: accepted, not in Salesforce, not failed",
        outcome.lost.len().to_string(),
        outcome.lost.is_empty(),
    );
    t.check(
        "duplicated: external ids (orders, items) on > 1 record",
        outcome.duplicated.len().to_string(),
        outcome.duplicated.is_empty(),
    );
    t.check(
        "unexpected: Salesforce records for no accepted order",
        outcome.unexpected.len().to_string(),
        outcome.unexpected.is_empty(),
    );
    t.check(
        "failed: real orders in state failed",
        outcome.failed.len().to_string(),
        outcome.failed.is_empty(),
    );
    t.check(
        "dead letters other than the injected poison",
        outcome.real_dead_letters.len().to_string(),
        outcome.real_dead_letters.is_empty(),
    );
    t.check_target(
        "poison messages dead-lettered",
        format!("{} of {}", outcome.poison_dead_lettered, poison_sent.len()),
        "all",
        outcome.poison_missing.is_empty(),
    );
    t.check(
        "mismatched: Salesforce id or item count differs",
        outcome.mismatched.len().to_string(),
        outcome.mismatched.is_empty(),
    );
    t.check_target(
        "not terminal: accepted, neither synced nor failed; pipeline quiet",
        format!(
            "{}{}",
            outcome.not_terminal.len(),
            if quiet.reached {
                String::new()
            } else {
                format!(
                    "; NOT quiet after {:.0} s (unpublished {}, queues {:?})",
                    quiet.waited_s, quiet.unpublished, quiet.queues
                )
            }
        ),
        "= 0, quiet",
        outcome.not_terminal.is_empty() && quiet.reached,
    );
    fulfil_rows(t, m);
    t.check(
        "services stopped with SIGTERM that did not exit cleanly",
        if unclean.is_empty() {
            format!("0 of {}", stopped.len())
        } else {
            unclean.join("; ")
        },
        unclean.is_empty(),
    );
    t.check(
        "POSTs never accepted (after retries until the timeout)",
        posted.refused.len().to_string(),
        posted.refused.is_empty(),
    );
    t.check(
        "idempotency: 409 duplicate client_ref on a retry, or two ids for one order",
        format!(
            "{} / {}",
            posted.duplicate_client_ref, posted.double_accepted
        ),
        posted.duplicate_client_ref == 0 && posted.double_accepted == 0,
    );
}

/// The fulfilment loop's checks: every approved order provisioned exactly once, no other.
fn fulfil_rows(t: &mut Table, m: &Measured<'_>) {
    let (f, a) = (&m.found.fulfil, &m.run.approvals);
    t.check_target(
        "provisioned: approved, provisioned once locally, in Salesforce, at the receiver",
        format!("{} of {}", f.provisioned_once, f.approved),
        "all",
        f.provisioned_once == f.approved,
    );
    t.check(
        "approved orders not provisioned locally (status)",
        f.not_provisioned.len().to_string(),
        f.not_provisioned.is_empty(),
    );
    t.check(
        "approved orders whose Salesforce Activation_Status__c is not Provisioned",
        f.salesforce_not_provisioned.len().to_string(),
        f.salesforce_not_provisioned.is_empty(),
    );
    t.check(
        "approved orders the receiver did not provision exactly once",
        f.not_once.len().to_string(),
        f.not_once.is_empty(),
    );
    t.check(
        "fulfilment requests failed",
        f.failed_requests.len().to_string(),
        f.failed_requests.is_empty(),
    );
    t.check(
        "orders not approved but provisioned, requested or called",
        f.unapproved_touched.len().to_string(),
        f.unapproved_touched.is_empty(),
    );
    t.check(
        "receiver calls for no request; refused signatures",
        format!("{} / {}", f.unknown_calls, f.bad_signatures),
        f.unknown_calls == 0 && f.bad_signatures == 0,
    );
    t.check(
        "approvals never made (retried until the timeout)",
        a.given_up.len().to_string(),
        a.given_up.is_empty(),
    );
}

fn json(stack: &Stack, m: &Measured<'_>, t: &Table) -> Value {
    let (args, r, f) = (m.args, &m.run, &m.found);
    let (posted, quiet, report) = (&r.posted, &r.quiet, &f.report);
    json!({
        "command": "chaos",
        "seed": m.seed,
        "started_at": r.clock.started_wall,
        "args": {
            "orders": args.orders as usize, "rate": args.rate,
            "connections": args.connections as usize,
            "faults": m.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "fault_gap_s": args.fault_gap.as_secs_f64(),
            "fault_window_s": args.fault_window.as_secs_f64(),
            "poison": args.poison,
            "approve": args.approve,
            "receiver_delay_ms": args.receiver_delay.as_millis() as u64,
            "close_connections": args.close_connections, "rabbitmq_cluster": args.rabbitmq_cluster,
            "latency_ms": args.stack.latency_ms, "jitter_ms": args.stack.jitter_ms,
            "service_log": args.stack.service_log,
            "env": args.stack.env_pairs(),
        },
        "machine": common::machine_json(stack, r.load_before, r.load_after, &r.cpu),
        "plan": m.schedule,
        "timeline": r.events,
        "orders": {
            "requested": args.orders as usize,
            "accepted": f.accepted.len(),
            "refused": posted.refused.len(),
            "refused_sample": posted.refused.iter().take(20)
                .map(|(i, e)| json!({"index": i, "error": e})).collect::<Vec<_>>(),
            "in_postgres": f.rows.len(),
        },
        "post": {
            "attempts": posted.tally.attempts,
            "retried_orders": posted.tally.retried_orders,
            "retries": posted.tally.attempts.saturating_sub(f.accepted.len() as u64),
            "statuses": statuses_json(&posted.tally.statuses),
            "transport_errors": posted.tally.transport_errors,
            "duplicate_client_ref": posted.duplicate_client_ref,
            "double_accepted": posted.double_accepted,
        },
        "quiescence": {
            "reached": quiet.reached, "waited_s": quiet.waited_s,
            "posting_done_s": r.posting_done_s, "quiet_at_s": r.quiet_at_s,
            "not_terminal": quiet.not_terminal, "unpublished": quiet.unpublished,
            "queues": quiet.queues, "approvals_done": quiet.approvals_done,
            "fulfilment_open": quiet.fulfilment_open,
            "approved_unfinished": quiet.approved_unfinished,
        },
        "approvals": {
            "synced_seen": r.approvals.seen.len(),
            "chosen": r.approvals.chosen.len(),
            "approved": r.approvals.approved.len(),
            "calls": r.approvals.calls,
            "failed_calls": r.approvals.failed_calls,
            "given_up": r.approvals.given_up.len(),
            "given_up_sample": r.approvals.given_up.iter().take(20)
                .map(|(id, e)| json!({"id": id, "error": e})).collect::<Vec<_>>(),
        },
        "fulfilment": f.fulfil.to_json(),
        "stopped_with_sigterm": r.stopped.iter()
            .map(|(name, pid, status, clean)| json!({"service": name, "pid": pid, "status": status, "clean": clean}))
            .collect::<Vec<_>>(),
        "classification": f.outcome.to_json(),
        "reconcile": {
            "counts": report.counts,
            "missing": report.missing.len(),
            "missing_failed": report.missing_failed.len(),
            "duplicated": report.duplicated.len(),
            "mismatched": report.mismatched.len(),
            "orphaned": report.orphaned.len(),
        },
        "dead_letters": {
            "total": f.letters.len(),
            "by_reason": classify::reasons(&f.letters),
            "poison_sent": r.poison_sent,
            "entries": f.letters.iter().take(100).collect::<Vec<_>>(),
        },
        "salesforce": {"stats_at_end": r.emulator_stats},
        "peak_rss_mib": common::rss_json(&r.rss),
        "table": t.to_json(),
    })
}

fn chart(m: &Measured<'_>) -> String {
    let (args, run) = (m.args, &m.run);
    let orders = args.orders as usize;
    timeline_chart(
        &format!(
            "seed {}; {} orders at {}/s; Salesforce {} ms + 0–{} ms per call",
            m.seed,
            thousands(orders as f64),
            args.rate,
            args.stack.latency_ms,
            args.stack.jitter_ms
        ),
        run.clock.started_wall,
        &m.found.rows,
        Fulfilment {
            approved_s: run.approvals.approved.values().copied().collect(),
            provisioned_at: &m.found.provisioned_at,
        },
        &run.events,
        run.quiet_at_s,
        orders,
    )
}

/// A duration as `--fault-gap` takes it back.
fn format_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The fulfilment loop's curves: approvals made (s since the start) and requests provisioned.
struct Fulfilment<'a> {
    approved_s: Vec<f64>,
    provisioned_at: &'a [DateTime<Utc>],
}

/// Accepted, synced, approved and provisioned orders over time, with the faults as bars in one
/// lane per kind.
fn timeline_chart(
    describe: &str,
    started: DateTime<Utc>,
    rows: &[OrderRow],
    fulfilment: Fulfilment<'_>,
    events: &[faults::Event],
    end_s: f64,
    orders: usize,
) -> String {
    let secs = |t: DateTime<Utc>| (t - started).num_milliseconds() as f64 / 1e3;
    let accepted = chart::cumulative(rows.iter().map(|r| secs(r.3)).collect(), 1500);
    let synced = chart::cumulative(rows.iter().filter_map(|r| r.4.map(secs)).collect(), 1500);
    let approved = chart::cumulative(fulfilment.approved_s, 1500);
    let provisioned = chart::cumulative(
        fulfilment.provisioned_at.iter().map(|t| secs(*t)).collect(),
        1500,
    );
    let lanes: Vec<&str> = FaultKind::LANES
        .iter()
        .map(|k| k.name())
        .chain(std::iter::once("poison"))
        .collect();
    let mut bands = Vec::new();
    let mut open: HashMap<usize, f64> = HashMap::new();
    for e in events {
        let lane = lanes.iter().position(|l| *l == e.fault).unwrap_or(0);
        match e.phase {
            "begin" => {
                open.insert(e.id, e.at_s);
                let instant = !matches!(
                    FaultKind::LANES.get(lane),
                    Some(k) if k.has_window()
                );
                if instant {
                    bands.push(Band {
                        x0: e.at_s,
                        x1: e.at_s,
                        lane,
                        color: if e.ok { chart::RED } else { chart::GREY },
                    });
                }
            }
            _ => {
                let x0 = open.remove(&e.id).unwrap_or(e.at_s);
                bands.push(Band {
                    x0,
                    x1: e.at_s,
                    lane,
                    color: if e.ok { chart::ORANGE } else { chart::GREY },
                });
            }
        }
    }
    chart::render(&Chart {
        title: "Chaos run: orders accepted, synced, approved and provisioned while faults hit"
            .into(),
        subtitle: describe.into(),
        x_label: "seconds since posting started".into(),
        y_label: "orders".into(),
        x_max: end_s.max(1.0) * 1.02,
        y_max: orders as f64 * 1.5,
        series: vec![
            Series {
                name: "accepted (created_at)".into(),
                color: chart::PURPLE,
                points: accepted,
                dashed: false,
            },
            Series {
                name: "synced (written to Salesforce)".into(),
                color: chart::BLUE,
                points: synced,
                dashed: false,
            },
            Series {
                name: "approved in Salesforce".into(),
                color: chart::ORANGE,
                points: approved,
                dashed: true,
            },
            Series {
                name: "provisioned (request decided)".into(),
                color: chart::GREEN,
                points: provisioned,
                dashed: false,
            },
        ],
        markers: Vec::new(),
        guides: Vec::new(),
        lanes: lanes.iter().map(|l| (*l).to_owned()).collect(),
        bands,
    })
}
