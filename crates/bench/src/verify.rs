//! The end-of-run checks.
//!
//! - [`verify`] (e2e, drain): every accepted order exists exactly once in Salesforce, with its
//!   lines. It runs the product's own reconciliation, `orderbridge_cli::reconcile` (what
//!   `orderbridge reconcile` runs: SOQL against the emulator, paged, compared with Postgres by
//!   external id), and turns its report into the bench's rows. [`reconcile_run`] is that
//!   reconciliation alone, which `chaos` classifies in its own way.
//! - [`verify_intake`] (intake, which runs no worker): every accepted order is in Postgres
//!   exactly once, with its lines, its event and its idempotency key.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use orderbridge_cli::progress::NoProgress;
use orderbridge_cli::reconcile::{
    ObjectKind, Paging, Problem, Report, Scope, reconcile_with_progress,
};
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::stack::Stack;

#[derive(Debug, Default)]
pub struct Verification {
    pub orders: usize,
    pub lines: usize,
    /// Accepted orders with no Salesforce Order (reconcile's `missing` and `missing_failed`).
    pub missing: Vec<String>,
    /// External ids held by more than one Salesforce Order.
    pub duplicated: Vec<String>,
    /// Salesforce Orders for no accepted order (reconcile's orphans).
    pub unexpected: Vec<String>,
    /// Orders whose record exists but differs otherwise (another Salesforce id than the one
    /// stored, or the order not `synced`).
    pub mismatched: Vec<String>,
    pub items_missing: usize,
    pub items_duplicated: usize,
    pub items_unexpected: usize,
    /// reconcile's whole report.
    pub report: Option<Report>,
    /// How long reconcile took, and the bench's resident memory (KiB) before it and at its
    /// peak during it (the peak is reset first; `None` where the kernel refused): reconcile
    /// runs in this process, so what the peak adds to "before" is its own.
    pub reconcile_secs: f64,
    /// Whether reconcile read Salesforce through Bulk query jobs (`--reconcile-bulk`).
    pub reconcile_bulk: bool,
    pub rss_before_kib: Option<u64>,
    pub peak_rss_during_kib: Option<u64>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.items_missing == 0
            && self.items_duplicated == 0
            && self.items_unexpected == 0
    }

    pub fn to_json(&self) -> Value {
        let sample = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>();
        let counts = self
            .report
            .as_ref()
            .map_or(Value::Null, |r| json!(r.counts));
        json!({
            "ok": self.ok(),
            "by": "orderbridge_cli::reconcile",
            "orders": self.orders,
            "lines": self.lines,
            "missing": self.missing.len(),
            "duplicated": self.duplicated.len(),
            "unexpected": self.unexpected.len(),
            "mismatched": self.mismatched.len(),
            "missing_sample": sample(&self.missing),
            "duplicated_sample": sample(&self.duplicated),
            "unexpected_sample": sample(&self.unexpected),
            "mismatched_sample": sample(&self.mismatched),
            "items_missing": self.items_missing,
            "items_duplicated": self.items_duplicated,
            "items_unexpected": self.items_unexpected,
            "reconcile_counts": counts,
            "reconcile_seconds": self.reconcile_secs,
            "bench_rss_before_reconcile_kib": self.rss_before_kib,
            "bench_peak_rss_during_reconcile_kib": self.peak_rss_during_kib,
        })
    }

    /// The bench's classes from a reconcile report.
    fn from_report(report: Report, lines: usize) -> Self {
        let mut v = Self {
            orders: usize::try_from(report.counts.orders).unwrap_or(usize::MAX),
            lines,
            ..Self::default()
        };
        v.missing = report
            .missing
            .iter()
            .chain(&report.missing_failed)
            .map(|m| format!("{} ({})", m.order_id, m.sync_state))
            .collect();
        for d in &report.duplicated {
            match d.object {
                ObjectKind::Order => v.duplicated.push(d.external_id.clone()),
                ObjectKind::Item => v.items_duplicated += 1,
            }
        }
        for o in &report.orphaned {
            match o.object {
                ObjectKind::Order => v.unexpected.push(o.external_id.clone()),
                ObjectKind::Item => v.items_unexpected += 1,
            }
        }
        for m in &report.mismatched {
            let mut other = Vec::new();
            for p in &m.problems {
                match p {
                    Problem::ItemCount { lines, items } if items < lines => {
                        v.items_missing += (lines - items) as usize;
                    }
                    Problem::ItemCount { lines, items } => {
                        v.items_unexpected += (items - lines) as usize;
                    }
                    Problem::SalesforceId { .. } => other.push("salesforce_id"),
                    Problem::NotSynced => other.push("not_synced"),
                    // A value that differs is an order written inexactly (or changed since):
                    // the run's orders are never changed, so it counts as a mismatch.
                    Problem::Field { .. } => other.push("field"),
                }
            }
            if !other.is_empty() {
                v.mismatched
                    .push(format!("{} ({})", m.order_id, other.join(", ")));
            }
        }
        v.report = Some(report);
        v
    }
}

/// Runs `orderbridge_cli::reconcile` over every order of the run's database against its
/// emulator, with the worker's mapping (`--env WORKER_MAPPING_FILE`, or the built-in one);
/// `bulk`: reading Salesforce through Bulk query jobs (`orderbridge reconcile --bulk`).
pub async fn reconcile_run(stack: &Stack, bulk: bool) -> Result<Report> {
    let mapping = Mapping::load(stack.setting("WORKER_MAPPING_FILE").map(Path::new))
        .context("cannot load the worker's mapping")?;
    // The emulator's dev credentials are the client's defaults, as for the worker.
    let config = SalesforceConfig {
        login_url: stack.emulator()?.to_owned(),
        request_timeout: Duration::from_secs(60),
        ..SalesforceConfig::default()
    };
    let client = Client::new(&config).context("cannot build the Salesforce client")?;
    let paging = Paging {
        bulk,
        ..Paging::default()
    };
    reconcile_with_progress(
        stack.pool()?,
        &client,
        &mapping,
        Scope::all(),
        paging,
        &NoProgress,
    )
    .await
    .context("reconcile failed")
}

/// [`reconcile_run`], as the bench's classes.
pub async fn verify(stack: &Stack, bulk: bool) -> Result<Verification> {
    let me = std::process::id();
    let reset = crate::procfs::reset_peak_rss(me);
    let rss_before_kib = crate::procfs::rss_kib(me);
    let started = std::time::Instant::now();
    let report = reconcile_run(stack, bulk).await?;
    let reconcile_secs = started.elapsed().as_secs_f64();
    let peak_rss_during_kib = crate::procfs::peak_rss_kib(me).filter(|_| reset);
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM order_lines")
        .fetch_one(stack.pool()?)
        .await?;
    Ok(Verification {
        reconcile_secs,
        reconcile_bulk: bulk,
        rss_before_kib,
        peak_rss_during_kib,
        ..Verification::from_report(report, usize::try_from(lines).unwrap_or(0))
    })
}

/// Intake's check: the orders the API accepted (201 with their id) against Postgres.
#[derive(Debug, Default)]
pub struct IntakeVerification {
    pub accepted: usize,
    /// Accepted ids not in `orders`.
    pub missing: Vec<Uuid>,
    /// Orders of the run (its `client_ref` prefix) that no 201 announced, beyond the requests
    /// whose outcome is unknown (transport error, timeout: they may have committed).
    pub unexpected: usize,
    pub unknown_outcome: usize,
    /// Accepted orders without exactly `lines` lines, one outbox event, one idempotency key.
    pub incomplete: Vec<Uuid>,
}

impl IntakeVerification {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.unexpected == 0 && self.incomplete.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok(),
            "accepted": self.accepted,
            "missing": self.missing.len(),
            "unexpected": self.unexpected,
            "unknown_outcome_requests": self.unknown_outcome,
            "incomplete": self.incomplete.len(),
            "missing_sample": self.missing.iter().take(20).collect::<Vec<_>>(),
            "incomplete_sample": self.incomplete.iter().take(20).collect::<Vec<_>>(),
        })
    }
}

/// Every id in `accepted` is one order of the run (client_ref starting with `run`), with
/// `lines` lines, one outbox event and one idempotency key; no other order of the run exists
/// but for requests whose outcome the bench does not know.
pub async fn verify_intake(
    pool: &PgPool,
    run: &str,
    accepted: &[Uuid],
    unknown_outcome: usize,
    lines: i64,
) -> Result<IntakeVerification> {
    // Grouped counts, one scan each: neither outbox.aggregate_id nor idempotency_keys.order_id
    // is indexed, so per-order subqueries would scan them once per order.
    let rows: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "WITH run AS (SELECT id FROM orders WHERE client_ref LIKE $1 || '-%')
         SELECT run.id, coalesce(l.n, 0), coalesce(e.n, 0), coalesce(k.n, 0)
         FROM run
         LEFT JOIN (SELECT order_id, count(*) AS n FROM order_lines
                    WHERE order_id IN (SELECT id FROM run) GROUP BY 1) l ON l.order_id = run.id
         LEFT JOIN (SELECT aggregate_id, count(*) AS n FROM outbox GROUP BY 1) e
                ON e.aggregate_id = run.id
         LEFT JOIN (SELECT order_id, count(*) AS n FROM idempotency_keys GROUP BY 1) k
                ON k.order_id = run.id",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let in_db: HashSet<Uuid> = rows.iter().map(|r| r.0).collect();
    let accepted_set: HashSet<Uuid> = accepted.iter().copied().collect();
    let mut missing: Vec<Uuid> = accepted_set.difference(&in_db).copied().collect();
    missing.sort();
    let not_announced = in_db.difference(&accepted_set).count();
    let mut incomplete: Vec<Uuid> = rows
        .iter()
        .filter(|(id, l, e, k)| accepted_set.contains(id) && (*l != lines || *e != 1 || *k != 1))
        .map(|r| r.0)
        .collect();
    incomplete.sort();
    Ok(IntakeVerification {
        accepted: accepted_set.len(),
        missing,
        unexpected: not_announced.saturating_sub(unknown_outcome),
        unknown_outcome,
        incomplete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use orderbridge_cli::reconcile::{Counts, Duplicate, Mismatch, Missing, Orphan};

    #[test]
    fn report_classes_become_rows() {
        let [a, b, c, d] = [0; 4].map(|_| Uuid::now_v7());
        let missing = |id, state: &str| Missing {
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
            item_object: Some("OrderItem".into()),
            counts: Counts {
                orders: 4,
                ..Counts::default()
            },
            missing: vec![missing(a, "published")],
            missing_failed: vec![missing(b, "failed")],
            duplicated: vec![Duplicate {
                object: ObjectKind::Item,
                external_id: format!("{c}-1"),
                order_id: c,
                salesforce_ids: vec!["1".into(), "2".into()],
            }],
            mismatched: vec![Mismatch {
                order_id: d,
                sync_state: "published".into(),
                problems: vec![
                    Problem::ItemCount { lines: 3, items: 2 },
                    Problem::NotSynced,
                ],
            }],
            orphaned: vec![Orphan {
                object: ObjectKind::Order,
                external_id: "x".into(),
                salesforce_ids: vec!["3".into()],
            }],
        };
        let v = Verification::from_report(report, 12);
        assert_eq!((v.orders, v.lines), (4, 12));
        assert_eq!(v.missing.len(), 2);
        assert!(v.duplicated.is_empty());
        assert_eq!(v.items_duplicated, 1);
        assert_eq!(v.unexpected, vec!["x".to_owned()]);
        assert_eq!(v.items_missing, 1);
        assert_eq!(v.mismatched.len(), 1);
        assert!(!v.ok());
        assert_eq!(v.to_json()["missing"], 2);
    }
}
