//! Serving the router over HTTP/1 on a TCP listener, with the limits `axum::serve` does not
//! have: a connection cap, a timeout for request heads and one for idle keep-alive
//! connections, and a shutdown that waits only for requests in progress.
//!
//! ```text
//! accept ─► slot free? ─yes─► connection task: hyper http1 ─► app (Router)
//!              │ no                 ├─ head not complete within ORDER_API_HEADER_TIMEOUT → close
//!              ▼                    ├─ idle longer than ORDER_API_IDLE_TIMEOUT → close
//!   close the connection quiet      ├─ picked by the cap while quiet → close
//!   for longest (none: wait)        └─ shutdown: quiet → close now; busy → finish, then close
//! ```
//!
//! `activity.rs` knows what a connection is doing, `registry.rs` which connections are open,
//! `connection.rs` runs one of them.

mod activity;
mod connection;
mod registry;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use connection::{HYPER_MAX_HEAD_BYTES, HYPER_MAX_HEADERS};

use crate::ApiConfig;
use activity::{Activity, Timeouts};
use registry::Registry;

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection had ended when the server returned.
    Drained,
    /// The shutdown grace ran out with this many connections still serving a request.
    GraceExpired { open: usize },
}

/// How often an accept waiting for a slot looks again for a connection to evict: one picked
/// earlier may have turned busy before it could close.
const EVICTION_RETRY: Duration = Duration::from_millis(50);
/// Pause after an accept error that is not about one connection (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, closes idle
/// connections and those still sending a head at once, and gives requests in progress
/// `config.shutdown_grace` to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ApiConfig,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let max = config.max_connections.get();
    let slots = Arc::new(Semaphore::new(max as usize));
    let registry = Arc::new(Registry::default());
    let builder = Arc::new(connection::builder());
    let timeouts = Timeouts {
        header: config.header_timeout,
        idle: config.idle_timeout,
    };
    let (stopping, stopping_rx) = watch::channel(false);

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let next = next_connection(&listener, &slots, &registry);
        let (stream, peer, slot) = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            next = next => next,
        };
        let activity = Arc::new(Activity::new());
        let registered = registry.register(activity.clone());
        let run = connection::run(
            builder.clone(),
            stream,
            peer,
            app.clone(),
            activity,
            timeouts,
            stopping_rx.clone(),
        );
        tokio::spawn(async move {
            run.await;
            drop(registered);
            drop(slot);
        });
    }

    drop(listener);
    let _ = stopping.send(true);
    // Every slot back means every connection has ended.
    match tokio::time::timeout(config.shutdown_grace, slots.acquire_many(max)).await {
        Ok(_) => Stopped::Drained,
        Err(_) => Stopped::GraceExpired {
            open: (max as usize).saturating_sub(slots.available_permits()),
        },
    }
}

/// The next connection and its slot. At the cap, the connection quiet for longest is asked to
/// make room; while every one is serving a request, the new one waits (and those behind it
/// wait in the listen backlog).
async fn next_connection(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    registry: &Registry,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let (stream, peer) = accept(listener).await;
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return (stream, peer, slot);
    }
    loop {
        registry.evict_longest_quiet();
        if let Ok(Ok(slot)) =
            tokio::time::timeout(EVICTION_RETRY, slots.clone().acquire_owned()).await
        {
            return (stream, peer, slot);
        }
    }
}

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            // The client gave up before we took it: nothing to do.
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept connections");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}
