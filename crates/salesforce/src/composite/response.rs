//! The answer to a composite call: each subrequest's status and body, read into a typed
//! [`SubrequestOutcome`] according to the [`SubrequestKind`] it was sent as.
//!
//! Apart from the builder (`composite`), which only needs [`SubrequestKind`] from here, so the
//! request side and the answer side can each be read on their own.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorClass, RecordResult, classify_api};
use crate::query::QueryResult;

/// What a subrequest does; decides how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubrequestKind {
    Create,
    Get,
    Update,
    Upsert,
    Delete,
    Query,
    CreateCollection,
    UpdateCollection,
    UpsertCollection,
}

#[derive(Deserialize)]
pub(crate) struct RawCompositeResponse {
    #[serde(rename = "compositeResponse")]
    pub(crate) composite_response: Vec<RawSubresponse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawSubresponse {
    #[serde(default)]
    pub(crate) body: Value,
    #[serde(default)]
    pub(crate) http_headers: BTreeMap<String, String>,
    pub(crate) http_status_code: u16,
    pub(crate) reference_id: String,
}

/// A subrequest's typed outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum SubrequestOutcome {
    Created {
        id: String,
    },
    Upserted {
        id: Option<String>,
        created: bool,
    },
    /// Update or delete (204).
    Done,
    Record(Value),
    Query(QueryResult<Value>),
    Collection(Vec<RecordResult>),
    /// The subrequest failed; `class` says what to do about it.
    Failed {
        status: u16,
        errors: Vec<ApiError>,
        class: ErrorClass,
    },
}

/// One subrequest's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SubrequestResult {
    pub reference_id: String,
    pub kind: SubrequestKind,
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub outcome: SubrequestOutcome,
}

/// The answers, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeResponse {
    pub results: Vec<SubrequestResult>,
}

impl CompositeResponse {
    pub fn get(&self, reference_id: &str) -> Option<&SubrequestResult> {
        self.results.iter().find(|r| r.reference_id == reference_id)
    }

    /// True when no subrequest failed and no collection record failed.
    pub fn all_succeeded(&self) -> bool {
        self.results.iter().all(|r| match &r.outcome {
            SubrequestOutcome::Failed { .. } => false,
            SubrequestOutcome::Collection(results) => results.iter().all(|r| r.success),
            _ => true,
        })
    }
}

/// Reads one subrequest's answer by its kind. The error says what could not be read.
pub(crate) fn outcome(
    kind: SubrequestKind,
    status: u16,
    body: Value,
) -> Result<SubrequestOutcome, String> {
    if status >= 300 {
        let errors = if status == 300 {
            vec![ApiError {
                code: "MULTIPLE_RECORDS".into(),
                message: format!("the external id matched several records: {body}"),
                fields: Vec::new(),
            }]
        } else {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            crate::error::parse_error_body(status, &bytes)
        };
        let class = classify_api(status, &errors);
        return Ok(SubrequestOutcome::Failed {
            status,
            errors,
            class,
        });
    }
    fn parse(what: &'static str) -> impl Fn(serde_json::Error) -> String {
        move |e| format!("{what} answer not understood: {e}")
    }
    Ok(match kind {
        SubrequestKind::Create => {
            let r: RecordResult = serde_json::from_value(body).map_err(parse("create"))?;
            match (r.success, r.id) {
                (true, Some(id)) => SubrequestOutcome::Created { id },
                _ => SubrequestOutcome::Failed {
                    status,
                    class: classify_api(400, &r.errors),
                    errors: r.errors,
                },
            }
        }
        SubrequestKind::Upsert => {
            if body.is_null() || status == 204 {
                SubrequestOutcome::Upserted {
                    id: None,
                    created: status == 201,
                }
            } else {
                let r: RecordResult = serde_json::from_value(body).map_err(parse("upsert"))?;
                SubrequestOutcome::Upserted {
                    id: r.id,
                    created: r.created.unwrap_or(status == 201),
                }
            }
        }
        SubrequestKind::Update | SubrequestKind::Delete => SubrequestOutcome::Done,
        SubrequestKind::Get => SubrequestOutcome::Record(body),
        SubrequestKind::Query => {
            SubrequestOutcome::Query(serde_json::from_value(body).map_err(parse("query"))?)
        }
        SubrequestKind::CreateCollection
        | SubrequestKind::UpdateCollection
        | SubrequestKind::UpsertCollection => SubrequestOutcome::Collection(
            serde_json::from_value(body).map_err(parse("collection"))?,
        ),
    })
}
