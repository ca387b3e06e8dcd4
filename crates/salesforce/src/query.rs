//! SOQL queries with `nextRecordsUrl` paging.

use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, Target};
use crate::error::Error;

/// One page of a query: `{"totalSize":N,"done":bool,"nextRecordsUrl":"/services/data/…","records":[…]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult<T> {
    pub total_size: u64,
    pub done: bool,
    #[serde(default)]
    pub next_records_url: Option<String>,
    pub records: Vec<T>,
}

/// Upper bound on pages followed by [`Client::query_collect`]: 2,000 records a page makes this
/// 20 million records, far beyond anything that belongs in memory; it only stops a server that
/// keeps answering `done: false` from looping forever.
const MAX_PAGES: usize = 10_000;

impl Client {
    /// `GET /query?q=…`: the first page.
    pub async fn query<T: DeserializeOwned>(&self, soql: &str) -> Result<QueryResult<T>, Error> {
        self.request(Method::GET, Target::Data(&["query"]), &[("q", soql)], None)
            .await?
            .json()
    }

    /// Follows a `nextRecordsUrl`.
    pub async fn query_more<T: DeserializeOwned>(
        &self,
        next_records_url: &str,
    ) -> Result<QueryResult<T>, Error> {
        self.request(Method::GET, Target::Instance(next_records_url), &[], None)
            .await?
            .json()
    }

    /// Runs a query and follows every `nextRecordsUrl`, returning all records.
    pub async fn query_collect<T: DeserializeOwned>(&self, soql: &str) -> Result<Vec<T>, Error> {
        let mut page = self.query::<T>(soql).await?;
        let mut records = std::mem::take(&mut page.records);
        for _ in 0..MAX_PAGES {
            if page.done {
                return Ok(records);
            }
            let Some(next) = page.next_records_url.take() else {
                return Err(Error::InvalidResponse {
                    method: "GET".into(),
                    path: "query".into(),
                    status: 200,
                    detail: "done is false but there is no nextRecordsUrl".into(),
                });
            };
            page = self.query_more(&next).await?;
            records.append(&mut page.records);
        }
        Err(Error::InvalidResponse {
            method: "GET".into(),
            path: "query".into(),
            status: 200,
            detail: format!("query still not done after {MAX_PAGES} pages"),
        })
    }
}
