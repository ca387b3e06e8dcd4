//! Several targets: each order of a batch goes to the [`Writer`] of the target its routing
//! rules choose (`orderbridge_mapping::Targets`), the targets' parts of the batch are written
//! at the same time, and the results come back in the batch's order. An order no target takes
//! fails permanently (`NO_TARGET`): it is dead-lettered with the reason, never written to a
//! target nobody chose.
//!
//! With one target (a plain mapping file) the batch goes straight to its writer.

use std::sync::Arc;

use futures_util::future::join_all;
use orderbridge_domain::SubmittedOrder;
use orderbridge_mapping::Targets;
use orderbridge_salesforce::Client;

use super::{CallObserver, Failure, OrderResult, Writer};

/// Writes each order with its target's writer; cheap to clone.
#[derive(Clone)]
pub struct Router {
    targets: Arc<Targets>,
    /// One per target, in the order of `targets.targets()`.
    writers: Vec<Writer>,
    observer: Arc<dyn CallObserver>,
}

/// Which way a batch is written.
#[derive(Clone, Copy)]
enum Path {
    Composite,
    Bulk,
}

impl Router {
    /// `writers` in the order of `targets.targets()`, each with that target's mapping and client.
    ///
    /// # Panics
    /// If the counts differ (a programming error: built by [`crate::targets::router`]).
    pub fn new(
        targets: Arc<Targets>,
        writers: Vec<Writer>,
        observer: Arc<dyn CallObserver>,
    ) -> Self {
        assert_eq!(
            targets.targets().len(),
            writers.len(),
            "one writer per target"
        );
        Self {
            targets,
            writers,
            observer,
        }
    }

    /// The targets' names with their writers.
    pub fn writers(&self) -> impl Iterator<Item = (&str, &Writer)> {
        self.targets
            .targets()
            .iter()
            .map(|t| t.name.as_str())
            .zip(&self.writers)
    }

    /// Every target's Salesforce client, with its target's name.
    pub fn clients(&self) -> impl Iterator<Item = (&str, &Client)> {
        self.writers().map(|(name, w)| (name, w.client()))
    }

    /// Writes `orders` with Composite calls; one result per order, in order.
    pub async fn write(&self, orders: &[&SubmittedOrder]) -> Vec<OrderResult> {
        self.dispatch(orders, Path::Composite).await
    }

    /// Writes `orders` with Bulk API 2.0 jobs (each target's part its own jobs).
    pub async fn write_bulk(&self, orders: &[&SubmittedOrder]) -> Vec<OrderResult> {
        self.dispatch(orders, Path::Bulk).await
    }

    async fn dispatch(&self, orders: &[&SubmittedOrder], path: Path) -> Vec<OrderResult> {
        let mut results: Vec<Option<OrderResult>> = vec![None; orders.len()];
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.writers.len()];
        if self.writers.len() == 1 {
            groups[0] = (0..orders.len()).collect();
        } else {
            for (i, order) in orders.iter().enumerate() {
                let routed = self
                    .targets
                    .route_index(&order.data())
                    .map_err(|e| Failure {
                        retryable: false,
                        code: "NO_TARGET".into(),
                        message: e.to_string(),
                    });
                match routed {
                    Ok(t) => groups[t].push(i),
                    Err(f) => results[i] = Some(OrderResult::Failed(f)),
                }
            }
        }

        let parts = groups
            .into_iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
            .map(|(t, members)| async move {
                let part: Vec<&SubmittedOrder> = members.iter().map(|i| orders[*i]).collect();
                let written = match path {
                    Path::Composite => self.writers[t].write(&part).await,
                    Path::Bulk => self.writers[t].write_bulk(&part).await,
                };
                (t, members, written)
            });
        for (t, members, written) in join_all(parts).await {
            self.observer
                .target_results(&self.targets.targets()[t].name, &written);
            for (i, r) in members.into_iter().zip(written) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    OrderResult::Failed(Failure {
                        retryable: true,
                        code: "NO_RESULT".into(),
                        message: "the target's writer returned no result for this order".into(),
                    })
                })
            })
            .collect()
    }
}

impl From<Writer> for Router {
    /// One target, [`orderbridge_mapping::DEFAULT_TARGET`], taking every order.
    fn from(writer: Writer) -> Self {
        let targets = Arc::new(Targets::single(writer.mapping_arc()));
        let observer = writer.observer();
        Self::new(targets, vec![writer], observer)
    }
}
