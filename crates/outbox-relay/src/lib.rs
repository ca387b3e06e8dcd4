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
//! See `README.md` beside this crate for the design (leader lock, commit order, failure handling).

pub mod config;
pub mod metrics;
pub mod outbox;
pub mod relay;

pub use config::{Cli, RelayConfig};
pub use metrics::Metrics;
pub use relay::{Relay, RelayError};
