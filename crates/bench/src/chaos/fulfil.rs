//! The fulfilment loop's fate after a chaos run: for each approved order, whether it was
//! provisioned exactly once — locally (status `provisioned`), in Salesforce
//! (`Activation_Status__c` = `Provisioned`) and at the fulfilment system (one request the
//! receiver provisioned; answers from its idempotency memory do not count) — and that no order
//! left unapproved was touched. Each fact is read from the system that owns it, as
//! `fulfilment`'s checks do. The order's status history is not asserted on (an `activated`
//! overtaken by the provisioning event joins it late; `crates/db/tests` covers that).

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use orderbridge_salesforce::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stack::Stack;

/// One entry of the receiver's `GET /__admin/requests`.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    pub id: String,
    pub signature_ok: bool,
    #[serde(default)]
    pub status: Option<u16>,
    pub answer: Value,
    pub duplicate: bool,
}

/// One fulfilment request row.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: Uuid,
    pub order_id: Uuid,
    pub state: String,
    pub reason: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// What the classification reads.
pub struct Inputs<'a> {
    /// Orders whose approval call succeeded.
    pub approved: &'a HashSet<Uuid>,
    /// Orders drawn for approval whose approval never succeeded (whether it reached Salesforce
    /// is unknown, so they are judged neither way).
    pub given_up: &'a HashSet<Uuid>,
    /// Every order's local status and Salesforce id.
    pub orders: &'a HashMap<Uuid, (String, Option<String>)>,
    pub requests: &'a [Request],
    /// `Activation_Status__c` by Salesforce Order id (absent: empty).
    pub activation: &'a HashMap<String, String>,
    pub received: &'a [Received],
}

/// The fulfilment classes; [`Outcome::clean`] is the check.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub approved: usize,
    /// Approved and provisioned exactly once, everywhere.
    pub provisioned_once: usize,
    /// Approved orders whose local status is not `provisioned` (with the status).
    pub not_provisioned: Vec<(Uuid, String)>,
    /// Approved orders whose Salesforce `Activation_Status__c` is not `Provisioned`.
    pub salesforce_not_provisioned: Vec<(Uuid, String)>,
    /// Approved orders the receiver did not provision exactly once (with the count).
    pub not_once: Vec<(Uuid, usize)>,
    /// Requests in state `failed`, with their reason.
    pub failed_requests: Vec<(Uuid, String)>,
    /// Orders never approved that were touched anyway (a request, a status, a Salesforce value,
    /// a receiver call), with what.
    pub unapproved_touched: Vec<(Uuid, String)>,
    /// Receiver calls that name no request of the run.
    pub unknown_calls: usize,
    /// Calls the receiver got: in all, answered from its idempotency memory, answered with an
    /// error (the injected 5xx/429) or never answered (hangs), refused for their signature.
    pub received: usize,
    pub duplicates: usize,
    pub errors: usize,
    pub hung: usize,
    pub bad_signatures: usize,
    /// Requests per state.
    pub request_states: HashMap<String, usize>,
}

impl Outcome {
    pub fn clean(&self) -> bool {
        self.provisioned_once == self.approved
            && self.not_provisioned.is_empty()
            && self.salesforce_not_provisioned.is_empty()
            && self.not_once.is_empty()
            && self.failed_requests.is_empty()
            && self.unapproved_touched.is_empty()
            && self.unknown_calls == 0
            && self.bad_signatures == 0
    }

    pub fn to_json(&self) -> Value {
        const SAMPLE: usize = 20;
        let pairs = |v: &[(Uuid, String)]| {
            v.iter()
                .take(SAMPLE)
                .map(|(id, what)| json!({"id": id, "what": what}))
                .collect::<Vec<_>>()
        };
        json!({
            "clean": self.clean(),
            "approved": self.approved,
            "provisioned_once": self.provisioned_once,
            "not_provisioned": self.not_provisioned.len(),
            "salesforce_not_provisioned": self.salesforce_not_provisioned.len(),
            "not_once": self.not_once.len(),
            "failed_requests": self.failed_requests.len(),
            "unapproved_touched": self.unapproved_touched.len(),
            "unknown_calls": self.unknown_calls,
            "received": self.received,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "hung": self.hung,
            "bad_signatures": self.bad_signatures,
            "request_states": self.request_states,
            "not_provisioned_sample": pairs(&self.not_provisioned),
            "salesforce_not_provisioned_sample": pairs(&self.salesforce_not_provisioned),
            "not_once_sample": self.not_once.iter().take(SAMPLE)
                .map(|(id, n)| json!({"id": id, "provisioned": n})).collect::<Vec<_>>(),
            "failed_requests_sample": pairs(&self.failed_requests),
            "unapproved_touched_sample": pairs(&self.unapproved_touched),
        })
    }
}

pub fn classify(input: &Inputs<'_>) -> Outcome {
    let mut out = Outcome {
        approved: input.approved.len(),
        ..Outcome::default()
    };
    let owners: HashMap<String, Uuid> = input
        .requests
        .iter()
        .map(|r| (r.id.to_string(), r.order_id))
        .collect();
    let mut provisioned: HashMap<Uuid, usize> = HashMap::new();
    let mut called: HashSet<Uuid> = HashSet::new();
    out.received = input.received.len();
    for r in input.received {
        if !r.signature_ok {
            out.bad_signatures += 1;
            continue;
        }
        let Some(order) = owners.get(&r.id) else {
            out.unknown_calls += 1;
            continue;
        };
        called.insert(*order);
        if r.duplicate {
            out.duplicates += 1;
        } else if r.status.is_none() {
            out.hung += 1;
        } else if r.answer.get("status").and_then(Value::as_str) == Some("provisioned") {
            *provisioned.entry(*order).or_default() += 1;
        } else {
            out.errors += 1;
        }
    }
    let mut with_request: HashSet<Uuid> = HashSet::new();
    for r in input.requests {
        with_request.insert(r.order_id);
        *out.request_states.entry(r.state.clone()).or_default() += 1;
        if r.state == "failed" {
            out.failed_requests
                .push((r.order_id, r.reason.clone().unwrap_or_default()));
        }
    }
    let activation = |sf: &Option<String>| {
        sf.as_ref()
            .and_then(|id| input.activation.get(id))
            .map_or("", String::as_str)
    };
    for id in input.approved {
        let (status, sf) = input
            .orders
            .get(id)
            .map_or(("(no order)", &None), |(s, sf)| (s.as_str(), sf));
        let n = provisioned.get(id).copied().unwrap_or(0);
        let value = activation(sf);
        let mut ok = true;
        if status != "provisioned" {
            out.not_provisioned.push((*id, status.to_owned()));
            ok = false;
        }
        if value != "Provisioned" {
            out.salesforce_not_provisioned
                .push((*id, format!("Activation_Status__c {value:?}")));
            ok = false;
        }
        if n != 1 {
            out.not_once.push((*id, n));
            ok = false;
        }
        if ok {
            out.provisioned_once += 1;
        }
    }
    for (id, (status, sf)) in input.orders {
        if input.approved.contains(id) || input.given_up.contains(id) {
            continue;
        }
        let mut what = Vec::new();
        if with_request.contains(id) {
            what.push("a fulfilment request".to_owned());
        }
        if matches!(status.as_str(), "provisioning" | "provisioned") {
            what.push(format!("status {status}"));
        }
        let value = activation(sf);
        if !value.is_empty() {
            what.push(format!("Activation_Status__c {value:?}"));
        }
        if called.contains(id) {
            what.push("a receiver call".to_owned());
        }
        if !what.is_empty() {
            out.unapproved_touched.push((*id, what.join(", ")));
        }
    }
    out.not_provisioned.sort();
    out.salesforce_not_provisioned.sort();
    out.not_once.sort();
    out.failed_requests.sort();
    out.unapproved_touched.sort();
    out
}

/// What the fulfilment classification read, kept for the report and the chart.
pub struct Read {
    pub orders: HashMap<Uuid, (String, Option<String>)>,
    pub requests: Vec<Request>,
    pub activation: HashMap<String, String>,
    pub received: Vec<Received>,
}

/// How many requests the receiver keeps for `GET /__admin/requests` (its `MAX_RECORDS`): a full
/// list may have lost its oldest.
const RECEIVER_KEEPS: usize = 10_000;

/// Reads every fact the classification needs, each from its owner.
pub async fn read(stack: &Stack, salesforce: &Client) -> Result<Read> {
    let pool = stack.pool()?;
    let orders = sqlx::query_as::<_, (Uuid, String, Option<String>)>(
        "SELECT id, status, salesforce_id FROM orders",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, status, sf)| (id, (status, sf)))
    .collect();
    type Row = (Uuid, Uuid, String, Option<String>, Option<DateTime<Utc>>);
    let requests = sqlx::query_as::<_, Row>(
        "SELECT id, order_id, state, reason, decided_at FROM fulfilment_requests",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, order_id, state, reason, decided_at)| Request {
        id,
        order_id,
        state,
        reason,
        decided_at,
    })
    .collect();
    let records: Vec<Value> = salesforce
        .query_collect("SELECT Id, Activation_Status__c FROM Order")
        .await
        .context("cannot query the emulator's orders")?;
    let activation = records
        .iter()
        .filter_map(|r| {
            Some((
                r.get("Id")?.as_str()?.to_owned(),
                r.get("Activation_Status__c")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ))
        })
        .collect();
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
    if received.len() >= RECEIVER_KEEPS {
        // The oldest calls may be gone from the list: "exactly once" cannot be judged.
        bail!(
            "the receiver's list of requests is full ({} kept); run fewer approvals",
            received.len()
        );
    }
    Ok(Read {
        orders,
        requests,
        activation,
        received,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(id: Uuid, status: Option<u16>, answer: &str, duplicate: bool) -> Received {
        Received {
            id: id.to_string(),
            signature_ok: true,
            status,
            answer: json!({"status": answer}),
            duplicate,
        }
    }

    fn request(order: Uuid, state: &str) -> Request {
        Request {
            id: Uuid::now_v7(),
            order_id: order,
            state: state.into(),
            reason: (state == "failed").then(|| "gave up".into()),
            decided_at: None,
        }
    }

    #[test]
    fn every_class() {
        let ids: Vec<Uuid> = (0..7).map(|_| Uuid::now_v7()).collect();
        let [ok, twice, local, sf, failed, left, touched] = ids[..] else {
            unreachable!()
        };
        let approved: HashSet<Uuid> = [ok, twice, local, sf, failed].into();
        let sf_id = |id: Uuid| Some(format!("801{}", id.simple()));
        let orders: HashMap<Uuid, (String, Option<String>)> = ids
            .iter()
            .map(|&id| {
                let status = match id {
                    x if x == local || x == failed => "provisioning",
                    x if x == left => "submitted",
                    _ => "provisioned",
                };
                (id, (status.to_owned(), sf_id(id)))
            })
            .collect();
        let requests: Vec<Request> = [
            request(ok, "provisioned"),
            request(twice, "provisioned"),
            request(local, "provisioned"),
            request(sf, "provisioned"),
            request(failed, "failed"),
            request(touched, "provisioned"),
        ]
        .into();
        let by_order = |o: Uuid| requests.iter().find(|r| r.order_id == o).unwrap().id;
        let mut activation: HashMap<String, String> = ids
            .iter()
            .map(|&id| (sf_id(id).unwrap(), "Provisioned".to_owned()))
            .collect();
        activation.insert(sf_id(sf).unwrap(), String::new());
        activation.insert(sf_id(left).unwrap(), String::new());
        activation.insert(sf_id(failed).unwrap(), "Failed".into());
        let received = vec![
            call(by_order(ok), Some(503), "", false),
            call(by_order(ok), None, "", false),
            call(by_order(ok), Some(200), "provisioned", false),
            call(by_order(ok), Some(200), "provisioned", true),
            call(by_order(twice), Some(200), "provisioned", false),
            call(by_order(twice), Some(200), "provisioned", false),
            call(by_order(local), Some(200), "provisioned", false),
            call(by_order(sf), Some(200), "provisioned", false),
            call(by_order(touched), Some(200), "provisioned", false),
            call(Uuid::now_v7(), Some(200), "provisioned", false),
        ];
        let out = classify(&Inputs {
            approved: &approved,
            given_up: &HashSet::new(),
            orders: &orders,
            requests: &requests,
            activation: &activation,
            received: &received,
        });
        assert_eq!(out.approved, 5);
        assert_eq!(out.provisioned_once, 1, "{out:?}");
        let mut want = vec![
            (local, "provisioning".to_owned()),
            (failed, "provisioning".to_owned()),
        ];
        want.sort();
        assert_eq!(out.not_provisioned, want);
        assert_eq!(out.salesforce_not_provisioned.len(), 2);
        let mut once = vec![(twice, 2), (failed, 0)];
        once.sort();
        assert_eq!(out.not_once, once);
        assert_eq!(out.failed_requests, vec![(failed, "gave up".to_owned())]);
        assert_eq!(out.unapproved_touched.len(), 1);
        assert_eq!(out.unapproved_touched[0].0, touched);
        assert!(out.unapproved_touched[0].1.contains("a receiver call"));
        assert_eq!(out.unknown_calls, 1);
        assert_eq!((out.duplicates, out.hung, out.errors), (1, 1, 1));
        assert!(!out.clean());
        assert_eq!(out.to_json()["not_once"], 2);
    }
}
