//! One Subscribe stream: the first FetchRequest names the topic and where to start; later ones
//! only add to `num_requested`. The server sends at most what was requested (never more than
//! [`MAX_NUM_REQUESTED`] outstanding), an empty FetchResponse carrying the latest replay id
//! when idle for the keepalive period, and fails the stream with Salesforce's statuses on bad
//! input.

use std::time::Duration;

use orderbridge_pubsub::proto::{ConsumerEvent, FetchRequest, FetchResponse, ReplayPreset};
use orderbridge_pubsub::{MAX_NUM_REQUESTED, REPLAY_ID_VALIDATION_FAILED, error_codes};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at};
use tonic::{Status, Streaming};

use super::status::{rpc_id, status_with_code};
use crate::pubsub::bus::replay_id;
use crate::state::AppState;

/// How long a new stream may wait before sending its first FetchRequest.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type Tx = mpsc::Sender<Result<FetchResponse, Status>>;

fn requested(n: i32) -> Result<i32, Status> {
    if (1..=MAX_NUM_REQUESTED).contains(&n) {
        Ok(n)
    } else {
        Err(Status::invalid_argument(format!(
            "num_requested must be between 1 and {MAX_NUM_REQUESTED}, not {n}"
        )))
    }
}

/// Runs the stream until the client goes, the server shuts down or the stream fails.
pub async fn run(state: AppState, inbound: Streaming<FetchRequest>, tx: Tx) {
    let hub = &state.pubsub;
    let _open = hub.stream_opened();
    if let Err(status) = serve(&state, inbound, &tx).await {
        let _ = tx.send(Err(status)).await;
    }
}

async fn serve(
    state: &AppState,
    mut inbound: Streaming<FetchRequest>,
    tx: &Tx,
) -> Result<(), Status> {
    let hub = &state.pubsub;
    let mut generation = hub.subscribe_generation();
    let mut published = hub.subscribe_published();
    let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
        Err(_) => {
            return Err(Status::invalid_argument(
                "no FetchRequest within 60 s of opening the stream",
            ));
        }
    };
    let topic = first.topic_name.clone();
    let preset = ReplayPreset::try_from(first.replay_preset)
        .map_err(|_| Status::invalid_argument("unknown replay_preset"))?;
    let mut pending = requested(first.num_requested)?;
    let mut cursor = {
        let mut st = hub.lock();
        if st.registry.topic(&topic).is_none() {
            return Err(Status::not_found(format!("topic {topic} does not exist")));
        }
        st.bus
            .start(&topic, preset, &first.replay_id)
            .map_err(|_| {
                status_with_code(
                    tonic::Code::InvalidArgument,
                    REPLAY_ID_VALIDATION_FAILED,
                    error_codes::REPLAY_ID_CORRUPTED,
                )
            })?
    };
    tracing::debug!(%topic, ?preset, "Pub/Sub subscription opened");
    let period = hub.keepalive.max(Duration::from_millis(10));
    let mut keepalive = interval_at(Instant::now() + period, period);
    let mut inbound_open = true;
    loop {
        if pending > 0 {
            let limit = usize::try_from(pending).unwrap_or(0);
            let events = hub.lock().bus.after(&topic, cursor, limit);
            if let Some(last) = events.last() {
                let delay = hub.lock().faults.delay_ms;
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                cursor = last.seq;
                pending -= i32::try_from(events.len()).unwrap_or(pending);
                let response = FetchResponse {
                    events: events
                        .iter()
                        .map(|e| ConsumerEvent {
                            event: Some(e.event.clone()),
                            replay_id: replay_id(e.seq),
                        })
                        .collect(),
                    latest_replay_id: replay_id(cursor),
                    rpc_id: rpc_id(),
                    pending_num_requested: pending,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
                keepalive.reset();
                continue;
            }
        }
        tokio::select! {
            _ = generation.changed() => {
                return Err(Status::unavailable("the stream was closed by the server; subscribe again"));
            }
            _ = tx.closed() => return Ok(()),
            msg = inbound.message(), if inbound_open => match msg {
                Ok(Some(req)) => {
                    if !req.topic_name.is_empty() && req.topic_name != topic {
                        return Err(Status::invalid_argument(format!(
                            "this stream subscribes to {topic}; open another stream for {}",
                            req.topic_name
                        )));
                    }
                    pending = pending.saturating_add(requested(req.num_requested)?).min(MAX_NUM_REQUESTED);
                }
                Ok(None) => inbound_open = false,
                Err(_) => return Ok(()),
            },
            _ = published.changed() => {}
            _ = keepalive.tick() => {
                // The position this stream has reached: the last delivered event while events
                // wait to be requested, otherwise the newest id issued (so storing it never
                // skips an event).
                let latest = {
                    let st = hub.lock();
                    if st.bus.has_after(&topic, cursor) { cursor } else { st.bus.current() }
                };
                let response = FetchResponse {
                    events: Vec::new(),
                    latest_replay_id: replay_id(latest),
                    rpc_id: rpc_id(),
                    pending_num_requested: pending,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
