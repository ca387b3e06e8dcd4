//! Single-record sObject calls: create, get, update, delete, upsert by external id, and
//! platform-event publish.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::{Client, RawResponse, Target};
use crate::error::{ApiError, Error};

// Defined beside `Error` (which carries it) so that `error` needs nothing from this module;
// re-exported so `sobjects::RecordResult` keeps working.
pub use crate::error::RecordResult;

/// Result of an upsert by external id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertResult {
    /// The record id; absent when an old API version answered 204 to an update.
    pub id: Option<String>,
    /// `true` on 201 (created), `false` on 200/204 (updated).
    pub created: bool,
}

/// Result of a platform-event publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    pub id: Option<String>,
    /// Messages Salesforce attached to a successful publish, such as `OPERATION_ENQUEUED`
    /// (events are published asynchronously).
    pub notices: Vec<ApiError>,
}

fn to_value(record: &impl Serialize) -> Result<serde_json::Value, Error> {
    serde_json::to_value(record)
        .map_err(|e| Error::InvalidRequest(format!("record cannot be serialised: {e}")))
}

impl Client {
    /// `POST /sobjects/{sobject}/` → the new record's id.
    pub async fn create(&self, sobject: &str, record: &impl Serialize) -> Result<String, Error> {
        let (result, response) = self.post_sobject(sobject, record).await?;
        result
            .id
            .ok_or_else(|| response.invalid("create succeeded without an id".into()))
    }

    /// `POST /sobjects/{sobject}/` and its record result, an error unless `success` (not an
    /// empty `errors`: event publishes report success with an informational entry there).
    async fn post_sobject(
        &self,
        sobject: &str,
        record: &impl Serialize,
    ) -> Result<(RecordResult, RawResponse), Error> {
        let body = to_value(record)?;
        let response = self
            .request(
                Method::POST,
                Target::DataSlash(&["sobjects", sobject]),
                &[],
                Some(&body),
            )
            .await?;
        let result: RecordResult = response.json()?;
        if !result.success {
            return Err(Error::Record {
                errors: result.errors,
            });
        }
        Ok((result, response))
    }

    /// `GET /sobjects/{sobject}/{id}` (`fields` empty: all fields).
    pub async fn get<T: DeserializeOwned>(
        &self,
        sobject: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<T, Error> {
        self.get_fields(&["sobjects", sobject, id], fields).await
    }

    /// `GET /sobjects/{sobject}/describe`: the object's fields, for checking a field mapping
    /// against the org before writing anything.
    pub async fn describe(&self, sobject: &str) -> Result<SObjectDescribe, Error> {
        self.request(
            Method::GET,
            Target::Data(&["sobjects", sobject, "describe"]),
            &[],
            None,
        )
        .await?
        .json()
    }

    /// `GET /sobjects/{sobject}/{field}/{value}`: read by external id.
    pub async fn get_by_external_id<T: DeserializeOwned>(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        fields: &[&str],
    ) -> Result<T, Error> {
        self.get_fields(&["sobjects", sobject, field, value], fields)
            .await
    }

    /// `GET` a record at `path`, only `fields` (empty: all fields).
    async fn get_fields<T: DeserializeOwned>(
        &self,
        path: &[&str],
        fields: &[&str],
    ) -> Result<T, Error> {
        let joined = fields.join(",");
        let query: &[(&str, &str)] = if fields.is_empty() {
            &[]
        } else {
            &[("fields", &joined)]
        };
        self.request(Method::GET, Target::Data(path), query, None)
            .await?
            .json()
    }

    /// `PATCH /sobjects/{sobject}/{id}` → 204.
    pub async fn update(
        &self,
        sobject: &str,
        id: &str,
        record: &impl Serialize,
    ) -> Result<(), Error> {
        let body = to_value(record)?;
        self.request(
            Method::PATCH,
            Target::Data(&["sobjects", sobject, id]),
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// `DELETE /sobjects/{sobject}/{id}` → 204.
    pub async fn delete(&self, sobject: &str, id: &str) -> Result<(), Error> {
        self.request(
            Method::DELETE,
            Target::Data(&["sobjects", sobject, id]),
            &[],
            None,
        )
        .await?;
        Ok(())
    }

    /// `PATCH /sobjects/{sobject}/{field}/{value}`: insert or update by external id. Idempotent,
    /// so safe to retry. Several matches (HTTP 300) is [`Error::MultipleMatches`].
    pub async fn upsert(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        record: &impl Serialize,
    ) -> Result<UpsertResult, Error> {
        self.upsert_inner(sobject, field, value, record, false)
            .await
    }

    /// Like [`Client::upsert`] with `?updateOnly=true`: fails with NOT_FOUND instead of creating.
    pub async fn update_by_external_id(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        record: &impl Serialize,
    ) -> Result<UpsertResult, Error> {
        self.upsert_inner(sobject, field, value, record, true).await
    }

    async fn upsert_inner(
        &self,
        sobject: &str,
        field: &str,
        value: &str,
        record: &impl Serialize,
        update_only: bool,
    ) -> Result<UpsertResult, Error> {
        let body = to_value(record)?;
        let query: &[(&str, &str)] = if update_only {
            &[("updateOnly", "true")]
        } else {
            &[]
        };
        let response = self
            .request(
                Method::PATCH,
                Target::Data(&["sobjects", sobject, field, value]),
                query,
                Some(&body),
            )
            .await?;
        match response.status {
            // Before v46 an update answered 204 without a body (and still may: accept it).
            204 => Ok(UpsertResult {
                id: None,
                created: false,
            }),
            300 => {
                // A JSON array of the matching records' URLs.
                let urls: Vec<String> = serde_json::from_slice(&response.body).unwrap_or_default();
                Err(Error::MultipleMatches {
                    sobject: sobject.to_owned(),
                    field: field.to_owned(),
                    value: value.to_owned(),
                    urls,
                })
            }
            status => {
                // An empty 200/201 body is tolerated too: the status alone tells created or not.
                if response.body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(UpsertResult {
                        id: None,
                        created: status == 201,
                    });
                }
                let result: RecordResult = response.json()?;
                if !result.success {
                    return Err(Error::Record {
                        errors: result.errors,
                    });
                }
                Ok(UpsertResult {
                    id: result.id,
                    created: result.created.unwrap_or(status == 201),
                })
            }
        }
    }

    /// Publishes a platform event (`POST /sobjects/{Event__e}/`). Success is read from
    /// `success`: current versions answer with an `OPERATION_ENQUEUED` entry in `errors` even
    /// when the publish worked.
    pub async fn publish_event(
        &self,
        event: &str,
        payload: &impl Serialize,
    ) -> Result<PublishResult, Error> {
        let (result, _) = self.post_sobject(event, payload).await?;
        Ok(PublishResult {
            id: result.id,
            notices: result.errors,
        })
    }
}

/// The parts of a describe result a mapping check needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SObjectDescribe {
    pub name: String,
    #[serde(default)]
    pub fields: Vec<FieldDescribe>,
}

impl SObjectDescribe {
    /// A field by API name; case-insensitive, as Salesforce's API names are.
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// A lookup field by its relationship name (`Account` for `AccountId`).
    pub fn relationship(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields.iter().find(|f| {
            f.relationship_name
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(name))
        })
    }
}

/// One field of a describe result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDescribe {
    pub name: String,
    #[serde(rename = "type", default)]
    pub field_type: String,
    #[serde(default)]
    pub createable: bool,
    #[serde(default)]
    pub updateable: bool,
    #[serde(default)]
    pub external_id: bool,
    /// A unique field: Salesforce refuses a second record with the same value.
    #[serde(default)]
    pub unique: bool,
    /// Most characters of a text field (0 for other types).
    #[serde(default)]
    pub length: u32,
    /// Most significant digits of a `double`, `currency` or `percent` field (0 otherwise).
    #[serde(default)]
    pub precision: u32,
    /// Most digits after the point of such a field.
    #[serde(default)]
    pub scale: u32,
    /// Most digits of an `int` field (0 otherwise).
    #[serde(default)]
    pub digits: u32,
    #[serde(default)]
    pub relationship_name: Option<String>,
    #[serde(default)]
    pub reference_to: Vec<String>,
}
