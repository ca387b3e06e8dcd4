//! What a run returns: the [`Report`] and its classes. Serde both ways, because `--json` prints
//! it and the benchmark reads it back; the comparison that fills it is in `classify`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::orders::Scope;

/// The Salesforce object a record belongs to, in the mapping's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// The mapping's `order` object (`Order` by default).
    Order,
    /// The mapping's `items` object (`OrderItem` by default).
    Item,
}

/// An accepted order with no Salesforce record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub order_id: Uuid,
    /// `pending`, `published`, `retrying`: possibly still on its way; `synced`: lost after being
    /// reported written (deleted in Salesforce?); `failed`: dead-lettered, see `error_code`.
    pub sync_state: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Several Salesforce records with one external id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub object: ObjectKind,
    pub external_id: String,
    pub order_id: Uuid,
    pub salesforce_ids: Vec<String>,
}

/// What differs between an order and its Salesforce record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// A mapped field holds another value in Salesforce than the order gives it (an amount, a
    /// name): changed in Salesforce since, or written inexactly.
    Field {
        object: ObjectKind,
        /// The line, for an item's field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<u32>,
        field: String,
        in_postgres: Value,
        in_salesforce: Value,
    },
    /// `orders.salesforce_id` is none of the records with the order's external id.
    SalesforceId {
        stored: String,
        in_salesforce: Vec<String>,
    },
    /// Distinct item external ids of the order in Salesforce ≠ the order's lines.
    ItemCount { lines: u32, items: u32 },
    /// The record exists but the order's sync state is not `synced`.
    NotSynced,
}

/// An order whose Salesforce record exists but differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub order_id: Uuid,
    pub sync_state: String,
    pub problems: Vec<Problem>,
}

/// A Salesforce record whose external id is an order id (or `<order id>-<line>`) of no order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub object: ObjectKind,
    pub external_id: String,
    pub salesforce_ids: Vec<String>,
}

/// How much was compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Orders in scope in Postgres.
    pub orders: u64,
    /// Records of the order object read from Salesforce (before scoping).
    pub salesforce_orders: u64,
    /// Records of the items object read from Salesforce (before scoping).
    pub salesforce_items: u64,
    /// Records read whose external id is not one of ours (not a UUID, or not `<UUID>-<line>`).
    pub ignored_records: u64,
}

/// The outcome of a run. Every list is sorted (by order id, then external id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub scope: Scope,
    /// The target compared, when the mapping file has several (divisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Postgres's clock when the run started: later orders are not checked.
    pub started_at: DateTime<Utc>,
    pub order_object: String,
    pub item_object: Option<String>,
    pub counts: Counts,
    /// Accepted, not in Salesforce, not `failed`: lost if the pipeline is quiet.
    pub missing: Vec<Missing>,
    /// Not in Salesforce and `failed` (dead-lettered with the reason).
    pub missing_failed: Vec<Missing>,
    pub duplicated: Vec<Duplicate>,
    pub mismatched: Vec<Mismatch>,
    pub orphaned: Vec<Orphan>,
}

impl Report {
    /// Nothing missing (failed or not), duplicated, mismatched or orphaned.
    pub fn is_clean(&self) -> bool {
        self.anomalies() == 0
    }

    /// Entries over all classes.
    pub fn anomalies(&self) -> usize {
        self.missing.len()
            + self.missing_failed.len()
            + self.duplicated.len()
            + self.mismatched.len()
            + self.orphaned.len()
    }

    /// Orders `--fix` resyncs: the missing and the mismatched ones; those in state `failed`
    /// only with `include_failed` (they failed for a reason a resync repeats until it is
    /// fixed). Returns (to resync, skipped because failed), each sorted. An order whose only
    /// problems are field values is not resynced: orders and items are created once and then
    /// belong to Salesforce, so a resync would not change them; a person decides.
    pub fn resync_targets(&self, include_failed: bool) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut targets: Vec<Uuid> = self.missing.iter().map(|m| m.order_id).collect();
        let mut skipped = Vec::new();
        let failed = self.missing_failed.iter().map(|m| m.order_id).chain(
            self.mismatched
                .iter()
                .filter(|m| m.sync_state == "failed")
                .map(|m| m.order_id),
        );
        if include_failed {
            targets.extend(failed);
        } else {
            skipped.extend(failed);
        }
        targets.extend(
            self.mismatched
                .iter()
                .filter(|m| m.sync_state != "failed")
                .filter(|m| {
                    m.problems
                        .iter()
                        .any(|p| !matches!(p, Problem::Field { .. }))
                })
                .map(|m| m.order_id),
        );
        targets.sort_unstable();
        targets.dedup();
        skipped.sort_unstable();
        skipped.dedup();
        (targets, skipped)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn fix_targets_skip_failed_orders_unless_asked() {
        let [a, b, c, d] = [0; 4].map(|_| Uuid::now_v7());
        let m = |id, state: &str| Missing {
            order_id: id,
            sync_state: state.into(),
            created_at: Utc::now(),
            error_code: None,
            error_message: None,
        };
        let report = Report {
            target: None,
            scope: Scope::all(),
            started_at: Utc::now(),
            order_object: "Order".into(),
            item_object: None,
            counts: Counts::default(),
            missing: vec![m(a, "published")],
            missing_failed: vec![m(b, "failed")],
            duplicated: vec![],
            mismatched: vec![
                Mismatch {
                    order_id: c,
                    sync_state: "synced".into(),
                    problems: vec![Problem::ItemCount { lines: 3, items: 2 }],
                },
                Mismatch {
                    order_id: d,
                    sync_state: "failed".into(),
                    problems: vec![Problem::NotSynced],
                },
            ],
            orphaned: vec![],
        };
        assert!(!report.is_clean());
        assert_eq!(report.anomalies(), 4);
        let mut want = vec![a, c];
        want.sort();
        let mut skipped = vec![b, d];
        skipped.sort();
        assert_eq!(report.resync_targets(false), (want, skipped));
        let mut all = vec![a, b, c, d];
        all.sort();
        assert_eq!(report.resync_targets(true), (all, vec![]));
        // The JSON form round-trips.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mismatched"][0]["problems"][0]["kind"], "item_count");
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), report);
    }
}
