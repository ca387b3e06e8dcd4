//! SOQL over REST: `GET /query?q=` (and `/queryAll`) runs the query and answers its first page;
//! `GET /query/{locator}` the following ones, from a cursor kept in the state.
//!
//! The query runs once: the cursor keeps the ids of the matched records in the query's order,
//! and each page is rendered when it is read. Later pages therefore hold the records the query
//! matched, as they are when the page is read (a record deleted meanwhile is left out), and a
//! cursor costs an id per record rather than the whole result's JSON. As in Salesforce, a user
//! holds at most [`MAX_OPEN_CURSORS`] cursors: opening another releases the oldest, whose
//! locator then answers `INVALID_QUERY_LOCATOR`.

use serde_json::json;

use crate::ids;
use crate::reply::{RecordError, Reply};
use crate::route::{Ctx, Req, param};
use crate::soql;
use crate::state::{Cursor, Inner};

/// Default and maximum query batch size; `Sforce-Query-Options: batchSize=` may lower it to 200.
pub const QUERY_BATCH_MAX: usize = 2000;
const QUERY_BATCH_MIN: usize = 200;
/// Query cursors a user may hold open (Salesforce's limit; the emulator has one user per org).
pub const MAX_OPEN_CURSORS: usize = 10;

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
    let outcome = soql::run(&inner.store, &q).map_err(RecordError::into_reply)?;
    let batch = req
        .batch_size
        .unwrap_or(QUERY_BATCH_MAX)
        .clamp(QUERY_BATCH_MIN, QUERY_BATCH_MAX);
    let rows = outcome.rows;
    if rows.len() <= batch {
        let records = rows.render(&inner.store, 0..rows.len(), &ctx.base);
        return Ok(Reply::json(
            200,
            json!({"totalSize": outcome.total, "done": true, "records": records}),
        ));
    }
    let first = rows.render(&inner.store, 0..batch, &ctx.base);
    inner.next_cursor += 1;
    let key = ids::make_id("01g", inner.next_cursor)[..15].to_owned();
    let next = locator_url(ctx, &key, batch);
    while inner.cursors.len() >= MAX_OPEN_CURSORS {
        let oldest = inner
            .cursors
            .iter()
            .min_by_key(|(_, c)| c.opened)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => inner.cursors.remove(&k),
            None => break,
        };
    }
    inner.cursors.insert(
        key,
        Cursor {
            rows,
            total: outcome.total,
            batch,
            opened: inner.next_cursor,
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
    let len = cursor.rows.len();
    if offset >= len {
        return Err(invalid());
    }
    let end = offset.saturating_add(cursor.batch).min(len);
    let page = cursor.rows.render(&inner.store, offset..end, &ctx.base);
    let total = cursor.total;
    if end < len {
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
