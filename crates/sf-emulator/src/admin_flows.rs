//! `/__admin/flows`: the org's Flow rules at run time.
//!
//! - `GET /__admin/flows`: `{"flows": [rule…]}`, each with `fired`, `errors`, `last_error`.
//! - `POST /__admin/flows` with one rule (`{"name", "sobject", "when": {"field", "equals"},
//!   "publish": {"event", "fields": {"EventField__c": "RecordField"}}}` or
//!   `"outbound_message": {"url", "fields": ["Id", "Status"]}`): 201 with the rule as stored
//!   (names in the schema's spelling), 200 when it replaced one of the same name; 400
//!   `INVALID_INPUT` naming what is wrong.
//! - `DELETE /__admin/flows/{name}`: 200, or 404 when there is no such rule; `DELETE
//!   /__admin/flows`: every rule.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::json;

use crate::flows::RuleInput;
use crate::reply::{Reply, to_response};
use crate::state::AppState;

fn bad_request(msg: impl Into<String>) -> Response {
    to_response(Reply::error(400, "INVALID_INPUT", msg), None)
}

/// `GET /__admin/flows`
pub async fn list(State(s): State<AppState>) -> Response {
    let body = s.lock().flows.to_json();
    to_response(Reply::json(200, body), None)
}

/// `POST /__admin/flows`
pub async fn add(State(s): State<AppState>, body: Bytes) -> Response {
    let rule = match RuleInput::parse(&body).and_then(|r| r.validate(&s.schema, &s.pubsub)) {
        Ok(r) => r,
        Err(e) => return bad_request(e.to_string()),
    };
    let stored = rule.to_json();
    let name = rule.name.clone();
    let replaced = {
        let mut inner = s.lock();
        let replaced = match inner.flows.upsert(rule) {
            Ok(r) => r,
            Err(e) => return bad_request(e.to_string()),
        };
        s.capture(&mut inner);
        replaced
    };
    tracing::info!(flow = %name, replaced, "flow rule set");
    to_response(Reply::json(if replaced { 200 } else { 201 }, stored), None)
}

/// `DELETE /__admin/flows/{name}`
pub async fn remove(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let removed = {
        let mut inner = s.lock();
        let removed = inner.flows.remove(&name);
        s.capture(&mut inner);
        removed
    };
    if !removed {
        return to_response(
            Reply::error(404, "NOT_FOUND", format!("no flow rule named {name:?}")),
            None,
        );
    }
    to_response(Reply::json(200, json!({"deleted": name})), None)
}

/// `DELETE /__admin/flows`
pub async fn clear(State(s): State<AppState>) -> Response {
    {
        let mut inner = s.lock();
        inner.flows.clear();
        s.capture(&mut inner);
    }
    to_response(Reply::json(200, json!({"flows": []})), None)
}
