//! The end-of-run check: every accepted order exists exactly once in Salesforce, with its lines.
//! Compares the orders in Postgres with the emulator's records by external id
//! (`GET /__admin/records/{sobject}`, the emulator's own view, no API calls counted).
//! The product's `reconcile` command (issue 6) will replace this.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// External id fields of the default mapping (`sync-worker/src/default_mapping.json`): the order's
/// id, and `{order id}-{line number}` for its items.
const ORDER_SOBJECT: &str = "Order";
const ITEM_SOBJECT: &str = "OrderItem";

#[derive(Debug, Default)]
pub struct Verification {
    pub orders: usize,
    pub lines: usize,
    /// Accepted orders with no Salesforce Order.
    pub missing: Vec<String>,
    /// External ids held by more than one Salesforce Order.
    pub duplicated: Vec<String>,
    /// Salesforce Orders for no accepted order.
    pub unexpected: Vec<String>,
    pub items_missing: usize,
    pub items_duplicated: usize,
    pub items_unexpected: usize,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.items_missing == 0
            && self.items_duplicated == 0
            && self.items_unexpected == 0
    }

    pub fn to_json(&self) -> Value {
        let sample = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>();
        json!({
            "ok": self.ok(),
            "orders": self.orders,
            "lines": self.lines,
            "missing": self.missing.len(),
            "duplicated": self.duplicated.len(),
            "unexpected": self.unexpected.len(),
            "missing_sample": sample(&self.missing),
            "duplicated_sample": sample(&self.duplicated),
            "unexpected_sample": sample(&self.unexpected),
            "items_missing": self.items_missing,
            "items_duplicated": self.items_duplicated,
            "items_unexpected": self.items_unexpected,
        })
    }
}

#[derive(Deserialize)]
struct Records {
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "External_Id__c")]
    external_id: Option<String>,
}

async fn external_ids(
    http: &reqwest::Client,
    emulator: &str,
    sobject: &str,
) -> Result<HashMap<String, usize>> {
    let body = http
        .get(format!("{emulator}/__admin/records/{sobject}"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let records: Records = serde_json::from_slice(&body)
        .with_context(|| format!("unreadable /__admin/records/{sobject}"))?;
    let mut counts = HashMap::new();
    for r in records.records {
        if let Some(id) = r.external_id {
            *counts.entry(id.to_lowercase()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// (missing, duplicated, unexpected) of `expected` against Salesforce's counts.
fn compare(
    expected: &HashSet<String>,
    found: &HashMap<String, usize>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut missing: Vec<String> = expected
        .iter()
        .filter(|id| !found.contains_key(*id))
        .cloned()
        .collect();
    let mut duplicated: Vec<String> = found
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let mut unexpected: Vec<String> = found
        .keys()
        .filter(|id| !expected.contains(*id))
        .cloned()
        .collect();
    missing.sort();
    duplicated.sort();
    unexpected.sort();
    (missing, duplicated, unexpected)
}

pub async fn verify(pool: &PgPool, http: &reqwest::Client, emulator: &str) -> Result<Verification> {
    let orders: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(pool)
        .await?;
    let lines: Vec<(Uuid, i32)> = sqlx::query_as("SELECT order_id, line_number FROM order_lines")
        .fetch_all(pool)
        .await?;
    let expected: HashSet<String> = orders.iter().map(Uuid::to_string).collect();
    let expected_items: HashSet<String> = lines
        .iter()
        .map(|(order, n)| format!("{order}-{n}"))
        .collect();

    let (missing, duplicated, unexpected) = compare(
        &expected,
        &external_ids(http, emulator, ORDER_SOBJECT).await?,
    );
    let (items_missing, items_duplicated, items_unexpected) = compare(
        &expected_items,
        &external_ids(http, emulator, ITEM_SOBJECT).await?,
    );
    Ok(Verification {
        orders: orders.len(),
        lines: lines.len(),
        missing,
        duplicated,
        unexpected,
        items_missing: items_missing.len(),
        items_duplicated: items_duplicated.len(),
        items_unexpected: items_unexpected.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_classifies() {
        let expected: HashSet<String> = ["a", "b", "c"].map(String::from).into();
        let found: HashMap<String, usize> = [
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("x".to_owned(), 1),
        ]
        .into();
        let (m, d, u) = compare(&expected, &found);
        assert_eq!(m, vec!["c".to_owned()]);
        assert_eq!(d, vec!["b".to_owned()]);
        assert_eq!(u, vec!["x".to_owned()]);
    }
}
