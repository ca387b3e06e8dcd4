//! SKU → price book entry, resolved by SOQL and cached, so a batch of orders over a known
//! catalogue costs no lookup calls at all.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use orderbridge_salesforce::{Client, Error};
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

/// How long a found entry is trusted (a deactivated product then fails its orders with a
/// Salesforce error, not silently).
const FOUND_TTL: Duration = Duration::from_secs(3600);
/// How long "no such SKU" is trusted: short, so a product added to the price book is picked up
/// by the next retry.
const MISSING_TTL: Duration = Duration::from_secs(30);
/// SKUs per query, keeping the query URL far below Salesforce's 16,000-character limit.
const SKUS_PER_QUERY: usize = 100;

/// The price book the worker writes orders into, and its entries by SKU (`Product2.ProductCode`).
pub struct PriceBook {
    client: Client,
    /// `None`: the org's standard price book.
    name: Option<String>,
    resolved: OnceCell<Resolved>,
    entries: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

/// The price book's id and the name used in error messages.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: String,
    pub name: String,
}

/// Why the price book cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceBookError {
    #[error(transparent)]
    Salesforce(#[from] Error),
    #[error("{0}")]
    NotFound(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PricebookRow {
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryRow {
    id: String,
    product2: Option<ProductRow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProductRow {
    product_code: Option<String>,
}

/// A SOQL string literal: backslash and quote escaped.
pub fn soql_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

impl PriceBook {
    pub fn new(client: Client, name: Option<String>) -> Self {
        Self {
            client,
            name,
            resolved: OnceCell::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The price book's id, looked up once.
    pub async fn resolve(&self) -> Result<&Resolved, PriceBookError> {
        self.resolved
            .get_or_try_init(|| async {
                let soql = match &self.name {
                    None => "SELECT Id, Name FROM Pricebook2 WHERE IsStandard = true LIMIT 1".to_owned(),
                    Some(name) => format!(
                        "SELECT Id, Name FROM Pricebook2 WHERE Name = {} AND IsActive = true LIMIT 1",
                        soql_literal(name)
                    ),
                };
                let page = self.client.query::<PricebookRow>(&soql).await?;
                let row = page.records.into_iter().next().ok_or_else(|| {
                    PriceBookError::NotFound(match &self.name {
                        None => "the org has no standard price book".to_owned(),
                        Some(n) => format!("no active price book named {n:?} (WORKER_PRICEBOOK / mapping `pricebook`)"),
                    })
                })?;
                Ok(Resolved {
                    name: row
                        .name
                        .or_else(|| self.name.clone())
                        .unwrap_or_else(|| "Standard Price Book".into()),
                    id: row.id,
                })
            })
            .await
    }

    /// Entry ids for `skus`; `None` for a SKU with no active entry. Cached lookups cost nothing;
    /// the rest cost one query per 100 SKUs.
    pub async fn entries(
        &self,
        skus: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Option<String>>, PriceBookError> {
        let now = Instant::now();
        let mut out = HashMap::with_capacity(skus.len());
        let mut missing = Vec::new();
        {
            let cache = self.entries.lock().await;
            for sku in skus {
                match cache.get(*sku) {
                    Some((entry, expires)) if *expires > now => {
                        out.insert((*sku).to_owned(), entry.clone());
                    }
                    _ => missing.push(*sku),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let pricebook = self.resolve().await?;
        for chunk in missing.chunks(SKUS_PER_QUERY) {
            let list = chunk
                .iter()
                .map(|s| soql_literal(s))
                .collect::<Vec<_>>()
                .join(", ");
            let soql = format!(
                "SELECT Id, Product2.ProductCode FROM PricebookEntry WHERE Pricebook2Id = {} AND IsActive = true AND Product2.ProductCode IN ({list}) ORDER BY Id",
                soql_literal(&pricebook.id)
            );
            let rows = self.client.query_collect::<EntryRow>(&soql).await?;
            // SOQL compares text case-insensitively, so match the same way here. Several
            // products may share a code: the lowest entry id wins, the same every time.
            let mut found: HashMap<String, String> = HashMap::new();
            for row in rows {
                if let Some(code) = row.product2.and_then(|p| p.product_code) {
                    found.entry(code.to_lowercase()).or_insert(row.id);
                }
            }
            let mut cache = self.entries.lock().await;
            for sku in chunk {
                let entry = found.get(&sku.to_lowercase()).cloned();
                let ttl = if entry.is_some() {
                    FOUND_TTL
                } else {
                    MISSING_TTL
                };
                cache.insert((*sku).to_owned(), (entry.clone(), now + ttl));
                out.insert((*sku).to_owned(), entry);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soql_literals_are_escaped() {
        assert_eq!(soql_literal("a'b\\c"), r"'a\'b\\c'");
    }
}
