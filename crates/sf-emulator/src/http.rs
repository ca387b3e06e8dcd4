//! HTTP wiring: the router, the `/services` pre-flight (injected latency and outage), access
//! checks, API-call counting, the `Sforce-Limit-Info` header and injected errors.
//!
//! ```text
//! request ─► [/services/data: a call slot, if limited] ─► latency/jitter ─► outage? 503 ─► token endpoint
//!                                      └────► /services/data/vNN.N/… ─► session? 401
//!                                              ─► daily limit? 403 ─► count call
//!                                              ─► injected error? ─► api::execute
//!                                                 (Bulk: bulk::handle; a query results page
//!                                                  is written after, a chunk per lock turn)
//!                                              ─► + Sforce-Limit-Info
//!                                              ─► committed changes ─► Pub/Sub (CDC)
//!                                                 └► Flow rules ─► platform events,
//!                                                                  outbound messages
//! ```

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware;
use axum::response::Response;
use axum::routing::{any, delete, get, post};
use rand::Rng;
use serde_json::Value;

use crate::admin;
use crate::admin_flows;
use crate::admin_guard;
use crate::admin_outbound;
use crate::admin_pubsub;
use crate::api;
use crate::auth;
// `to_response` lived here before it moved next to `Reply`; the old path keeps working.
pub use crate::reply::to_response;
use crate::reply::{Reply, fault_reply};
use crate::route::{self, Ctx, Req, Route};
use std::sync::MutexGuard;

use crate::state::{AppState, Inner, Shared};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The emulator's router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/oauth2/revoke", post(revoke))
        .route("/services/data", get(versions))
        .route("/services/data/", get(versions))
        .route("/services/data/{*rest}", any(data))
        .merge(
            Router::new()
                .route("/__admin/stats", get(admin::stats))
                .route("/__admin/records/{sobject}", get(admin::records))
                .route(
                    "/__admin/faults",
                    get(admin::get_faults)
                        .post(admin::set_faults)
                        .delete(admin::clear_faults),
                )
                .route("/__admin/reset", post(admin::reset))
                .route("/__admin/seed", post(admin::seed))
                .route("/__admin/pubsub", get(admin_pubsub::stats))
                .route(
                    "/__admin/pubsub/faults",
                    post(admin_pubsub::set_faults).delete(admin_pubsub::clear_faults),
                )
                .route("/__admin/pubsub/schema", post(admin_pubsub::add_field))
                .route(
                    "/__admin/flows",
                    get(admin_flows::list)
                        .post(admin_flows::add)
                        .delete(admin_flows::clear),
                )
                .route("/__admin/flows/{name}", delete(admin_flows::remove))
                .route(
                    "/__admin/outbound-messages",
                    get(admin_outbound::status).delete(admin_outbound::clear),
                )
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    admin_guard::guard,
                )),
        )
        .fallback(|| async { to_response(Reply::not_found(), None) })
        // A Bulk upload may be this large; every other body is held to MAX_BODY_BYTES in
        // `data` (Composite with five full Collections of wide records fits comfortably).
        .layer(DefaultBodyLimit::max(crate::bulk::MAX_UPLOAD_BYTES))
        .with_state(state)
}

/// Injected latency, then the outage switch. Runs before the state lock is taken for the call.
async fn preflight(s: &AppState) -> Option<Reply> {
    let (latency, jitter, outage) = {
        let mut inner = s.lock();
        if inner.faults.latency_ms > 0 || inner.faults.jitter_ms > 0 {
            inner.stats.delayed_requests += 1;
        }
        (
            inner.faults.latency_ms,
            inner.faults.jitter_ms,
            inner.faults.outage,
        )
    };
    if latency > 0 || jitter > 0 {
        let extra = if jitter > 0 {
            rand::rng().random_range(0..=jitter)
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(latency.saturating_add(extra))).await;
    }
    if outage {
        let mut inner = s.lock();
        *inner
            .stats
            .faults_injected
            .entry("OUTAGE".into())
            .or_default() += 1;
        return Some(Reply::error(
            503,
            "SERVER_UNAVAILABLE",
            "Service Unavailable: the org is in an emulated outage",
        ));
    }
    None
}

async fn versions(State(s): State<AppState>) -> Response {
    if let Some(r) = preflight(&s).await {
        return to_response(r, None);
    }
    to_response(Reply::json(200, route::versions()), None)
}

async fn token(State(s): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = preflight(&s).await {
        return to_response(r, None);
    }
    // Form body, plus URL parameters (some clients send the grant there).
    let mut form: std::collections::HashMap<String, String> =
        route::query_pairs(uri.query().unwrap_or_default())
            .into_iter()
            .collect();
    form.extend(route::query_pairs(&String::from_utf8_lossy(&body)));
    // Client authentication may come as HTTP Basic (RFC 6749 §2.3.1), as simple-salesforce
    // sends it for client credentials.
    if let Some((id, secret)) = basic_credentials(&headers) {
        form.entry("client_id".into()).or_insert(id);
        form.entry("client_secret".into()).or_insert(secret);
    }
    let reply = {
        let mut inner = s.lock();
        auth::token(&s, &mut inner, &form)
    };
    to_response(reply, None)
}

/// `POST /services/oauth2/revoke` (`token=` in the form or query): ends that session. Like
/// Salesforce, an unknown token is a 400 `unsupported_token_type`.
async fn revoke(State(s): State<AppState>, uri: Uri, body: Bytes) -> Response {
    if let Some(r) = preflight(&s).await {
        return to_response(r, None);
    }
    let mut form = route::query_pairs(uri.query().unwrap_or_default());
    form.extend(route::query_pairs(&String::from_utf8_lossy(&body)));
    let token = form
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let removed = s.lock().sessions.remove(&token).is_some();
    if removed {
        to_response(Reply::empty(200), None)
    } else {
        to_response(
            Reply::json(
                400,
                serde_json::json!({"error": "unsupported_token_type", "error_description": "this token type is not supported"}),
            ),
            None,
        )
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((
        route::percent_decode(id, true),
        route::percent_decode(secret, true),
    ))
}

/// `Sforce-Call-Options: client=<name>`, which Salesforce records as the change origin.
fn call_options_client(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("Sforce-Call-Options")?.to_str().ok()?;
    v.split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("client"))
        .map(|(_, name)| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

fn batch_size(headers: &HeaderMap) -> Option<usize> {
    let v = headers.get("Sforce-Query-Options")?.to_str().ok()?;
    v.split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("batchSize"))
        .and_then(|(_, n)| n.trim().parse().ok())
}

async fn data(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Held to the end of the call: counted, and with `max_concurrent_calls` set, queued here.
    let _call = s.enter_call().await;
    if let Some(r) = preflight(&s).await {
        return to_response(r, None);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return to_response(
                Reply::error(
                    e.status().as_u16(),
                    "JSON_PARSER_ERROR",
                    format!("Cannot read the request body: {e}"),
                ),
                None,
            );
        }
    };
    let rest = uri
        .path()
        .strip_prefix("/services/data/")
        .unwrap_or_default();
    let (version, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(version) = version
        .strip_prefix('v')
        .filter(|v| route::supported_version(v))
    else {
        return to_response(Reply::not_found(), None);
    };
    let path = format!("/{path}");
    let route = Route::of(&path);
    let upload = matches!(route, Route::IngestBatches(_)) && method == Method::PUT;
    if !upload && body.len() > MAX_BODY_BYTES {
        return to_response(
            Reply::error(
                413,
                "JSON_PARSER_ERROR",
                format!("The request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            None,
        );
    }
    let method_name = if method == Method::HEAD {
        "GET".to_owned()
    } else {
        method.as_str().to_owned()
    };
    let auth_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());

    // Parsed before the state lock is taken (a Composite body can be a megabyte), so calls
    // overlap here; a malformed body is still answered only after the checks below.
    let parsed_body: Result<Option<Value>, serde_json::Error> = if body.is_empty() || upload {
        Ok(None)
    } else {
        serde_json::from_slice::<Value>(&body).map(Some)
    };
    // An upload's CSV is read under the lock (the job keeps its rows), other bodies are done.
    let csv = if upload { body } else { Bytes::new() };

    let (page, limit_info) = {
        let mut inner = s.lock();
        let max = s.config.daily_api_limit;
        let limit_info = |used: u64| Some(format!("api-usage={used}/{max}"));
        if !auth::check_session(&s, &mut inner, auth_header) {
            *inner
                .stats
                .rejected
                .entry("INVALID_SESSION_ID".into())
                .or_default() += 1;
            return to_response(Reply::invalid_session(), None);
        }
        if inner.usage.used() >= max {
            *inner
                .stats
                .rejected
                .entry("REQUEST_LIMIT_EXCEEDED".into())
                .or_default() += 1;
            let used = inner.usage.used();
            return to_response(fault_reply("REQUEST_LIMIT_EXCEEDED"), limit_info(used));
        }
        inner.usage.record();
        inner.stats.api_calls_total += 1;
        *inner
            .stats
            .api_calls_by_route
            .entry(route.label(&method_name))
            .or_default() += 1;
        let used = inner.usage.used();
        if !matches!(method, Method::GET | Method::HEAD) {
            inner.dirty = true;
        }
        if let Some(client) = call_options_client(&headers) {
            *inner.stats.api_calls_by_client.entry(client).or_default() += 1;
        }

        if let Some(code) = pick_fault(&mut inner.faults) {
            *inner.stats.faults_injected.entry(code.clone()).or_default() += 1;
            return to_response(fault_reply(&code), limit_info(used));
        }
        let parsed_body = match parsed_body {
            Ok(v) => v,
            Err(e) => {
                return to_response(
                    Reply::error(
                        400,
                        "JSON_PARSER_ERROR",
                        format!("Unexpected character in the request body: {e}"),
                    ),
                    limit_info(used),
                );
            }
        };
        let client = call_options_client(&headers);
        if route.is_bulk() {
            let call = crate::bulk::Call {
                route: &route,
                method: &method_name,
                version,
                query: uri.query().unwrap_or_default(),
                body: parsed_body.as_ref(),
                csv: &csv,
                client: client.as_deref(),
            };
            let answer = crate::bulk::handle(&s, &mut inner, &call);
            drop(inner);
            drop(csv);
            match answer {
                crate::bulk::Answer::Reply(r) => return to_response(r, limit_info(used)),
                crate::bulk::Answer::Start(r, id) => {
                    crate::bulk::process::spawn(s.clone(), id);
                    return to_response(r, limit_info(used));
                }
                crate::bulk::Answer::StartQuery(r, id) => {
                    crate::bulk::query::spawn(s.clone(), id);
                    return to_response(r, limit_info(used));
                }
                crate::bulk::Answer::Csv(text) => {
                    return csv_response(text, &[], limit_info(used));
                }
                // Written below, once the lock guard is out of scope (it cannot be held across
                // an await).
                crate::bulk::Answer::Page(page) => (page, limit_info(used)),
            }
        } else {
            let ctx = Ctx {
                shared: &s,
                base: format!("/services/data/v{version}"),
            };
            let mut req = Req {
                method: method_name,
                path,
                query: uri.query().unwrap_or_default().to_owned(),
                body: parsed_body,
                batch_size: batch_size(&headers),
                spent: Vec::new(),
            };
            let reply = api::execute(&ctx, &mut inner, &route, &mut req);
            // Whatever the call committed (single, Collections, Composite, upsert, cascades)
            // becomes change events and sets off Flow rules; both are carried out after the
            // lock is released.
            let origin = crate::pubsub::cdc::change_origin(version, client.as_deref());
            after_commit(&s, inner, origin);
            // Freed outside the lock too.
            drop(req);
            tracing::debug!(method = %method, path = %uri.path(), status = reply.status, used, "data API call");
            if method == Method::HEAD {
                return to_response(
                    Reply {
                        body: None,
                        ..reply
                    },
                    limit_info(used),
                );
            }
            return to_response(reply, limit_info(used));
        }
    };
    // A Bulk query results page: rendered a chunk per turn of the lock.
    let next = page.next.clone();
    let (text, records) = crate::bulk::query::render(&s, page).await;
    let headers = [
        ("Sforce-NumberOfRecords", records.to_string()),
        ("Sforce-Locator", next),
    ];
    csv_response(text, &headers, limit_info)
}

/// Publishes what a call (or a chunk of a Bulk job) committed: its change events, and the
/// actions of the Flow rules they set off. Takes the guard: both happen after the lock is
/// released.
pub(crate) fn after_commit(s: &Shared, mut inner: MutexGuard<'_, Inner>, origin: String) {
    let changes = inner.store.take_changes();
    let fired = inner.flows.evaluate(&changes);
    drop(inner);
    if !changes.is_empty() {
        s.pubsub.publish_changes(changes, origin, &s.user_id);
    }
    if !fired.is_empty() {
        let failed = crate::flows::fire::execute(&s.pubsub, &s.outbound, &s.user_id, fired);
        if !failed.is_empty() {
            let mut inner = s.lock();
            for (rule, error) in failed {
                inner.flows.record_error(&rule, error);
            }
        }
    }
}

/// A Bulk result file or query results page, with its own headers.
fn csv_response(text: String, headers: &[(&str, String)], limit_info: Option<String>) -> Response {
    let mut builder = Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "text/csv");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    if let Some(info) = limit_info {
        builder = builder.header("Sforce-Limit-Info", info);
    }
    builder
        .body(axum::body::Body::from(text))
        .unwrap_or_else(|_| to_response(Reply::error(500, "UNKNOWN_EXCEPTION", "bad header"), None))
}

/// The injected error for this call, if any: deterministic `fail_next` first, then rates.
fn pick_fault(faults: &mut crate::state::Faults) -> Option<String> {
    if let Some((code, n)) = faults.fail_next.iter_mut().find(|(_, n)| **n > 0) {
        *n -= 1;
        let code = code.clone();
        faults.fail_next.retain(|_, n| *n > 0);
        return Some(code);
    }
    let mut rng = rand::rng();
    faults
        .error_rates
        .iter()
        .find(|(_, rate)| rng.random_bool(rate.clamp(0.0, 1.0)))
        .map(|(code, _)| code.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn batch_size_header_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            "Sforce-Query-Options",
            HeaderValue::from_static("batchSize=500"),
        );
        assert_eq!(batch_size(&h), Some(500));
        h.insert(
            "Sforce-Query-Options",
            HeaderValue::from_static("foo=1, batchSize = 300"),
        );
        assert_eq!(batch_size(&h), Some(300));
    }
}
