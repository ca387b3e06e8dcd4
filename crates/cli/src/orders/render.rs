//! `orders show` as text: one section per place looked, then the diagnosis. Outside data
//! (Salesforce errors, header values) is made safe to print.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{Section, Shown};
use crate::render::clean;

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn text(s: &Shown) -> String {
    let mut out = String::new();
    let o = &s.stored.order;
    let _ = writeln!(out, "order {}", o.id);
    let _ = writeln!(
        out,
        "  client         {} (client_ref {})",
        o.client_id,
        clean(&o.client_ref)
    );
    let _ = writeln!(out, "  created        {}", time(o.created_at));
    let _ = writeln!(out, "  status         {}", clean(&o.status));
    let _ = writeln!(
        out,
        "  sync state     {} (event version {}, {} attempt{})",
        o.sync_state,
        o.sync_event_version,
        o.sync_attempts,
        if o.sync_attempts == 1 { "" } else { "s" }
    );
    if let Some(id) = &o.salesforce_id {
        let at = o
            .synced_at
            .map(|t| format!(", synced {}", time(t)))
            .unwrap_or_default();
        let _ = writeln!(out, "  salesforce id  {}{at}", clean(id));
    }
    if o.last_error_code.is_some() || o.last_error_message.is_some() {
        let _ = writeln!(
            out,
            "  last error     {}: {}",
            clean(o.last_error_code.as_deref().unwrap_or("-")),
            clean(o.last_error_message.as_deref().unwrap_or(""))
        );
    }

    let _ = writeln!(out, "history");
    for h in &s.stored.history {
        let _ = writeln!(out, "  {}  {} ({})", time(h.at), clean(&h.status), h.source);
    }

    let _ = writeln!(out, "outbox");
    if s.stored.events.is_empty() {
        let _ = writeln!(
            out,
            "  no events (published ones are removed after RELAY_RETENTION)"
        );
    }
    for e in &s.stored.events {
        let published = match e.published_at {
            Some(t) => format!("published {}", time(t)),
            None => "unpublished".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {}  {}  written {}  {published}",
            e.event_id,
            e.event_type,
            time(e.created_at)
        );
    }
    if let Some(b) = &s.stored.backlog {
        let oldest = b
            .oldest_at
            .map(|t| format!(", oldest written {}", time(t)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} unpublished event(s) of other orders ahead{oldest}",
            b.ahead
        );
    }

    if let Some(f) = &s.stored.fulfilment {
        let _ = writeln!(out, "fulfilment");
        let _ = writeln!(
            out,
            "  {}  {}, {} call(s), requested {}{}{}",
            f.id,
            f.state,
            f.attempts,
            time(f.created_at),
            f.reason
                .as_deref()
                .map(|r| format!(", reason: {}", clean(r)))
                .unwrap_or_default(),
            f.written_back_at
                .map(|t| format!(", written back {}", time(t)))
                .unwrap_or_default()
        );
    }

    let _ = writeln!(out, "broker");
    match &s.broker {
        Section::Found(q) => {
            let _ = writeln!(
                out,
                "  {:<40} {:>6} ready, {} consumer(s) (counted, not looked through)",
                q.work.queue, q.work.messages, q.work.consumers
            );
            for l in &q.looked {
                let partial = if l.looked_at < l.messages {
                    format!(" (looked at {}: --scan-limit)", l.looked_at)
                } else {
                    String::new()
                };
                let _ = writeln!(out, "  {:<40} {:>6} ready{partial}", l.queue, l.messages);
            }
            if q.found.is_empty() {
                let _ = writeln!(
                    out,
                    "  none of its messages in a retry tier or the dead letters"
                );
            }
            for m in &q.found {
                let _ = writeln!(
                    out,
                    "  found {} in {}: attempts {}, {}{}",
                    m.message_id,
                    m.queue,
                    m.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    clean(
                        m.error_code
                            .as_deref()
                            .or(m.reason.as_deref())
                            .unwrap_or("-")
                    ),
                    m.error_message
                        .as_deref()
                        .map(|e| format!(" ({})", clean(e)))
                        .unwrap_or_default()
                );
            }
        }
        Section::Skipped => {
            let _ = writeln!(out, "  not looked at (--no-broker)");
        }
        Section::Unavailable { error } => {
            let _ = writeln!(out, "  unavailable: {error}");
        }
    }

    match &s.salesforce {
        Section::Found(r) if r.target.is_some() => {
            let _ = writeln!(
                out,
                "salesforce (target {})",
                r.target.as_deref().unwrap_or_default()
            );
        }
        _ => {
            let _ = writeln!(out, "salesforce");
        }
    }
    match &s.salesforce {
        Section::Found(r) => {
            if r.orders.is_empty() {
                let _ = writeln!(out, "  no {} with this external id", r.order_object);
            }
            for rec in &r.orders {
                let status = rec
                    .status
                    .as_deref()
                    .map(|st| format!(", Status {}", clean(st)))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {} {}{status}", r.order_object, clean(&rec.id));
            }
            if let Some(object) = &r.item_object {
                let _ = writeln!(out, "  {} item record(s) ({object})", r.items.len());
            }
        }
        Section::Skipped => {
            let _ = writeln!(out, "  not asked (--no-salesforce)");
        }
        Section::Unavailable { error } => {
            let _ = writeln!(out, "  unavailable: {error}");
        }
    }

    let _ = writeln!(out, "diagnosis: {}", s.diagnosis);
    out
}
