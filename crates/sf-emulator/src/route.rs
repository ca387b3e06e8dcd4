//! What a data API request is, independent of HTTP: the served API versions, the per-call
//! context, the request, and its path matched to a [`Route`].
//!
//! Both the HTTP wiring (`http`) and Composite (`composite`, whose subrequests are requests too)
//! build these; keeping them out of `api` lets Composite run subrequests through the function it
//! is handed without `api` and `composite` depending on each other.

use serde_json::{Map, Value, json};

use crate::reply::Reply;
use crate::schema::ObjectDef;
use crate::state::{Inner, Shared};

/// The highest API version served and the lowest.
pub const MAX_VERSION: u32 = 66;
const MIN_VERSION: u32 = 31;

/// `GET /services/data/`: the versions list, newest last as Salesforce returns it.
pub fn versions() -> Value {
    let list: Vec<Value> = (MIN_VERSION..=MAX_VERSION)
        .map(|v| {
            // v62.0 is Winter '25; three releases a year: Winter, Spring, Summer.
            let offset = i64::from(v) - 62;
            let season = ["Winter", "Spring", "Summer"][offset.rem_euclid(3) as usize];
            let year = 25 + offset.div_euclid(3);
            json!({"version": format!("{v}.0"), "label": format!("{season} '{year:02}"), "url": format!("/services/data/v{v}.0")})
        })
        .collect();
    Value::Array(list)
}

/// Whether `v` (without the leading `v`, e.g. `62.0`) is a served version.
pub fn supported_version(v: &str) -> bool {
    v.strip_suffix(".0")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (MIN_VERSION..=MAX_VERSION).contains(&n))
}

/// Per-call context.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// `/services/data/vNN.N`
    pub base: String,
}

/// A request to the data API, independent of HTTP.
pub struct Req {
    pub method: String,
    /// Path after the version, e.g. `/sobjects/Account/001…`.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    pub body: Option<Value>,
    /// From `Sforce-Query-Options: batchSize=N`.
    pub batch_size: Option<usize>,
    /// Request data done with, freed by the caller once the state lock is released.
    pub spent: Vec<Value>,
}

impl<'a> Ctx<'a> {
    /// The object a path names, in its schema spelling; an unknown one answers 404 as
    /// Salesforce does.
    pub fn object(&self, name: &str) -> Result<&'a ObjectDef, Reply> {
        self.shared.schema.object(name).ok_or_else(Reply::not_found)
    }
}

impl Req {
    /// The body, which must be a JSON object.
    pub fn body_object(&self) -> Result<&Map<String, Value>, Reply> {
        match &self.body {
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
}

/// Decodes `%XX` escapes (and `+` as space when `plus` is set).
pub fn percent_decode(s: &str, plus: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string into decoded pairs.
pub fn query_pairs(qs: &str) -> Vec<(String, String)> {
    qs.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The decoded value of the first `name=` parameter of a query string.
pub fn param(qs: &str, name: &str) -> Option<String> {
    query_pairs(qs)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A matched route.
#[derive(Debug, Clone)]
pub enum Route {
    Resources,
    Limits,
    Sobjects,
    SObject(String),
    Describe(String),
    Record(String, String),
    ByExt(String, String, String),
    Query,
    QueryMore(String),
    Composite,
    Collections,
    CollectionsRetrieve(String),
    CollectionsUpsert(String, String),
    /// Bulk API 2.0 ingest: the jobs, one job, its data upload, one of its result files.
    IngestJobs,
    IngestJob(String),
    IngestBatches(String),
    IngestResults(String, String),
    /// Bulk API 2.0 query: the jobs, one job, its results.
    QueryJobs,
    QueryJob(String),
    QueryResults(String),
    Unknown,
}

impl Route {
    /// Matches a path (after the version).
    pub fn of(path: &str) -> Self {
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode(s, false))
            .collect();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        match s.as_slice() {
            [] => Self::Resources,
            ["limits"] => Self::Limits,
            ["sobjects"] => Self::Sobjects,
            ["sobjects", o] => Self::SObject((*o).to_owned()),
            ["sobjects", o, "describe"] => Self::Describe((*o).to_owned()),
            ["sobjects", o, id] => Self::Record((*o).to_owned(), (*id).to_owned()),
            ["sobjects", o, f, v] => Self::ByExt((*o).to_owned(), (*f).to_owned(), (*v).to_owned()),
            ["query" | "queryAll"] => Self::Query,
            ["query" | "queryAll", locator] => Self::QueryMore((*locator).to_owned()),
            ["composite"] => Self::Composite,
            ["composite", "sobjects"] => Self::Collections,
            ["composite", "sobjects", o] => Self::CollectionsRetrieve((*o).to_owned()),
            ["composite", "sobjects", o, f] => {
                Self::CollectionsUpsert((*o).to_owned(), (*f).to_owned())
            }
            ["jobs", "ingest"] => Self::IngestJobs,
            ["jobs", "ingest", id] => Self::IngestJob((*id).to_owned()),
            ["jobs", "ingest", id, "batches"] => Self::IngestBatches((*id).to_owned()),
            ["jobs", "ingest", id, which] => {
                Self::IngestResults((*id).to_owned(), (*which).to_owned())
            }
            ["jobs", "query"] => Self::QueryJobs,
            ["jobs", "query", id] => Self::QueryJob((*id).to_owned()),
            ["jobs", "query", id, "results"] => Self::QueryResults((*id).to_owned()),
            _ => Self::Unknown,
        }
    }

    /// Route template for statistics.
    pub fn label(&self, method: &str) -> String {
        let t = match self {
            Self::Resources => "/",
            Self::Limits => "/limits",
            Self::Sobjects => "/sobjects",
            Self::SObject(_) => "/sobjects/{sobject}",
            Self::Describe(_) => "/sobjects/{sobject}/describe",
            Self::Record(..) => "/sobjects/{sobject}/{id}",
            Self::ByExt(..) => "/sobjects/{sobject}/{field}/{value}",
            Self::Query => "/query",
            Self::QueryMore(_) => "/query/{locator}",
            Self::Composite => "/composite",
            Self::Collections => "/composite/sobjects",
            Self::CollectionsRetrieve(_) => "/composite/sobjects/{sobject}",
            Self::CollectionsUpsert(..) => "/composite/sobjects/{sobject}/{field}",
            Self::IngestJobs => "/jobs/ingest",
            Self::IngestJob(_) => "/jobs/ingest/{id}",
            Self::IngestBatches(_) => "/jobs/ingest/{id}/batches",
            Self::IngestResults(..) => "/jobs/ingest/{id}/{results}",
            Self::QueryJobs => "/jobs/query",
            Self::QueryJob(_) => "/jobs/query/{id}",
            Self::QueryResults(_) => "/jobs/query/{id}/results",
            Self::Unknown => "(unknown)",
        };
        format!("{method} {t}")
    }

    /// A Bulk API 2.0 route (served outside Composite, which does not carry them).
    pub fn is_bulk(&self) -> bool {
        self.is_bulk_query()
            || matches!(
                self,
                Self::IngestJobs
                    | Self::IngestJob(_)
                    | Self::IngestBatches(_)
                    | Self::IngestResults(..)
            )
    }

    /// A Bulk API 2.0 query-job route.
    pub fn is_bulk_query(&self) -> bool {
        matches!(
            self,
            Self::QueryJobs | Self::QueryJob(_) | Self::QueryResults(_)
        )
    }

    /// Whether Composite counts this as a query or collections subrequest (at most 5).
    pub fn is_heavy(&self) -> bool {
        matches!(
            self,
            Self::Query
                | Self::QueryMore(_)
                | Self::Collections
                | Self::CollectionsRetrieve(_)
                | Self::CollectionsUpsert(..)
        )
    }
}

/// The signature of `api::execute`. Composite is handed it to run its subrequests, so that
/// `composite` need not depend on `api`.
pub type Execute = fn(&Ctx<'_>, &mut Inner, &Route, &mut Req) -> Reply;
