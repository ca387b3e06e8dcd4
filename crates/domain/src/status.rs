//! Business status history: the statuses an order has had, as the API returns them. Salesforce
//! owns the status after creation (see [`crate::order::OrderStatus`]); its values reach the API
//! through the status map ([`crate::status_map::StatusMap`]: `Activated` → `activated`, other
//! names lower-cased, spaces → `_`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One business status an order had: which, since when, and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub status: String,
    /// When the status was decided where it was decided (the order's creation, or the
    /// Salesforce change's commit time), not when orderbridge learned of it.
    pub at: DateTime<Utc>,
    /// Who set it: one of [`StatusSource`]'s names.
    pub source: String,
}

/// The `source` names of [`StatusEntry`].
pub struct StatusSource;

impl StatusSource {
    /// Set by orderbridge when it accepted the order.
    pub const API: &'static str = "api";
    /// Mirrored from Salesforce (sf-subscriber, from Change Data Capture).
    pub const SALESFORCE: &'static str = "salesforce";
    /// Read from Salesforce by `orderbridge reconcile statuses` to close a gap in the events.
    pub const RECONCILE: &'static str = "reconcile";
    /// Set by orderbridge's fulfilment loop (`provisioning`, `provisioned`,
    /// `provisioning_failed`; see [`crate::fulfilment`]).
    pub const FULFILMENT: &'static str = "fulfilment";
    /// Mirrored from a Salesforce outbound message (the SOAP webhook on order-api).
    pub const OUTBOUND_MESSAGE: &'static str = "outbound_message";
}
