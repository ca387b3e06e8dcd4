//! `/portal`: a small page where a person pastes an API key and an order id (or creates a demo
//! order) and watches the order move through its statuses over the event stream.
//!
//! Plain HTML, CSS and JavaScript, embedded in the binary (no build step, no CDN: it works
//! offline). Served with a Content-Security-Policy of `default-src 'self'` and no inline script,
//! so injected markup could run nothing; the script writes server values as text only. The page
//! itself needs no key: it calls the API with the one pasted, like any other client.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("assets/index.html");
const PORTAL_JS: &str = include_str!("assets/portal.js");
const PORTAL_CSS: &str = include_str!("assets/portal.css");

/// Only this origin's files and connections; nothing may frame the page (the key is typed in).
pub const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
            // Small and versioned with the binary: revalidate rather than serve a stale page
            // after an upgrade.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /portal`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /portal/portal.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PORTAL_JS)
}

/// `GET /portal/portal.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", PORTAL_CSS)
}
