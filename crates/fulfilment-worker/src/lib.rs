//! The fulfilment worker: consumes the fulfilment nudges (`fulfilment.requested`,
//! `fulfilment.result`) from `{ns}.fulfilment`, calls the fulfilment system for each queued
//! request (a signed webhook), and writes each decided result back to the Salesforce order (see
//! README.md beside this crate). The request row in Postgres is the truth; a message only says
//! "look at request X".
//!
//! - `config`: command line and environment;
//! - `message`: reading a delivery (signature, then envelope);
//! - `call`: the signed HTTP call and what its answer means;
//! - `writeback`: the Salesforce PATCH;
//! - `worker`: consuming, handling (the request row decides, the call under its claim), settling;
//! - `sweeper`: requests stuck open (message lost, callback never came) moved on;
//! - `metrics`: `/metrics`.

pub mod call;
pub mod config;
pub mod message;
pub mod metrics;
pub mod sweeper;
pub mod worker;
pub mod writeback;
