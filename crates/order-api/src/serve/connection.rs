//! One client connection: HTTP/1 by hyper, with the head and idle timeouts, eviction by the
//! connection cap, and shutdown that waits only for a request in progress.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::{Activity, Check, Observed, ObservedIo, Timeouts};
use crate::limits;

/// The largest request head hyper reads; a larger one gets hyper's own bare 431 (the
/// application never sees it). Well above [`limits::MAX_HEADER_BYTES`] and
/// [`limits::MAX_URI_BYTES`], so every head between the two gets the application's problem
/// document. It also caps hyper's read buffer, and so the memory a connection can make the
/// server hold.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields hyper parses; above [`limits::MAX_HEADERS`] for the same reason.
pub const HYPER_MAX_HEADERS: usize = 2 * limits::MAX_HEADERS;

/// The HTTP/1 settings every connection shares.
pub(super) fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // The head timeout is ours (see `activity`): hyper's would also end keep-alive
        // connections at the header timeout while they wait for their next request.
        .header_read_timeout(None)
        .max_buf_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS);
    builder
}

/// Serves one connection until it ends, times out, is evicted, or the server shuts down.
pub(super) async fn run(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(ObservedIo::new(stream, activity.clone()));
    let service = Observed {
        app,
        activity: activity.clone(),
        peer,
    };
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut watchdog = pin!(tokio::time::sleep(timeouts.header));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Clients hanging up mid-request are routine, not the server's problem.
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = watchdog.as_mut() => match activity.check(timeouts, Instant::now()) {
                Check::Expired(reason) => {
                    tracing::debug!(%peer, reason, "closing connection");
                    return;
                }
                Check::Until(at) => watchdog.as_mut().reset(at),
            },
            () = activity.changed() => {
                let now = Instant::now();
                let at = match activity.check(timeouts, now) {
                    Check::Until(at) => at,
                    Check::Expired(_) => now,
                };
                watchdog.as_mut().reset(at);
            }
            () = activity.evicted() => {
                if activity.is_busy() {
                    activity.eviction_declined();
                } else {
                    tracing::debug!(%peer, "closing connection: the connection cap is reached");
                    return;
                }
            }
            // (Inside a block: the `Ref` it returns must not live across the awaits below.)
            () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                // Idle, or a head not complete yet (hyper's graceful shutdown would wait for
                // that one): close now. A request in progress finishes, then hyper closes.
                if activity.is_busy() {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.as_mut().await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                return;
            }
        }
    }
}
