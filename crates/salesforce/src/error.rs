//! Typed errors built from Salesforce's error bodies, and their classification.
//!
//! Salesforce reports errors in two shapes that differ in one key:
//! - top-level REST errors: `[{"message":"…","errorCode":"…","fields":[…]}]` (sometimes a single
//!   object instead of an array);
//! - per-record results (collections, create): `{"statusCode":"…","message":"…","fields":[…]}`.
//!
//! Both land in [`ApiError`]; [`ErrorClass`] tells the caller what to do about an error.
//!
//! The types [`Error`] carries live here too, though other modules produce them: the per-record
//! outcome [`RecordResult`] (sObject, collection and composite calls) and the login failure
//! [`AuthError`] (`auth`). Every other module depends on this one, so this one depends on none
//! of them (only on `config` for [`AuthFlowKind`], and `config` depends on nothing): the module
//! graph stays free of cycles. `sobjects::RecordResult` and the crate-root names are re-exports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::AuthFlowKind;

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient: retry with backoff and jitter (row locks, 5xx, timeouts, connection errors).
    Retryable,
    /// The org's API allocation is exhausted (or this client's share of it): back off for long,
    /// minutes to hours, not seconds.
    RateLimited,
    /// The session was refused even after a fresh login: retry later, alert if it persists.
    Session,
    /// The configuration is wrong (credentials, app set-up, key): retrying cannot help; a person
    /// must act on the message.
    Config,
    /// The request itself is wrong for this org (missing required field, bad id, duplicate…):
    /// never retry; dead-letter with the reason.
    Permanent,
}

/// One error as Salesforce reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `errorCode` (top level) or `statusCode` (per record), e.g. `REQUIRED_FIELD_MISSING`.
    #[serde(rename = "errorCode", alias = "statusCode", default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

impl ApiError {
    /// Classification of this code alone (no HTTP status).
    pub fn class(&self) -> ErrorClass {
        classify_code(&self.code).unwrap_or(ErrorClass::Permanent)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if !self.fields.is_empty() {
            write!(f, " (fields: {})", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// Codes whose class is known regardless of the HTTP status. `None` means: decide by status.
pub fn classify_code(code: &str) -> Option<ErrorClass> {
    Some(match code {
        "UNABLE_TO_LOCK_ROW"
        | "SERVER_UNAVAILABLE"
        // The record was fine; another one in an all-or-none batch failed.
        | "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        // Composite allOrNone: processing stopped because of another subrequest.
        | "PROCESSING_HALTED"
        | "REQUEST_RUNNING_TOO_LONG"
        | "QUERY_TIMEOUT" => ErrorClass::Retryable,
        "REQUEST_LIMIT_EXCEEDED" | "TXN_SECURITY_METERING_ERROR" => ErrorClass::RateLimited,
        "INVALID_SESSION_ID" => ErrorClass::Session,
        "API_DISABLED_FOR_ORG" | "API_CURRENTLY_DISABLED" | "INSUFFICIENT_ACCESS" => ErrorClass::Config,
        "REQUIRED_FIELD_MISSING"
        | "INVALID_FIELD"
        | "DUPLICATE_VALUE"
        | "DUPLICATES_DETECTED"
        | "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        | "FIELD_INTEGRITY_EXCEPTION"
        | "MALFORMED_ID"
        | "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        | "INVALID_CROSS_REFERENCE_KEY"
        | "INVALID_TYPE"
        | "INVALID_TYPE_ON_FIELD_IN_RECORD"
        | "STRING_TOO_LONG"
        | "ENTITY_IS_DELETED"
        | "INSUFFICIENT_ACCESS_OR_READONLY"
        | "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"
        | "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"
        | "JSON_PARSER_ERROR"
        | "MALFORMED_QUERY"
        | "INVALID_QUERY_FILTER_OPERATOR"
        | "NOT_FOUND" => ErrorClass::Permanent,
        _ => return None,
    })
}

/// One record's outcome, as create and the sObject Collections calls report it:
/// `{"id":"001…","success":true,"errors":[],"created":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordResult {
    #[serde(default)]
    pub id: Option<String>,
    pub success: bool,
    /// Per-record errors use `statusCode` (read into [`ApiError::code`]).
    #[serde(default)]
    pub errors: Vec<ApiError>,
    /// Upserts only: whether the record was created.
    #[serde(default)]
    pub created: Option<bool>,
}

impl RecordResult {
    /// `None` on success; else what to do about this record (retry a locked row or a rolled-back
    /// all-or-none batch; dead-letter a validation failure).
    pub fn error_class(&self) -> Option<ErrorClass> {
        if self.success {
            return None;
        }
        Some(
            self.errors
                .iter()
                .map(ApiError::class)
                .find(|c| *c != ErrorClass::Permanent)
                .unwrap_or(ErrorClass::Permanent),
        )
    }
}

/// Getting an access token failed. `Display` carries a hint saying what to change.
#[derive(Debug, thiserror::Error)]
#[error("Salesforce login failed (SF_AUTH_FLOW={flow}, {token_url}): {kind}{}", if .hint.is_empty() { String::new() } else { format!(". {}", .hint) })]
pub struct AuthError {
    pub flow: AuthFlowKind,
    pub token_url: String,
    pub kind: AuthErrorKind,
    /// What a person should check or change.
    pub hint: String,
}

/// What went wrong while getting a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthErrorKind {
    /// The token endpoint refused: `{"error":"invalid_grant","error_description":"…"}`.
    #[error("HTTP {status} {error}: {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
    },
    #[error("the token request timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the token endpoint: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server's TLS certificate was not trusted.
    #[error("the token endpoint's TLS certificate was refused ({0})")]
    Certificate(String),
    #[error("unexpected answer from the token endpoint (HTTP {status}): {detail}")]
    InvalidResponse { status: u16, detail: String },
    /// Local configuration problem (missing key file, setting…).
    #[error("{0}")]
    Config(String),
}

impl AuthError {
    /// Retryable for network trouble and 5xx; rate-limited for `rate_limit_exceeded`; otherwise
    /// a fatal configuration error.
    pub fn class(&self) -> ErrorClass {
        match &self.kind {
            AuthErrorKind::Timeout(_) | AuthErrorKind::Transport(_) => ErrorClass::Retryable,
            AuthErrorKind::Rejected { error, .. } if error == "rate_limit_exceeded" => {
                ErrorClass::RateLimited
            }
            AuthErrorKind::Rejected { status, .. }
            | AuthErrorKind::InvalidResponse { status, .. }
                if *status >= 500 || *status == 429 =>
            {
                ErrorClass::Retryable
            }
            _ => ErrorClass::Config,
        }
    }

    /// The OAuth `error` code, when the endpoint sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match &self.kind {
            AuthErrorKind::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub(crate) const CERTIFICATE_HINT: &str = "Check SF_LOGIN_URL's host name; for the emulator's self-signed HTTPS or a \
TLS-intercepting proxy, set SF_CA_CERT_FILE to the CA certificate (PEM)";

/// Everything a Salesforce call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Getting a token failed; the message says what to fix.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Salesforce answered with an error status and body.
    #[error("Salesforce answered HTTP {status} to {method} {path}: {}", join_errors(.errors))]
    Api {
        status: u16,
        method: String,
        path: String,
        errors: Vec<ApiError>,
    },
    /// An upsert by external id matched several records (HTTP 300).
    #[error("upsert of {sobject} by {field} = {value:?} matched {} records: fix the duplicate external ids", .urls.len())]
    MultipleMatches {
        sobject: String,
        field: String,
        value: String,
        urls: Vec<String>,
    },
    /// A record-level failure for a single-record call answered with 2xx (for example a
    /// platform event with `success: false`).
    #[error("Salesforce refused the record: {}", join_errors(.errors))]
    Record { errors: Vec<ApiError> },
    /// A collection call stopped part-way: `completed` holds the results of the chunks that were
    /// sent, in input order; the records after them were not sent.
    #[error("collection call failed after {} records: {source}", .completed.len())]
    PartialCollection {
        completed: Vec<RecordResult>,
        source: Box<Error>,
    },
    /// The request timed out.
    #[error("Salesforce request {method} {path} timed out after {timeout:?}")]
    Timeout {
        method: String,
        path: String,
        timeout: Duration,
    },
    /// Connection refused/reset, DNS, TLS…
    #[error("cannot reach Salesforce for {method} {path}: {source}")]
    Transport {
        method: String,
        path: String,
        source: reqwest::Error,
    },
    /// The instance's TLS certificate was refused: fix the set-up (SF_CA_CERT_FILE, host name).
    #[error(
        "the TLS certificate of {host} was refused ({detail}). {}",
        CERTIFICATE_HINT
    )]
    Certificate { host: String, detail: String },
    /// This client's share of the daily API allocation is used up (`SF_MAX_API_USAGE_SHARE`).
    #[error(
        "API usage {used}/{max} is at or above this client's share {share} of the daily allocation (SF_MAX_API_USAGE_SHARE); call refused, retry after {retry_after:?}"
    )]
    UsageShareExceeded {
        used: u64,
        max: u64,
        share: f64,
        retry_after: Duration,
    },
    /// A 2xx answer whose body has an unexpected shape.
    #[error("unexpected response to {method} {path} (HTTP {status}): {detail}")]
    InvalidResponse {
        method: String,
        path: String,
        status: u16,
        detail: String,
    },
    /// A Bulk job was still being processed when the client stopped waiting; it goes on in
    /// Salesforce.
    #[error("Bulk job {id} was still running after {waited:?}")]
    BulkJobTimeout { id: String, waited: Duration },
    /// A Bulk query job ended without its results (`Failed` or `Aborted`); `message` is the
    /// job's `errorMessage`.
    #[error("Bulk query job {id} ended {state}: {message}")]
    BulkQueryFailed {
        id: String,
        state: String,
        message: String,
    },
    /// The caller asked for something the API does not allow (checked before sending).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A setting is unusable (bad URL, API version…).
    #[error("invalid Salesforce configuration: {0}")]
    Config(String),
}

fn join_errors(errors: &[ApiError]) -> String {
    if errors.is_empty() {
        return "(no error body)".to_owned();
    }
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// What to do about this error; see [`ErrorClass`].
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Auth(e) => e.class(),
            Self::Api { status, errors, .. } => classify_api(*status, errors),
            Self::MultipleMatches { .. }
            | Self::InvalidRequest(_)
            | Self::BulkQueryFailed { .. } => ErrorClass::Permanent,
            Self::Record { errors } => errors
                .iter()
                .map(ApiError::class)
                .find(|c| *c != ErrorClass::Permanent)
                .unwrap_or(ErrorClass::Permanent),
            Self::PartialCollection { source, .. } => source.class(),
            Self::Timeout { .. } | Self::Transport { .. } | Self::BulkJobTimeout { .. } => {
                ErrorClass::Retryable
            }
            Self::UsageShareExceeded { .. } => ErrorClass::RateLimited,
            Self::Config(_) | Self::Certificate { .. } => ErrorClass::Config,
            // A 2xx with a body we cannot read: most likely a proxy or an API change; retrying
            // will not help and a person must look.
            Self::InvalidResponse { .. } => ErrorClass::Permanent,
        }
    }

    /// How long to wait before trying again, when the client knows (usage share exceeded).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::UsageShareExceeded { retry_after, .. } => Some(*retry_after),
            Self::PartialCollection { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// True for [`ErrorClass::Retryable`].
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// The error codes Salesforce reported, if any.
    pub fn codes(&self) -> Vec<&str> {
        match self {
            Self::Api { errors, .. } | Self::Record { errors } => {
                errors.iter().map(|e| e.code.as_str()).collect()
            }
            Self::PartialCollection { source, .. } => source.codes(),
            _ => Vec::new(),
        }
    }
}

/// Class of an HTTP error answer: a known code wins, then the status.
pub(crate) fn classify_api(status: u16, errors: &[ApiError]) -> ErrorClass {
    for e in errors {
        if let Some(class) = classify_code(&e.code) {
            return class;
        }
    }
    match status {
        401 => ErrorClass::Session,
        420 | 429 => ErrorClass::RateLimited,
        408 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// Reads an error body: an array of errors, a single error object, or (from proxies, outages)
/// anything else, kept as the message.
pub(crate) fn parse_error_body(status: u16, body: &[u8]) -> Vec<ApiError> {
    if let Ok(errors) = serde_json::from_slice::<Vec<ApiError>>(body) {
        return errors;
    }
    if let Ok(error) = serde_json::from_slice::<ApiError>(body)
        && (!error.code.is_empty() || !error.message.is_empty())
    {
        return vec![error];
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    // Keep logs and messages bounded when a proxy answers with a whole HTML page.
    let message: String = text.chars().take(300).collect();
    vec![ApiError {
        code: format!("HTTP_{status}"),
        message,
        fields: Vec::new(),
    }]
}
