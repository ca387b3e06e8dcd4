//! `POST /composite`: up to 25 subrequests (at most 5 of them queries or sObject Collections)
//! run in order in ONE API call, later ones reading earlier results through `@{ref.path}`
//! references (`@{newAccount.id}`, `@{q.records[0].Id}`). With `allOrNone` the first failure
//! rolls everything back and every other subrequest reports `PROCESSING_HALTED`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::reply::Reply;
use crate::route::{Ctx, Execute, Req, Route, supported_version};
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

fn parse(mut body: Map<String, Value>) -> Result<(bool, Vec<Sub>), Reply> {
    let all_or_none = body
        .get("allOrNone")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut list = match body.remove("compositeRequest") {
        Some(Value::Array(list)) => Ok(list),
        _ => Err(()),
    }
    .map_err(|()| {
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
    for (i, item) in list.iter_mut().enumerate() {
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
            // Moved, not copied: a body can be five Collections of 200 records.
            body: item.as_object_mut().and_then(|o| o.remove("body")),
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

/// Earlier successful results by reference id.
trait Results {
    fn result(&self, reference: &str) -> Option<&Value>;
}

impl Results for HashMap<String, Value> {
    fn result(&self, reference: &str) -> Option<&Value> {
        self.get(reference)
    }
}

static NULL: Value = Value::Null;

/// The results of a running Composite request: reference id → index of its reply, so a
/// result is read where it is rather than copied for later references.
struct Done<'a> {
    by_reference: &'a HashMap<String, usize>,
    replies: &'a [Reply],
}

impl Results for Done<'_> {
    fn result(&self, reference: &str) -> Option<&Value> {
        let reply = self.replies.get(*self.by_reference.get(reference)?)?;
        Some(reply.body.as_ref().unwrap_or(&NULL))
    }
}

/// Looks up `ref.path` among earlier successful results.
fn lookup<'a>(expr: &str, done: &'a impl Results) -> Option<&'a Value> {
    let split = expr.find(['.', '[']).unwrap_or(expr.len());
    let (reference, mut path) = expr.split_at(split);
    let mut v = done.result(reference)?;
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
fn interpolate(s: &str, done: &impl Results) -> Result<String, String> {
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

/// Replaces the references in a subrequest body, in place (most bodies have none, and a copy of
/// a 200-record collection per subrequest was most of a Composite call's cost).
fn resolve_value(v: &mut Value, done: &impl Results) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if !s.contains("@{") {
                return Ok(());
            }
            // A value that is exactly one reference keeps the referenced JSON type.
            if let Some(expr) = s.strip_prefix("@{").and_then(|x| x.strip_suffix('}'))
                && !expr.contains('}')
            {
                *v = lookup(expr, done).cloned().ok_or_else(|| expr.to_owned())?;
            } else {
                *s = interpolate(s, done)?;
            }
        }
        Value::Array(a) => {
            for x in a {
                resolve_value(x, done)?;
            }
        }
        Value::Object(m) => {
            for x in m.values_mut() {
                resolve_value(x, done)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn halted(message: &str) -> Reply {
    Reply::error(400, "PROCESSING_HALTED", message)
}

fn entry(reference_id: &str, reply: Reply) -> Value {
    let headers: Map<String, Value> = reply
        .headers
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "body": reply.body.unwrap_or(Value::Null),
        "httpHeaders": headers,
        "httpStatusCode": reply.status,
        "referenceId": reference_id,
    })
}

/// Runs a Composite request (already counted as one API call by the caller). Takes the body
/// out of `req`; each subrequest goes through `execute`, exactly as a direct call would.
pub fn run(ctx: &Ctx<'_>, inner: &mut Inner, req: &mut Req, execute: Execute) -> Reply {
    let Some(Value::Object(body)) = req.body.take() else {
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
    let mut done: HashMap<String, usize> = HashMap::new();
    let mut replies: Vec<Reply> = Vec::with_capacity(subs.len());
    let mut failed_at: Option<usize> = None;
    // Every subrequest answers, also those never run after an allOrNone failure.
    let references: Vec<String> = subs.iter().map(|s| s.reference_id.clone()).collect();
    for (i, mut sub) in subs.into_iter().enumerate() {
        inner.stats.composite_subrequests += 1;
        let reference_id = std::mem::take(&mut sub.reference_id);
        let reply = {
            let results = Done {
                by_reference: &done,
                replies: &replies,
            };
            run_one(ctx, inner, execute, sub, &results, &mut req.spent)
        };
        let ok = reply.is_success();
        if ok {
            done.insert(reference_id, replies.len());
        }
        replies.push(reply);
        if !ok && all_or_none {
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
            let mut replies = replies.into_iter();
            references
                .iter()
                .enumerate()
                .map(|(i, r)| match replies.next() {
                    Some(reply) if i == bad => entry(r, reply),
                    _ => entry(r, rolled.clone()),
                })
                .collect()
        }
        _ => references
            .iter()
            .zip(replies)
            .map(|(r, reply)| entry(r, reply))
            .collect(),
    };
    Reply::json(200, json!({"compositeResponse": out}))
}

fn run_one(
    ctx: &Ctx<'_>,
    inner: &mut Inner,
    execute: Execute,
    sub: Sub,
    done: &impl Results,
    spent: &mut Vec<Value>,
) -> Reply {
    let Sub {
        method,
        url,
        mut body,
        ..
    } = sub;
    let missing = |expr: String| {
        halted(&format!(
            "Invalid reference specified. No value for {expr} found in {}. Provided referenceId ('{}') must be of a previous, successful subrequest.",
            expr.split(['.', '[']).next().unwrap_or_default(),
            expr.split(['.', '[']).next().unwrap_or_default(),
        ))
    };
    let url = match interpolate(&url, done) {
        Ok(u) => u,
        Err(expr) => return missing(expr),
    };
    if let Some(b) = body.as_mut()
        && let Err(expr) = resolve_value(b, done)
    {
        return missing(expr);
    }
    let Some((version, path, query)) = split_url(&url) else {
        return Reply::error(
            400,
            "INVALID_INPUT",
            format!("The subrequest url must start with /services/data/vNN.N/: {url}"),
        );
    };
    if !supported_version(&version) {
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
    let mut sub_req = Req {
        method,
        path,
        query,
        body,
        batch_size: None,
        spent: Vec::new(),
    };
    let reply = execute(&sub_ctx, inner, &route, &mut sub_req);
    spent.extend(sub_req.body);
    spent.append(&mut sub_req.spent);
    reply
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
        let mut body = json!({"a": "@{acc.n}", "b": ["x/@{acc.id}", 2]});
        resolve_value(&mut body, &done).unwrap();
        assert_eq!(body, json!({"a": 3, "b": ["x/001X", 2]}));
        assert_eq!(interpolate("@{nope.id}", &done).unwrap_err(), "nope.id");
        assert_eq!(
            split_url("/services/data/v62.0/query?q=x").unwrap(),
            ("62.0".into(), "/query".into(), "q=x".into())
        );
    }
}
