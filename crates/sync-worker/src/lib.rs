//! The sync worker: consumes `order.submitted` events from the Salesforce work queue and writes
//! them to Salesforce in batches (see README.md beside this crate).

pub mod config;
pub mod dlq_alias;
pub mod metrics;
pub mod pricebook;
pub mod targets;
pub mod worker;
pub mod writer;
