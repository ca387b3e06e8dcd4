//! Business status history: the statuses an order has had, as the API returns them. Salesforce
//! owns the status after creation (see [`crate::order::OrderStatus`]), so any name it reports is
//! kept as-is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One business status an order had: which, since when, and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    pub status: String,
    /// When the status was decided where it was decided (the order's creation, or the
    /// Salesforce change's commit time), not when orderbridge learned of it.
    pub at: DateTime<Utc>,
    /// Who set it: [`StatusSource::API`] or [`StatusSource::SALESFORCE`].
    pub source: String,
}

/// The `source` names of [`StatusEntry`].
pub struct StatusSource;

impl StatusSource {
    /// Set by orderbridge when it accepted the order.
    pub const API: &'static str = "api";
    /// Mirrored from Salesforce.
    pub const SALESFORCE: &'static str = "salesforce";
}
