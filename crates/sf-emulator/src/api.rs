//! The data API under `/services/data/vNN.N`: the dispatch of a matched [`Route`] and the
//! handlers for sObjects, sObject Collections, SOQL queries, limits and describes. Composite
//! lives in [`crate::composite`]; it is handed [`execute`] to run its subrequests, so it does not
//! depend on this module.
//!
//! Handlers take the already-locked state and return a transport-neutral [`Reply`], so a
//! Composite subrequest runs exactly the code a direct call runs.

use serde_json::{Map, Value, json};

use crate::composite;
use crate::ids;
use crate::reply::{RecordError, Reply};
use crate::route::param;
// These lived here before `route` held them; the old paths keep working.
pub use crate::route::{
    Ctx, MAX_VERSION, Req, Route, percent_decode, query_pairs, supported_version, versions,
};
use crate::schema::{FieldType, ObjectDef};
use crate::soql;
use crate::state::{Cursor, Inner, Shared};
use crate::store::{UpsertError, render};

/// Largest number of records one sObject Collections request may carry.
pub const COLLECTION_LIMIT: usize = 200;
/// Default and maximum query batch size; `Sforce-Query-Options: batchSize=` may lower it to 200.
pub const QUERY_BATCH_MAX: usize = 2000;
const QUERY_BATCH_MIN: usize = 200;

fn method_not_allowed(method: &str, allowed: &str) -> Reply {
    Reply::error(
        405,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
    )
}

fn body_object(req: &Req) -> Result<&Map<String, Value>, Reply> {
    match &req.body {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(Reply::error(
            400,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
        )),
        None => Err(Reply::error(
            400,
            "JSON_PARSER_ERROR",
            "The request body is missing",
        )),
    }
}

fn object<'a>(shared: &'a Shared, name: &str) -> Result<&'a ObjectDef, Reply> {
    shared.schema.object(name).ok_or_else(Reply::not_found)
}

/// Runs one data API request. A Composite request's body is taken out of `req` (its
/// subrequests are run from it without a copy).
pub fn execute(ctx: &Ctx<'_>, inner: &mut Inner, route: &Route, req: &mut Req) -> Reply {
    let m = req.method.as_str();
    let result = match (route, m) {
        (Route::Resources, "GET") => Ok(resources(ctx)),
        (Route::Resources, _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::Limits, "GET") => Ok(limits(ctx, inner)),
        (Route::Limits, _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::Sobjects, "GET") => Ok(global_describe(ctx)),
        (Route::Sobjects, _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::SObject(o), "GET") => object(ctx.shared, o).map(|d| {
            Reply::json(
                200,
                json!({"objectDescribe": basic_describe(ctx, d), "recentItems": []}),
            )
        }),
        (Route::SObject(o), "POST") => create(ctx, inner, o, req),
        (Route::SObject(_), _) => Err(method_not_allowed(m, "GET,HEAD,POST")),
        (Route::Describe(o), "GET") => {
            object(ctx.shared, o).map(|d| Reply::json(200, describe(ctx, d)))
        }
        (Route::Describe(_), _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::Record(o, id), "GET") => get_record(ctx, inner, o, id, req),
        (Route::Record(o, id), "PATCH") => update(ctx, inner, o, id, req),
        (Route::Record(o, id), "DELETE") => delete(ctx, inner, o, id),
        (Route::Record(..), _) => Err(method_not_allowed(m, "GET,HEAD,PATCH,DELETE")),
        (Route::ByExt(o, f, v), "GET") => get_by_ext(ctx, inner, o, f, v, req),
        (Route::ByExt(o, f, v), "PATCH") => upsert(ctx, inner, o, f, v, req),
        (Route::ByExt(o, f, v), "DELETE") => delete_by_ext(ctx, inner, o, f, v),
        (Route::ByExt(..), _) => Err(method_not_allowed(m, "GET,HEAD,PATCH,DELETE")),
        (Route::Query, "GET") => query(ctx, inner, req),
        (Route::Query, _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::QueryMore(l), "GET") => query_more(ctx, inner, l),
        (Route::QueryMore(_), _) => Err(method_not_allowed(m, "GET,HEAD")),
        (Route::Composite, "POST") => Ok(composite::run(ctx, inner, req, execute)),
        (Route::Composite, _) => Err(method_not_allowed(m, "POST")),
        (Route::Collections, "POST") => collections_write(ctx, inner, req, Write::Create),
        (Route::Collections, "PATCH") => collections_write(ctx, inner, req, Write::Update),
        (Route::Collections, "DELETE") => collections_delete(inner, req),
        (Route::Collections, _) => Err(method_not_allowed(m, "POST,PATCH,DELETE")),
        (Route::CollectionsRetrieve(o), "GET" | "POST") => collections_retrieve(ctx, inner, o, req),
        (Route::CollectionsRetrieve(_), _) => Err(method_not_allowed(m, "GET,POST")),
        (Route::CollectionsUpsert(o, f), "PATCH") => {
            collections_write(ctx, inner, req, Write::Upsert(o.clone(), f.clone()))
        }
        (Route::CollectionsUpsert(..), _) => Err(method_not_allowed(m, "PATCH")),
        (Route::Unknown, _) => Err(Reply::not_found()),
    };
    result.unwrap_or_else(|e| e)
}

fn resources(ctx: &Ctx<'_>) -> Reply {
    let b = &ctx.base;
    Reply::json(
        200,
        json!({
            "sobjects": format!("{b}/sobjects"),
            "query": format!("{b}/query"),
            "queryAll": format!("{b}/queryAll"),
            "composite": format!("{b}/composite"),
            "limits": format!("{b}/limits"),
        }),
    )
}

fn limits(ctx: &Ctx<'_>, inner: &Inner) -> Reply {
    let max = ctx.shared.config.daily_api_limit;
    let remaining = max.saturating_sub(inner.usage.used());
    Reply::json(
        200,
        json!({
            "DailyApiRequests": {"Max": max, "Remaining": remaining},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
            "ConcurrentSyncApexLimit": {"Max": 10, "Remaining": 10},
            "DataStorageMB": {"Max": 5, "Remaining": 5},
            "HourlyPublishedPlatformEvents": {"Max": 50000, "Remaining": 50000},
        }),
    )
}

fn basic_describe(ctx: &Ctx<'_>, d: &ObjectDef) -> Value {
    json!({
        "name": d.name,
        "label": d.label.clone().unwrap_or_else(|| d.name.clone()),
        "keyPrefix": d.key_prefix,
        "custom": d.name.ends_with("__c"),
        "createable": true, "updateable": true, "deletable": true, "queryable": true,
        "urls": {
            "sobject": format!("{}/sobjects/{}", ctx.base, d.name),
            "describe": format!("{}/sobjects/{}/describe", ctx.base, d.name),
            "rowTemplate": format!("{}/sobjects/{}/{{ID}}", ctx.base, d.name),
        }
    })
}

fn global_describe(ctx: &Ctx<'_>) -> Reply {
    let list: Vec<Value> = ctx
        .shared
        .schema
        .objects()
        .iter()
        .map(|d| basic_describe(ctx, d))
        .collect();
    Reply::json(
        200,
        json!({"encoding": "UTF-8", "maxBatchSize": COLLECTION_LIMIT, "sobjects": list}),
    )
}

fn describe(ctx: &Ctx<'_>, d: &ObjectDef) -> Value {
    let fields: Vec<Value> = d
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "label": f.name,
                "type": type_name(f.ty),
                "length": f.max_length().unwrap_or(0),
                "nillable": !f.required && f.ty != FieldType::Id,
                "createable": f.createable,
                "updateable": f.updateable,
                "externalId": f.external_id,
                "unique": f.unique,
                "autoNumber": f.ty == FieldType::Autonumber,
                "defaultedOnCreate": f.default.is_some() || f.ty == FieldType::Autonumber,
                "restrictedPicklist": f.restricted,
                "referenceTo": f.reference_to.iter().collect::<Vec<_>>(),
                "relationshipName": f.relationship_name,
                "picklistValues": f.picklist_values.iter().map(|p| json!({"value": p.value, "label": p.value, "active": true, "defaultValue": f.default.as_ref().and_then(Value::as_str) == Some(p.value.as_str())})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut v = basic_describe(ctx, d);
    if let Some(m) = v.as_object_mut() {
        m.insert("fields".into(), Value::Array(fields));
    }
    v
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Id => "id",
        FieldType::String | FieldType::Autonumber => "string",
        FieldType::Textarea => "textarea",
        FieldType::Phone => "phone",
        FieldType::Url => "url",
        FieldType::Email => "email",
        FieldType::Picklist => "picklist",
        FieldType::Boolean => "boolean",
        FieldType::Double => "double",
        FieldType::Currency => "currency",
        FieldType::Int => "int",
        FieldType::Percent => "percent",
        FieldType::Date => "date",
        FieldType::Datetime => "datetime",
        FieldType::Reference => "reference",
    }
}

fn platform_event(inner: &mut Inner, name: &str, req: &Req) -> Result<Reply, Reply> {
    let body = body_object(req)?.clone();
    let id = inner.store.insert_raw(name, body);
    Ok(Reply::json(
        201,
        json!({"id": id, "success": true, "errors": [{"statusCode": "OPERATION_ENQUEUED", "message": uuid::Uuid::new_v4().to_string(), "fields": []}]}),
    ))
}

fn create(ctx: &Ctx<'_>, inner: &mut Inner, o: &str, req: &Req) -> Result<Reply, Reply> {
    if o.ends_with("__e") && ctx.shared.schema.object(o).is_none() {
        return platform_event(inner, o, req);
    }
    let def = object(ctx.shared, o)?;
    let body = body_object(req)?;
    let Inner { store, locks, .. } = inner;
    let id = store
        .create(locks, &def.name, body)
        .map_err(RecordError::into_reply)?;
    Ok(
        Reply::json(201, json!({"id": id, "success": true, "errors": []})).with_header(
            "Location",
            format!("{}/sobjects/{}/{id}", ctx.base, def.name),
        ),
    )
}

fn field_list(def: &ObjectDef, qs: &str) -> Result<Option<Vec<String>>, Reply> {
    let Some(list) = param(qs, "fields") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match def.field(f) {
            Some(d) => out.push(d.name.clone()),
            None => {
                return Err(Reply::error(
                    400,
                    "INVALID_FIELD",
                    format!("No such column '{f}' on entity '{}'", def.name),
                ));
            }
        }
    }
    Ok(Some(out))
}

fn get_record(ctx: &Ctx<'_>, inner: &Inner, o: &str, id: &str, req: &Req) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let fields = field_list(def, &req.query)?;
    let (def, rec) = inner
        .store
        .get(Some(&def.name), id)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::json(
        200,
        render(def, rec, &ctx.base, fields.as_deref()),
    ))
}

fn update(ctx: &Ctx<'_>, inner: &mut Inner, o: &str, id: &str, req: &Req) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let body = body_object(req)?;
    let Inner { store, locks, .. } = inner;
    store
        .update(locks, Some(&def.name), id, body)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::empty(204))
}

fn delete(ctx: &Ctx<'_>, inner: &mut Inner, o: &str, id: &str) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let Inner { store, locks, .. } = inner;
    store
        .delete(locks, Some(&def.name), id)
        .map_err(RecordError::into_reply)?;
    Ok(Reply::empty(204))
}

/// Records matching an external id, or the 404/300 replies Salesforce gives.
fn ext_matches(
    ctx: &Ctx<'_>,
    inner: &Inner,
    def: &ObjectDef,
    f: &str,
    v: &str,
) -> Result<String, Reply> {
    let Some(field) = def
        .field(f)
        .filter(|fd| fd.external_id || fd.ty == FieldType::Id)
    else {
        return Err(Reply::not_found());
    };
    if field.ty == FieldType::Id {
        return ids::normalize(v).ok_or_else(Reply::not_found);
    }
    let found = inner.store.find_by(&def.name, &field.name, v);
    match found.as_slice() {
        [id] => Ok(id.clone()),
        [] => Err(Reply::not_found()),
        _ => Err(multiple(ctx, def, &found)),
    }
}

fn multiple(ctx: &Ctx<'_>, def: &ObjectDef, found: &[String]) -> Reply {
    Reply::json(
        300,
        Value::Array(
            found
                .iter()
                .map(|id| json!(format!("{}/sobjects/{}/{id}", ctx.base, def.name)))
                .collect(),
        ),
    )
}

fn get_by_ext(
    ctx: &Ctx<'_>,
    inner: &Inner,
    o: &str,
    f: &str,
    v: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let id = ext_matches(ctx, inner, def, f, v)?;
    get_record(ctx, inner, &def.name, &id, req)
}

fn delete_by_ext(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    o: &str,
    f: &str,
    v: &str,
) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let id = ext_matches(ctx, inner, def, f, v)?;
    delete(ctx, inner, &def.name, &id)
}

fn upsert(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    o: &str,
    f: &str,
    v: &str,
    req: &Req,
) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let body = body_object(req)?;
    let update_only =
        param(&req.query, "updateOnly").is_some_and(|x| x.eq_ignore_ascii_case("true"));
    let Inner { store, locks, .. } = inner;
    match store.upsert(locks, &def.name, f, v, body, update_only) {
        Ok(u) if u.created => Ok(Reply::json(
            201,
            json!({"id": u.id, "success": true, "errors": [], "created": true}),
        )
        .with_header(
            "Location",
            format!("{}/sobjects/{}/{}", ctx.base, def.name, u.id),
        )),
        Ok(u) => Ok(Reply::json(
            200,
            json!({"id": u.id, "success": true, "errors": [], "created": false}),
        )),
        Err(UpsertError::UnknownField) => Err(Reply::not_found()),
        Err(UpsertError::Multiple(found)) => Err(multiple(ctx, def, &found)),
        Err(UpsertError::Record(e)) => Err(e.into_reply()),
    }
}

fn locator_url(ctx: &Ctx<'_>, key: &str, offset: usize) -> String {
    format!("{}/query/{key}-{offset}", ctx.base)
}

fn query(ctx: &Ctx<'_>, inner: &mut Inner, req: &Req) -> Result<Reply, Reply> {
    let Some(q) = param(&req.query, "q").filter(|q| !q.trim().is_empty()) else {
        return Err(Reply::error(
            400,
            "MALFORMED_QUERY",
            "A query string (q) is required",
        ));
    };
    let outcome = soql::run(&inner.store, &q, &ctx.base).map_err(RecordError::into_reply)?;
    let batch = req
        .batch_size
        .unwrap_or(QUERY_BATCH_MAX)
        .clamp(QUERY_BATCH_MIN, QUERY_BATCH_MAX);
    if outcome.records.len() <= batch {
        return Ok(Reply::json(
            200,
            json!({"totalSize": outcome.total, "done": true, "records": outcome.records}),
        ));
    }
    inner.next_cursor += 1;
    let key = ids::make_id("01g", inner.next_cursor)[..15].to_owned();
    let first: Vec<Value> = outcome.records[..batch].to_vec();
    let next = locator_url(ctx, &key, batch);
    inner.cursors.insert(
        key,
        Cursor {
            records: outcome.records,
            total: outcome.total,
            batch,
        },
    );
    Ok(Reply::json(
        200,
        json!({"totalSize": outcome.total, "done": false, "nextRecordsUrl": next, "records": first}),
    ))
}

fn query_more(ctx: &Ctx<'_>, inner: &mut Inner, locator: &str) -> Result<Reply, Reply> {
    let invalid = || Reply::error(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
    let (key, offset) = locator.rsplit_once('-').ok_or_else(invalid)?;
    let offset: usize = offset.parse().map_err(|_| invalid())?;
    let cursor = inner.cursors.get(key).ok_or_else(invalid)?;
    if offset >= cursor.records.len() {
        return Err(invalid());
    }
    let end = (offset + cursor.batch).min(cursor.records.len());
    let page: Vec<Value> = cursor.records[offset..end].to_vec();
    let total = cursor.total;
    if end < cursor.records.len() {
        let next = locator_url(ctx, key, end);
        return Ok(Reply::json(
            200,
            json!({"totalSize": total, "done": false, "nextRecordsUrl": next, "records": page}),
        ));
    }
    inner.cursors.remove(key);
    Ok(Reply::json(
        200,
        json!({"totalSize": total, "done": true, "records": page}),
    ))
}

/// Which Collections write.
#[derive(Clone)]
enum Write {
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

fn collections_write(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    req: &Req,
    write: Write,
) -> Result<Reply, Reply> {
    let body = body_object(req)?;
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
        let def = object(ctx.shared, o)?;
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
            if let Some(v) = r.get(&fd.name).and_then(crate::store::text_of) {
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
                        .and_then(crate::store::text_of)
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

fn collections_delete(inner: &mut Inner, req: &Req) -> Result<Reply, Reply> {
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

fn collections_retrieve(ctx: &Ctx<'_>, inner: &Inner, o: &str, req: &Req) -> Result<Reply, Reply> {
    let def = object(ctx.shared, o)?;
    let (ids_list, fields): (Vec<String>, Vec<String>) = if req.method == "POST" {
        let body = body_object(req)?;
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
