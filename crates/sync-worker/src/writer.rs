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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderbridge_domain::Order;
use orderbridge_salesforce::{
    ApiError, Client, Composite, CompositeResponse, Error, ErrorClass, RecordResult,
    SubrequestOutcome,
};
use serde_json::{Map, Value};

use crate::pricebook::{PriceBook, PriceBookError, Resolved, soql_literal};
use orderbridge_mapping::{Mapping, ObjectMapping, Scope, WriteMode};

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

/// Observations for metrics, reported per call.
pub trait CallObserver: Send + Sync {
    fn call(&self, what: &'static str, elapsed: Duration, error_code: Option<&str>);
}

/// Writes orders; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    mapping: Arc<Mapping>,
    pricebook: Arc<PriceBook>,
    observer: Arc<dyn CallObserver>,
}

/// One order's records, ready to send.
struct Prepared {
    order_key: String,
    order_record: Map<String, Value>,
    /// The account's external id and record, when the mapping has an account.
    account: Option<(String, Map<String, Value>)>,
    /// When the order was accepted: of several orders of one customer in a call, the newest
    /// one's account values are written.
    created_at: chrono::DateTime<chrono::Utc>,
    items: Vec<(String, Map<String, Value>)>,
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

    pub fn pricebook(&self) -> &PriceBook {
        &self.pricebook
    }

    /// Writes `orders` (distinct ids) and returns one result per order, in order.
    pub async fn write(&self, orders: &[&Order]) -> Vec<OrderResult> {
        let mut results: Vec<Option<OrderResult>> = vec![None; orders.len()];
        let mut prepared: Vec<(usize, Prepared)> = Vec::with_capacity(orders.len());

        // Price book entries for every SKU of the batch (cached; one query for new SKUs).
        let entries = match self.entries_for(orders).await {
            Ok(e) => e,
            Err(failure) => {
                return orders
                    .iter()
                    .map(|_| OrderResult::CallFailed(failure.clone()))
                    .collect();
            }
        };

        let pricebook = match &self.mapping.order.pricebook_field {
            Some(_) => match self.pricebook.resolve().await {
                Ok(r) => Some(r.clone()),
                Err(e) => {
                    let failure = pricebook_failure(e);
                    return orders
                        .iter()
                        .map(|_| OrderResult::CallFailed(failure.clone()))
                        .collect();
                }
            },
            None => None,
        };
        for (i, order) in orders.iter().enumerate() {
            match self.prepare(order, entries.as_ref(), pricebook.as_ref()) {
                Ok(p) => prepared.push((i, p)),
                Err(f) => results[i] = Some(OrderResult::Failed(f)),
            }
        }

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

    /// Sends `call`; when Salesforce refuses the request as a whole for a reason that is the
    /// request's (a malformed record, not an outage), splits it in halves and tries again, so
    /// one bad order ends as that order's permanent failure and its neighbours go through
    /// (about 2 × log2(n) extra calls per bad order). `Err` is a failure that is not the
    /// orders' (outage, budget, session); the caller stops there.
    fn send_isolating<'a>(
        &'a self,
        call: &'a [&'a (usize, Prepared)],
        results: &'a mut [Option<OrderResult>],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CallFailure>> + Send + 'a>>
    {
        Box::pin(async move {
            match self.send(call).await {
                Ok(per_order) => {
                    for (i, r) in per_order {
                        results[i] = Some(r);
                    }
                    Ok(())
                }
                Err(f) if f.class == ErrorClass::Permanent && call.len() == 1 => {
                    results[call[0].0] = Some(OrderResult::Failed(Failure {
                        retryable: false,
                        code: f.code,
                        message: f.message,
                    }));
                    Ok(())
                }
                Err(f) if f.class == ErrorClass::Permanent => {
                    tracing::warn!(code = %f.code, error = %f.message, orders = call.len(), "composite refused as a whole; splitting it to find the order at fault");
                    let (a, b) = call.split_at(call.len() / 2);
                    self.send_isolating(a, results).await?;
                    self.send_isolating(b, results).await
                }
                Err(f) => Err(f),
            }
        })
    }

    async fn entries_for(
        &self,
        orders: &[&Order],
    ) -> Result<Option<HashMap<String, Option<String>>>, CallFailure> {
        let Some(items) = &self.mapping.items else {
            return Ok(None);
        };
        if items.pricebook_entry_field.is_none() {
            return Ok(None);
        }
        let skus: BTreeSet<&str> = orders
            .iter()
            .flat_map(|o| o.lines.iter().map(|l| l.sku.as_str()))
            .collect();
        let started = Instant::now();
        match self.pricebook.entries(&skus).await {
            Ok(e) => Ok(Some(e)),
            Err(e) => {
                let f = pricebook_failure(e);
                self.observer
                    .call("pricebook", started.elapsed(), Some(&f.code));
                Err(f)
            }
        }
    }

    fn prepare(
        &self,
        order: &Order,
        entries: Option<&HashMap<String, Option<String>>>,
        pricebook: Option<&Resolved>,
    ) -> Result<Prepared, Failure> {
        let json = serde_json::to_value(order).map_err(|e| Failure {
            retryable: false,
            code: "UNSERIALIZABLE".into(),
            message: e.to_string(),
        })?;
        let scope = Scope {
            order: &json,
            line: None,
        };
        let key_missing = |obj: &ObjectMapping| Failure {
            retryable: false,
            code: "MAPPING_KEY_MISSING".into(),
            message: format!(
                "the mapping's key for {} ({}) has no value in this order",
                obj.sobject, obj.external_id_field
            ),
        };
        let m = &self.mapping;
        let order_key = m
            .order
            .object
            .key(scope)
            .ok_or_else(|| key_missing(&m.order.object))?;
        let mut order_record = m.order.object.record(scope, &order_key);
        let account = match &m.account {
            Some(a) => {
                let key = a.object.key(scope).ok_or_else(|| key_missing(&a.object))?;
                order_record.insert(a.relationship.clone(), a.object.reference(&key));
                let record = a.object.record(scope, &key);
                Some((key, record))
            }
            None => None,
        };
        if let (Some(field), Some(pb)) = (&m.order.pricebook_field, pricebook) {
            order_record.insert(field.clone(), Value::String(pb.id.clone()));
        }
        let mut items = Vec::new();
        if let Some(im) = &m.items {
            let lines = json.get("lines").and_then(Value::as_array);
            for (line, value) in order.lines.iter().zip(lines.into_iter().flatten()) {
                let scope = Scope {
                    order: &json,
                    line: Some(value),
                };
                let key = im
                    .object
                    .key(scope)
                    .ok_or_else(|| key_missing(&im.object))?;
                let mut record = im.object.record(scope, &key);
                record.insert(
                    im.order_relationship.clone(),
                    m.order.object.reference(&order_key),
                );
                if let Some(field) = &im.pricebook_entry_field {
                    let entry = entries
                        .and_then(|e| e.get(&line.sku))
                        .cloned()
                        .flatten()
                        .ok_or_else(|| Failure {
                            retryable: false,
                            code: "UNKNOWN_SKU".into(),
                            message: format!(
                                "SKU {:?} (line {}) has no active entry in price book {}",
                                line.sku,
                                line.line_number,
                                pricebook
                                    .map(|r| format!("{:?} ({})", r.name, r.id))
                                    .unwrap_or_else(|| "(none)".into())
                            ),
                        })?;
                    record.insert(field.clone(), Value::String(entry));
                }
                items.push((key, record));
            }
        }
        Ok(Prepared {
            order_key,
            order_record,
            account,
            created_at: order.created_at,
            items,
        })
    }

    /// Sends one Composite call and reads every order's outcome from it.
    async fn send(
        &self,
        call: &[&(usize, Prepared)],
    ) -> Result<Vec<(usize, OrderResult)>, CallFailure> {
        let m = &self.mapping;
        let mut composite = Composite::new().all_or_none(false);
        let build_err = |e: Error| CallFailure {
            class: ErrorClass::Permanent,
            code: "INVALID_REQUEST".into(),
            message: e.to_string(),
            retry_after: None,
        };

        // Accounts: one record per distinct key, with the values of the newest order (by
        // acceptance time, not delivery order: a retried or replayed old order must not
        // overwrite a newer address within the call).
        let mut account_keys: Vec<String> = Vec::new();
        let mut account_records: HashMap<
            String,
            (chrono::DateTime<chrono::Utc>, Map<String, Value>),
        > = HashMap::new();
        for (_, p) in call {
            if let Some((key, record)) = &p.account {
                match account_records.get(key) {
                    None => {
                        account_keys.push(key.clone());
                        account_records.insert(key.clone(), (p.created_at, record.clone()));
                    }
                    Some((at, _)) if *at < p.created_at => {
                        account_records.insert(key.clone(), (p.created_at, record.clone()));
                    }
                    Some(_) => {}
                }
            }
        }
        let mut refs: Vec<(String, Kind, Vec<usize>)> = Vec::new();
        if let Some(a) = &m.account {
            for (n, chunk) in account_keys.chunks(COLLECTION).enumerate() {
                let records: Vec<&Map<String, Value>> = chunk
                    .iter()
                    .filter_map(|k| account_records.get(k).map(|(_, r)| r))
                    .collect();
                let r = format!("acc{n}");
                add_collection(&mut composite, &r, &a.object, &records).map_err(build_err)?;
                refs.push((
                    r,
                    Kind::Account,
                    (0..chunk.len()).map(|i| n * COLLECTION + i).collect(),
                ));
            }
        }
        for (n, chunk) in call.chunks(COLLECTION).enumerate() {
            let records: Vec<&Map<String, Value>> =
                chunk.iter().map(|(_, p)| &p.order_record).collect();
            let r = format!("ord{n}");
            add_collection(&mut composite, &r, &m.order.object, &records).map_err(build_err)?;
            refs.push((
                r,
                Kind::Order,
                (0..chunk.len()).map(|i| n * COLLECTION + i).collect(),
            ));
        }
        let mut item_owner: Vec<usize> = Vec::new(); // item index → position in `call`
        let mut item_records: Vec<&Map<String, Value>> = Vec::new();
        for (pos, (_, p)) in call.iter().enumerate() {
            for (_, record) in &p.items {
                item_owner.push(pos);
                item_records.push(record);
            }
        }
        if let Some(im) = &m.items {
            for (n, chunk) in item_records.chunks(COLLECTION).enumerate() {
                let r = format!("itm{n}");
                add_collection(&mut composite, &r, &im.object, chunk).map_err(build_err)?;
                refs.push((
                    r,
                    Kind::Item,
                    (0..chunk.len()).map(|i| n * COLLECTION + i).collect(),
                ));
            }
        }

        let started = Instant::now();
        let response = self.client.composite(&composite).await;
        let elapsed = started.elapsed();
        let response = match response {
            Ok(r) => {
                self.observer.call("composite", elapsed, None);
                r
            }
            Err(e) => {
                let f = CallFailure::from_error(&e);
                self.observer.call("composite", elapsed, Some(&f.code));
                return Err(f);
            }
        };

        let mut account_fate: Vec<Option<RecordFate>> = vec![None; account_keys.len()];
        let mut order_fate: Vec<Option<RecordFate>> = vec![None; call.len()];
        let mut item_fate: Vec<Option<RecordFate>> = vec![None; item_records.len()];
        for (reference, kind, indexes) in &refs {
            let (object, fates) = match kind {
                Kind::Account => (m.account.as_ref().map(|a| &a.object), &mut account_fate),
                Kind::Order => (Some(&m.order.object), &mut order_fate),
                Kind::Item => (m.items.as_ref().map(|i| &i.object), &mut item_fate),
            };
            let Some(object) = object else { continue };
            read_collection(&response, reference, object, indexes, fates);
        }

        let mut account_index: HashMap<&str, usize> = HashMap::new();
        for (i, k) in account_keys.iter().enumerate() {
            account_index.insert(k.as_str(), i);
        }
        let mut item_cursor = 0;
        let mut out = Vec::with_capacity(call.len());
        for (pos, (i, p)) in call.iter().enumerate() {
            let n_items = p.items.len();
            let items = &item_fate[item_cursor..item_cursor + n_items];
            item_cursor += n_items;
            let account = p.account.as_ref().map(|(k, _)| {
                account_index
                    .get(k.as_str())
                    .and_then(|i| account_fate[*i].clone())
            });
            let result = decide(account, order_fate[pos].clone(), items, &p.order_key);
            out.push((*i, result));
        }
        Ok(out)
    }

    /// Orders found already written whose duplicate error did not carry the id (the message
    /// format is not a contract): look the ids up by external id, one query per 100.
    async fn fill_missing_ids(
        &self,
        keys: &HashMap<usize, &str>,
        results: &mut [Option<OrderResult>],
    ) {
        let missing: Vec<(usize, &str)> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Some(OrderResult::Failed(f)) if f.code == NO_ID))
            .filter_map(|(i, _)| keys.get(&i).map(|k| (i, *k)))
            .collect();
        let object = &self.mapping.order.object;
        for chunk in missing.chunks(100) {
            let list = chunk
                .iter()
                .map(|(_, k)| soql_literal(k))
                .collect::<Vec<_>>()
                .join(", ");
            let soql = format!(
                "SELECT Id, {ext} FROM {sobject} WHERE {ext} IN ({list})",
                ext = object.external_id_field,
                sobject = object.sobject
            );
            let started = Instant::now();
            let rows = match self.client.query_collect::<Map<String, Value>>(&soql).await {
                Ok(rows) => {
                    self.observer.call("query", started.elapsed(), None);
                    rows
                }
                Err(e) => {
                    let f = CallFailure::from_error(&e);
                    self.observer
                        .call("query", started.elapsed(), Some(&f.code));
                    continue;
                }
            };
            let ids: HashMap<&str, &str> = rows
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get(object.external_id_field.as_str())?.as_str()?,
                        r.get("Id")?.as_str()?,
                    ))
                })
                .collect();
            for (i, key) in chunk {
                if let Some(id) = ids.get(key) {
                    results[*i] = Some(OrderResult::Synced {
                        salesforce_id: (*id).to_owned(),
                    });
                }
            }
        }
    }
}

fn pricebook_failure(e: PriceBookError) -> CallFailure {
    match e {
        PriceBookError::Salesforce(e) => CallFailure::from_error(&e),
        PriceBookError::NotFound(message) => CallFailure {
            class: ErrorClass::Config,
            code: "PRICEBOOK_NOT_FOUND".into(),
            message,
            retry_after: None,
        },
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Account,
    Order,
    Item,
}

fn add_collection(
    composite: &mut Composite,
    reference: &str,
    object: &ObjectMapping,
    records: &[&Map<String, Value>],
) -> Result<(), Error> {
    match object.write {
        WriteMode::Create => composite
            .create_collection(reference, &object.sobject, records, false)
            .map(|_| ()),
        WriteMode::Upsert => composite
            .upsert_collection(
                reference,
                &object.sobject,
                &object.external_id_field,
                records,
                false,
            )
            .map(|_| ()),
    }
}

/// Reads one collection subrequest's per-record results into `fates` at `indexes`.
fn read_collection(
    response: &CompositeResponse,
    reference: &str,
    object: &ObjectMapping,
    indexes: &[usize],
    fates: &mut [Option<RecordFate>],
) {
    let Some(result) = response.get(reference) else {
        return;
    };
    match &result.outcome {
        SubrequestOutcome::Collection(records) => {
            for (idx, record) in indexes.iter().zip(records) {
                if let Some(slot) = fates.get_mut(*idx) {
                    *slot = Some(record_fate(record, object));
                }
            }
        }
        SubrequestOutcome::Failed { errors, class, .. } => {
            for idx in indexes {
                if let Some(slot) = fates.get_mut(*idx) {
                    *slot = Some(RecordFate::Refused(errors.clone(), *class));
                }
            }
        }
        _ => {}
    }
}

fn record_fate(record: &RecordResult, object: &ObjectMapping) -> RecordFate {
    if record.success {
        return RecordFate::Written(record.id.clone());
    }
    if let Some(existing) = already_exists(&record.errors, &object.external_id_field) {
        return match object.write {
            WriteMode::Create => RecordFate::Written(existing),
            // Two upserts of a new external id racing (two batches with the same new
            // customer): the loser's retry finds the record and updates it.
            WriteMode::Upsert => RecordFate::Refused(record.errors.clone(), ErrorClass::Retryable),
        };
    }
    let class = record
        .errors
        .iter()
        .map(ApiError::class)
        .find(|c| *c != ErrorClass::Permanent)
        .unwrap_or(ErrorClass::Permanent);
    RecordFate::Refused(record.errors.clone(), class)
}

/// A create refused because the external id is taken means the record was written before:
/// `DUPLICATE_VALUE` naming the external id field, with the existing id in the message
/// ("duplicate value found: External_Id__c duplicates value on record with id: 801…").
/// `Some(None)` when the id cannot be read from the message.
fn already_exists(errors: &[ApiError], external_id_field: &str) -> Option<Option<String>> {
    let e = errors.iter().find(|e| e.code == "DUPLICATE_VALUE")?;
    let names_field = e
        .fields
        .iter()
        .any(|f| f.eq_ignore_ascii_case(external_id_field))
        || e.message.to_ascii_lowercase().contains(&format!(
            "{} duplicates value",
            external_id_field.to_ascii_lowercase()
        ));
    if !names_field {
        return None;
    }
    let id = e
        .message
        .rsplit_once("with id: ")
        .map(|(_, id)| id.trim().trim_end_matches('.').to_owned())
        .filter(|id| {
            (15..=18).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric())
        });
    Some(id)
}

fn failure(what: &str, errors: &[ApiError], class: ErrorClass) -> Failure {
    let first = errors.first();
    Failure {
        retryable: matches!(
            class,
            ErrorClass::Retryable | ErrorClass::RateLimited | ErrorClass::Session
        ),
        code: first
            .map(|e| e.code.clone())
            .unwrap_or_else(|| "UNKNOWN".into()),
        message: format!(
            "{what}: {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// One order's outcome from its records' fates: the first failure along account → order →
/// items decides, because later records fail as a consequence of earlier ones.
fn decide(
    account: Option<Option<RecordFate>>,
    order: Option<RecordFate>,
    items: &[Option<RecordFate>],
    order_key: &str,
) -> OrderResult {
    let missing = |what: &str| {
        OrderResult::Failed(Failure {
            retryable: true,
            code: "NO_RESULT".into(),
            message: format!("Salesforce returned no result for the {what}"),
        })
    };
    // The account decides only when the order itself was not written (its refusal is then
    // most likely a consequence). An order written with all its items is synced even if the
    // account upsert was refused: it links to the existing account by external id.
    let account_failure = match account {
        Some(None) => Some(missing("account")),
        Some(Some(RecordFate::Refused(errors, class))) => {
            Some(OrderResult::Failed(failure("account", &errors, class)))
        }
        _ => None,
    };
    let order_id = match order {
        None => return account_failure.unwrap_or_else(|| missing("order")),
        Some(RecordFate::Refused(errors, class)) => {
            return account_failure
                .unwrap_or_else(|| OrderResult::Failed(failure("order", &errors, class)));
        }
        Some(RecordFate::Written(id)) => id,
    };
    if let Some(f) = &account_failure {
        tracing::warn!(order = order_key, account_error = ?f, "order written, but its account could not be updated");
    }
    for (n, item) in items.iter().enumerate() {
        match item {
            None => return missing("order item"),
            Some(RecordFate::Refused(errors, class)) => {
                return OrderResult::Failed(failure(
                    &format!("order item {}", n + 1),
                    errors,
                    *class,
                ));
            }
            Some(RecordFate::Written(_)) => {}
        }
    }
    match order_id {
        Some(id) => OrderResult::Synced { salesforce_id: id },
        None => OrderResult::Failed(Failure {
            retryable: true,
            code: NO_ID.into(),
            message: format!("order {order_key} was written but Salesforce did not say its id"),
        }),
    }
}

/// Splits prepared orders into calls of at most 5 collections of 200 records each.
fn pack(prepared: &[(usize, Prepared)], with_accounts: bool) -> Vec<Vec<&(usize, Prepared)>> {
    let chunks = |n: usize| n.div_ceil(COLLECTION);
    let mut calls = Vec::new();
    let mut current: Vec<&(usize, Prepared)> = Vec::new();
    let mut accounts: BTreeSet<&str> = BTreeSet::new();
    let mut items = 0usize;
    for entry in prepared {
        let p = &entry.1;
        let account_key = p.account.as_ref().map(|(k, _)| k.as_str());
        let new_account = account_key.filter(|k| with_accounts && !accounts.contains(k));
        let collections = chunks(accounts.len() + usize::from(new_account.is_some()))
            + chunks(current.len() + 1)
            + chunks(items + p.items.len());
        if !current.is_empty() && collections > COLLECTIONS_PER_CALL {
            calls.push(std::mem::take(&mut current));
            accounts.clear();
            items = 0;
        }
        if with_accounts && let Some(k) = account_key {
            accounts.insert(k);
        }
        items += p.items.len();
        current.push(entry);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}
