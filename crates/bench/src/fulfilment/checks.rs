//! `fulfilment`'s end-of-run checks, each read from the system that owns the fact: the local
//! orders and fulfilment requests (Postgres), the Salesforce orders (the emulator, over SOQL),
//! what the fulfilment system received (the receiver's `/__admin/requests`) and the broker's
//! dead-letter queue.

use std::collections::HashMap;

use anyhow::{Context, Result};
use orderbridge_salesforce::Client;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::chaos::settle::dead_letters;
use crate::inbound::Target;
use crate::stack::Stack;

/// What the checks found; each list holds readable descriptions of the failures.
#[derive(Debug, Default)]
pub struct Checks {
    /// Orders not `provisioned` locally.
    pub not_provisioned: Vec<String>,
    /// Salesforce orders whose `Activation_Status__c` is not `Provisioned`.
    pub salesforce_not_provisioned: Vec<String>,
    /// Orders the receiver did not provision exactly once.
    pub not_once: Vec<String>,
    /// Requests the receiver got in all (first calls, retries, duplicates).
    pub received: usize,
    /// Of those, answered from the idempotency memory (a retry of a call already answered).
    pub duplicates: usize,
    /// Of those, with a signature the receiver refused.
    pub bad_signatures: usize,
    /// Fulfilment requests by state.
    pub request_states: Vec<(String, i64)>,
    pub dead_letters: usize,
}

impl Checks {
    pub fn failed_requests(&self) -> i64 {
        self.request_states
            .iter()
            .filter(|(s, _)| s != "provisioned")
            .map(|(_, n)| n)
            .sum()
    }
}

/// One entry of the receiver's `GET /__admin/requests`.
#[derive(Debug, Deserialize)]
struct Received {
    id: String,
    signature_ok: bool,
    answer: Value,
    duplicate: bool,
}

pub async fn run(stack: &Stack, targets: &[Target], salesforce: &Client) -> Result<Checks> {
    let pool = stack.pool()?;
    let ids: Vec<Uuid> = targets.iter().map(|t| t.id).collect();
    let mut checks = Checks::default();

    let statuses: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    for t in targets {
        let status = statuses.get(&t.id).map_or("?", String::as_str);
        if status != "provisioned" {
            checks
                .not_provisioned
                .push(format!("{}: status {status}", t.id));
        }
    }
    checks.request_states = sqlx::query_as(
        "SELECT state, count(*) FROM fulfilment_requests GROUP BY state ORDER BY state",
    )
    .fetch_all(pool)
    .await?;

    let records: Vec<Value> = salesforce
        .query_collect("SELECT Id, Activation_Status__c FROM Order")
        .await
        .context("cannot query the emulator's orders")?;
    let activation: HashMap<&str, &str> = records
        .iter()
        .filter_map(|r| {
            Some((
                r.get("Id")?.as_str()?,
                r.get("Activation_Status__c")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            ))
        })
        .collect();
    for t in targets {
        let value = activation.get(t.salesforce_id.as_str()).copied();
        if value != Some("Provisioned") {
            checks.salesforce_not_provisioned.push(format!(
                "{}: Activation_Status__c {}",
                t.salesforce_id,
                value.unwrap_or("(order missing)")
            ));
        }
    }

    let receiver = stack
        .receiver_url
        .as_deref()
        .context("the receiver is not running")?;
    let received: Vec<Received> = stack
        .http
        .get(format!("{receiver}/__admin/requests"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("unreadable /__admin/requests")?;
    let owners: HashMap<String, Uuid> =
        sqlx::query_as::<_, (Uuid, Uuid)>("SELECT id, order_id FROM fulfilment_requests")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, order)| (id.to_string(), order))
            .collect();
    let mut provisioned: HashMap<Uuid, usize> = HashMap::new();
    checks.received = received.len();
    for r in &received {
        if !r.signature_ok {
            checks.bad_signatures += 1;
            continue;
        }
        if r.duplicate {
            checks.duplicates += 1;
            continue;
        }
        if r.answer.get("status").and_then(Value::as_str) == Some("provisioned")
            && let Some(order) = owners.get(&r.id)
        {
            *provisioned.entry(*order).or_default() += 1;
        }
    }
    for t in targets {
        let n = provisioned.get(&t.id).copied().unwrap_or(0);
        if n != 1 {
            checks
                .not_once
                .push(format!("{}: provisioned {n} times", t.id));
        }
    }

    checks.dead_letters = dead_letters(stack).await?.len();
    Ok(checks)
}
