//! Writes a batch of orders to Salesforce in as few API calls as per-record outcomes allow.
//!
//! One Composite request is one API call and carries up to 5 sObject Collections of 200 records.
//! A batch is packed into Composite calls whose collections go accounts, then orders, then items,
//! so children reference parents written earlier in the same call by external id:
//!
//! ```text
//!  composite (allOrNone=false) ── acc0: PATCH composite/sobjects/Account/External_Id__c  ≤200 accounts (upsert)
//!                              ├─ ord0: POST  composite/sobjects                         ≤200 orders   (create)
//!                              ├─ itm0: POST  composite/sobjects                         ≤200 items    (create)
//!                              ├─ itm1 …                                                (≤5 collections in all)
//! ```
//!
//! 200 orders of 3 lines fit one call (1 + 1 + 3 collections): 5 calls per 1,000 orders.
//! Outcomes are per order: an order is synced when its account, itself and every item are
//! written (or were already there); otherwise the first failure in that order decides, so an
//! item rejected because its order could not be written reports the order's error.
//!
//! A large batch (a backlog) can go through Bulk API 2.0 instead ([`Writer::write_bulk`]):
//! three jobs, accounts then orders then items, about 17 calls however many orders, with the
//! same per-order outcomes.
//!
//! With several targets (divisions), a [`Router`] holds one writer per target and gives each
//! order to its target's (`route`).
//!
//! The stages, one file each: `prepare` (the mapping applied to each order, price book entries,
//! packing into calls), `send` (the Composite calls, halving a call Salesforce refuses as a
//! whole, reading each collection's results), `bulk` (the same records as Bulk jobs, each row's
//! result mapped back by external id), `outcome` (each order's result from its records'
//! fates).

mod bulk;
mod outcome;
mod prepare;
mod route;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orderbridge_domain::SubmittedOrder;
use orderbridge_salesforce::{ApiError, Client, Error, ErrorClass};
use serde_json::Value;

use crate::pricebook::PriceBook;
use orderbridge_mapping::{Mapping, ObjectMapping};
use orderbridge_salesforce::Column;
use prepare::{pack, pricebook_failure};
pub use route::Router;

const COLLECTION: usize = 200;
const COLLECTIONS_PER_CALL: usize = 5;
/// Internal marker: written, id unknown until looked up.
const NO_ID: &str = "NO_ID";

/// What became of one order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderResult {
    /// Written (or found already written); the id of the order's Salesforce record.
    Synced { salesforce_id: String },
    /// This order's records were refused.
    Failed(Failure),
    /// The call that carried the order failed as a whole (outage, limits, session): nothing is
    /// known about the order's records, and the cause is not the order's.
    CallFailed(CallFailure),
}

/// A record-level failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Retry later (row lock, transient server error) or never (validation, unknown SKU).
    pub retryable: bool,
    pub code: String,
    pub message: String,
}

/// A whole call failed.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFailure {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl CallFailure {
    fn from_error(e: &Error) -> Self {
        // A 2xx whose body cannot be read (a proxy's page, an API change) says nothing about
        // the orders: treat it as an outage, not as their permanent failure.
        let class = match e {
            Error::InvalidResponse { .. } => ErrorClass::Retryable,
            _ => e.class(),
        };
        Self {
            class,
            code: e
                .codes()
                .first()
                .map(|c| (*c).to_owned())
                .unwrap_or_else(|| error_kind(e).to_owned()),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Auth(_) => "AUTH",
        Error::Timeout { .. } => "TIMEOUT",
        Error::Transport { .. } => "TRANSPORT",
        Error::UsageShareExceeded { .. } => "API_USAGE_SHARE_EXCEEDED",
        Error::Config(_) | Error::Certificate { .. } => "CONFIG",
        Error::InvalidResponse { .. } => "INVALID_RESPONSE",
        _ => "SALESFORCE_ERROR",
    }
}

fn all_failed(n: usize, failure: &CallFailure) -> Vec<OrderResult> {
    (0..n)
        .map(|_| OrderResult::CallFailed(failure.clone()))
        .collect()
}

/// Observations for metrics, reported per call.
pub trait CallObserver: Send + Sync {
    fn call(&self, what: &'static str, elapsed: Duration, error_code: Option<&str>);

    /// What became of the orders a target was given in one batch (several targets only
    /// report this apart; see [`Router`]).
    fn target_results(&self, _target: &str, _results: &[OrderResult]) {}
}

/// Writes orders; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    mapping: Arc<Mapping>,
    layouts: Arc<Layouts>,
    /// What each object's Bulk jobs took, for polling the next one.
    pace: Arc<bulk::Pace>,
    pricebook: Arc<PriceBook>,
    observer: Arc<dyn CallObserver>,
}

/// A record's values, in its kind's [`Layouts`] column order; the external id first.
type Values = Vec<Option<Value>>;

/// One order's records, ready to send.
struct Prepared {
    order_key: String,
    order_record: Values,
    /// The account's external id and record, when the mapping has an account.
    account: Option<(String, Values)>,
    /// When the order was accepted: of several orders of one customer in a call, the newest
    /// one's account values are written.
    created_at: chrono::DateTime<chrono::Utc>,
    items: Vec<(String, Values)>,
}

/// The columns of each kind of record, held once for all of them (a record is only its
/// values: see `orderbridge_salesforce::rows`). Each is its object's `field_names` (the
/// external id first), then what `prepare` adds after the mapped values, in this order:
///
/// ```text
///  account  ext id, fields…
///  order    ext id, fields…, [account relationship → account ext id], [price book field]
///  item     ext id, fields…, order relationship → order ext id, [price book entry field]
/// ```
struct Layouts {
    account: Vec<Column>,
    order: Vec<Column>,
    item: Vec<Column>,
}

impl Layouts {
    fn new(m: &Mapping) -> Self {
        let fields = |o: &ObjectMapping| -> Vec<Column> {
            o.field_names()
                .map(|n| Column::Field(n.to_owned()))
                .collect()
        };
        let mut order = fields(&m.order.object);
        if let Some(a) = &m.account {
            order.push(Column::Reference {
                relationship: a.relationship.clone(),
                field: a.object.external_id_field.clone(),
            });
        }
        if let Some(f) = &m.order.pricebook_field {
            order.push(Column::Field(f.clone()));
        }
        let item = m.items.as_ref().map_or_else(Vec::new, |im| {
            let mut item = fields(&im.object);
            item.push(Column::Reference {
                relationship: im.order_relationship.clone(),
                field: m.order.object.external_id_field.clone(),
            });
            if let Some(f) = &im.pricebook_entry_field {
                item.push(Column::Field(f.clone()));
            }
            item
        });
        Self {
            account: m
                .account
                .as_ref()
                .map_or_else(Vec::new, |a| fields(&a.object)),
            order,
            item,
        }
    }
}

/// A record's fate inside a call.
#[derive(Debug, Clone)]
enum RecordFate {
    Written(Option<String>),
    Refused(Vec<ApiError>, ErrorClass),
}

impl Writer {
    pub fn new(
        client: Client,
        mapping: Arc<Mapping>,
        pricebook: Arc<PriceBook>,
        observer: Arc<dyn CallObserver>,
    ) -> Self {
        Self {
            client,
            layouts: Arc::new(Layouts::new(&mapping)),
            pace: Arc::default(),
            mapping,
            pricebook,
            observer,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    pub fn mapping_arc(&self) -> Arc<Mapping> {
        self.mapping.clone()
    }

    pub fn observer(&self) -> Arc<dyn CallObserver> {
        self.observer.clone()
    }

    pub fn pricebook(&self) -> &PriceBook {
        &self.pricebook
    }

    /// Writes `orders` (distinct ids) with Composite calls and returns one result per order,
    /// in order.
    pub async fn write(&self, orders: &[&SubmittedOrder]) -> Vec<OrderResult> {
        let (mut results, prepared) = match self.prepare_batch(orders).await {
            Ok(p) => p,
            Err(failure) => return all_failed(orders.len(), &failure),
        };

        // Calls go one after another; after a call fails for a reason that is not the orders'
        // (outage, budget, session), the rest are not attempted: they would fail the same way
        // and only burn time and budget while the worker should pause.
        let mut stopped: Option<CallFailure> = None;
        for call in pack(&prepared, self.mapping.account.is_some()) {
            if let Some(f) = &stopped {
                for (i, _) in &call {
                    results[*i] = Some(OrderResult::CallFailed(f.clone()));
                }
                continue;
            }
            if let Err(f) = self.send_isolating(&call, &mut results).await {
                for (i, _) in &call {
                    if results[*i].is_none() {
                        results[*i] = Some(OrderResult::CallFailed(f.clone()));
                    }
                }
                stopped = Some(f);
            }
        }

        self.finish(&prepared, results).await
    }

    /// Every order's records, or the failure of the lookups they need (price book entries,
    /// the price book) which is then every order's. Orders the mapping refuses have their
    /// result already.
    async fn prepare_batch(
        &self,
        orders: &[&SubmittedOrder],
    ) -> Result<(Vec<Option<OrderResult>>, Vec<(usize, Prepared)>), CallFailure> {
        let mut results: Vec<Option<OrderResult>> = vec![None; orders.len()];
        let mut prepared: Vec<(usize, Prepared)> = Vec::with_capacity(orders.len());
        // Price book entries for every SKU of the batch (cached; one query for new SKUs).
        let entries = self.entries_for(orders).await?;
        let pricebook = match &self.mapping.order.pricebook_field {
            Some(_) => Some(
                self.pricebook
                    .resolve()
                    .await
                    .map_err(pricebook_failure)?
                    .clone(),
            ),
            None => None,
        };
        for (i, order) in orders.iter().enumerate() {
            match self.prepare(order, entries.as_ref(), pricebook.as_ref()) {
                Ok(p) => prepared.push((i, p)),
                Err(f) => results[i] = Some(OrderResult::Failed(f)),
            }
        }
        Ok((results, prepared))
    }

    /// Looks up the ids the answers did not give, and makes a result of every order.
    async fn finish(
        &self,
        prepared: &[(usize, Prepared)],
        mut results: Vec<Option<OrderResult>>,
    ) -> Vec<OrderResult> {
        // Resolve ids of orders that existed already but whose duplicate error gave no id.
        let keys: HashMap<usize, &str> = prepared
            .iter()
            .map(|(i, p)| (*i, p.order_key.as_str()))
            .collect();
        self.fill_missing_ids(&keys, &mut results).await;

        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    OrderResult::Failed(Failure {
                        retryable: true,
                        code: "NO_RESULT".into(),
                        message: "Salesforce returned no result for this order".into(),
                    })
                })
            })
            .collect()
    }
}
