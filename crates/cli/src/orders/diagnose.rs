//! The one-line answer to "where is order X": read from what Postgres, the broker and
//! Salesforce said, in that order of trust. Postgres holds the order's sync state (written by
//! the status applier from the worker's reports); the broker says where its message waits; the
//! Salesforce records confirm or contradict a `synced`.

use chrono::{DateTime, Utc};
use orderbridge_domain::OrderStatus;

use super::postgres::Stored;
use super::queues::{Found, InQueues};
use super::salesforce::Records;

/// An unpublished event older than this means the relay is behind or not running.
const RELAY_STUCK_SECS: i64 = 60;

/// What the diagnosis reads.
pub struct Facts<'a> {
    pub stored: &'a Stored,
    /// `None`: the broker was not looked at (`--no-broker`, or it could not be reached).
    pub queues: Option<&'a InQueues>,
    /// `None`: Salesforce was not looked at.
    pub records: Option<&'a Records>,
    /// The worker's `WORKER_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    pub now: DateTime<Utc>,
}

/// The diagnosis: what happened to the order and, where something waits or failed, why and
/// what to do.
pub fn diagnose(f: &Facts<'_>) -> String {
    let o = &f.stored.order;
    let mut line = match o.sync_state.as_str() {
        "pending" => pending(f),
        "published" => published(f),
        "retrying" => retrying(f),
        "failed" => failed(f),
        "synced" => synced(f),
        other => format!("unknown sync state {other:?}"),
    };
    if let Some(business) = business(f) {
        line.push_str("; ");
        line.push_str(&business);
    }
    line
}

fn pending(f: &Facts<'_>) -> String {
    let Some(backlog) = &f.stored.backlog else {
        return "pending, but none of its events is unpublished (removed from the outbox?): \
                `POST /v1/orders/{id}/resync` writes a fresh one"
            .to_owned();
    };
    let mut s = match backlog.ahead {
        0 => "waiting in the outbox for the relay to publish it (next in line)".to_owned(),
        n => format!(
            "waiting in the outbox for the relay to publish it, behind {}",
            events(n)
        ),
    };
    if let Some(oldest) = backlog.oldest_at {
        let age = (f.now - oldest).num_seconds();
        if age > RELAY_STUCK_SECS {
            s.push_str(&format!(
                "; the oldest unpublished event is {} old: is an outbox-relay running and \
                 reaching the broker? (`orderbridge status`)",
                seconds(age)
            ));
        }
    }
    s
}

fn published(f: &Facts<'_>) -> String {
    // A report can lag behind the message: a copy already in a tier or the dead letters says
    // more than the state.
    if let Some(found) = f.queues.and_then(|q| q.found.first()) {
        return in_queue(f, found);
    }
    let since = f
        .stored
        .events
        .iter()
        .rev()
        .find_map(|e| e.published_at)
        .map(|t| format!(" {} ago", seconds((f.now - t).num_seconds())))
        .unwrap_or_default();
    let mut s = format!("published{since}; in the sync worker's queue or being written");
    if let Some(q) = f.queues {
        s.push_str(&format!(
            " ({} {}, {} ready)",
            q.work.queue,
            consumers(q.work.consumers),
            q.work.messages
        ));
        if q.work.consumers == 0 {
            s.push_str(": no sync worker is consuming it");
        }
    }
    s
}

fn retrying(f: &Facts<'_>) -> String {
    let o = &f.stored.order;
    if let Some(found) = f.queues.and_then(|q| q.found.first()) {
        return in_queue(f, found);
    }
    let mut s = format!(
        "retrying after {}, attempt {} of {}; its message is back in the work queue or being \
         written",
        error(
            o.last_error_code.as_deref(),
            o.last_error_message.as_deref()
        ),
        o.sync_attempts,
        f.max_attempts
    );
    if let Some(q) = f.queues
        && !q.complete()
    {
        s.push_str(" (not every retry message was looked at: --scan-limit)");
    }
    s
}

fn failed(f: &Facts<'_>) -> String {
    let o = &f.stored.order;
    let mut s = format!(
        "failed after {} attempt{}: {}",
        o.sync_attempts,
        if o.sync_attempts == 1 { "" } else { "s" },
        error(
            o.last_error_code.as_deref(),
            o.last_error_message.as_deref()
        )
    );
    let letter = f
        .queues
        .and_then(|q| q.found.iter().find(|m| m.tier.is_none()));
    match (f.queues, letter) {
        (_, Some(letter)) => s.push_str(&format!(
            "; dead letter {} in {}: fix the cause, then `orderbridge dlq replay {}` (or \
             `POST /v1/orders/{}/resync`)",
            letter.message_id, letter.queue, letter.message_id, o.id
        )),
        (Some(q), None) if q.complete() => s.push_str(&format!(
            "; no dead letter left (replayed or removed): fix the cause, then `POST \
             /v1/orders/{}/resync`",
            o.id
        )),
        _ => s.push_str(&format!(
            "; fix the cause, then `POST /v1/orders/{}/resync`",
            o.id
        )),
    }
    s
}

fn synced(f: &Facts<'_>) -> String {
    let o = &f.stored.order;
    let mut s = format!(
        "synced to Salesforce as {}",
        o.salesforce_id.as_deref().unwrap_or("(no id)")
    );
    if let Some(at) = o.synced_at {
        s.push_str(&format!(" {} ago", seconds((f.now - at).num_seconds())));
    }
    if let Some(r) = f.records {
        match r.orders.len() {
            0 => s.push_str(&format!(
                ", but Salesforce has no {} with this external id (deleted?): `orderbridge \
                 reconcile --fix` writes it again",
                r.order_object
            )),
            1 if o.salesforce_id.as_deref() != Some(r.orders[0].id.as_str()) => {
                s.push_str(&format!(
                    ", but the {} with this external id is {}: `orderbridge reconcile` says more",
                    r.order_object, r.orders[0].id
                ));
            }
            1 => {}
            n => s.push_str(&format!(
                ", but Salesforce holds {n} {} records with this external id: delete the extra ones",
                r.order_object
            )),
        }
    }
    s
}

/// A copy of the order's message in a retry tier or the dead letters.
fn in_queue(f: &Facts<'_>, m: &Found) -> String {
    let what = error(m.error_code.as_deref(), m.error_message.as_deref());
    let attempt = m
        .attempts
        .map(|a| format!(", attempt {a} of {}", f.max_attempts))
        .unwrap_or_default();
    match &m.tier {
        Some(tier) => {
            let next = m
                .last_failure_at
                .zip(humantime::parse_duration(tier).ok())
                .and_then(|(t, d)| chrono::Duration::from_std(d).ok().map(|d| t + d))
                .map(|t| {
                    let secs = (t - f.now).num_seconds();
                    if secs > 0 {
                        format!("; next attempt in about {}", seconds(secs))
                    } else {
                        "; next attempt due now".to_owned()
                    }
                })
                .unwrap_or_default();
            format!("waiting in retry tier {tier} after {what}{attempt}{next}")
        }
        None => format!(
            "dead-lettered ({}) after {what}{attempt}: message {} in {}",
            m.reason.as_deref().unwrap_or("by the broker"),
            m.message_id,
            m.queue
        ),
    }
}

/// The business status when Salesforce or fulfilment has decided something.
fn business(f: &Facts<'_>) -> Option<String> {
    let o = &f.stored.order;
    let mut parts = Vec::new();
    if o.status != OrderStatus::SUBMITTED {
        let last = f.stored.history.iter().rev().find(|h| h.status == o.status);
        parts.push(match last {
            Some(h) => format!(
                "status {} since {} ago (from {})",
                o.status,
                seconds((f.now - h.at).num_seconds()),
                h.source
            ),
            None => format!("status {}", o.status),
        });
    }
    if let Some(fl) = &f.stored.fulfilment {
        let mut s = format!("fulfilment {}", fl.state);
        if let Some(reason) = &fl.reason {
            s.push_str(&format!(" ({})", crate::render::clean(reason)));
        }
        if fl.written_back_at.is_none() && matches!(fl.state.as_str(), "provisioned" | "failed") {
            s.push_str(", result not yet written back to Salesforce");
        }
        parts.push(s);
    }
    if let Some(r) = f.records
        && let Some(status) = r.orders.first().and_then(|r| r.status.as_deref())
    {
        parts.push(format!(
            "Salesforce Status {}",
            crate::render::clean(status)
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn error(code: Option<&str>, message: Option<&str>) -> String {
    let clean = crate::render::clean;
    match (code, message) {
        (Some(c), Some(m)) if !m.is_empty() => format!("{} ({})", clean(c), clean(m)),
        (Some(c), _) => clean(c),
        (None, Some(m)) => clean(m),
        (None, None) => "an unrecorded error".to_owned(),
    }
}

fn events(n: i64) -> String {
    match n {
        1 => "1 event".to_owned(),
        n => format!("{n} events"),
    }
}

fn consumers(n: u32) -> String {
    if n == 1 {
        "1 consumer".to_owned()
    } else {
        format!("{n} consumers")
    }
}

/// A rough, readable age: `42s`, `3m`, `2h`, `5d`.
pub(crate) fn seconds(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::orders::postgres::{Backlog, OrderRow, OutboxEvent};
    use crate::orders::queues::Looked;
    use crate::orders::salesforce::Record;
    use orderbridge_domain::StatusEntry;
    use uuid::Uuid;

    fn now() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn stored(state: &str) -> Stored {
        Stored {
            order: OrderRow {
                id: Uuid::nil(),
                client_id: Uuid::nil(),
                client_ref: "PO-1".into(),
                status: OrderStatus::SUBMITTED.into(),
                sync_state: state.into(),
                salesforce_id: None,
                sync_attempts: 0,
                last_error_code: None,
                last_error_message: None,
                synced_at: None,
                sync_event_version: 1,
                version: 1,
                created_at: now() - chrono::Duration::minutes(5),
                updated_at: now(),
            },
            history: Vec::new(),
            events: vec![OutboxEvent {
                event_id: Uuid::nil(),
                event_type: "order.submitted".into(),
                position: 7,
                created_at: now() - chrono::Duration::minutes(5),
                published_at: None,
            }],
            backlog: None,
            fulfilment: None,
        }
    }

    fn facts<'a>(
        stored: &'a Stored,
        queues: Option<&'a InQueues>,
        records: Option<&'a Records>,
    ) -> Facts<'a> {
        Facts {
            stored,
            queues,
            records,
            max_attempts: 5,
            now: now(),
        }
    }

    fn queues(found: Vec<Found>, consumers: u32) -> InQueues {
        InQueues {
            work: Looked {
                queue: "ob.sf-sync".into(),
                messages: 3,
                consumers,
                looked_at: 0,
            },
            looked: vec![Looked {
                queue: "ob.dead-letters".into(),
                messages: 1,
                consumers: 0,
                looked_at: 1,
            }],
            found,
        }
    }

    #[test]
    fn pending_names_the_backlog_and_a_stuck_relay() {
        let mut s = stored("pending");
        s.backlog = Some(Backlog {
            ahead: 12,
            oldest_at: Some(now() - chrono::Duration::minutes(10)),
        });
        let d = diagnose(&facts(&s, None, None));
        assert!(d.starts_with("waiting in the outbox"), "{d}");
        assert!(d.contains("behind 12 events;"), "{d}");
        assert!(d.contains("10m old"), "{d}");
        s.backlog = Some(Backlog {
            ahead: 0,
            oldest_at: Some(now()),
        });
        let d = diagnose(&facts(&s, None, None));
        assert!(!d.contains("relay running"), "{d}");
    }

    #[test]
    fn published_without_a_consumer_says_so() {
        let mut s = stored("published");
        s.events[0].published_at = Some(now() - chrono::Duration::seconds(30));
        let q = queues(Vec::new(), 0);
        let d = diagnose(&facts(&s, Some(&q), None));
        assert!(d.starts_with("published 30s ago"), "{d}");
        assert!(d.contains("no sync worker is consuming it"), "{d}");
        let q = queues(Vec::new(), 2);
        let d = diagnose(&facts(&s, Some(&q), None));
        assert!(d.contains("2 consumers, 3 ready)"), "{d}");
    }

    #[test]
    fn retrying_in_a_tier_gives_tier_error_attempt_and_next_attempt() {
        let mut s = stored("retrying");
        s.order.sync_attempts = 2;
        s.order.last_error_code = Some("UNABLE_TO_LOCK_ROW".into());
        let q = queues(
            vec![Found {
                queue: "ob.sf-sync.retry.1m".into(),
                tier: Some("1m".into()),
                message_id: "e1".into(),
                attempts: Some(2),
                reason: None,
                error_code: Some("UNABLE_TO_LOCK_ROW".into()),
                error_message: Some("unable to obtain exclusive access".into()),
                last_failure_at: Some(now() - chrono::Duration::seconds(20)),
            }],
            1,
        );
        let d = diagnose(&facts(&s, Some(&q), None));
        assert_eq!(
            d,
            "waiting in retry tier 1m after UNABLE_TO_LOCK_ROW (unable to obtain exclusive \
             access), attempt 2 of 5; next attempt in about 40s"
        );
        // Not found in a tier: back in the work queue.
        let q = queues(Vec::new(), 1);
        let d = diagnose(&facts(&s, Some(&q), None));
        assert!(
            d.starts_with("retrying after UNABLE_TO_LOCK_ROW, attempt 2 of 5"),
            "{d}"
        );
    }

    #[test]
    fn failed_points_at_its_dead_letter_or_at_a_resync() {
        let mut s = stored("failed");
        s.order.sync_attempts = 1;
        s.order.last_error_code = Some("UNKNOWN_SKU".into());
        s.order.last_error_message = Some("no product\x1b[31m".into());
        let letter = Found {
            queue: "ob.dead-letters".into(),
            tier: None,
            message_id: "e1".into(),
            attempts: Some(1),
            reason: Some("permanent_error".into()),
            error_code: Some("UNKNOWN_SKU".into()),
            error_message: None,
            last_failure_at: None,
        };
        let q = queues(vec![letter], 1);
        let d = diagnose(&facts(&s, Some(&q), None));
        assert!(
            d.starts_with("failed after 1 attempt: UNKNOWN_SKU (no product\\u{1b}[31m)"),
            "{d}"
        );
        assert!(d.contains("`orderbridge dlq replay e1`"), "{d}");
        let q = queues(Vec::new(), 1);
        let d = diagnose(&facts(&s, Some(&q), None));
        assert!(d.contains("no dead letter left"), "{d}");
        let d = diagnose(&facts(&s, None, None));
        assert!(d.contains("then `POST /v1/orders/"), "{d}");
    }

    #[test]
    fn synced_is_checked_against_the_records_and_shows_the_business_status() {
        let mut s = stored("synced");
        s.order.salesforce_id = Some("801A".into());
        s.order.synced_at = Some(now() - chrono::Duration::seconds(5));
        let records = |ids: &[&str]| Records {
            target: None,
            order_object: "Order".into(),
            orders: ids
                .iter()
                .map(|id| Record {
                    id: (*id).into(),
                    external_id: "x".into(),
                    status: Some("Activated".into()),
                })
                .collect(),
            item_object: None,
            items: Vec::new(),
        };
        let one = records(&["801A"]);
        assert_eq!(
            diagnose(&facts(&s, None, Some(&one))),
            "synced to Salesforce as 801A 5s ago; Salesforce Status Activated"
        );
        let none = records(&[]);
        assert!(diagnose(&facts(&s, None, Some(&none))).contains("reconcile --fix"));
        let other = records(&["801B"]);
        assert!(diagnose(&facts(&s, None, Some(&other))).contains("is 801B"));

        s.order.status = "activated".into();
        s.history.push(StatusEntry {
            status: "activated".into(),
            at: now() - chrono::Duration::minutes(3),
            source: "salesforce".into(),
        });
        assert_eq!(
            diagnose(&facts(&s, None, None)),
            "synced to Salesforce as 801A 5s ago; status activated since 3m ago (from salesforce)"
        );
    }
}
