//! What the publisher (`relay`) and the status applier (`status`) both use to survive faults
//! and shutdown: the error types, the time limit on Postgres operations, the shutdown-aware
//! waits, and when a broker session counts as healthy.
//!
//! They live in a module of their own so that neither loop depends on the other.

use std::future::Future;
use std::time::Duration;

use orderbridge_broker::BrokerError;
use tokio::sync::watch;

/// How long a broker session must stay healthy before the reconnect backoff starts over.
pub(crate) const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Why the relay could not run at all (configuration). Runtime faults never end it: it waits and
/// reconnects.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A database operation failed or timed out.
#[derive(Debug, thiserror::Error)]
pub enum DbFault {
    #[error("database operation timed out")]
    Timeout,
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Puts `limit` on a Postgres operation: a dead connection can leave a query waiting forever,
/// which would wedge the loop that awaits it.
pub(crate) async fn db_op<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DbFault> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DbFault::Timeout),
    }
}

/// Resolves when shutdown is requested or its sender is gone.
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

pub(crate) async fn sleep_or_shutdown(d: Duration, rx: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = wait_shutdown(rx) => {}
    }
}
