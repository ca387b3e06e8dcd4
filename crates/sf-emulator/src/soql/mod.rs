//! A useful SOQL subset: `SELECT` fields (including parent fields like `Account.Name`, and
//! `COUNT()`) `FROM` object `WHERE` conditions (`=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `LIKE`,
//! `IN`, `NOT IN`, `AND`, `OR`, `NOT`, parentheses) `ORDER BY` fields `ASC|DESC`
//! `NULLS FIRST|LAST`, `LIMIT`, `OFFSET`. String comparisons are case-insensitive, as in SOQL.
//!
//! Two stages, one file each: `parse` turns the text into a [`Query`] without looking at the
//! schema; `run` checks it against the schema and evaluates it over the store.

mod parse;
mod run;

#[cfg(test)]
mod tests;

pub use parse::{Query, parse};
pub use run::{Outcome, Rows, run};
