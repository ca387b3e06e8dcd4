//! `status` as text: services, database, broker, then the problems.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::services::{Health, Reading};
use super::{QueueKind, Source, Status};
use crate::orders::seconds;

fn age(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| seconds((now - t).num_seconds()))
}

pub(super) fn text(s: &Status) -> String {
    let mut out = String::new();
    let now = s.checked_at;
    let _ = writeln!(out, "services");
    for svc in &s.services {
        let health = match &svc.health {
            Health::Ready => "ready".to_owned(),
            Health::NotReady { status } => format!("NOT READY (HTTP {status})"),
            Health::Unreachable { error } => format!("DOWN: {error}"),
        };
        let detail = svc.reading.as_ref().map(reading).unwrap_or_default();
        let _ = writeln!(out, "  {:<18} {:<26} {health}{detail}", svc.name, svc.url);
    }

    let _ = writeln!(out, "database");
    match &s.database {
        Source::Found(d) => {
            let _ = writeln!(
                out,
                "  outbox        {} unpublished, oldest {}",
                d.outbox.unpublished,
                age(now, d.outbox.oldest_at)
            );
            for t in &d.subscriber.topics {
                let _ = writeln!(
                    out,
                    "  subscriber    {}: last event {} ago",
                    crate::render::clean(&t.topic),
                    age(now, t.last_event_at)
                );
            }
            let _ = writeln!(
                out,
                "  subscriber    {} open gap(s), {} unreadable event(s) kept in pubsub_dead_letters",
                d.subscriber.open_gaps, d.subscriber.dead_letters
            );
            let _ = writeln!(
                out,
                "  fulfilment    {} open (oldest {}), {} result(s) not yet written back",
                d.fulfilment.open,
                age(now, d.fulfilment.oldest_open_at),
                d.fulfilment.unwritten
            );
        }
        Source::Skipped => {
            let _ = writeln!(out, "  not looked at");
        }
        Source::Unavailable { error } => {
            let _ = writeln!(out, "  UNAVAILABLE: {error}");
        }
    }

    let _ = writeln!(out, "broker");
    match &s.broker {
        Source::Found(q) => {
            let width = q.queues.iter().map(|q| q.queue.len()).max().unwrap_or(0);
            for queue in &q.queues {
                let consumers = match queue.kind {
                    QueueKind::Work => format!(", {} consumer(s)", queue.consumers),
                    QueueKind::Retry => " (retry tier)".to_owned(),
                    QueueKind::DeadLetters => " (dead letters)".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {:<width$} {:>7} ready{consumers}",
                    queue.queue, queue.messages
                );
            }
        }
        Source::Skipped => {
            let _ = writeln!(out, "  not looked at (--no-broker)");
        }
        Source::Unavailable { error } => {
            let _ = writeln!(out, "  UNAVAILABLE: {error}");
        }
    }

    if s.problems.is_empty() {
        let _ = writeln!(out, "no problems");
    } else {
        let _ = writeln!(out, "problems");
        for p in &s.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

/// The few figures that say most about a service, after its health.
fn reading(r: &Reading) -> String {
    let mut parts = Vec::new();
    if let Some(n) = r.orders_created_total {
        parts.push(format!("{n} orders accepted"));
    }
    if let (Some(led), Some(total)) = (&r.partitions_led, r.partitions) {
        let led: Vec<String> = led.iter().map(u32::to_string).collect();
        parts.push(format!("leads partition(s) [{}] of {total}", led.join(",")));
    }
    if let Some(p) = r.published_total {
        parts.push(format!("{p} published"));
    }
    if let Some(paused) = r.paused {
        parts.push(if paused {
            format!(
                "breaker OPEN ({})",
                r.pause_reason.as_deref().unwrap_or("reason unknown")
            )
        } else {
            "breaker closed".to_owned()
        });
    }
    if let Some(w) = r.window {
        parts.push(format!("{w} batches in flight at most"));
    }
    if let (Some(used), Some(max)) = (r.api_used, r.api_max)
        && max > 0.0
    {
        parts.push(format!("API {used}/{max}"));
    }
    if let Some((up, total)) = r.topics_subscribed {
        parts.push(format!("{up}/{total} topics subscribed"));
    }
    if let Some(lag) = r.lag_seconds {
        parts.push(format!("lag {lag:.1} s"));
    }
    if r.broker_up == Some(false) {
        parts.push("no broker session".to_owned());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  {}", parts.join(", "))
    }
}
