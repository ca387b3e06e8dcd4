//! The last line of "every error is a problem document": an error response something other
//! than [`ApiError`](crate::error::ApiError) produced without one (a missing Swagger UI asset,
//! say) gets a generic problem for its status. Its headers (`Allow`, `Retry-After`…) are kept.

use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::{PROBLEM_JSON, Problem, problem_response};

/// Middleware: replaces the body of a bare 4xx/5xx answer with a problem document.
pub async fn ensure_problem(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().eq_ignore_ascii_case(PROBLEM_JSON.as_bytes()));
    // SOAP faults of the outbound-message endpoint are complete answers of their own.
    if !(status.is_client_error() || status.is_server_error())
        || is_problem
        || crate::outbound::reply::is_soap(&response)
    {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let problem = problem_response(
        status,
        &Problem {
            problem_type: "about:blank",
            title,
            status: status.as_u16(),
            detail: Some(format!("{} ({})", title.to_lowercase(), status.as_u16())),
            errors: Vec::new(),
            existing_order_id: None,
        },
    );
    let (mut parts, _) = response.into_parts();
    let (problem_parts, body) = problem.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in &problem_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, body)
}
