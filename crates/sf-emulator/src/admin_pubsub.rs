//! `/__admin/pubsub`: statistics for tests, faults, and schema changes at run time.
//!
//! - `GET /__admin/pubsub`: open streams, events retained and published per topic, topics with
//!   their current schema ids, faults.
//! - `POST /__admin/pubsub/faults` `{"drop_streams": true, "delay_ms": 500, "reject_auth": true,
//!   "clear": true}` (all optional); `DELETE` clears.
//! - `POST /__admin/pubsub/schema` `{"topic": "/data/OrderChangeEvent", "field": "Extra__c",
//!   "type": "string"}`: the topic gets a new schema (and id) with that nullable field; events
//!   already published keep the old id, which GetSchema still serves.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pubsub::PubSubFaults;
use crate::pubsub::bus::replay_id;
use crate::pubsub::registry::AddFieldError;
use crate::reply::{Reply, to_response};
use crate::schema::FieldType;
use crate::state::AppState;

fn bad_request(msg: impl Into<String>) -> Response {
    to_response(Reply::error(400, "INVALID_INPUT", msg), None)
}

/// `GET /__admin/pubsub`
pub async fn stats(State(s): State<AppState>) -> Response {
    let hub = &s.pubsub;
    let open = hub.open_streams();
    let mut st = hub.lock();
    let counts = st.bus.counts();
    let mut topics = serde_json::Map::new();
    let names: Vec<String> = st.registry.topic_names().cloned().collect();
    for name in names {
        let schema_id = st
            .registry
            .topic(&name)
            .and_then(|(_, s)| s.map(|s| s.id.clone()));
        let (retained, published) = counts.get(&name).copied().unwrap_or((0, 0));
        topics.insert(
            name,
            json!({"schema_id": schema_id, "events_retained": retained, "events_published": published}),
        );
    }
    let body = json!({
        "open_streams": open,
        "latest_replay_id": replay_id(st.bus.current()),
        "topics": topics,
        "faults": st.faults,
        "cdc_objects": hub.captured,
    });
    to_response(Reply::json(200, body), None)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsPatch {
    /// Ends every open Subscribe stream now (UNAVAILABLE); new ones work.
    drop_streams: Option<bool>,
    delay_ms: Option<u64>,
    reject_auth: Option<bool>,
    clear: Option<bool>,
}

fn current(s: &AppState) -> Response {
    let faults = s.pubsub.lock().faults.clone();
    to_response(Reply::json(200, json!(faults)), None)
}

/// `POST /__admin/pubsub/faults`
pub async fn set_faults(State(s): State<AppState>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid faults body: {e}")),
    };
    {
        let mut st = s.pubsub.lock();
        if patch.clear == Some(true) {
            st.faults = PubSubFaults::default();
        }
        if let Some(v) = patch.delay_ms {
            // An hour is already far past any useful test delay.
            st.faults.delay_ms = v.min(3_600_000);
        }
        if let Some(v) = patch.reject_auth {
            st.faults.reject_auth = v;
        }
    }
    if patch.drop_streams == Some(true) {
        s.pubsub.drop_streams();
    }
    tracing::info!("Pub/Sub faults updated");
    current(&s)
}

/// `DELETE /__admin/pubsub/faults`
pub async fn clear_faults(State(s): State<AppState>) -> Response {
    s.pubsub.lock().faults = PubSubFaults::default();
    current(&s)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddField {
    topic: String,
    field: String,
    #[serde(rename = "type", default = "text")]
    ty: Value,
}

fn text() -> Value {
    json!("string")
}

/// `POST /__admin/pubsub/schema`
pub async fn add_field(State(s): State<AppState>, body: Bytes) -> Response {
    let req: AddField = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("invalid schema body: {e}")),
    };
    let ty: FieldType = match serde_json::from_value(req.ty) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("invalid field type: {e}")),
    };
    let added = s
        .pubsub
        .lock()
        .registry
        .add_field(&req.topic, &req.field, ty);
    match added {
        Ok((old, new)) => to_response(
            Reply::json(
                200,
                json!({"topic": req.topic, "field": req.field, "previous_schema_id": old, "schema_id": new}),
            ),
            None,
        ),
        Err(e @ AddFieldError::UnknownTopic(_)) => {
            to_response(Reply::error(404, "NOT_FOUND", e.to_string()), None)
        }
        Err(e) => bad_request(e.to_string()),
    }
}
