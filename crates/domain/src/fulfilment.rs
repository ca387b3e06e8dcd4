//! Fulfilment (issue 14): what a provisioning request is, the events that move it, and the JSON
//! the fulfilment system is sent and answers.
//!
//! ```text
//! trigger (platform event, status change, outbound message, API)
//!   └─► fulfilment_requests row `queued` + status `provisioning` + outbox `fulfilment.requested`
//!         └─► worker ─► POST FULFILMENT_URL (signed, Idempotency-Key) ─► Answer
//!               provisioned / failed ─► row decided + status `provisioned` / `provisioning_failed`
//!               accepted ─► row `accepted`; later a signed callback decides it and writes
//!                           outbox `fulfilment.result`, so the worker writes the result back
//! ```
//!
//! The database row is the truth; the events only carry the request's id (a nudge to go and
//! read it), so a stale or replayed event can never decide anything by itself.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{DecodeError, Envelope};
use crate::ids::{EventId, OrderId};
use crate::order::Order;

/// Event type of [`FulfilmentEvent::Requested`]: a request was queued (or re-opened).
pub const FULFILMENT_REQUESTED: &str = "fulfilment.requested";
/// Event type of [`FulfilmentEvent::Result`]: a callback decided a request, so its result
/// still has to be written back to the Salesforce order.
pub const FULFILMENT_RESULT: &str = "fulfilment.result";
/// The outbox `aggregate_type` of fulfilment events (their `aggregate_id` is the order's id, so
/// the relay keeps one order's fulfilment events in order).
pub const AGGREGATE_TYPE: &str = "fulfilment";

/// Local business status while a request is open (queued or accepted).
pub const STATUS_PROVISIONING: &str = "provisioning";
/// Local business status once the fulfilment system provisioned the order.
pub const STATUS_PROVISIONED: &str = "provisioned";
/// Local business status once the fulfilment system refused; the reason is on the request.
pub const STATUS_PROVISIONING_FAILED: &str = "provisioning_failed";

/// Longest failure reason kept (characters); longer ones are cut (they come from outside).
pub const MAX_REASON_CHARS: usize = 1000;
/// Longest idempotency key (bytes): a Salesforce text field holds 255 characters.
pub const MAX_IDEM_KEY_LEN: usize = 255;

/// What started a request: the `trigger` column's names.
pub struct Trigger;

impl Trigger {
    /// A platform event (`OrderProvisionRequested__e`) received by sf-subscriber.
    pub const PLATFORM_EVENT: &'static str = "platform_event";
    /// A configured status transition of the order (a change event).
    pub const STATUS_CHANGE: &'static str = "status_change";
    /// A Salesforce outbound message (SOAP webhook).
    pub const OUTBOUND_MESSAGE: &'static str = "outbound_message";
    /// An operator's retry through the API or the CLI.
    pub const API: &'static str = "api";
    /// Every name, as the table's CHECK constraint lists them.
    pub const ALL: [&'static str; 4] = [
        Self::PLATFORM_EVENT,
        Self::STATUS_CHANGE,
        Self::OUTBOUND_MESSAGE,
        Self::API,
    ];
}

/// The idempotency keys of the triggers that carry none of their own (`IdemKey__c` is used as
/// is when the event has one). One home, so the same trigger always yields the same key.
/// Parts from outside are percent-escaped where they are not visible ASCII (a status value
/// `In Fulfilment` becomes `In%20Fulfilment`), so the key can travel in a header.
pub mod idem_key {
    use std::fmt::Write;

    /// A platform event without `IdemKey__c`: its EventUuid (or event id).
    pub fn event(event_id: &str) -> String {
        format!("event:{}", escape(event_id))
    }

    /// A status transition: the Salesforce order and the status it reached.
    pub fn status(salesforce_id: &str, status: &str) -> String {
        format!("status:{}:{}", escape(salesforce_id), escape(status))
    }

    /// An outbound message notification, by its notification id.
    pub fn outbound_message(notification_id: &str) -> String {
        format!("om:{}", escape(notification_id))
    }

    /// `part` with every byte that is not visible ASCII, and `%` itself, as `%XX`.
    fn escape(part: &str) -> String {
        let mut out = String::with_capacity(part.len());
        for b in part.bytes() {
            if b.is_ascii_graphic() && b != b'%' {
                out.push(char::from(b));
            } else {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    }

    /// An operator's retry (a fresh key each time: a retry is a new request).
    pub fn api(id: uuid::Uuid) -> String {
        format!("api:{id}")
    }

    /// Whether `key` can be stored and sent: 1 to [`super::MAX_IDEM_KEY_LEN`] visible ASCII
    /// characters (it travels in the `Idempotency-Key` header). The table's CHECK constraint
    /// enforces the same, so callers check outside values (`IdemKey__c`) with this first and
    /// refuse (or fall back to [`event`]) instead of failing the transaction.
    pub fn is_valid(key: &str) -> bool {
        (1..=super::MAX_IDEM_KEY_LEN).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// Where a request stands (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for (or being retried by) the worker.
    Queued,
    /// The fulfilment system took it (202); its callback decides it.
    Accepted,
    /// Decided: provisioned.
    Provisioned,
    /// Decided: refused, with a reason. The same idempotency key re-opens it.
    Failed,
}

impl RequestState {
    pub const ALL: [RequestState; 4] = [
        Self::Queued,
        Self::Accepted,
        Self::Provisioned,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Accepted => "accepted",
            Self::Provisioned => "provisioned",
            Self::Failed => "failed",
        }
    }

    /// Provisioned or failed: a later outcome for it is ignored.
    pub fn is_decided(self) -> bool {
        matches!(self, Self::Provisioned | Self::Failed)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`RequestState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fulfilment request state {0:?}")]
pub struct UnknownRequestState(pub String);

impl FromStr for RequestState {
    type Err = UnknownRequestState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownRequestState(s.to_owned()))
    }
}

/// The data of both fulfilment events, v1: which request, of which order. Everything else is
/// read from the request's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FulfilmentRef {
    pub request_id: Uuid,
    pub order_id: OrderId,
}

/// The fulfilment events orderbridge knows how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FulfilmentEvent {
    /// `fulfilment.requested` v1: call the fulfilment system for this request.
    Requested(FulfilmentRef),
    /// `fulfilment.result` v1: this request was decided by a callback; write it back.
    Result(FulfilmentRef),
}

impl FulfilmentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Requested(_) => FULFILMENT_REQUESTED,
            Self::Result(_) => FULFILMENT_RESULT,
        }
    }

    pub fn version(&self) -> u32 {
        1
    }

    /// The request and order the event is about.
    pub fn data(&self) -> FulfilmentRef {
        match self {
            Self::Requested(r) | Self::Result(r) => *r,
        }
    }

    /// Wraps the event in a new envelope with a fresh, time-ordered id (for the outbox).
    pub fn into_envelope(
        self,
        occurred_at: DateTime<Utc>,
        correlation_id: Option<String>,
    ) -> Envelope<serde_json::Value> {
        Envelope {
            id: EventId::new_v7(),
            event_type: self.event_type().to_owned(),
            version: self.version(),
            occurred_at,
            correlation_id,
            // A struct of a UUID and an id: serializing it cannot fail.
            data: serde_json::to_value(self.data()).unwrap_or_default(),
        }
    }

    /// Reads a fulfilment event from JSON bytes, refusing (and naming) other types and
    /// versions, so the worker can dead-letter them with the reason.
    pub fn decode(bytes: &[u8]) -> Result<Envelope<FulfilmentEvent>, DecodeError> {
        let mut raw: Envelope<serde_json::Value> =
            serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        let data = std::mem::take(&mut raw.data);
        let event = match (raw.event_type.as_str(), raw.version) {
            (FULFILMENT_REQUESTED, 1) => {
                Self::Requested(serde_json::from_value(data).map_err(DecodeError::Malformed)?)
            }
            (FULFILMENT_RESULT, 1) => {
                Self::Result(serde_json::from_value(data).map_err(DecodeError::Malformed)?)
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

/// The body POSTed to the fulfilment system (`FULFILMENT_URL`). Built only from the request's
/// row and the order, so the same request always yields the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub request_id: Uuid,
    pub order_id: OrderId,
    pub salesforce_id: String,
    pub idem_key: String,
    pub correlation_id: Option<String>,
    pub order: Order,
}

/// The fulfilment system's answer (`{"status": "provisioned"}`, `{"status": "failed",
/// "reason": "…"}`, `{"status": "accepted"}`), also the `status` (+ `reason`) of a callback.
/// Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    Provisioned,
    Failed {
        /// Absent reads as `None`: a refusal without a reason is still a refusal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Accepted,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn reference() -> FulfilmentRef {
        FulfilmentRef {
            request_id: Uuid::now_v7(),
            order_id: OrderId::new_v7(),
        }
    }

    #[test]
    fn events_round_trip() {
        for event in [
            FulfilmentEvent::Requested(reference()),
            FulfilmentEvent::Result(reference()),
        ] {
            let envelope = event.into_envelope(Utc::now(), Some("corr-1".into()));
            let bytes = serde_json::to_vec(&envelope).unwrap();
            let decoded = FulfilmentEvent::decode(&bytes).unwrap();
            assert_eq!(decoded.data, event);
            assert_eq!(decoded.event_type, event.event_type());
            assert_eq!(decoded.correlation_id.as_deref(), Some("corr-1"));
        }
    }

    #[test]
    fn decode_names_what_it_does_not_understand() {
        let r = reference();
        let other = json!({"id": Uuid::now_v7(), "type": "fulfilment.requested", "version": 2,
            "occurred_at": Utc::now(), "correlation_id": null, "data": r});
        let err = FulfilmentEvent::decode(other.to_string().as_bytes()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Unsupported { event_type, version: 2 } if event_type == FULFILMENT_REQUESTED),
            "{err}"
        );
        let order = json!({"id": Uuid::now_v7(), "type": "order.submitted", "version": 1,
            "occurred_at": Utc::now(), "correlation_id": null, "data": {}});
        assert!(matches!(
            FulfilmentEvent::decode(order.to_string().as_bytes()),
            Err(DecodeError::Unsupported { .. })
        ));
        let no_request = json!({"id": Uuid::now_v7(), "type": "fulfilment.result", "version": 1,
            "occurred_at": Utc::now(), "correlation_id": null, "data": {"order_id": r.order_id}});
        assert!(matches!(
            FulfilmentEvent::decode(no_request.to_string().as_bytes()),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            FulfilmentEvent::decode(b"\xff\xfe not json"),
            Err(DecodeError::Malformed(_))
        ));
        // Fields added later by a newer writer are ignored.
        let extra = json!({"id": Uuid::now_v7(), "type": "fulfilment.result", "version": 1,
            "occurred_at": Utc::now(), "correlation_id": null,
            "data": {"request_id": r.request_id, "order_id": r.order_id, "new": 1}});
        let decoded = FulfilmentEvent::decode(extra.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.data, FulfilmentEvent::Result(r));
    }

    #[test]
    fn answers_read_as_documented() {
        let a: Answer = serde_json::from_str(r#"{"status":"provisioned","extra":true}"#).unwrap();
        assert_eq!(a, Answer::Provisioned);
        let a: Answer = serde_json::from_str(r#"{"status":"failed","reason":"no stock"}"#).unwrap();
        assert_eq!(
            a,
            Answer::Failed {
                reason: Some("no stock".into())
            }
        );
        let a: Answer = serde_json::from_str(r#"{"status":"failed"}"#).unwrap();
        assert_eq!(a, Answer::Failed { reason: None });
        let a: Answer = serde_json::from_str(r#"{"status":"accepted"}"#).unwrap();
        assert_eq!(a, Answer::Accepted);
        assert!(serde_json::from_str::<Answer>(r#"{"status":"done"}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{}"#).is_err());
        assert_eq!(
            serde_json::to_value(Answer::Provisioned).unwrap(),
            json!({"status": "provisioned"})
        );
    }

    #[test]
    fn states_and_keys() {
        for s in RequestState::ALL {
            assert_eq!(s.as_str().parse::<RequestState>().unwrap(), s);
        }
        assert!("done".parse::<RequestState>().is_err());
        assert!(RequestState::Failed.is_decided() && !RequestState::Accepted.is_decided());
        assert_eq!(idem_key::event("e-1"), "event:e-1");
        assert_eq!(idem_key::status("801x", "Approved"), "status:801x:Approved");
        assert_eq!(idem_key::outbound_message("04l1"), "om:04l1");
        let spaced = idem_key::status("801x", "In Fulfilment é%");
        assert_eq!(spaced, "status:801x:In%20Fulfilment%20%C3%A9%25");
        assert!(idem_key::is_valid(&spaced));
        assert!(idem_key::is_valid("status:801x:Approved"));
        assert!(!idem_key::is_valid(""));
        assert!(!idem_key::is_valid("with space"));
        assert!(!idem_key::is_valid("é"));
        assert!(!idem_key::is_valid(&"k".repeat(MAX_IDEM_KEY_LEN + 1)));
        assert!(idem_key::is_valid(&"k".repeat(MAX_IDEM_KEY_LEN)));
    }
}
