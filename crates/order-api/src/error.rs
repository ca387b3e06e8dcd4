//! One error type that is the HTTP response: every failure leaves the API as an RFC 9457
//! `application/problem+json` document.
//!
//! Generic HTTP failures use `type: "about:blank"` with the status phrase as title, as the RFC
//! recommends; failures specific to this API use a `urn:orderbridge:problem:*` type that clients
//! can match on. Database and internal errors are logged in full and answered opaquely.

use orderbridge_db::create::CreateError;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderbridge_domain::OrderId;
use orderbridge_domain::{FieldError, Violations};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI identifying the problem type.
    #[schema(example = "urn:orderbridge:problem:validation-error")]
    #[serde(rename = "type")]
    pub problem_type: &'static str,
    /// A short summary of the problem type.
    #[schema(example = "Request validation failed")]
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong in this occurrence.
    #[schema(example = "2 field(s) failed validation")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level errors, for validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For a duplicate `client_ref`: the order that already has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_order_id: Option<Uuid>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A webhook (the fulfilment callback) whose signature is not accepted.
    #[error("webhook signature not accepted: {0}")]
    BadSignature(#[source] orderbridge_webhook::VerifyError),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    #[error("request body must be application/json, in UTF-8 (no other charset)")]
    UnsupportedMediaType,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("the request target is longer than {max} bytes")]
    UriTooLong { max: usize },
    #[error(
        "the request has more than {max_fields} header fields or more than {max_bytes} bytes of them"
    )]
    HeadersTooLarge { max_bytes: usize, max_fields: usize },
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Validation(#[from] Violations),
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInFlight,
    #[error("an order with client_ref `{client_ref}` already exists")]
    DuplicateClientRef {
        client_ref: String,
        existing: Option<OrderId>,
    },
    /// Provisioning asked for an order Salesforce does not hold yet (nothing to write the
    /// result back to).
    #[error("the order is not in Salesforce yet (sync state not synced); provision it once it is")]
    NotSynced,
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("too many failed authentications from this address")]
    AuthThrottled { retry_after: Duration },
    #[error("too many resync requests; an order already on its way is not queued again")]
    ResyncRateLimited { retry_after: Duration },
    #[error("the request took too long")]
    Timeout,
    #[error("too many event streams are open; retry later")]
    TooManyStreams { retry_after: Duration },
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::KeyInFlight => Self::IdempotencyKeyInFlight,
            CreateError::KeyReused => Self::IdempotencyKeyReused,
            CreateError::DuplicateClientRef {
                client_ref,
                existing,
            } => Self::DuplicateClientRef {
                client_ref,
                existing,
            },
            CreateError::Serialize(e) => Self::Internal(e.into()),
            CreateError::Database(e) => e.into(),
        }
    }
}

/// Errors that mean "Postgres is not reachable right now", as opposed to a bug: these become a
/// 503 with Retry-After, so clients retry instead of reporting a failure.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: admin shutdown, crash shutdown, cannot connect
            // now; 53300: too many connections; 57014: statement timeout.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "53300" | "57014"
                )
        }),
        _ => false,
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unprocessable(_) | Self::Validation(_) | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::IdempotencyKeyInFlight | Self::DuplicateClientRef { .. } | Self::NotSynced => {
                StatusCode::CONFLICT
            }
            Self::RateLimited { .. }
            | Self::AuthThrottled { .. }
            | Self::ResyncRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout | Self::Unavailable(_) | Self::TooManyStreams { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem_type(&self) -> (&'static str, &'static str) {
        match self {
            Self::Validation(_) | Self::Unprocessable(_) => (
                "urn:orderbridge:problem:validation-error",
                "Request validation failed",
            ),
            Self::IdempotencyKeyReused => (
                "urn:orderbridge:problem:idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            ),
            Self::IdempotencyKeyInFlight => (
                "urn:orderbridge:problem:idempotency-key-in-flight",
                "Request with this Idempotency-Key in progress",
            ),
            Self::DuplicateClientRef { .. } => (
                "urn:orderbridge:problem:duplicate-client-ref",
                "An order with this client_ref already exists",
            ),
            Self::NotSynced => (
                "urn:orderbridge:problem:not-synced",
                "The order is not in Salesforce yet",
            ),
            Self::BadSignature(_) => (
                "urn:orderbridge:problem:bad-signature",
                "Webhook signature not accepted",
            ),
            other => (
                "about:blank",
                other.status().canonical_reason().unwrap_or("Error"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let status = self.status();
        let (problem_type, title) = self.problem_type();
        // Only API-key failures name the Bearer scheme; a webhook is signed, not bearer-authed.
        let bearer = matches!(self, Self::Unauthorized);
        let retry_after = match &self {
            // Round up: "Retry-After: 0" would invite an immediate, equally futile retry.
            Self::RateLimited { retry_after }
            | Self::AuthThrottled { retry_after }
            | Self::ResyncRateLimited { retry_after }
            | Self::TooManyStreams { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Self::Unavailable(_) | Self::Timeout => Some(1),
            _ => None,
        };
        let detail = match &self {
            // Never leak internals; the log line above has them.
            Self::Internal(_) => "an unexpected error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let (errors, existing_order_id) = match self {
            Self::Validation(v) => (v.0, None),
            Self::DuplicateClientRef { existing, .. } => (Vec::new(), existing.map(OrderId::get)),
            _ => (Vec::new(), None),
        };
        let mut response = problem_response(
            status,
            &Problem {
                problem_type,
                title,
                status: status.as_u16(),
                detail: Some(detail),
                errors,
                existing_order_id,
            },
        );
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if bearer {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orderbridge\""),
            );
        }
        response
    }
}

/// Serializes a problem with the right content type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    // A Problem is plain data; serializing it cannot fail, but fall back to an empty object
    // rather than panic if it ever did.
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}
