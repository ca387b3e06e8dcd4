//! The in-memory org: records per object, validated against the [`Schema`] the way Salesforce
//! validates DML (field existence, types, required fields, restricted picklists, unique external
//! ids, lookups, external-id relationship references), with Salesforce's error codes.
//!
//! Everything here is synchronous and runs under the emulator's single state lock. A
//! Collections or Composite call with `allOrNone` rolls back through an undo journal
//! ([`Store::begin`] / [`Store::commit`] / [`Store::rollback`]); [`Store::snapshot`] copies the
//! data for the data file.
//!
//! A write goes through these stages, one file each:
//!
//! ```text
//! request body ─► fields (known, writable, typed values) ─► objects::derive (OrderItem product,
//!   TotalPrice) ─► validate (required, unique, picklist rules, objects::object_rules)
//!   ─► locks (injected UNABLE_TO_LOCK_ROW) ─► records (put/remove, index, journal)
//!   ─► objects (Order.TotalAmount roll-up, order lines deleted with their order)
//! ```
//!
//! `changes` keeps what Change Data Capture publishes (see there). `dml` runs those stages for create, update and delete, `upsert` picks create or update by
//! external id, `transaction` holds the savepoints, `render` the REST shape of a record.
//!
//! [`Schema`]: crate::schema::Schema

mod changes;
mod dml;
mod fields;
mod locks;
mod objects;
mod record;
mod records;
mod render;
mod transaction;
mod upsert;
mod validate;

#[cfg(test)]
mod tests;

pub use changes::Change;
pub use locks::{LockRule, Locks};
pub use records::{Record, Store, StoreData, sf_datetime, text_of};
pub use render::render;
pub use upsert::{UpsertError, Upserted};
