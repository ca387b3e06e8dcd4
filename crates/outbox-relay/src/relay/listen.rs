//! The relay's LISTEN on the outbox channel, which wakes the publisher as soon as a row is
//! committed instead of at the next poll.
//!
//! It is a task of its own on a pool connection, apart from the leader connection, so either
//! can be lost and re-established without disturbing the other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use orderbridge_broker::Backoff;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use crate::faults::db_op;
use crate::metrics::Metrics;

/// Keeps a LISTEN open and turns notifications into wake-ups. A lost connection is replaced
/// (with backoff), and the publisher is woken once on every (re)connect, since notifications
/// sent while the connection was down are gone.
pub(crate) async fn listen_loop(
    pool: PgPool,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    limit: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let connect = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(orderbridge_db::outbox::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match db_op(limit, connect).await {
            Ok(mut listener) => {
                metrics.listener_up.store(true, Ordering::Relaxed);
                backoff.reset();
                wake.notify_one();
                tracing::debug!("listening for outbox notifications");
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => wake.notify_one(),
                        Ok(None) => {
                            tracing::warn!("LISTEN connection lost");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection failed");
                            break;
                        }
                    }
                }
                metrics.listener_up.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.listener_up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications");
            }
        }
        tokio::time::sleep(backoff.fail()).await;
    }
}
