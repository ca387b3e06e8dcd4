//! The judgement: what in a [`super::Status`] needs a person, in words that say what to run next.
//! The thresholds are the alert rules' (`ops/prometheus/alerts.yml`), so `status` and the pager
//! agree.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::services::{Health, ServiceStatus};
use super::{Database, QueueKind, Queues, Source};
use crate::orders::seconds;

/// When a figure becomes a problem.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// OutboxBacklogOld.
    pub outbox_age_limit: chrono::Duration,
    /// SalesforceApiBudgetHigh: share of the org's daily API requests used.
    pub api_budget_share: f64,
    /// SubscriberLagHigh.
    pub subscriber_lag_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            outbox_age_limit: chrono::Duration::seconds(60),
            api_budget_share: 0.8,
            subscriber_lag_seconds: 60.0,
        }
    }
}

/// Every problem found, most basic first (unreachable sources before what they would have said).
pub fn problems(
    services: &[ServiceStatus],
    database: &Source<Database>,
    queues: &Source<Queues>,
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Source::Unavailable { error } = database {
        out.push(format!("Postgres cannot be read: {error}"));
    }
    if let Source::Unavailable { error } = queues {
        out.push(format!("the broker cannot be read: {error}"));
    }
    for s in services {
        service(s, t, &mut out);
    }
    partitions(services, &mut out);
    if let Some(d) = database.found() {
        if let Some(oldest) = d.outbox.oldest_at
            && now - oldest > t.outbox_age_limit
        {
            out.push(format!(
                "the oldest of {} unpublished outbox event(s) is {} old: is an outbox-relay \
                 leading every partition and reaching the broker?",
                d.outbox.unpublished,
                seconds((now - oldest).num_seconds())
            ));
        }
        if d.subscriber.open_gaps > 0 {
            let from = d
                .subscriber
                .oldest_gap_from
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "<missed_from>".to_owned());
            out.push(format!(
                "the Salesforce subscriber may have missed status changes ({} open gap(s) in \
                 pubsub_gaps): `orderbridge reconcile statuses --since {from}`",
                d.subscriber.open_gaps
            ));
        }
    }
    if let Some(q) = queues.found() {
        for queue in &q.queues {
            match queue.kind {
                QueueKind::DeadLetters if queue.messages > 0 => out.push(format!(
                    "{} dead letter(s) in {}: `orderbridge dlq list`",
                    queue.messages, queue.queue
                )),
                QueueKind::Work if queue.messages > 0 && queue.consumers == 0 => {
                    out.push(format!(
                        "{} message(s) wait in {} and nothing consumes it",
                        queue.messages, queue.queue
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

fn service(s: &ServiceStatus, t: &Thresholds, out: &mut Vec<String>) {
    let r = s.reading.as_ref();
    match &s.health {
        Health::Unreachable { error } => {
            out.push(format!("{} ({}) does not answer: {error}", s.name, s.url));
            return;
        }
        Health::NotReady { status } => {
            // A paused worker is not ready on purpose: say why instead.
            if r.and_then(|r| r.paused) != Some(true) {
                let why = if r.and_then(|r| r.broker_up) == Some(false) {
                    ": no broker session"
                } else {
                    ""
                };
                out.push(format!("{} is not ready (HTTP {status}){why}", s.name));
            }
        }
        Health::Ready => {}
    }
    let Some(r) = r else { return };
    if r.paused == Some(true) {
        let why = match r.pause_reason.as_deref() {
            Some("outage") => "Salesforce fails or does not answer; it resumes by itself",
            Some("budget") => "the Salesforce API budget is spent",
            Some("blocked") => {
                "Salesforce refuses its calls as a whole (credentials, configuration): a person \
                 must act, see its log"
            }
            _ => "see its log",
        };
        out.push(format!(
            "{}: circuit breaker open, consumption paused: {why}",
            s.name
        ));
    }
    if let (Some(used), Some(max)) = (r.api_used, r.api_max)
        && max > 0.0
        && used / max > t.api_budget_share
    {
        out.push(format!(
            "{}: {used} of {max} Salesforce API requests of the 24 h window used ({:.0} %)",
            s.name,
            used / max * 100.0
        ));
    }
    if let Some((up, total)) = r.topics_subscribed
        && up < total
    {
        out.push(format!(
            "{}: {} of {total} Pub/Sub topic(s) not subscribed",
            s.name,
            total - up
        ));
    }
    if let Some(lag) = r.lag_seconds
        && lag > t.subscriber_lag_seconds
    {
        out.push(format!(
            "{}: {lag:.0} s behind Salesforce's changes",
            s.name
        ));
    }
}

/// Every outbox partition needs a leader among the relays that answered.
fn partitions(services: &[ServiceStatus], out: &mut Vec<String>) {
    let relays: Vec<_> = services
        .iter()
        .filter_map(|s| s.reading.as_ref())
        .filter(|r| r.partitions.is_some())
        .collect();
    let Some(total) = relays.iter().filter_map(|r| r.partitions).max() else {
        return;
    };
    let led: BTreeSet<u32> = relays
        .iter()
        .flat_map(|r| r.partitions_led.iter().flatten().copied())
        .collect();
    let unled: Vec<String> = (0..total)
        .filter(|p| !led.contains(p))
        .map(|p| p.to_string())
        .collect();
    if !unled.is_empty() {
        out.push(format!(
            "outbox partition(s) {} of {total} have no relay publishing them (of the relays \
             asked)",
            unled.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::status::services::Reading;
    use crate::status::{Fulfilment, Outbox, QueueDepth, Subscriber};

    fn now() -> DateTime<Utc> {
        "2026-12-04T12:00:00Z".parse().unwrap()
    }

    fn svc(name: &str, health: Health, reading: Option<Reading>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            url: format!("http://{name}"),
            health,
            reading,
        }
    }

    fn db(oldest_secs: Option<i64>, gaps: i64) -> Source<Database> {
        Source::Found(Database {
            outbox: Outbox {
                unpublished: i64::from(oldest_secs.is_some()) * 7,
                oldest_at: oldest_secs.map(|s| now() - chrono::Duration::seconds(s)),
            },
            subscriber: Subscriber {
                topics: Vec::new(),
                open_gaps: gaps,
                oldest_gap_from: (gaps > 0).then(|| now() - chrono::Duration::hours(80)),
                dead_letters: 0,
            },
            fulfilment: Fulfilment {
                open: 0,
                oldest_open_at: None,
                unwritten: 0,
            },
        })
    }

    fn queue(name: &str, kind: QueueKind, messages: u32, consumers: u32) -> QueueDepth {
        QueueDepth {
            queue: name.into(),
            kind,
            messages,
            consumers,
        }
    }

    #[test]
    fn a_healthy_system_has_no_problems() {
        let relay = Reading {
            partitions: Some(2),
            partitions_led: Some(vec![0, 1]),
            ..Reading::default()
        };
        let worker = Reading {
            paused: Some(false),
            api_used: Some(10.0),
            api_max: Some(1000.0),
            ..Reading::default()
        };
        let services = [
            svc("outbox-relay", Health::Ready, Some(relay)),
            svc("sync-worker", Health::Ready, Some(worker)),
        ];
        let queues = Source::Found(Queues {
            queues: vec![
                queue("ns.sf-sync", QueueKind::Work, 40, 1),
                queue("ns.sf-sync.retry.5s", QueueKind::Retry, 3, 0),
                queue("ns.dead-letters", QueueKind::DeadLetters, 0, 0),
            ],
        });
        let p = problems(
            &services,
            &db(Some(5), 0),
            &queues,
            &Thresholds::default(),
            now(),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn each_problem_is_named_with_what_to_do() {
        let relay_a = Reading {
            partitions: Some(4),
            partitions_led: Some(vec![0]),
            ..Reading::default()
        };
        let relay_b = Reading {
            partitions: Some(4),
            partitions_led: Some(vec![2]),
            ..Reading::default()
        };
        let worker = Reading {
            paused: Some(true),
            pause_reason: Some("budget".into()),
            api_used: Some(950.0),
            api_max: Some(1000.0),
            ..Reading::default()
        };
        let subscriber = Reading {
            topics_subscribed: Some((1, 2)),
            lag_seconds: Some(300.0),
            ..Reading::default()
        };
        let services = [
            svc("outbox-relay", Health::Ready, Some(relay_a)),
            svc("outbox-relay-2", Health::Ready, Some(relay_b)),
            svc(
                "sync-worker",
                Health::NotReady { status: 503 },
                Some(worker),
            ),
            svc("sf-subscriber", Health::Ready, Some(subscriber)),
            svc(
                "order-api",
                Health::Unreachable {
                    error: "connection refused".into(),
                },
                None,
            ),
        ];
        let queues = Source::Found(Queues {
            queues: vec![
                queue("ns.sf-sync", QueueKind::Work, 40, 0),
                queue("ns.sf-sync.retry.5s", QueueKind::Retry, 3, 0),
                queue("ns.dead-letters", QueueKind::DeadLetters, 2, 0),
            ],
        });
        let p = problems(
            &services,
            &db(Some(600), 1),
            &queues,
            &Thresholds::default(),
            now(),
        );
        let expected = [
            "sync-worker: circuit breaker open, consumption paused: the Salesforce API budget is spent",
            "sync-worker: 950 of 1000 Salesforce API requests of the 24 h window used (95 %)",
            "sf-subscriber: 1 of 2 Pub/Sub topic(s) not subscribed",
            "sf-subscriber: 300 s behind Salesforce's changes",
            "order-api (http://order-api) does not answer: connection refused",
            "outbox partition(s) 1, 3 of 4 have no relay publishing them (of the relays asked)",
            "the oldest of 7 unpublished outbox event(s) is 10m old: is an outbox-relay leading every partition and reaching the broker?",
            "the Salesforce subscriber may have missed status changes (1 open gap(s) in pubsub_gaps): `orderbridge reconcile statuses --since 2026-12-01T04:00:00Z`",
            "40 message(s) wait in ns.sf-sync and nothing consumes it",
            "2 dead letter(s) in ns.dead-letters: `orderbridge dlq list`",
        ];
        assert_eq!(p, expected);
    }

    #[test]
    fn unreachable_sources_are_problems() {
        let p = problems(
            &[],
            &Source::Unavailable {
                error: "connection refused".into(),
            },
            &Source::Unavailable {
                error: "timed out".into(),
            },
            &Thresholds::default(),
            now(),
        );
        assert_eq!(
            p,
            [
                "Postgres cannot be read: connection refused",
                "the broker cannot be read: timed out"
            ]
        );
        // Skipped is not a problem.
        let p = problems(
            &[],
            &db(None, 0),
            &Source::Skipped,
            &Thresholds::default(),
            now(),
        );
        assert!(p.is_empty());
    }
}
