//! The guard in front of `/__admin`: an optional admin token, and JSON only for writes.
//!
//! A web page open in a developer's browser can send "simple" cross-site requests (a form post,
//! `text/plain`, or no body at all) to `127.0.0.1` without any CORS preflight. Requiring
//! `Content-Type: application/json` on every admin write forces a preflight, which the emulator
//! never grants, so such a page cannot inject faults or reset the org. `SF_EMULATOR_ADMIN_TOKEN`
//! additionally requires `Authorization: Bearer <token>` on every admin request.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::reply::{Reply, to_response};
use crate::state::AppState;

pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.config.admin_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let ok: bool = presented
            .as_bytes()
            .ct_eq(token.expose_secret().as_bytes())
            .into();
        if !ok {
            return to_response(
                Reply::error(
                    401,
                    "INVALID_AUTH",
                    "the admin API needs Authorization: Bearer <SF_EMULATOR_ADMIN_TOKEN>",
                ),
                None,
            );
        }
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE);
    if writes && !is_json(&req) {
        return to_response(
            Reply::error(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                "admin writes need Content-Type: application/json (send {} when there is nothing to say)",
            ),
            None,
        );
    }
    next.run(req).await
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}
