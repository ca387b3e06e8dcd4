//! Sending: one Composite call per packed group of orders, a call refused as a whole split in
//! halves until the bad order is alone, and each collection's per-record results read back.

use std::collections::HashMap;
use std::time::Instant;

use orderbridge_mapping::{ObjectMapping, WriteMode};
use orderbridge_salesforce::{
    Composite, CompositeResponse, Error, ErrorClass, Row, SubrequestOutcome,
};
use serde_json::{Map, Value};

use super::outcome::{decide, record_fate};
use super::{
    COLLECTION, CallFailure, Failure, NO_ID, OrderResult, Prepared, RecordFate, Values, Writer,
};
use crate::pricebook::soql_literal;

impl Writer {
    /// Sends `call`; when Salesforce refuses the request as a whole for a reason that is the
    /// request's (a malformed record, not an outage), splits it in halves and tries again, so
    /// one bad order ends as that order's permanent failure and its neighbours go through
    /// (about 2 × log2(n) extra calls per bad order). `Err` is a failure that is not the
    /// orders' (outage, budget, session); the caller stops there.
    pub(super) fn send_isolating<'a>(
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
        let mut account_records: HashMap<&str, (chrono::DateTime<chrono::Utc>, &Values)> =
            HashMap::new();
        for (_, p) in call {
            if let Some((key, record)) = &p.account {
                match account_records.get(key.as_str()) {
                    None => {
                        account_keys.push(key.clone());
                        account_records.insert(key, (p.created_at, record));
                    }
                    Some((at, _)) if *at < p.created_at => {
                        account_records.insert(key, (p.created_at, record));
                    }
                    Some(_) => {}
                }
            }
        }
        let l = &self.layouts;
        let mut refs: Vec<(String, Kind, Vec<usize>)> = Vec::new();
        if let Some(a) = &m.account {
            for (n, chunk) in account_keys.chunks(COLLECTION).enumerate() {
                let records: Vec<Row> = chunk
                    .iter()
                    .filter_map(|k| account_records.get(k.as_str()))
                    .map(|(_, r)| Row::new(&l.account, r))
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
            let records: Vec<Row> = chunk
                .iter()
                .map(|(_, p)| Row::new(&l.order, &p.order_record))
                .collect();
            let r = format!("ord{n}");
            add_collection(&mut composite, &r, &m.order.object, &records).map_err(build_err)?;
            refs.push((
                r,
                Kind::Order,
                (0..chunk.len()).map(|i| n * COLLECTION + i).collect(),
            ));
        }
        let mut item_records: Vec<Row> = Vec::new();
        for (_, p) in call {
            for (_, record) in &p.items {
                item_records.push(Row::new(&l.item, record));
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
    pub(super) async fn fill_missing_ids(
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
    records: &[Row],
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
