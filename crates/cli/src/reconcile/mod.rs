//! Reconciliation: every accepted order in Postgres against the Salesforce records written for
//! it, by external id (see the crate README for the classes and their meaning).
//!
//! How it reads, and why in this order:
//! 1. Postgres's clock (`now()`): orders created after it are out of this run.
//! 2. Postgres splits the orders into [`Paging::parallel`] ranges of ids of about equal size
//!    (the first open below, the last above); the ranges are merged all at once, each by a
//!    task of its own (the comparison is CPU: so the ranges use every core).
//! 3. Salesforce, both objects at once: `SELECT Id, <ext>, <compared fields> FROM <object> WHERE
//!    <ext> != null AND <ext> >= '<from>' AND <ext> < '<to>' ORDER BY <ext>` (plus
//!    `CreatedDate >= since - 1 h` with a lower bound), followed by `nextRecordsUrl` a few pages
//!    ahead of the comparison. With [`Paging::bulk`] instead: one Bulk API 2.0 query job per
//!    object for the whole scope (no range, no `ORDER BY`: Salesforce keeps no order in a
//!    job's results), its result pages sorted on local disk into each range's order, all of it
//!    before step 4; the ranges then take their records from the sorted files.
//! 4. Postgres, in keyset pages of ids. An external id sorts as the order id it names, so for
//!    each page the records up to its last id are taken from both streams, each order of the
//!    page is compared with its records, and the records left over name no order compared.
//! 5. Leftovers, after each page and for the records after the range's last order: those
//!    naming an existing order (out of scope, or created during the run) are dropped, the rest
//!    are orphans.
//!
//! The two sides are merged like two sorted files, so a range holds a page of each, whatever
//! the number of orders: memory is bounded by the page sizes (and the problems reported), not by
//! the org. A Salesforce answer out of external-id order stops the run with an error.
//!
//! Salesforce's queries run before Postgres is read because a record is written only after its
//! order was committed: any record read finds its order in step 4 or 5 (the existence check
//! runs after the record was read), so a busy pipeline cannot produce false orphans. It can
//! produce orders reported missing that were synced while the run read Salesforce; their sync
//! state (`pending`, `published`, `retrying`) says so.
//!
//! One submodule per stage, so each can be read (and tested) without the others:
//! - `run`: the entry points, driving the stages in the order above; the only reader of the
//!   worker's mapping;
//! - `orders`: the [`Scope`], the ranges and reading the orders from Postgres (steps 1, 2, 4, 5);
//! - `salesforce`: the SOQL reads (step 3), sorted streams taken into a [`SalesforceSide`];
//! - `bulk`: step 3 through Bulk query jobs, and the streams over their sorted results;
//! - `spill`: the external sort behind `bulk` (memory bounded, anonymous temporary files);
//! - `keys`: the shapes of our external ids;
//! - `classify`: the comparison rules, free of I/O ([`Classifier`]);
//! - `report`: what a run returns ([`Report`] and its classes);
//! - `fix`: queueing resyncs for a report ([`fix()`]).
//!
//! Everything public is re-exported here: callers name `reconcile::X`, never the submodule.

mod bulk;
mod classify;
mod fix;
mod keys;
mod orders;
mod report;
mod run;
mod salesforce;
mod spill;

use orderbridge_db::orders::ResyncError;

pub use classify::{Classes, Classifier, Expected, FieldKind, Fields};
pub use fix::{FixOptions, FixOutcome, fix};
pub use keys::{parse_item_key, parse_order_key};
pub use orders::{DEFAULT_PAGE_SIZE, DEFAULT_PARALLEL, Paging, Scope, StoredOrder};
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
    /// Sorting a Bulk query's results on local disk (`--bulk`) failed: the temporary
    /// directory (`TMPDIR`) is full or unwritable.
    #[error("sorting Salesforce records in a temporary file failed: {0}")]
    Spill(std::io::Error),
    /// A range's task was cancelled (the runtime is shutting down).
    #[error("the comparison stopped before it finished: {0}")]
    Interrupted(String),
}
