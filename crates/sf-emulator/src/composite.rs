//! `POST /composite`: up to 25 subrequests (at most 5 of them queries or sObject Collections)
//! run in order in ONE API call, later ones reading earlier results through `@{ref.path}`
//! references (`@{newAccount.id}`, `@{q.records[0].Id}`). With `allOrNone` the first failure
//! rolls everything back and every other subrequest reports `PROCESSING_HALTED`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::api::{self, Ctx, Req, Route};
use crate::reply::Reply;
use crate::state::Inner;

/// Most subrequests in one Composite call.
pub const MAX_SUBREQUESTS: usize = 25;
/// Most query or sObject Collections subrequests in one Composite call.
pub const MAX_HEAVY: usize = 5;

struct Sub {
    method: String,
    url: String,
    reference_id: String,
    body: Option<Value>,
}

fn parse(body: &Map<String, Value>) -> Result<(bool, Vec<Sub>), Reply> {
    let all_or_none = body
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let list = body
        .get("compositeRequest")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Reply::error(
                400,
                "JSON_PARSER_ERROR",
                "compositeRequest is required and must be an array",
            )
        })?;
    if list.is_empty() {
        return Err(Reply::error(
            400,
            "INVALID_INPUT",
            "compositeRequest must contain at least one subrequest",
        ));
    }
    if list.len() > MAX_SUBREQUESTS {
        return Err(Reply::error(
            400,
            "LIMIT_EXCEEDED",
            format!(
                "Composite requests are limited to {MAX_SUBREQUESTS} subrequests; this one has {}",
                list.len()
            ),
        ));
    }
    let mut subs = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(method), Some(url), Some(reference_id)) =
            (text("method"), text("url"), text("referenceId"))
        else {
            return Err(Reply::error(
                400,
                "JSON_PARSER_ERROR",
                format!("subrequest {i}: method, url and referenceId are required"),
            ));
        };
        if reference_id.is_empty()
            || !reference_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Reply::error(
                400,
                "INVALID_INPUT",
                format!(
                    "referenceId '{reference_id}' may contain only letters, digits and underscores"
                ),
            ));
        }
        if subs.iter().any(|s: &Sub| s.reference_id == reference_id) {
            return Err(Reply::error(
                400,
                "INVALID_INPUT",
                format!("Duplicate referenceId provided in the request: {reference_id}"),
            ));
        }
        subs.push(Sub {
            method: method.to_ascii_uppercase(),
            url,
            reference_id,
            body: item.get("body").cloned(),
        });
    }
    let heavy = subs
        .iter()
        .filter(|s| split_url(&s.url).is_some_and(|(_, path, _)| Route::of(&path).is_heavy()))
        .count();
    if heavy > MAX_HEAVY {
        return Err(Reply::error(
            400,
            "LIMIT_EXCEEDED",
            format!(
                "Composite requests may contain at most {MAX_HEAVY} query or sObject Collections subrequests; this one has {heavy}"
            ),
        ));
    }
    Ok((all_or_none, subs))
}

/// `/services/data/v62.0/sobjects/Account?x=1` → ("62.0", "/sobjects/Account", "x=1").
fn split_url(url: &str) -> Option<(String, String, String)> {
    let rest = url.strip_prefix("/services/data/v")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (version, path) = path.split_once('/').unwrap_or((path, ""));
    Some((version.to_owned(), format!("/{path}"), query.to_owned()))
}

/// Looks up `ref.path` among earlier successful results.
fn lookup<'a>(expr: &str, done: &'a HashMap<String, Value>) -> Option<&'a Value> {
    let split = expr.find(['.', '[']).unwrap_or(expr.len());
    let (reference, mut path) = expr.split_at(split);
    let mut v = done.get(reference)?;
    while !path.is_empty() {
        if let Some(rest) = path.strip_prefix('.') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            v = v.get(&rest[..end])?;
            path = &rest[end..];
        } else if let Some(rest) = path.strip_prefix('[') {
            let end = rest.find(']')?;
            let idx: usize = rest[..end].parse().ok()?;
            v = v.get(idx)?;
            path = &rest[end + 1..];
        } else {
            return None;
        }
    }
    Some(v)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `@{…}` in `s`; the error names the reference that has no value.
fn interpolate(s: &str, done: &HashMap<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| after.to_owned())?;
        let expr = &after[..end];
        out.push_str(&as_text(lookup(expr, done).ok_or_else(|| expr.to_owned())?));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve_value(v: &Value, done: &HashMap<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            // A value that is exactly one reference keeps the referenced JSON type.
            if let Some(expr) = s.strip_prefix("@{").and_then(|x| x.strip_suffix('}'))
                && !expr.contains('}')
            {
                lookup(expr, done).cloned().ok_or_else(|| expr.to_owned())?
            } else {
                Value::String(interpolate(s, done)?)
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| resolve_value(x, done))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| resolve_value(x, done).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn halted(message: &str) -> Reply {
    Reply::error(400, "PROCESSING_HALTED", message)
}

fn entry(reference_id: &str, reply: &Reply) -> Value {
    let headers: Map<String, Value> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "body": reply.body.clone().unwrap_or(Value::Null),
        "httpHeaders": headers,
        "httpStatusCode": reply.status,
        "referenceId": reference_id,
    })
}

/// Runs a Composite request (already counted as one API call by the caller).
pub fn run(ctx: &Ctx<'_>, inner: &mut Inner, req: &Req) -> Reply {
    let Some(Value::Object(body)) = &req.body else {
        return Reply::error(
            400,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
        );
    };
    let (all_or_none, subs) = match parse(body) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let savepoint = all_or_none.then(|| inner.store.begin());
    let mut done: HashMap<String, Value> = HashMap::new();
    let mut replies: Vec<Reply> = Vec::with_capacity(subs.len());
    let mut failed_at: Option<usize> = None;
    for (i, sub) in subs.iter().enumerate() {
        inner.stats.composite_subrequests += 1;
        let reply = run_one(ctx, inner, sub, &done);
        if reply.is_success() {
            done.insert(
                sub.reference_id.clone(),
                reply.body.clone().unwrap_or(Value::Null),
            );
        }
        let failed = !reply.is_success();
        replies.push(reply);
        if failed && all_or_none {
            failed_at = Some(i);
            break;
        }
    }
    if let Some(sp) = savepoint
        && failed_at.is_none()
    {
        inner.store.commit(sp);
    }
    let out: Vec<Value> = match (failed_at, savepoint) {
        (Some(bad), Some(sp)) => {
            inner.store.rollback(sp);
            let rolled = halted(
                "The transaction was rolled back since another operation in the same transaction failed.",
            );
            subs.iter()
                .enumerate()
                .map(|(i, s)| match replies.get(i) {
                    Some(r) if i == bad => entry(&s.reference_id, r),
                    _ => entry(&s.reference_id, &rolled),
                })
                .collect()
        }
        _ => subs
            .iter()
            .zip(&replies)
            .map(|(s, r)| entry(&s.reference_id, r))
            .collect(),
    };
    Reply::json(200, json!({"compositeResponse": out}))
}

fn run_one(ctx: &Ctx<'_>, inner: &mut Inner, sub: &Sub, done: &HashMap<String, Value>) -> Reply {
    let missing = |expr: String| {
        halted(&format!(
            "Invalid reference specified. No value for {expr} found in {}. Provided referenceId ('{}') must be of a previous, successful subrequest.",
            expr.split(['.', '[']).next().unwrap_or_default(),
            expr.split(['.', '[']).next().unwrap_or_default(),
        ))
    };
    let url = match interpolate(&sub.url, done) {
        Ok(u) => u,
        Err(expr) => return missing(expr),
    };
    let body = match sub
        .body
        .as_ref()
        .map(|b| resolve_value(b, done))
        .transpose()
    {
        Ok(b) => b,
        Err(expr) => return missing(expr),
    };
    let Some((version, path, query)) = split_url(&url) else {
        return Reply::error(
            400,
            "INVALID_INPUT",
            format!("The subrequest url must start with /services/data/vNN.N/: {url}"),
        );
    };
    if !api::supported_version(&version) {
        return Reply::not_found();
    }
    let route = Route::of(&path);
    if matches!(route, Route::Composite) {
        return Reply::error(400, "INVALID_INPUT", "Composite requests cannot be nested");
    }
    let sub_ctx = Ctx {
        shared: ctx.shared,
        base: format!("/services/data/v{version}"),
    };
    let sub_req = Req {
        method: sub.method.clone(),
        path,
        query,
        body,
        batch_size: None,
    };
    api::execute(&sub_ctx, inner, &route, &sub_req)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_resolve_paths_and_keep_types() {
        let mut done = HashMap::new();
        done.insert("acc".to_owned(), json!({"id": "001X", "n": 3}));
        done.insert("q".to_owned(), json!({"records": [{"Id": "801Y"}]}));
        assert_eq!(
            interpolate("/x/@{acc.id}/@{q.records[0].Id}", &done).unwrap(),
            "/x/001X/801Y"
        );
        assert_eq!(
            resolve_value(&json!({"a": "@{acc.n}"}), &done).unwrap(),
            json!({"a": 3})
        );
        assert_eq!(interpolate("@{nope.id}", &done).unwrap_err(), "nope.id");
        assert_eq!(
            split_url("/services/data/v62.0/query?q=x").unwrap(),
            ("62.0".into(), "/query".into(), "q=x".into())
        );
    }
}
