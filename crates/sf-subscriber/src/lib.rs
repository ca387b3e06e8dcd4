//! The Salesforce Pub/Sub subscriber: what Salesforce decides about an order (its `Status`,
//! reported by Change Data Capture on `/data/OrderChangeEvent`) reaches the order in Postgres.
//!
//! ```text
//!  Pub/Sub API (gRPC, eventbus.v1)        sf-subscriber, one stream per topic
//!  Subscribe(FetchRequest ≤100) ───────► stream: FetchResponse{events, latest_replay_id}
//!        ▲                                  │ schemas: GetSchema(id), cached by id
//!        │ top up after the commit          │ decode: Avro + ChangeEventHeader + bitmaps
//!        │                                  │ effects: echo? status? gap → REST re-read
//!        │                                  │ provision: OrderProvisionRequested__e, or a Status
//!        └──────────────────────────────────┤
//!                          ONE transaction: pubsub_inbox (dedupe) → status applied
//!                          (orderbridge_db::status), fulfilment requested
//!                          (orderbridge_db::fulfilment: row + outbox event) /
//!                          pubsub_dead_letters → pubsub_cursors
//! ```
//!
//! Modules: [`config`] (settings), [`stream`] (a topic's subscription and its failures),
//! [`batch`] (one response, one transaction), [`schemas`] (GetSchema cache), [`decode`] (Avro),
//! [`effects`] (what an event asks for), [`provision`] (fulfilment triggers), [`store`] (the tables), [`grpc`]
//! (channel, TLS, metadata, error classes), [`metrics`], [`admin`]. See README.md beside this crate.

pub mod admin;
pub mod batch;
pub mod config;
pub mod decode;
pub mod effects;
pub mod grpc;
pub mod metrics;
pub mod provision;
pub mod schemas;
pub mod store;
pub mod stream;

pub use config::Cli;
