//! sObject Collections: create, update and upsert many records with one API call per 200.
//!
//! ```text
//!  450 records ─▶ [0..200) ─▶ call 1 ┐
//!                [200..400) ─▶ call 2 ├─▶ 450 RecordResults, in input order
//!                [400..450) ─▶ call 3 ┘
//! ```
//! `allOrNone` applies per call (per chunk of 200), not across chunks.

use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::{Client, Target};
use crate::error::{Error, RecordResult};

/// Most records Salesforce accepts in one sObject Collections call.
pub const COLLECTION_LIMIT: usize = 200;

/// Serialises records to JSON objects and sets `attributes.type` where it is missing (Salesforce
/// requires it on every record of a collection call).
pub(crate) fn prepare_records<T: Serialize>(
    sobject: &str,
    records: &[T],
) -> Result<Vec<Value>, Error> {
    records
        .iter()
        .enumerate()
        .map(|(i, record)| prepare_record(sobject, i, record))
        .collect()
}

/// One record of [`prepare_records`]; `i` is its position, for the error.
pub(crate) fn prepare_record<T: Serialize>(
    sobject: &str,
    i: usize,
    record: &T,
) -> Result<Value, Error> {
    let mut value = serde_json::to_value(record)
        .map_err(|e| Error::InvalidRequest(format!("record {i} cannot be serialised: {e}")))?;
    let Value::Object(object) = &mut value else {
        return Err(Error::InvalidRequest(format!(
            "record {i} is not a JSON object"
        )));
    };
    let attributes = object
        .entry("attributes")
        .or_insert_with(|| Value::Object(Map::new()));
    match attributes {
        Value::Object(attributes) => {
            attributes
                .entry("type")
                .or_insert_with(|| Value::String(sobject.to_owned()));
        }
        _ => {
            return Err(Error::InvalidRequest(format!(
                "record {i}: attributes must be an object"
            )));
        }
    }
    Ok(value)
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Create,
    Update,
    Upsert { sobject: &'a str, field: &'a str },
}

impl Client {
    /// `POST /composite/sobjects`: creates `records` of type `sobject` (records must not carry
    /// `Id`), chunked at 200. One [`RecordResult`] per record, in input order.
    pub async fn create_records<T: Serialize>(
        &self,
        sobject: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        let records = prepare_records(sobject, records)?;
        if let Some(i) = records.iter().position(|r| r.get("Id").is_some()) {
            return Err(Error::InvalidRequest(format!(
                "record {i} has an Id: create takes new records only"
            )));
        }
        self.collection(Op::Create, records, all_or_none).await
    }

    /// `PATCH /composite/sobjects`: updates records (each needs `Id`), chunked at 200.
    pub async fn update_records<T: Serialize>(
        &self,
        sobject: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        let records = prepare_records(sobject, records)?;
        if let Some(i) = records
            .iter()
            .position(|r| !r.get("Id").is_some_and(Value::is_string))
        {
            return Err(Error::InvalidRequest(format!(
                "record {i} has no Id: update needs one per record"
            )));
        }
        self.collection(Op::Update, records, all_or_none).await
    }

    /// `PATCH /composite/sobjects/{sobject}/{field}` (API v46+): upserts by external id, chunked
    /// at 200. Each record carries its external id in `field` and no `Id`.
    pub async fn upsert_records<T: Serialize>(
        &self,
        sobject: &str,
        field: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        let records = prepare_records(sobject, records)?;
        if let Some(i) = records
            .iter()
            .position(|r| r.get(field).is_none_or(Value::is_null))
        {
            return Err(Error::InvalidRequest(format!(
                "record {i} has no {field}: upsert needs the external id"
            )));
        }
        self.collection(Op::Upsert { sobject, field }, records, all_or_none)
            .await
    }

    async fn collection(
        &self,
        op: Op<'_>,
        records: Vec<Value>,
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        let mut results = Vec::with_capacity(records.len());
        for chunk in records.chunks(COLLECTION_LIMIT) {
            match self.collection_chunk(op, chunk, all_or_none).await {
                Ok(mut chunk_results) => results.append(&mut chunk_results),
                // Earlier chunks were written: hand their results back with the error so the
                // caller does not redo (or forget) them.
                Err(e) if results.is_empty() => return Err(e),
                Err(e) => {
                    return Err(Error::PartialCollection {
                        completed: results,
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(results)
    }

    async fn collection_chunk(
        &self,
        op: Op<'_>,
        chunk: &[Value],
        all_or_none: bool,
    ) -> Result<Vec<RecordResult>, Error> {
        let body = serde_json::json!({ "allOrNone": all_or_none, "records": chunk });
        let (method, segments): (Method, Vec<&str>) = match op {
            Op::Create => (Method::POST, vec!["composite", "sobjects"]),
            Op::Update => (Method::PATCH, vec!["composite", "sobjects"]),
            Op::Upsert { sobject, field } => {
                (Method::PATCH, vec!["composite", "sobjects", sobject, field])
            }
        };
        let response = self
            .request(method, Target::Data(&segments), &[], Some(&body))
            .await?;
        let results: Vec<RecordResult> = response.json()?;
        if results.len() != chunk.len() {
            return Err(response.invalid(format!(
                "{} results for {} records",
                results.len(),
                chunk.len()
            )));
        }
        Ok(results)
    }
}
