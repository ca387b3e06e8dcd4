//! The orderbridge domain: the order model and the versioned message schemas every binary shares.
//!
//! This crate depends on no web framework, database driver or broker client (axum, sqlx, lapin):
//! it is plain data and the rules about it, so every process agrees on them.
//!
//! ```text
//! NewOrderRequest ──NewOrder::parse──► NewOrder ──into_order──► Order ──OrderEvent──► Envelope (JSON)
//!   (as sent)          (all rules)       (valid)                 (stored, returned)      (outbox, broker)
//! ```

pub mod contracts;
pub mod country;
pub mod currency;
pub mod events;
pub mod fulfilment;
pub mod ids;
pub mod order;
pub mod status;
pub mod status_map;
pub mod tenant;
pub mod text;
pub mod validation;

pub use currency::Currency;
pub use events::{DecodeError, Envelope, OrderEvent, SubmittedOrder, SyncStatus};
pub use ids::{ClientId, EventId, OrderId};
pub use order::{
    Address, AddressInput, Customer, CustomerInput, LineInput, NewLine, NewOrder, NewOrderRequest,
    Order, OrderLine, OrderStatus, SyncError, SyncInfo, SyncState,
};
pub use status::{StatusEntry, StatusSource};
pub use tenant::ClientScope;
pub use validation::{FieldError, Violations};
