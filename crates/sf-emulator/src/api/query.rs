//! SOQL over REST: `GET /query?q=` (and `/queryAll`) runs the query and answers its first page;
//! `GET /query/{locator}` the following ones, from a cursor kept in the state.
//!
//! The whole result is computed once and paged from the cursor, so later pages see the data as
//! it was when the query ran, and a page costs no query.

use serde_json::{Value, json};

use crate::ids;
use crate::reply::{RecordError, Reply};
use crate::route::{Ctx, Req, param};
use crate::soql;
use crate::state::{Cursor, Inner};

/// Default and maximum query batch size; `Sforce-Query-Options: batchSize=` may lower it to 200.
pub const QUERY_BATCH_MAX: usize = 2000;
const QUERY_BATCH_MIN: usize = 200;

fn locator_url(ctx: &Ctx<'_>, key: &str, offset: usize) -> String {
    format!("{}/query/{key}-{offset}", ctx.base)
}

pub(super) fn query(ctx: &Ctx<'_>, inner: &mut Inner, req: &Req) -> Result<Reply, Reply> {
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

pub(super) fn query_more(ctx: &Ctx<'_>, inner: &mut Inner, locator: &str) -> Result<Reply, Reply> {
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
