//! The human summary of a [`Report`]: counts per class and a few example ids each.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::reconcile::{FixOutcome, ObjectKind, Problem, Report};

/// The summary table, with up to `examples` ids per class.
pub fn summary(report: &Report, examples: usize) -> String {
    let mut out = String::new();
    let scope = match (report.scope.created_after, report.scope.created_before) {
        (None, None) => String::new(),
        (Some(a), None) => format!(" created since {}", a.to_rfc3339()),
        (None, Some(b)) => format!(" created before {}", b.to_rfc3339()),
        (Some(a), Some(b)) => format!(" created from {} to {}", a.to_rfc3339(), b.to_rfc3339()),
    };
    let items = match &report.item_object {
        Some(o) => format!(" and {} {o}", report.counts.salesforce_items),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "Compared {} orders in Postgres{scope} (up to {}) with {} {}{items} records in Salesforce.",
        report.counts.orders,
        report
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        report.counts.salesforce_orders,
        report.order_object,
    );
    if report.counts.ignored_records > 0 {
        let _ = writeln!(
            out,
            "Ignored {} Salesforce records whose external id is not an order id.",
            report.counts.ignored_records
        );
    }
    let _ = writeln!(out);

    let missing = report
        .missing
        .iter()
        .map(|m| format!("{}  {}", m.order_id, m.sync_state));
    class(&mut out, "missing", report.missing.len(), missing, examples);
    if !report.missing.is_empty() {
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &report.missing {
            *states.entry(m.sync_state.as_str()).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = writeln!(out, "  by sync state: {}", states.join(", "));
    }
    let failed = report.missing_failed.iter().map(|m| {
        format!(
            "{}  {}: {}",
            m.order_id,
            m.error_code.as_deref().unwrap_or("-"),
            m.error_message.as_deref().unwrap_or("")
        )
    });
    class(
        &mut out,
        "missing, failed",
        report.missing_failed.len(),
        failed,
        examples,
    );
    let dups = report.duplicated.iter().map(|d| {
        format!(
            "{} {}  {}",
            object_name(report, d.object),
            d.external_id,
            d.salesforce_ids.join(", ")
        )
    });
    class(
        &mut out,
        "duplicated",
        report.duplicated.len(),
        dups,
        examples,
    );
    let mismatched = report.mismatched.iter().map(|m| {
        let problems: Vec<String> = m
            .problems
            .iter()
            .map(|p| match p {
                Problem::SalesforceId {
                    stored,
                    in_salesforce,
                } => format!(
                    "salesforce_id {stored}, Salesforce has {}",
                    in_salesforce.join(", ")
                ),
                Problem::ItemCount { lines, items } => {
                    format!("{lines} lines, {items} items in Salesforce")
                }
                Problem::NotSynced => format!("in Salesforce but {}", m.sync_state),
                Problem::Field {
                    object,
                    line,
                    field,
                    in_postgres,
                    in_salesforce,
                } => {
                    let record = match (object, line) {
                        (ObjectKind::Item, Some(line)) => format!("line {line} "),
                        _ => String::new(),
                    };
                    format!(
                        "{record}{field} {in_postgres} in Postgres, {in_salesforce} in Salesforce"
                    )
                }
            })
            .collect();
        format!("{}  {}", m.order_id, problems.join("; "))
    });
    class(
        &mut out,
        "mismatched",
        report.mismatched.len(),
        mismatched,
        examples,
    );
    let orphans = report.orphaned.iter().map(|o| {
        format!(
            "{} {}  {}",
            object_name(report, o.object),
            o.external_id,
            o.salesforce_ids.join(", ")
        )
    });
    class(
        &mut out,
        "orphaned",
        report.orphaned.len(),
        orphans,
        examples,
    );
    let _ = writeln!(out);
    if report.is_clean() {
        let _ = writeln!(
            out,
            "Clean: every order in scope is in Salesforce exactly once."
        );
    } else {
        let _ = writeln!(
            out,
            "NOT CLEAN: {} anomalies (--json lists them all).",
            report.anomalies()
        );
        if !report.missing.is_empty() {
            let _ = writeln!(
                out,
                "Missing orders that are pending, published or retrying may still be on their way: run again once the pipeline is quiet."
            );
        }
    }
    out
}

/// What `--fix` did, one line (plus the skipped failed orders).
pub fn fix_summary(outcome: &FixOutcome) -> String {
    let mut out = format!("Queued {} resyncs.", outcome.queued.len());
    if !outcome.skipped_failed.is_empty() {
        let _ = write!(
            out,
            " Skipped {} failed orders (add --include-failed once their cause is fixed).",
            outcome.skipped_failed.len()
        );
    }
    if !outcome.not_found.is_empty() {
        let _ = write!(out, " {} orders no longer exist.", outcome.not_found.len());
    }
    out.push('\n');
    out
}

fn object_name(report: &Report, object: ObjectKind) -> &str {
    match object {
        ObjectKind::Order => &report.order_object,
        ObjectKind::Item => report.item_object.as_deref().unwrap_or("item"),
    }
}

fn class(
    out: &mut String,
    name: &str,
    count: usize,
    lines: impl Iterator<Item = String>,
    examples: usize,
) {
    let _ = writeln!(out, "{name:<16} {count:>8}");
    for line in lines.take(examples) {
        let _ = writeln!(out, "  {line}");
    }
    if count > examples && examples > 0 {
        let _ = writeln!(out, "  … and {} more", count - examples);
    }
}

/// Control characters escaped: dead letters and Salesforce errors carry outside data, which must not drive the
/// terminal (escape sequences) or break the layout (newlines).
pub(crate) fn clean(s: &str) -> String {
    clean_except(s, &[])
}

pub(crate) fn clean_except(s: &str, keep: &[char]) -> String {
    let escape = |c: char| c.is_control() && !keep.contains(&c);
    if !s.chars().any(escape) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if escape(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
