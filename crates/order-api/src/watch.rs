//! Waiting for an order to change: ONE `LISTEN order_versions` per process, fanned out to the
//! requests waiting on an order (long-polls, event streams).
//!
//! ```text
//! any writer ─UPDATE orders─► trigger orders_notify_version ─pg_notify('order_versions', 'id:version')
//!                                                                     │ (on commit)
//!   listener task (one connection) ◄─────────────────────────────────┘
//!        │ looks the order up in the map of waited-on orders
//!        ▼
//!   per-order watch channel ──► every waiter of that order wakes and re-reads it from Postgres
//! ```
//!
//! A waiter costs nothing while nothing happens to its order: no query per client per tick.
//! Entries live only while someone waits ([`Subscription`] removes the last one). When the
//! listener's connection was lost, notifications sent meanwhile are gone, so every waiter is woken
//! to re-read: a spurious wake-up costs one read, a missed one a stale client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;

/// The channel the `orders_notify_version` trigger notifies.
pub const CHANNEL: &str = "order_versions";
/// Pause before listening again after the listener failed, doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The orders someone waits on, each with a channel whose value changes when the order may
/// have changed. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct OrderWatch {
    waited: Arc<Mutex<HashMap<Uuid, watch::Sender<u64>>>>,
}

/// A waiter's registration for one order; dropping it unregisters (and forgets the order when
/// it was the last waiter).
pub struct Subscription {
    watch: OrderWatch,
    order_id: Uuid,
    rx: watch::Receiver<u64>,
}

impl OrderWatch {
    fn waited(&self) -> MutexGuard<'_, HashMap<Uuid, watch::Sender<u64>>> {
        // Every critical section is a single map operation: a poisoned map is consistent.
        self.waited.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter for `order_id`. Subscribe BEFORE reading the order: a change committed
    /// after the subscription wakes [`Subscription::changed`], so none falls between the read
    /// and the wait.
    pub fn subscribe(&self, order_id: Uuid) -> Subscription {
        let rx = self
            .waited()
            .entry(order_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            watch: self.clone(),
            order_id,
            rx,
        }
    }

    /// Wakes the waiters of the order a notification payload (`<uuid>:<version>`) names.
    /// Returns whether anyone waited. Malformed payloads are ignored (nothing else may send
    /// on the channel, but a stray `NOTIFY` must not stop the listener).
    pub fn notified(&self, payload: &str) -> bool {
        let Some(id) = payload
            .split_once(':')
            .and_then(|(id, _)| Uuid::parse_str(id).ok())
        else {
            tracing::debug!(payload, "ignoring a malformed order_versions notification");
            return false;
        };
        match self.waited().get(&id) {
            Some(tx) => {
                tx.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter (notifications may have been lost): each re-reads its order.
    pub fn wake_all(&self) {
        for tx in self.waited().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How many orders are waited on (for tests and metrics).
    pub fn waited_orders(&self) -> usize {
        self.waited().len()
    }
}

impl Subscription {
    /// Resolves when the order may have changed since the subscription (or the last call):
    /// re-read it. Never resolves if the process stops listening, so callers bound the wait.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender lives in the map while this receiver exists: unreachable, but a
            // pending future is the right answer if it ever were.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waited = self.watch.waited();
        // Under the lock `subscribe` takes too, so no new waiter can slip in between the count
        // and the removal. Our own receiver still counts.
        if waited
            .get(&self.order_id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            waited.remove(&self.order_id);
        }
    }
}

/// Listens on [`CHANNEL`] and wakes waiters until the pool is closed. One per process.
pub fn spawn_listener(pool: PgPool, watch: OrderWatch) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            match listen(&pool).await {
                Ok(mut listener) => {
                    retry = FIRST_RETRY;
                    // Whatever happened while we were not listening is unknown.
                    watch.wake_all();
                    tracing::debug!("listening for order version changes");
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => {
                                watch.notified(n.payload());
                            }
                            // The connection was lost and is listening again (sqlx reconnects
                            // eagerly): what was sent in between is lost.
                            Ok(None) => {
                                tracing::warn!(
                                    "order version listener reconnected; waking every waiter"
                                );
                                watch.wake_all();
                            }
                            Err(sqlx::Error::PoolClosed) => return,
                            Err(e) => {
                                tracing::warn!(error = %e, "order version listener failed");
                                break;
                            }
                        }
                    }
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => tracing::warn!(error = %e, "cannot listen for order version changes"),
            }
            // Waiters fall back to their own time bounds until the listener is back.
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    })
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_and_the_last_one_out_removes_the_entry() {
        let w = OrderWatch::default();
        let id = Uuid::now_v7();
        let mut a = w.subscribe(id);
        let b = w.subscribe(id);
        assert_eq!(w.waited_orders(), 1);
        assert!(w.notified(&format!("{id}:7")));
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("woken");
        drop(b);
        assert_eq!(w.waited_orders(), 1, "a still waits");
        drop(a);
        assert_eq!(w.waited_orders(), 0);
        assert!(!w.notified(&format!("{id}:8")), "nobody waits any more");
    }

    #[tokio::test]
    async fn wake_all_wakes_everyone_and_garbage_is_ignored() {
        let w = OrderWatch::default();
        let mut a = w.subscribe(Uuid::now_v7());
        let mut b = w.subscribe(Uuid::now_v7());
        assert!(!w.notified("not-a-uuid:1"));
        assert!(!w.notified(""));
        w.wake_all();
        tokio::time::timeout(Duration::from_secs(1), async {
            a.changed().await;
            b.changed().await;
        })
        .await
        .expect("both woken");
    }
}
