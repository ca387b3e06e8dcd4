//! Versioned message schemas.
//!
//! Every message on the broker and every outbox row is an [`Envelope`]: a stable header (`id`,
//! `type`, `version`, `occurred_at`, `correlation_id`) around a `data` payload whose shape is fixed
//! by (`type`, `version`). A reader decodes with [`OrderEvent::decode`], which names what it does not
//! understand instead of guessing, so such messages can be dead-lettered with the reason.
//! Unknown fields are ignored on read, so a writer may add fields without a version bump; removing or
//! changing a field needs a new version.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, OrderId};
use crate::order::{Order, SyncError, SyncState};
use crate::tenant::ClientScope;

/// Event type of [`OrderEvent::Submitted`].
pub const ORDER_SUBMITTED: &str = "order.submitted";
/// Event type of [`SyncStatus`] (the sync worker's reports, on the status exchange).
pub const ORDER_SYNC_STATUS: &str = "order.sync_status";

/// The header every message carries, around a typed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<T> {
    /// Unique per event; consumers deduplicate on it (it is also the AMQP `message_id`).
    pub id: EventId,
    /// Event type (`order.submitted`, …), also the routing key (a status report's is
    /// `order.sync_status.<state>`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of `data` for this type.
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    /// The id of the request that caused the event, for tracing across processes.
    pub correlation_id: Option<String>,
    pub data: T,
}

impl<T> Envelope<T> {
    /// The same header around another payload (a decoded or re-typed one).
    pub fn with_data<U>(self, data: U) -> Envelope<U> {
        Envelope {
            id: self.id,
            event_type: self.event_type,
            version: self.version,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            data,
        }
    }
}

/// The events orderbridge knows how to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// `order.submitted` v1: the full order as accepted, and the API client it came from.
    Submitted(Box<SubmittedOrder>),
}

/// The payload of `order.submitted` v1: the order's fields as the API returns them, plus
/// `client` (`{"id", "external_id_prefix"}`), which scopes the order's Salesforce keys (see
/// [`crate::tenant`]). `client` was added to v1 compatibly: readers that predate it ignore it,
/// and it is `None` in events written before it existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedOrder {
    pub order: Order,
    /// `None` only in events written before client scopes; the sync worker refuses to write
    /// such an order (its customer key would not be scoped): a resync writes a fresh event.
    pub client: Option<ClientScope>,
}

/// The key of [`SubmittedOrder::client`] inside `data`.
const CLIENT_KEY: &str = "client";

/// `data` of `order.submitted` v1 as it is written: the order's fields at the top level, then
/// `client`. [`OrderEvent::into_envelope`] serializes through it and the published JSON Schema
/// (`schemas/order.submitted.v1.json`, [`crate::contracts`]) is derived from it, so the two
/// cannot drift apart.
#[derive(Serialize, JsonSchema)]
#[schemars(
    rename = "SubmittedOrder",
    description = "The order as the API returns it (GET /v1/orders/{id}), and the API client it \
                   came from."
)]
pub(crate) struct SubmittedOrderData<'a> {
    #[serde(flatten)]
    pub(crate) order: &'a Order,
    /// The API client the order was accepted from: its `external_id_prefix` starts the
    /// Salesforce key of the customer's account. Every event written since client scopes
    /// exist carries it; older ones lack it.
    // Never written as null, so the schema offers only the object (readers accept null too).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ClientScope")]
    pub(crate) client: Option<&'a ClientScope>,
}

impl SubmittedOrder {
    /// `data` of this event as it is published: what the mapping and the routing rules read.
    pub fn data(&self) -> serde_json::Value {
        submitted_data(&self.order, self.client.as_ref())
    }
}

/// `data` of `order.submitted` v1 for `order` accepted from `client`: the order's fields and
/// `client`. The one place that shape is built: the published event, the sync worker's mapping
/// and routing, the API's limit check and the CLI's routing all read it, so a routing rule on
/// `/client/...` means the same everywhere.
pub fn submitted_data(order: &Order, client: Option<&ClientScope>) -> serde_json::Value {
    // Serializing plain data structs to a Value cannot fail (no maps with non-string keys).
    serde_json::to_value(SubmittedOrderData { order, client }).unwrap_or_default()
}

impl OrderEvent {
    /// `order.submitted` for `order`, accepted from `client`.
    pub fn submitted(order: Order, client: ClientScope) -> Self {
        Self::Submitted(Box::new(SubmittedOrder {
            order,
            client: Some(client),
        }))
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Submitted(_) => ORDER_SUBMITTED,
        }
    }

    pub fn version(&self) -> u32 {
        match self {
            Self::Submitted(_) => 1,
        }
    }

    /// Wraps the event in a new envelope with a fresh, time-ordered id.
    pub fn into_envelope(
        self,
        occurred_at: DateTime<Utc>,
        correlation_id: Option<String>,
    ) -> Envelope<serde_json::Value> {
        let (event_type, version) = (self.event_type(), self.version());
        let data = match self {
            Self::Submitted(submitted) => submitted.data(),
        };
        Envelope {
            id: EventId::new_v7(),
            event_type: event_type.to_owned(),
            version,
            occurred_at,
            correlation_id,
            data,
        }
    }

    /// Reads an envelope from JSON bytes and decodes its payload by (`type`, `version`).
    pub fn decode(bytes: &[u8]) -> Result<Envelope<OrderEvent>, DecodeError> {
        let mut raw: Envelope<serde_json::Value> =
            serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        let mut data = std::mem::take(&mut raw.data);
        let event = match (raw.event_type.as_str(), raw.version) {
            (ORDER_SUBMITTED, 1) => {
                let client = match data.as_object_mut().and_then(|m| m.remove(CLIENT_KEY)) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(c) => Some(serde_json::from_value(c).map_err(DecodeError::Malformed)?),
                };
                OrderEvent::Submitted(Box::new(SubmittedOrder {
                    order: serde_json::from_value(data).map_err(DecodeError::Malformed)?,
                    client,
                }))
            }
            (t, v) => {
                return Err(DecodeError::Unsupported {
                    event_type: t.to_owned(),
                    version: v,
                });
            }
        };
        Ok(raw.with_data(event))
    }
}

/// Why a message could not be read; the reason a dead letter carries.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported event `{event_type}` version {version}")]
    Unsupported { event_type: String, version: u32 },
}

/// `order.sync_status` v1: what the sync worker did with one `order.submitted` event. Published
/// on the status exchange (routing key `order.sync_status.<state>`) and applied to the order by
/// the outbox relay process.
///
/// Applying is idempotent and monotonic. `order_version` is the order's `version` as carried by
/// the event that was synced: a resync sends a newer one, so a late report about an older event
/// never overwrites a newer one. Within one `order_version`, `synced` is final and otherwise the
/// later `occurred_at` wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SyncStatus {
    pub order_id: OrderId,
    /// `data.version` of the `order.submitted` event this report is about.
    pub order_version: i64,
    /// `retrying`, `synced` or `failed`.
    pub state: SyncState,
    /// The Salesforce id of the order's record once synced.
    pub salesforce_id: Option<String>,
    /// Salesforce write attempts for this event so far.
    pub attempts: u32,
    /// Why the last attempt failed (`retrying`, `failed`).
    pub error: Option<SyncError>,
    /// The id of the `order.submitted` event.
    pub source_event_id: EventId,
    /// When that event was first written (the lag of the whole pipeline ends at `occurred_at`).
    pub source_occurred_at: DateTime<Utc>,
}

impl SyncStatus {
    /// Wraps the report in a new envelope with a fresh, time-ordered id.
    pub fn into_envelope(
        self,
        occurred_at: DateTime<Utc>,
        correlation_id: Option<String>,
    ) -> Envelope<SyncStatus> {
        Envelope {
            id: EventId::new_v7(),
            event_type: ORDER_SYNC_STATUS.to_owned(),
            version: 1,
            occurred_at,
            correlation_id,
            data: self,
        }
    }

    /// Routing key on the status exchange.
    pub fn routing_key(&self) -> String {
        format!("{ORDER_SYNC_STATUS}.{}", self.state)
    }

    /// Reads a status report, refusing other types and versions.
    pub fn decode(bytes: &[u8]) -> Result<Envelope<SyncStatus>, DecodeError> {
        let mut raw: Envelope<serde_json::Value> =
            serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        if (raw.event_type.as_str(), raw.version) != (ORDER_SYNC_STATUS, 1) {
            return Err(DecodeError::Unsupported {
                event_type: raw.event_type,
                version: raw.version,
            });
        }
        let data = serde_json::from_value(std::mem::take(&mut raw.data))
            .map_err(DecodeError::Malformed)?;
        Ok(raw.with_data(data))
    }
}
