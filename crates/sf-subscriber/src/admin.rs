//! The admin server: the shared routes (`/health/live`, `/health/ready`, `/metrics`) plus
//! `/health/sf-events`, each topic's position and health as JSON.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    orderbridge_runtime::admin::router(metrics.clone()).merge(
        Router::new()
            .route("/health/sf-events", get(sf_events))
            .with_state(metrics),
    )
}

/// `{"ready": bool, "topics": {"/data/OrderChangeEvent": {subscribed, replay_id, last_event_at,
/// last_commit_at, lag_seconds, last_error, last_error_at}}}`.
async fn sf_events(State(m): State<Arc<Metrics>>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "ready": m.ready(), "topics": m.topics() }))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}
