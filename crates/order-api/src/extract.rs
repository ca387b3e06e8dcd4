//! Extractors whose rejections are problem documents rather than axum's plain-text ones.

mod strict_json;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use orderbridge_domain::OrderId;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

/// A JSON request body: 415 unless `Content-Type` is JSON (in UTF-8, the only charset JSON has),
/// 413 over the body limit, 408 when the body is not received in time, 400 for malformed JSON or
/// a key repeated within an object, 422 (with the field's JSON pointer) when it is well-formed
/// but has the wrong shape. Also keeps the parsed document for fingerprinting.
pub struct JsonBody<T> {
    pub value: T,
    pub document: serde_json::Value,
}

/// `application/json` or `application/*+json`, with no `charset` or `charset=utf-8`: JSON is
/// UTF-8 (RFC 8259), and a body declared as another charset was most likely encoded in it.
fn is_json(parts_content_type: Option<&str>) -> bool {
    let Some(ct) = parts_content_type else {
        return false;
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json_type = essence == "application/json"
        || (essence.len() > 5 && essence.starts_with("application/") && essence.ends_with("+json"));
    json_type
        && parts.all(|param| match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                let charset = value.trim().trim_matches('"');
                charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_rejection(r, state.config.body_limit))?;
        let document =
            strict_json::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let value = serde_path_to_error::deserialize(&document).map_err(|e| {
            let pointer = strict_json::pointer_of(e.path());
            let inner = e.into_inner();
            let mut v = orderbridge_domain::Violations::default();
            v.push(&pointer, "invalid_type", inner.to_string());
            ApiError::Validation(v)
        })?;
        Ok(Self { value, document })
    }
}

pub(crate) fn body_rejection(rejection: BytesRejection, limit: usize) -> ApiError {
    use std::error::Error as _;
    let status = rejection.status();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(limit);
    }
    // The body deadline surfaces as a body error whose source is `BodyTimedOut`.
    let mut source = rejection.source();
    while let Some(e) = source {
        if e.is::<crate::body_deadline::BodyTimedOut>() {
            return ApiError::BodyTimeout;
        }
        source = e.source();
    }
    ApiError::BadRequest(format!("cannot read the request body: {rejection}"))
}

/// Query parameters, with a 400 problem for ones that do not parse.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| Self(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// An order id from the path. Anything that is not a UUID cannot name an order: 404.
pub struct OrderPath(pub OrderId);

impl<S: Send + Sync> FromRequestParts<S> for OrderPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound)?;
        raw.parse::<OrderId>()
            .map(Self)
            .map_err(|_| ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn accepts_json_media_types_only() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("application/json;charset=\"UTF-8\"")));
        assert!(is_json(Some("Application/JSON")));
        assert!(is_json(Some("application/merge-patch+json")));
        assert!(!is_json(Some("application/json; charset=latin1")));
        assert!(!is_json(Some("application/json; charset=iso-8859-1")));
        assert!(!is_json(Some("application/json; charset=utf-16")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }
}
