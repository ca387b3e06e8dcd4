//! Reconciliation: every accepted order in Postgres against the Salesforce records written for
//! it, by external id (see the crate README for the classes and their meaning).
//!
//! How it reads, and why in this order:
//! 1. Postgres's clock (`now()`): orders created after it are out of this run.
//! 2. Salesforce, both objects at once, paged by `nextRecordsUrl`: `SELECT Id, <ext> FROM <object>
//!    WHERE <ext> != null` (plus `CreatedDate >= since - 1 h` with a lower bound). Only ids are
//!    kept: external id → record ids.
//! 3. Postgres, in keyset pages of ids: each order in scope is compared with what Salesforce
//!    holds and the matched entries are taken out, so Postgres is streamed, never held.
//! 4. What is left of Salesforce names no order in scope: those naming an existing order (out of
//!    scope, or created during the run) are dropped, the rest are orphans.
//!
//! Salesforce is read before Postgres because a record is written only after its order was
//! committed: any record read in step 2 finds its order in step 3 or 4, so a busy pipeline
//! cannot produce false orphans. It can produce orders reported missing that were synced while
//! the run read Salesforce; their sync state (`pending`, `published`, `retrying`) says so.
//!
//! One submodule per stage, so each can be read (and tested) without the others:
//! - `run`: the entry points, driving the stages in the order above; the only reader of the
//!   worker's mapping;
//! - `orders`: the [`Scope`] and reading the orders from Postgres (steps 1, 3 and 4);
//! - `salesforce`: the SOQL reads (step 2), reduced to a [`SalesforceSide`];
//! - `keys`: the shapes of our external ids;
//! - `classify`: the comparison rules, free of I/O ([`Classifier`]);
//! - `report`: what a run returns ([`Report`] and its classes);
//! - `fix`: queueing resyncs for a report ([`fix()`]).
//!
//! Everything public is re-exported here: callers name `reconcile::X`, never the submodule.

mod classify;
mod fix;
mod keys;
mod orders;
mod report;
mod run;
mod salesforce;

use orderbridge_db::orders::ResyncError;

pub use classify::{Classes, Classifier, Expected, FieldKind, Fields};
pub use fix::{FixOptions, FixOutcome, fix};
pub use keys::{parse_item_key, parse_order_key};
pub use orders::{Scope, StoredOrder};
pub use report::{Counts, Duplicate, Mismatch, Missing, ObjectKind, Orphan, Problem, Report};
pub use run::{objects, reconcile, reconcile_target, reconcile_with_progress};
pub use salesforce::{Objects, SalesforceSide};

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconcile cannot use this mapping: {0}")]
    UnsupportedMapping(String),
    #[error("reading {object} records from Salesforce failed: {source}")]
    Salesforce {
        object: String,
        #[source]
        source: Box<orderbridge_salesforce::Error>,
    },
    #[error("reading orders from Postgres failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("queueing a resync failed: {0}")]
    Resync(#[from] ResyncError),
}
