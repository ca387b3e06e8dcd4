//! The outbox relay: publishes rows of the Postgres `outbox` table to RabbitMQ, at least once, in
//! order per aggregate, and marks them published only after the broker's confirm.
//!
//! ```text
//!  order-api ──tx: INSERT orders + outbox──► Postgres ──NOTIFY orderbridge_outbox──┐
//!                                               ▲                                  ▼
//!                        leader connection:     │                         ┌─────────────────┐
//!                        pg_try_advisory_lock,  └─SELECT … ORDER BY pos───│  outbox-relay   │
//!                        read batch, mark       ◄─UPDATE published_at─────│  (leader)       │
//!                        published + orders                              └──────┬──────────┘
//!                        sync_state pending→published                           │ basic.publish
//!                                                           mandatory, persistent│ confirms,
//!                                                                               ▼ pipelined
//!                                                                  {ns}.events (topic exchange)
//! ```
//!
//! The same process also runs the return path ([`status`]): a [`StatusApplier`] on every
//! instance consumes the sync worker's status reports and applies them to their orders.
//!
//! See `README.md` beside this crate for the design (leader lock, commit order, failure handling).

pub mod config;
mod faults;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod status;

pub use config::{Cli, RelayConfig, StatusConfig};
pub use metrics::Metrics;
pub use relay::{Relay, RelayError};
pub use status::StatusApplier;
