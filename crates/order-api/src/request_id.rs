//! Correlation ids: taken from `X-Request-Id` when the caller sends a sane one, generated
//! otherwise, echoed on the response, recorded on the request's log span and carried into the
//! events the request causes.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

/// The request's correlation id.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(v: &HeaderValue) -> Option<&str> {
    // Anything a log pipeline could choke on (control characters, huge values) is replaced.
    v.to_str()
        .ok()
        .filter(|s| (1..=MAX_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()))
}

/// Middleware: assigns the id before anything else runs and echoes it on every response.
pub async fn assign(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(acceptable)
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let header = HeaderValue::from_str(&id).ok();
    if let Some(h) = &header {
        req.headers_mut().insert(X_REQUEST_ID, h.clone());
    }
    req.extensions_mut().insert(RequestId(id));
    let mut response = next.run(req).await;
    if let Some(h) = header {
        response.headers_mut().insert(X_REQUEST_ID, h);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(Uuid::now_v7().to_string())))
    }
}
