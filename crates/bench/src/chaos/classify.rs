//! Every order's fate after a chaos run, the way Jepsen classifies queue messages: from what
//! the client was told (accepted ids), what Postgres holds, what `reconcile` found in
//! Salesforce, and what waits in the dead-letter queue.

use std::collections::{BTreeMap, HashMap, HashSet};

use orderbridge_cli::reconcile::{Problem, Report};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::faults::POISON_PREFIX;

/// One dead letter, as `sync-worker dlq list --json` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub origin_queue: Option<String>,
    /// The order whose event it is (by the outbox's event id), if any.
    pub order_id: Option<Uuid>,
}

impl DeadLetter {
    pub fn is_poison(&self) -> bool {
        self.message_id.starts_with(POISON_PREFIX)
    }
}

/// An order in Postgres: its sync state and last error code.
#[derive(Debug, Clone)]
pub struct Stored {
    pub state: String,
    pub error_code: Option<String>,
}

pub struct Inputs<'a> {
    /// Order ids the API answered 201 for.
    pub accepted: &'a HashSet<Uuid>,
    /// Every order in the run's database.
    pub postgres: &'a HashMap<Uuid, Stored>,
    pub report: &'a Report,
    pub dead_letters: &'a [DeadLetter],
    /// Message ids of the poison messages published.
    pub poison_sent: &'a [String],
}

/// The classes. Sorted lists; the check is [`Outcome::clean`].
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub accepted: usize,
    /// Accepted, synced, exactly one Salesforce order with all its items, nothing amiss.
    pub ok: usize,
    /// Accepted (or stored) but in Salesforce neither written nor failed.
    pub lost: Vec<Uuid>,
    /// External ids (orders and items) held by more than one Salesforce record.
    pub duplicated: Vec<String>,
    /// Salesforce records for no accepted order (their external ids).
    pub unexpected: Vec<String>,
    /// Accepted orders in sync state `failed`, with their error code.
    pub failed: Vec<(Uuid, String)>,
    /// Dead letters that are not injected poison (real orders' events, status reports).
    pub real_dead_letters: Vec<DeadLetter>,
    /// Poison messages published and found dead-lettered.
    pub poison_dead_lettered: usize,
    /// Poison messages published but not in the dead-letter queue.
    pub poison_missing: Vec<String>,
    /// Accepted orders neither synced nor failed.
    pub not_terminal: Vec<(Uuid, String)>,
    /// Orders whose Salesforce record is there but differs: another Salesforce id than the one
    /// stored, or a wrong item count.
    pub mismatched: Vec<Uuid>,
    /// Orders in Postgres the client never got a 201 for (every POST is retried until it is
    /// accepted, so there should be none).
    pub unacknowledged: Vec<Uuid>,
}

impl Outcome {
    /// Nothing lost, duplicated, unexpected, failed (poison aside), mismatched or unfinished,
    /// and every poison message dead-lettered.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.failed.is_empty()
            && self.real_dead_letters.is_empty()
            && self.poison_missing.is_empty()
            && self.not_terminal.is_empty()
            && self.mismatched.is_empty()
            && self.ok == self.accepted
    }

    pub fn to_json(&self) -> Value {
        const SAMPLE: usize = 20;
        let ids = |v: &[Uuid]| {
            v.iter()
                .take(SAMPLE)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
        };
        json!({
            "clean": self.clean(),
            "accepted": self.accepted,
            "ok": self.ok,
            "lost": self.lost.len(),
            "duplicated": self.duplicated.len(),
            "unexpected": self.unexpected.len(),
            "failed": self.failed.len(),
            "real_dead_letters": self.real_dead_letters.len(),
            "poison_dead_lettered": self.poison_dead_lettered,
            "poison_missing": self.poison_missing,
            "not_terminal": self.not_terminal.len(),
            "mismatched": self.mismatched.len(),
            "unacknowledged": self.unacknowledged.len(),
            "lost_sample": ids(&self.lost),
            "duplicated_sample": self.duplicated.iter().take(SAMPLE).collect::<Vec<_>>(),
            "unexpected_sample": self.unexpected.iter().take(SAMPLE).collect::<Vec<_>>(),
            "failed_sample": self.failed.iter().take(SAMPLE)
                .map(|(id, code)| json!({"id": id, "code": code})).collect::<Vec<_>>(),
            "real_dead_letters_sample": self.real_dead_letters.iter().take(SAMPLE).collect::<Vec<_>>(),
            "not_terminal_sample": self.not_terminal.iter().take(SAMPLE)
                .map(|(id, state)| json!({"id": id, "state": state})).collect::<Vec<_>>(),
            "mismatched_sample": ids(&self.mismatched),
            "unacknowledged_sample": ids(&self.unacknowledged),
        })
    }
}

pub fn classify(input: &Inputs<'_>) -> Outcome {
    let report = input.report;
    let mut out = Outcome {
        accepted: input.accepted.len(),
        ..Outcome::default()
    };
    // Orders with no Salesforce record: reconcile's missing (not failed) and missing_failed.
    let absent: HashSet<Uuid> = report
        .missing
        .iter()
        .chain(&report.missing_failed)
        .map(|m| m.order_id)
        .collect();

    let mut lost: HashSet<Uuid> = report.missing.iter().map(|m| m.order_id).collect();
    // A 201 for an order Postgres does not have is lost too.
    lost.extend(
        input
            .accepted
            .iter()
            .filter(|id| !input.postgres.contains_key(id)),
    );
    out.lost = sorted(lost.iter().copied());

    let mut duplicated_orders = HashSet::new();
    out.duplicated = report
        .duplicated
        .iter()
        .map(|d| {
            duplicated_orders.insert(d.order_id);
            d.external_id.clone()
        })
        .collect();
    out.duplicated.sort();

    out.unacknowledged = sorted(
        input
            .postgres
            .keys()
            .filter(|id| !input.accepted.contains(id))
            .copied(),
    );
    let mut unexpected: Vec<String> = report
        .orphaned
        .iter()
        .map(|o| o.external_id.clone())
        .collect();
    unexpected.extend(
        out.unacknowledged
            .iter()
            .filter(|id| !absent.contains(id))
            .map(Uuid::to_string),
    );
    unexpected.sort();
    unexpected.dedup();
    out.unexpected = unexpected;

    let mut mismatched = HashSet::new();
    for m in &report.mismatched {
        // "Record there but not synced" is counted by state below (failed or not terminal).
        if m.problems.iter().any(|p| !matches!(p, Problem::NotSynced)) {
            mismatched.insert(m.order_id);
        }
    }
    out.mismatched = sorted(mismatched.iter().copied());

    let mut failed = Vec::new();
    let mut not_terminal = Vec::new();
    for id in input.accepted {
        let Some(stored) = input.postgres.get(id) else {
            continue;
        };
        match stored.state.as_str() {
            "synced" => {
                if !absent.contains(id)
                    && !duplicated_orders.contains(id)
                    && !mismatched.contains(id)
                {
                    out.ok += 1;
                }
            }
            "failed" => failed.push((*id, stored.error_code.clone().unwrap_or_default())),
            other => not_terminal.push((*id, other.to_owned())),
        }
    }
    failed.sort();
    not_terminal.sort();
    out.failed = failed;
    out.not_terminal = not_terminal;

    dead_letters(&mut out, input);
    out
}

/// The dead letters: the injected poison (each must be there) apart from real orders' events
/// (none may be).
fn dead_letters(out: &mut Outcome, input: &Inputs<'_>) {
    let mut poison_seen = HashSet::new();
    for d in input.dead_letters {
        if d.is_poison() {
            poison_seen.insert(d.message_id.as_str());
        } else {
            out.real_dead_letters.push(d.clone());
        }
    }
    out.real_dead_letters
        .sort_by(|a, b| a.message_id.cmp(&b.message_id));
    out.poison_dead_lettered = input
        .poison_sent
        .iter()
        .filter(|m| poison_seen.contains(m.as_str()))
        .count();
    out.poison_missing = input
        .poison_sent
        .iter()
        .filter(|m| !poison_seen.contains(m.as_str()))
        .cloned()
        .collect();
}

/// Dead letters by reason, for the table.
pub fn reasons(dead_letters: &[DeadLetter]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for d in dead_letters {
        *by.entry(d.reason.clone().unwrap_or_else(|| "?".into()))
            .or_insert(0) += 1;
    }
    by
}

fn sorted(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = ids.collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;
    use orderbridge_cli::reconcile::{
        Counts, Duplicate, Mismatch, Missing, ObjectKind, Orphan, Scope,
    };

    use super::*;

    fn missing(id: Uuid, state: &str) -> Missing {
        Missing {
            order_id: id,
            sync_state: state.into(),
            created_at: Utc::now(),
            error_code: None,
            error_message: None,
        }
    }

    #[test]
    fn every_class() {
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        let [ok, lost, dup, failed, pending, short, unacked, ghost] = ids[..] else {
            unreachable!()
        };
        let accepted: HashSet<Uuid> = [ok, lost, dup, failed, pending, short, ghost].into();
        let stored = |state: &str| Stored {
            state: state.into(),
            error_code: (state == "failed").then(|| "UNKNOWN_SKU".into()),
        };
        let postgres: HashMap<Uuid, Stored> = [
            (ok, stored("synced")),
            (lost, stored("synced")),
            (dup, stored("synced")),
            (failed, stored("failed")),
            (pending, stored("published")),
            (short, stored("synced")),
            (unacked, stored("synced")),
        ]
        .into();
        let report = Report {
            target: None,
            scope: Scope::all(),
            started_at: Utc::now(),
            order_object: "Order".into(),
            item_object: Some("OrderItem".into()),
            counts: Counts::default(),
            missing: vec![missing(lost, "synced")],
            missing_failed: vec![missing(failed, "failed")],
            duplicated: vec![Duplicate {
                object: ObjectKind::Item,
                external_id: format!("{dup}-2"),
                order_id: dup,
                salesforce_ids: vec!["a".into(), "b".into()],
            }],
            mismatched: vec![
                Mismatch {
                    order_id: pending,
                    sync_state: "published".into(),
                    problems: vec![Problem::NotSynced],
                },
                Mismatch {
                    order_id: short,
                    sync_state: "synced".into(),
                    problems: vec![Problem::ItemCount { lines: 3, items: 2 }],
                },
            ],
            orphaned: vec![Orphan {
                object: ObjectKind::Order,
                external_id: "0190f0a2-7c41-7b3e-9d55-2f1c0e6a1b11".into(),
                salesforce_ids: vec!["x".into()],
            }],
        };
        let dl = |id: &str| DeadLetter {
            message_id: id.into(),
            reason: Some("undecodable".into()),
            error_code: None,
            origin_queue: None,
            order_id: None,
        };
        let dead = vec![dl("chaos-poison-1"), dl("some-event")];
        let poison = vec!["chaos-poison-1".to_owned(), "chaos-poison-2".to_owned()];
        let out = classify(&Inputs {
            accepted: &accepted,
            postgres: &postgres,
            report: &report,
            dead_letters: &dead,
            poison_sent: &poison,
        });
        assert_eq!(out.accepted, 7);
        assert_eq!(out.ok, 1);
        let mut want_lost = vec![lost, ghost];
        want_lost.sort();
        assert_eq!(out.lost, want_lost, "a 201 with no row is lost too");
        assert_eq!(out.duplicated, vec![format!("{dup}-2")]);
        let mut want_unexpected = vec![
            "0190f0a2-7c41-7b3e-9d55-2f1c0e6a1b11".to_owned(),
            unacked.to_string(),
        ];
        want_unexpected.sort();
        assert_eq!(out.unexpected, want_unexpected);
        assert_eq!(out.failed, vec![(failed, "UNKNOWN_SKU".to_owned())]);
        assert_eq!(out.not_terminal, vec![(pending, "published".to_owned())]);
        assert_eq!(out.mismatched, vec![short]);
        assert_eq!(out.unacknowledged, vec![unacked]);
        assert_eq!(out.poison_dead_lettered, 1);
        assert_eq!(out.poison_missing, vec!["chaos-poison-2".to_owned()]);
        assert_eq!(out.real_dead_letters.len(), 1);
        assert!(!out.clean());
        assert_eq!(reasons(&dead).get("undecodable"), Some(&2));
        assert_eq!(out.to_json()["lost"], 2);
    }
}
