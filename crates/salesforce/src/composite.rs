//! Composite: up to 25 subrequests in one API call, up to 5 of them sObject Collections or
//! queries; later subrequests can use earlier results through `@{referenceId.field}`.
//!
//! ```text
//!  let mut c = Composite::new().all_or_none(true);
//!  let acct = c.upsert("acct", "Account", "External_Id__c", "C-1", json!({"Name": "Acme"}))?;
//!  c.upsert_collection("lines", "OrderItem", "External_Id__c", lines, true)?;
//!  let order = c.create("order", "Order", json!({"AccountId": acct.id(), …}))?;
//!  let response = client.composite(&c).await?;      // one API call
//!  response.get("order")                             // typed SubrequestOutcome per referenceId
//! ```
//!
//! Paths in subrequest URLs are rendered with the client's pinned API version at send time.
//!
//! This module builds the request and sends it; reading the answer is in `response`.

mod response;

use std::collections::HashSet;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use self::response::{RawCompositeResponse, outcome};
use crate::client::{Body, Client, Target};
use crate::collections::{COLLECTION_LIMIT, prepare_record};
use crate::error::Error;

// The answer's types belong to `composite` in the public API: `composite::CompositeResponse`,
// and at the crate root.
pub use self::response::{CompositeResponse, SubrequestKind, SubrequestOutcome, SubrequestResult};

/// Most subrequests in one composite call.
pub const COMPOSITE_LIMIT: usize = 25;
/// Most subrequests that are sObject Collections or queries in one composite call.
pub const COMPOSITE_COLLECTION_LIMIT: usize = 5;

// `SubrequestKind` is defined in `response`, which reads answers by kind; which kinds count
// against the collection limit is the builder's business, so that stays here.
impl SubrequestKind {
    fn counts_as_collection(self) -> bool {
        matches!(
            self,
            Self::Query | Self::CreateCollection | Self::UpdateCollection | Self::UpsertCollection
        )
    }
}

/// A handle on an earlier subrequest, for `@{ref.field}` references in later ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref(String);

impl Ref {
    /// `@{ref.id}`: the id an earlier create/upsert produced.
    pub fn id(&self) -> String {
        self.field("id")
    }

    /// `@{ref.<path>}`, e.g. `records[0].Id` for a query.
    pub fn field(&self, path: &str) -> String {
        format!("@{{{}.{path}}}", self.0)
    }

    pub fn reference_id(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
struct Subrequest {
    method: Method,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    reference_id: String,
    /// Serialised when added: a batch's records are held once, as compact JSON, rather than as
    /// `Value` trees copied again into the request.
    body: Option<Box<RawValue>>,
    kind: SubrequestKind,
}

/// A composite request under construction. Limits are checked as subrequests are added.
#[derive(Debug, Clone, Default)]
pub struct Composite {
    all_or_none: bool,
    subrequests: Vec<Subrequest>,
}

impl Composite {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `true`, a failing subrequest rolls back all of them (the others answer
    /// `PROCESSING_HALTED` or `ALL_OR_NONE_OPERATION_ROLLED_BACK`).
    pub fn all_or_none(mut self, all_or_none: bool) -> Self {
        self.all_or_none = all_or_none;
        self
    }

    pub fn len(&self) -> usize {
        self.subrequests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subrequests.is_empty()
    }

    /// Subrequests that count against the limit of 5 collections/queries.
    pub fn collection_count(&self) -> usize {
        self.subrequests
            .iter()
            .filter(|s| s.kind.counts_as_collection())
            .count()
    }

    fn push(
        &mut self,
        reference_id: &str,
        kind: SubrequestKind,
        method: Method,
        segments: &[&str],
        query: Vec<(String, String)>,
        body: Option<Box<RawValue>>,
    ) -> Result<Ref, Error> {
        let valid_ref = reference_id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && reference_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_ref {
            return Err(Error::InvalidRequest(format!(
                "composite referenceId {reference_id:?} must start with a letter and hold only letters, digits and _"
            )));
        }
        if self
            .subrequests
            .iter()
            .any(|s| s.reference_id == reference_id)
        {
            return Err(Error::InvalidRequest(format!(
                "composite referenceId {reference_id:?} is used twice"
            )));
        }
        if self.subrequests.len() >= COMPOSITE_LIMIT {
            return Err(Error::InvalidRequest(format!(
                "a composite request holds at most {COMPOSITE_LIMIT} subrequests"
            )));
        }
        if kind.counts_as_collection() && self.collection_count() >= COMPOSITE_COLLECTION_LIMIT {
            return Err(Error::InvalidRequest(format!(
                "a composite request holds at most {COMPOSITE_COLLECTION_LIMIT} sObject Collections or query subrequests"
            )));
        }
        if let Some(empty) = segments.iter().position(|s| s.is_empty()) {
            return Err(Error::InvalidRequest(format!(
                "composite {reference_id}: path part {empty} is empty"
            )));
        }
        self.subrequests.push(Subrequest {
            method,
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            query,
            reference_id: reference_id.to_owned(),
            body,
            kind,
        });
        Ok(Ref(reference_id.to_owned()))
    }

    pub fn create(
        &mut self,
        reference_id: &str,
        sobject: &str,
        record: impl Serialize,
    ) -> Result<Ref, Error> {
        let body = value(record)?;
        self.push(
            reference_id,
            SubrequestKind::Create,
            Method::POST,
            &["sobjects", sobject],
            Vec::new(),
            Some(body),
        )
    }

    /// `id` may be a reference such as `acct.id()`.
    pub fn get(
        &mut self,
        reference_id: &str,
        sobject: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Ref, Error> {
        let query = if fields.is_empty() {
            Vec::new()
        } else {
            vec![("fields".to_owned(), fields.join(","))]
        };
        self.push(
            reference_id,
            SubrequestKind::Get,
            Method::GET,
            &["sobjects", sobject, id],
            query,
            None,
        )
    }

    pub fn update(
        &mut self,
        reference_id: &str,
        sobject: &str,
        id: &str,
        record: impl Serialize,
    ) -> Result<Ref, Error> {
        let body = value(record)?;
        self.push(
            reference_id,
            SubrequestKind::Update,
            Method::PATCH,
            &["sobjects", sobject, id],
            Vec::new(),
            Some(body),
        )
    }

    pub fn upsert(
        &mut self,
        reference_id: &str,
        sobject: &str,
        field: &str,
        external_id: &str,
        record: impl Serialize,
    ) -> Result<Ref, Error> {
        let body = value(record)?;
        self.push(
            reference_id,
            SubrequestKind::Upsert,
            Method::PATCH,
            &["sobjects", sobject, field, external_id],
            Vec::new(),
            Some(body),
        )
    }

    pub fn delete(&mut self, reference_id: &str, sobject: &str, id: &str) -> Result<Ref, Error> {
        self.push(
            reference_id,
            SubrequestKind::Delete,
            Method::DELETE,
            &["sobjects", sobject, id],
            Vec::new(),
            None,
        )
    }

    /// A SOQL query (first page only). Counts against the limit of 5.
    pub fn query(&mut self, reference_id: &str, soql: &str) -> Result<Ref, Error> {
        self.push(
            reference_id,
            SubrequestKind::Query,
            Method::GET,
            &["query"],
            vec![("q".into(), soql.into())],
            None,
        )
    }

    pub fn create_collection<T: Serialize>(
        &mut self,
        reference_id: &str,
        sobject: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Ref, Error> {
        let body = collection_body(sobject, records, all_or_none)?;
        self.push_collection(reference_id, SubrequestKind::CreateCollection, &[], body)
    }

    pub fn update_collection<T: Serialize>(
        &mut self,
        reference_id: &str,
        sobject: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Ref, Error> {
        let body = collection_body(sobject, records, all_or_none)?;
        self.push_collection(reference_id, SubrequestKind::UpdateCollection, &[], body)
    }

    pub fn upsert_collection<T: Serialize>(
        &mut self,
        reference_id: &str,
        sobject: &str,
        field: &str,
        records: &[T],
        all_or_none: bool,
    ) -> Result<Ref, Error> {
        let body = collection_body(sobject, records, all_or_none)?;
        self.push_collection(
            reference_id,
            SubrequestKind::UpsertCollection,
            &[sobject, field],
            body,
        )
    }

    /// A `composite/sobjects[/…]` subrequest: POST to create, PATCH to update or upsert.
    fn push_collection(
        &mut self,
        reference_id: &str,
        kind: SubrequestKind,
        below: &[&str],
        body: Box<RawValue>,
    ) -> Result<Ref, Error> {
        let method = match kind {
            SubrequestKind::CreateCollection => Method::POST,
            _ => Method::PATCH,
        };
        let mut path = vec!["composite", "sobjects"];
        path.extend_from_slice(below);
        self.push(reference_id, kind, method, &path, Vec::new(), Some(body))
    }

    /// The JSON body sent to `POST /composite`, with URLs for API `version` (e.g. "62.0").
    pub fn to_json(&self, version: &str) -> Value {
        let requests: Vec<Value> = self
            .subrequests
            .iter()
            .map(|s| {
                let url = s.url(version);
                let mut request = serde_json::json!({
                    "method": s.method.as_str(),
                    "url": url,
                    "referenceId": s.reference_id,
                });
                if let (Some(body), Value::Object(map)) = (&s.body, &mut request) {
                    map.insert(
                        "body".into(),
                        serde_json::from_str(body.get()).unwrap_or(Value::Null),
                    );
                }
                request
            })
            .collect();
        serde_json::json!({ "allOrNone": self.all_or_none, "compositeRequest": requests })
    }

    /// The request as sent: the same document as [`Composite::to_json`], serialised straight
    /// from the subrequests.
    pub fn to_bytes(&self, version: &str) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "allOrNone")]
            all_or_none: bool,
            #[serde(rename = "compositeRequest")]
            composite_request: Vec<WireSub<'a>>,
        }
        #[derive(Serialize)]
        struct WireSub<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            body: Option<&'a RawValue>,
            method: &'a str,
            #[serde(rename = "referenceId")]
            reference_id: &'a str,
            url: String,
        }
        let wire = Wire {
            all_or_none: self.all_or_none,
            composite_request: self
                .subrequests
                .iter()
                .map(|s| WireSub {
                    body: s.body.as_deref(),
                    method: s.method.as_str(),
                    reference_id: &s.reference_id,
                    url: s.url(version),
                })
                .collect(),
        };
        serde_json::to_vec(&wire)
            .map_err(|e| Error::InvalidRequest(format!("request cannot be serialised: {e}")))
    }
}

impl Subrequest {
    /// The subrequest's URL with the API version.
    fn url(&self, version: &str) -> String {
        let mut url = format!("/services/data/v{version}");
        for segment in &self.segments {
            url.push('/');
            url.push_str(&encode(segment, false));
        }
        if matches!(self.kind, SubrequestKind::Create) {
            url.push('/');
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode(k, true));
            url.push('=');
            url.push_str(&encode(v, true));
        }
        url
    }
}

fn value(record: impl Serialize) -> Result<Box<RawValue>, Error> {
    serde_json::value::to_raw_value(&record)
        .map_err(|e| Error::InvalidRequest(format!("record cannot be serialised: {e}")))
}

fn collection_body<T: Serialize>(
    sobject: &str,
    records: &[T],
    all_or_none: bool,
) -> Result<Box<RawValue>, Error> {
    if records.is_empty() || records.len() > COLLECTION_LIMIT {
        return Err(Error::InvalidRequest(format!(
            "a collection subrequest holds 1 to {COLLECTION_LIMIT} records, not {}",
            records.len()
        )));
    }
    // Record by record, straight to compact JSON: a whole collection never exists as a
    // `Value` tree (those trees were most of the worker's memory with batches in flight).
    let records = records
        .iter()
        .enumerate()
        .map(|(i, record)| value(prepare_record(sobject, i, record)?))
        .collect::<Result<Vec<_>, _>>()?;
    #[derive(Serialize)]
    struct CollectionBody {
        #[serde(rename = "allOrNone")]
        all_or_none: bool,
        records: Vec<Box<RawValue>>,
    }
    value(CollectionBody {
        all_or_none,
        records,
    })
}

/// Percent-encodes a URL part, leaving `@{…}` references readable as Salesforce expects them.
fn encode(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'@'
            | b'{'
            | b'}' => out.push(b as char),
            b',' | b'\'' | b'(' | b')' | b'*' | b'!' | b':' if query => out.push(b as char),
            b' ' if query => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Client {
    /// Sends a composite request: one API call, whatever it holds.
    pub async fn composite(&self, request: &Composite) -> Result<CompositeResponse, Error> {
        if request.is_empty() {
            return Err(Error::InvalidRequest(
                "a composite request needs at least one subrequest".into(),
            ));
        }
        let body = request.to_bytes(self.api_version())?;
        let response = self
            .request_body(
                Method::POST,
                Target::Data(&["composite"]),
                &[],
                Some(Body::Serialized(&body)),
            )
            .await?;
        drop(body);
        let raw: RawCompositeResponse = response.json()?;
        let kinds: HashSet<&str> = request
            .subrequests
            .iter()
            .map(|s| s.reference_id.as_str())
            .collect();
        let mut results = Vec::with_capacity(raw.composite_response.len());
        for sub in raw.composite_response {
            if !kinds.contains(sub.reference_id.as_str()) {
                return Err(response.invalid(format!(
                    "answer for unknown referenceId {:?}",
                    sub.reference_id
                )));
            }
            let kind = request
                .subrequests
                .iter()
                .find(|s| s.reference_id == sub.reference_id)
                .map_or(SubrequestKind::Get, |s| s.kind);
            let outcome = outcome(kind, sub.http_status_code, sub.body)
                .map_err(|d| response.invalid(format!("subrequest {}: {d}", sub.reference_id)))?;
            results.push(SubrequestResult {
                reference_id: sub.reference_id,
                kind,
                status: sub.http_status_code,
                headers: sub.http_headers,
                outcome,
            });
        }
        Ok(CompositeResponse { results })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_references() {
        let mut c = Composite::new().all_or_none(true);
        let acct = c
            .upsert(
                "acct",
                "Account",
                "External_Id__c",
                "C 1/x",
                serde_json::json!({"Name": "A"}),
            )
            .unwrap();
        c.get("read", "Account", &acct.id(), &["Id", "Name"])
            .unwrap();
        c.query("q1", "SELECT Id FROM Account WHERE Name = 'A b'")
            .unwrap();
        for i in 0..4 {
            c.create_collection(
                &format!("c{i}"),
                "Contact",
                &[serde_json::json!({"LastName": "x"})],
                false,
            )
            .unwrap();
        }
        // Sixth collection/query is refused.
        assert!(c.query("q2", "SELECT Id FROM Account").is_err());
        assert!(
            c.create("acct", "Account", serde_json::json!({})).is_err(),
            "duplicate ref"
        );
        assert!(
            c.create("1bad", "Account", serde_json::json!({})).is_err(),
            "ref must start with a letter"
        );
        while c.len() < COMPOSITE_LIMIT {
            let n = c.len();
            c.delete(&format!("d{n}"), "Account", "001000000000001AAA")
                .unwrap();
        }
        assert!(
            c.delete("one_more", "Account", "001000000000001AAA")
                .is_err()
        );

        let json = c.to_json("62.0");
        let reqs = json["compositeRequest"].as_array().unwrap();
        assert_eq!(json["allOrNone"], true);
        assert_eq!(
            reqs[0]["url"],
            "/services/data/v62.0/sobjects/Account/External_Id__c/C%201%2Fx"
        );
        assert_eq!(
            reqs[1]["url"],
            "/services/data/v62.0/sobjects/Account/@{acct.id}?fields=Id,Name"
        );
        assert_eq!(
            reqs[2]["url"],
            "/services/data/v62.0/query?q=SELECT+Id+FROM+Account+WHERE+Name+%3D+'A+b'"
        );
        assert_eq!(
            reqs[3]["body"]["records"][0]["attributes"]["type"],
            "Contact"
        );
    }
}
