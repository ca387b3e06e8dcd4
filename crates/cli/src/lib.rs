//! `orderbridge`, the operator's command, as a library so tests and the benchmark call it
//! in-process (see README.md beside this crate).
//!
//! - [`reconcile::reconcile`]: compares Postgres orders with Salesforce records by external id
//!   and returns a [`reconcile::Report`] (missing, duplicated, mismatched, orphaned);
//! - [`reconcile::fix`]: queues resyncs for the report's missing and mismatched orders;
//! - [`backfill::backfill`]: queues every order in scope to be written to Salesforce again;
//! - [`dlq::run`]: lists, shows and replays the dead-letter queue;
//! - [`keys::run`]: creates, lists, revokes and rotates API keys;
//! - [`orders::run`]: `orders show`, where one order is and why;
//! - [`status::run`]: `status`, the whole system at a glance and its problems;
//! - [`broker::run`]: signing keys and least-privilege broker users;
//! - [`command`]: the command line ([`command::Cli`]) and what it runs.

pub mod backfill;
pub mod broker;
pub mod command;
pub mod dlq;
pub mod keys;
pub mod orders;
pub mod progress;
pub mod reconcile;
pub mod render;
pub mod status;
pub mod statuses;

pub use reconcile::{
    FixOptions, FixOutcome, ReconcileError, Report, Scope, fix, reconcile, reconcile_target,
    reconcile_with_progress,
};

/// `orderbridge`'s default `RUST_LOG`: its own steps at INFO, the libraries' warnings and errors
/// only. (A directive's target is a prefix: `orderbridge=info` would take in every
/// `orderbridge_*` library.)
pub const DEFAULT_LOG_FILTER: &str = "warn,orderbridge_cli=info";
