//! Preparing a batch: each order's records from the mapping, the price book entries its items
//! need, and the packing of orders into Composite calls.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use orderbridge_domain::SubmittedOrder;
use orderbridge_mapping::{KeyError, Scope};
use orderbridge_salesforce::ErrorClass;
use serde_json::Value;

use super::{COLLECTION, COLLECTIONS_PER_CALL, CallFailure, Failure, Prepared, Writer};
use crate::pricebook::{PriceBookError, Resolved};

impl Writer {
    pub(super) async fn entries_for(
        &self,
        orders: &[&SubmittedOrder],
    ) -> Result<Option<HashMap<String, Option<String>>>, CallFailure> {
        let Some(items) = &self.mapping.items else {
            return Ok(None);
        };
        if items.pricebook_entry_field.is_none() {
            return Ok(None);
        }
        let skus: BTreeSet<&str> = orders
            .iter()
            .flat_map(|o| o.order.lines.iter().map(|l| l.sku.as_str()))
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

    /// One order's records. An order with a value Salesforce could not hold exactly (too
    /// long, too many digits) fails here, permanently and naming the field, before anything is
    /// written: nothing is cut or rounded on the way.
    pub(super) fn prepare(
        &self,
        submitted: &SubmittedOrder,
        entries: Option<&HashMap<String, Option<String>>>,
        pricebook: Option<&Resolved>,
    ) -> Result<Prepared, Failure> {
        let order = &submitted.order;
        let json = submitted.data();
        let scope = Scope {
            order: &json,
            line: None,
        };
        let key_failure = |e: KeyError| Failure {
            retryable: false,
            code: e.code().into(),
            message: e.to_string(),
        };
        let m = &self.mapping;
        // Keys first: an event without a client, or an ambiguous key, fails with its own code.
        let order_key = m.order.object.key(scope).map_err(key_failure)?;
        let account_key = match &m.account {
            Some(a) => Some(a.object.key(scope).map_err(key_failure)?),
            None => None,
        };
        let overflows = m.check_order(&json);
        if !overflows.is_empty() {
            return Err(Failure {
                retryable: false,
                code: "FIELD_LIMIT".into(),
                message: overflows
                    .iter()
                    .map(|o| format!("{}: {}", o.pointer, o.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        // Values in the `Layouts` column order: the mapped ones, then the references and
        // price book ids in the order `Layouts::new` appends their columns.
        let l = &self.layouts;
        let mut order_record = Vec::with_capacity(l.order.len());
        order_record.extend(m.order.object.values(scope, &order_key));
        let account = match (&m.account, account_key) {
            (Some(a), Some(key)) => {
                order_record.push(Some(Value::String(key.clone())));
                let mut record = Vec::with_capacity(l.account.len());
                record.extend(a.object.values(scope, &key));
                Some((key, record))
            }
            _ => None,
        };
        if m.order.pricebook_field.is_some() {
            order_record.push(pricebook.map(|pb| Value::String(pb.id.clone())));
        }
        debug_assert_eq!(order_record.len(), l.order.len());
        let mut items = Vec::new();
        if let Some(im) = &m.items {
            let lines = json.get("lines").and_then(Value::as_array);
            for (line, value) in order.lines.iter().zip(lines.into_iter().flatten()) {
                let scope = Scope {
                    order: &json,
                    line: Some(value),
                };
                let key = im.object.key(scope).map_err(key_failure)?;
                let mut record = Vec::with_capacity(l.item.len());
                record.extend(im.object.values(scope, &key));
                record.push(Some(Value::String(order_key.clone())));
                if im.pricebook_entry_field.is_some() {
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
                    record.push(Some(Value::String(entry)));
                }
                debug_assert_eq!(record.len(), l.item.len());
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
}

pub(super) fn pricebook_failure(e: PriceBookError) -> CallFailure {
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

/// Splits prepared orders into calls of at most 5 collections of 200 records each.
pub(super) fn pack(
    prepared: &[(usize, Prepared)],
    with_accounts: bool,
) -> Vec<Vec<&(usize, Prepared)>> {
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
