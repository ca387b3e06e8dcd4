//! `/__admin/outbound-messages`: what the outbound-message queue is doing, so tests and demos can
//! wait on deliveries instead of sleeping.
//!
//! - `GET`: `pending` (not yet acknowledged, in flight included), `in_flight`, `delivered`
//!   (notifications acknowledged), `envelopes_delivered`, `attempts` (POSTs made), `failed_total`,
//!   `failed` (given up: id, rule, url, record_id, attempts, last_error), `endpoints` (per URL:
//!   attempts, delivered, failures, last_status, last_error) and `queue` (the first 100 waiting).
//! - `DELETE`: forgets the queue, the failed list and the counters.

use axum::extract::State;
use axum::response::Response;

use crate::reply::{Reply, to_response};
use crate::state::AppState;

/// `GET /__admin/outbound-messages`
pub async fn status(State(s): State<AppState>) -> Response {
    to_response(Reply::json(200, s.outbound.status()), None)
}

/// `DELETE /__admin/outbound-messages`
pub async fn clear(State(s): State<AppState>) -> Response {
    s.outbound.clear();
    to_response(Reply::json(200, s.outbound.status()), None)
}
