//! sObject Collections: create, update, upsert, delete and retrieve up to 200 records in one
//! call, one result per record in input order, with `allOrNone` transactions.
//!
//! Per-record errors are results (`statusCode`), not replies: only a malformed request as a
//! whole answers with an error status.

use serde_json::{Map, Value, json};

use crate::reply::{RecordError, Reply};
use crate::route::{Ctx, Req, param};
use crate::state::Inner;
use crate::store::{UpsertError, render, text_of};

/// Largest number of records one sObject Collections request may carry.
pub const COLLECTION_LIMIT: usize = 200;

/// Which Collections write.
#[derive(Clone)]
pub(super) enum Write {
    Create,
    Update,
    Upsert(String, String),
}

/// Ends an `allOrNone` transaction; true when it was rolled back.
fn finish(inner: &mut Inner, savepoint: Option<usize>, failed: bool) -> bool {
    match savepoint {
        Some(sp) if failed => {
            inner.store.rollback(sp);
            true
        }
        Some(sp) => {
            inner.store.commit(sp);
            false
        }
        None => false,
    }
}

/// One result per input record, in input order: a record's own failure, otherwise (when the
/// allOrNone savepoint was rolled back) ALL_OR_NONE_OPERATION_ROLLED_BACK, otherwise `ok(value)`.
/// Commits or rolls back the savepoint.
fn collection_results<T>(
    inner: &mut Inner,
    savepoint: Option<usize>,
    inputs: usize,
    results: &[Result<T, RecordError>],
    ok: impl Fn(&T) -> Value,
) -> Vec<Value> {
    let any_failed = results.iter().any(Result::is_err);
    let rolled_back_all = finish(inner, savepoint, any_failed);
    (0..inputs)
        .map(|i| match results.get(i) {
            Some(Err(e)) => failure(e),
            Some(Ok(v)) if !rolled_back_all => ok(v),
            _ => rolled_back(),
        })
        .collect()
}

fn rolled_back() -> Value {
    json!({"success": false, "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "Record rolled back because not all records were valid and the request was using AllOrNone header", "fields": []}]})
}

fn failure(e: &RecordError) -> Value {
    json!({"success": false, "errors": [e.record_json()]})
}

fn record_type(rec: &Map<String, Value>) -> Option<&str> {
    rec.get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
}

pub(super) fn collections_write(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    req: &Req,
    write: Write,
) -> Result<Reply, Reply> {
    let body = req.body_object()?;
    let all_or_none = body
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(records) = body.get("records").and_then(Value::as_array) else {
        return Err(Reply::error(
            400,
            "JSON_PARSER_ERROR",
            "The request body must contain a records array",
        ));
    };
    if records.len() > COLLECTION_LIMIT {
        return Err(Reply::error(
            400,
            "EXCEEDED_ID_LIMIT",
            format!(
                "record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call"
            ),
        ));
    }
    if let Write::Upsert(o, f) = &write {
        let def = ctx.object(o)?;
        if def.field(f).is_none_or(|fd| !fd.external_id) {
            return Err(Reply::not_found());
        }
    }
    let savepoint = all_or_none.then(|| inner.store.begin());
    // Duplicate external ids inside one upsert request fail every copy, as Salesforce does.
    let mut dup_values: Vec<String> = Vec::new();
    if let Write::Upsert(o, f) = &write
        && let Some(fd) = ctx.shared.schema.object(o).and_then(|d| d.field(f))
    {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        for r in records {
            if let Some(v) = r.get(&fd.name).and_then(text_of) {
                let v = v.to_lowercase();
                if !seen.insert(v.clone()) && !dup_values.contains(&v) {
                    dup_values.push(v);
                }
            }
        }
    }
    let mut results: Vec<Result<Value, RecordError>> = Vec::with_capacity(records.len());
    for r in records {
        let outcome = (|| -> Result<Value, RecordError> {
            let rec = r.as_object().ok_or_else(|| {
                RecordError::new("JSON_PARSER_ERROR", "each record must be a JSON object")
            })?;
            let ty = record_type(rec).ok_or_else(|| {
                RecordError::new(
                    "INVALID_TYPE",
                    "Must send a concrete entity type: attributes.type is required",
                )
            })?;
            let def = ctx.shared.schema.object(ty).ok_or_else(|| {
                RecordError::new(
                    "INVALID_TYPE",
                    format!("sObject type '{ty}' is not supported."),
                )
            })?;
            let Inner { store, locks, .. } = &mut *inner;
            match &write {
                Write::Create => {
                    let id = store.create(locks, &def.name, rec)?;
                    Ok(json!({"id": id, "success": true, "errors": []}))
                }
                Write::Update => {
                    let id = rec
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("Id"))
                        .and_then(|(_, v)| v.as_str())
                        .ok_or_else(|| {
                            RecordError::new(
                                "MISSING_ARGUMENT",
                                "Id not specified in an update call",
                            )
                        })?;
                    let id = store.update(locks, Some(&def.name), id, rec)?;
                    Ok(json!({"id": id, "success": true, "errors": []}))
                }
                Write::Upsert(o, f) => {
                    if !def.name.eq_ignore_ascii_case(o) {
                        return Err(RecordError::new(
                            "INVALID_TYPE",
                            format!("all records must be of type {o}, found {ty}"),
                        ));
                    }
                    let fd = def.field(f).ok_or_else(|| {
                        RecordError::new("INVALID_FIELD", format!("No such column '{f}'"))
                    })?;
                    let value = rec
                        .get(&fd.name)
                        .or_else(|| {
                            rec.iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(&fd.name))
                                .map(|(_, v)| v)
                        })
                        .and_then(text_of)
                        .ok_or_else(|| {
                            RecordError::new(
                                "MISSING_ARGUMENT",
                                format!("{} not specified", fd.name),
                            )
                            .with_fields(vec![fd.name.clone()])
                        })?;
                    if dup_values.contains(&value.to_lowercase()) {
                        return Err(RecordError::new(
                            "DUPLICATE_EXTERNAL_ID",
                            format!("Duplicate external id specified: {value}"),
                        )
                        .with_fields(vec![fd.name.clone()]));
                    }
                    match store.upsert(locks, &def.name, &fd.name, &value, rec, false) {
                        Ok(u) => Ok(
                            json!({"id": u.id, "success": true, "errors": [], "created": u.created}),
                        ),
                        Err(UpsertError::Record(e)) => Err(e),
                        Err(UpsertError::UnknownField) => Err(RecordError::new(
                            "NOT_FOUND",
                            "The requested resource does not exist",
                        )),
                        Err(UpsertError::Multiple(found)) => Err(RecordError::new(
                            "DUPLICATE_EXTERNAL_ID",
                            format!(
                                "{}: more than one record found for external id field: {found:?}",
                                fd.name
                            ),
                        )),
                    }
                }
            }
        })();
        let failed = outcome.is_err();
        results.push(outcome);
        if failed && all_or_none {
            // Salesforce stops at the first failure; the rest are reported as rolled back.
            break;
        }
    }
    inner.stats.collection_records += records.len() as u64;
    let out = collection_results(inner, savepoint, records.len(), &results, Value::clone);
    Ok(Reply::json(200, Value::Array(out)))
}

pub(super) fn collections_delete(inner: &mut Inner, req: &Req) -> Result<Reply, Reply> {
    let ids_param = param(&req.query, "ids").unwrap_or_default();
    let all_or_none =
        param(&req.query, "allOrNone").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let list: Vec<&str> = ids_param
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Reply::error(400, "MISSING_ARGUMENT", "ids is required"));
    }
    if list.len() > COLLECTION_LIMIT {
        return Err(Reply::error(
            400,
            "EXCEEDED_ID_LIMIT",
            format!(
                "record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call"
            ),
        ));
    }
    let savepoint = all_or_none.then(|| inner.store.begin());
    let mut results = Vec::new();
    for id in &list {
        let Inner { store, locks, .. } = &mut *inner;
        let r = store.delete(locks, None, id);
        let failed = r.is_err();
        results.push(r);
        if failed && all_or_none {
            break;
        }
    }
    let out = collection_results(
        inner,
        savepoint,
        list.len(),
        &results,
        |id| json!({"id": id, "success": true, "errors": []}),
    );
    Ok(Reply::json(200, Value::Array(out)))
}

pub(super) fn collections_retrieve(
    ctx: &Ctx<'_>,
    inner: &Inner,
    o: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = ctx.object(o)?;
    let (ids_list, fields): (Vec<String>, Vec<String>) = if req.method == "POST" {
        let body = req.body_object()?;
        let strings = |k: &str| -> Vec<String> {
            body.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        (strings("ids"), strings("fields"))
    } else {
        let split = |k: &str| -> Vec<String> {
            param(&req.query, k)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        (split("ids"), split("fields"))
    };
    if ids_list.is_empty() || fields.is_empty() {
        return Err(Reply::error(
            400,
            "MISSING_ARGUMENT",
            "ids and fields are required",
        ));
    }
    for f in &fields {
        if def.field(f).is_none() {
            return Err(Reply::error(
                400,
                "INVALID_FIELD",
                format!("No such column '{f}' on entity '{}'", def.name),
            ));
        }
    }
    let out: Vec<Value> = ids_list
        .iter()
        .map(|id| match inner.store.get(Some(&def.name), id) {
            Ok((d, rec)) => render(d, rec, &ctx.base, Some(&fields)),
            Err(_) => Value::Null,
        })
        .collect();
    Ok(Reply::json(200, Value::Array(out)))
}
