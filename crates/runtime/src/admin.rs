//! The admin HTTP server every background process runs: liveness, readiness and Prometheus
//! metrics, on its own port so it never competes with (or is exposed like) a public API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the admin server asks of a process.
pub trait AdminState: Send + Sync + 'static {
    /// `/health/ready`: 200 while the process can do its work, else 503.
    fn ready(&self) -> bool;
    /// `/metrics`: the Prometheus text exposition.
    fn render(&self) -> String;
}

/// The admin routes: `/health/live`, `/health/ready`, `/metrics`.
pub fn router<S: AdminState>(state: Arc<S>) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready::<S>))
        .route("/metrics", get(render::<S>))
        .with_state(state)
}

async fn ready<S: AdminState>(State(s): State<Arc<S>>) -> impl IntoResponse {
    if s.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn render<S: AdminState>(State(s): State<Arc<S>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.render(),
    )
}

/// Binds the admin address; serve the returned listener with [`serve`]. Bind early so a taken
/// port fails start-up at once.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve<S: AdminState>(
    listener: tokio::net::TcpListener,
    state: Arc<S>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
