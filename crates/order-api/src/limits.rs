//! Limits on the request head the application enforces itself, so that what it refuses gets a
//! problem document: 414 for a long request target, 431 for too many or too large header fields.
//!
//! hyper reads heads up to [`crate::serve::HYPER_MAX_HEAD_BYTES`] and
//! [`crate::serve::HYPER_MAX_HEADERS`], well above these, and answers a head beyond those
//! itself, with a bare status (it never reaches the application).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The longest request target (path and query), in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest header section (names, values and separators), in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most header fields.
pub const MAX_HEADERS: usize = 100;

/// Middleware: refuses a head over the limits before anything else looks at it.
pub async fn check_head(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::UriTooLong { max: MAX_URI_BYTES }.into_response();
    }
    let headers = req.headers();
    // As on the wire: `name: value\r\n`.
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge {
            max_bytes: MAX_HEADER_BYTES,
            max_fields: MAX_HEADERS,
        }
        .into_response();
    }
    next.run(req).await
}
