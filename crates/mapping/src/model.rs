//! The compiled mapping: what the worker and reconcile use. Built only by `file::compile`, so
//! every value here has passed the checks.

use serde::Deserialize;
use serde_json::Value;

/// How records of an object are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert; a record that already has this external id (`DUPLICATE_VALUE` on the external id
    /// field) is the one written before, and counts as success without being changed. For
    /// records that are immutable on our side and owned by Salesforce users once written (an
    /// order may be activated, its items are then locked): a redelivered or stale event can
    /// never overwrite what happened in Salesforce since.
    Create,
    /// Insert or update by external id: for master data that should follow our latest values
    /// (the customer's account).
    Upsert,
}

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `YYYY-MM-DD` from an RFC 3339 time.
    Date,
    /// The RFC 3339 time as is.
    Datetime,
    /// A JSON number from a number or a decimal string (prices travel as exact strings).
    Number,
    /// A JSON integer.
    Integer,
    /// A string, whatever the source.
    String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Path(Vec<String>),
    Const(Value),
    Template(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Text(String),
    Path(Vec<String>),
}

/// One field's value rule, compiled, with the limits of the Salesforce field it fills.
///
/// The limits are what the mapping promises Salesforce can hold (checked against the org's
/// describe at start-up); a value beyond them is refused, at intake and by the worker, never
/// cut or rounded, except where `truncate` asks for cutting explicitly.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub(crate) source: Source,
    pub(crate) format: Option<Format>,
    /// Most characters of a text value.
    pub(crate) max_length: Option<usize>,
    /// Cut text to `max_length` instead of refusing it (a summary field such as a `Subject`).
    pub(crate) truncate: bool,
    /// Most significant digits of a number (Salesforce's `precision`).
    pub(crate) precision: Option<u32>,
    /// Most digits after the point (Salesforce's `scale`).
    pub(crate) scale: Option<u32>,
}

/// What makes an object's external ids unique to one API client (see
/// `orderbridge_domain::tenant`): every key starts with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// The order id (`id`, or `order.id` for items): unique across all clients.
    Order,
    /// The client's external-id prefix (`client.external_id_prefix`): for records several
    /// orders share, such as the customer's account.
    Client,
}

/// One Salesforce object of the mapping.
#[derive(Debug, Clone)]
pub struct ObjectMapping {
    pub sobject: String,
    pub external_id_field: String,
    pub write: WriteMode,
    pub(crate) key: Expr,
    pub key_scope: KeyScope,
    pub(crate) fields: Vec<(String, Expr)>,
    /// Fields Salesforce computes from what is written (`TotalAmount`, `TotalPrice`), with the
    /// order value each must equal: never written, but bounded like written fields and
    /// compared by reconcile.
    pub(crate) computed: Vec<(String, Expr)>,
}

/// The account object and how the order points at it.
#[derive(Debug, Clone)]
pub struct AccountMapping {
    pub object: ObjectMapping,
    /// Relationship name on the order's object, e.g. `Account`.
    pub relationship: String,
}

/// The order (root) object.
#[derive(Debug, Clone)]
pub struct OrderMapping {
    pub object: ObjectMapping,
    pub pricebook_field: Option<String>,
}

/// The per-line object and how it points at the order.
#[derive(Debug, Clone)]
pub struct ItemsMapping {
    pub object: ObjectMapping,
    /// Relationship name on the item's object, e.g. `Order`.
    pub order_relationship: String,
    pub pricebook_entry_field: Option<String>,
}

/// A checked mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Price book by name; `None`: the org's standard price book.
    pub pricebook: Option<String>,
    pub account: Option<AccountMapping>,
    pub order: OrderMapping,
    pub items: Option<ItemsMapping>,
}

/// Where the values of one record come from.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The order as `order.submitted` carries it: the API's order plus `client` (its id and
    /// `external_id_prefix`).
    pub order: &'a Value,
    /// Set for `items`: the line; paths resolve here unless they start with `order.`.
    pub line: Option<&'a Value>,
}
