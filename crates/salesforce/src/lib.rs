//! A Salesforce REST API client (it knows nothing about orders).
//!
//! ```text
//!  SalesforceConfig (SF_* env / flags)
//!        │ Client::new
//!        ▼
//!  Client ──OAuth──▶ {login_url}/services/oauth2/token  (jwt │ client_credentials │ password │ refresh_token)
//!     │                 └─▶ access_token + instance_url (shared by all clones; re-login single-flight on 401)
//!     └──REST──▶ {instance_url}/services/data/v62.0/…
//!                 sobjects (create/get/update/delete/upsert), composite/sobjects (chunks of 200),
//!                 query (+nextRecordsUrl), composite (≤25 subrequests), limits, platform events,
//!                 Bulk API 2.0 ingest jobs (CSV; create, upload, poll, results),
//!                 Bulk API 2.0 query jobs (create, poll, CSV result pages by locator)
//!                 every response: Sforce-Limit-Info ─▶ usage guard (SF_MAX_API_USAGE_SHARE)
//! ```
//!
//! Errors are typed ([`Error`]) and classified ([`ErrorClass`]): retryable, rate-limited,
//! session, configuration, permanent. Auth failures carry a hint saying what to change.
//! Secrets live in [`secrecy::SecretString`] and never appear in `Debug` output or logs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), orderbridge_salesforce::Error> {
//! use orderbridge_salesforce::{Client, SalesforceConfig};
//! let client = Client::new(&SalesforceConfig::default())?; // the local emulator's dev settings
//! let r = client
//!     .upsert("Account", "External_Id__c", "CUST-42", &serde_json::json!({"Name": "Acme"}))
//!     .await?;
//! println!("{:?} created={}", r.id, r.created);
//! # Ok(()) }
//! ```

mod auth;
pub mod bulk;
pub mod bulk_query;
mod client;
pub mod collections;
pub mod composite;
pub mod config;
pub mod error;
pub mod limits;
pub mod query;
pub mod rows;
pub mod sobjects;

pub use auth::JwtClaims;
pub use client::{ApiVersion, Client, SessionToken, org_id_from_identity};
pub use collections::COLLECTION_LIMIT;
pub use composite::{
    Composite, CompositeResponse, Ref, SubrequestKind, SubrequestOutcome, SubrequestResult,
};
pub use config::{AuthFlowKind, SalesforceConfig, TargetSettingsError, UsagePolicy};
pub use error::{ApiError, AuthError, AuthErrorKind, Error, ErrorClass, RecordResult};
pub use limits::{ApiUsage, AppUsage, Limit, Limits, parse_limit_info};
pub use query::QueryResult;
pub use rows::{Column, Row, rows_to_csv};
pub use sobjects::{FieldDescribe, PublishResult, SObjectDescribe, UpsertResult};

/// Compiles the README's Rust example so it cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
