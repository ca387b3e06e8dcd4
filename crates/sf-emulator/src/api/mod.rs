//! The data API under `/services/data/vNN.N`: the dispatch of a matched [`Route`] to its
//! handler. Composite lives in [`crate::composite`]; it is handed [`execute`] to run its
//! subrequests, so it does not depend on this module.
//!
//! Handlers take the already-locked state and return a transport-neutral [`Reply`], so a
//! Composite subrequest runs exactly the code a direct call runs. One file per family of
//! routes: `describe` (resources, limits, describes), `sobjects` (one record by id),
//! `external_id` (one record by external id, upsert), `query` (SOQL and its pages),
//! `collections` (sObject Collections).

mod collections;
mod describe;
mod external_id;
mod query;
mod sobjects;

use serde_json::json;

use crate::composite;
use crate::reply::Reply;
use crate::state::Inner;

use collections::{Write, collections_delete, collections_retrieve, collections_write};
use describe::{basic_describe, describe, global_describe, limits, resources};
use external_id::{delete_by_ext, get_by_ext, upsert};
use query::{query, query_more};
use sobjects::{create, delete, get_record, update};

pub use collections::COLLECTION_LIMIT;
pub use query::QUERY_BATCH_MAX;
// These lived here before `route` held them; the old paths keep working.
pub use crate::route::{
    Ctx, MAX_VERSION, Req, Route, percent_decode, query_pairs, supported_version, versions,
};

fn method_not_allowed(method: &str, allowed: &str) -> Reply {
    Reply::error(
        405,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
    )
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
        (Route::SObject(o), "GET") => ctx.object(o).map(|d| {
            Reply::json(
                200,
                json!({"objectDescribe": basic_describe(ctx, d), "recentItems": []}),
            )
        }),
        (Route::SObject(o), "POST") => create(ctx, inner, o, req),
        (Route::SObject(_), _) => Err(method_not_allowed(m, "GET,HEAD,POST")),
        (Route::Describe(o), "GET") => ctx.object(o).map(|d| Reply::json(200, describe(ctx, d))),
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
        // Bulk jobs are served by `http` directly; Composite cannot carry them.
        (
            Route::IngestJobs
            | Route::IngestJob(_)
            | Route::IngestBatches(_)
            | Route::IngestResults(..)
            | Route::QueryJobs
            | Route::QueryJob(_)
            | Route::QueryResults(_)
            | Route::Unknown,
            _,
        ) => Err(Reply::not_found()),
    };
    result.unwrap_or_else(|e| e)
}
