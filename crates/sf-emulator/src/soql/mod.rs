//! A useful SOQL subset: `SELECT` fields (including parent fields like `Account.Name`, and
//! `COUNT()`) `FROM` object `WHERE` conditions (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `LIKE`,
//! `IN`, `NOT IN`, `AND`, `OR`, `NOT`, parentheses) `ORDER BY` fields `ASC|DESC`
//! `NULLS FIRST|LAST`, `LIMIT`, `OFFSET`. String comparisons are case-insensitive, as in SOQL.
//!
//! Three stages, one file each: `parse` turns the text into a [`Query`] without looking at the
//! schema; `run` checks it against the schema ([`prepare`]) and evaluates it over the store;
//! `rows` keeps the matched records by id and renders them (REST JSON, or flat values for
//! Bulk API 2.0 CSV).

mod parse;
mod rows;
mod run;

#[cfg(test)]
mod tests;

pub use parse::{Query, parse};
pub use rows::Rows;
pub use run::{Outcome, Prepared, prepare, run};
