//! `POST /v1/salesforce/outbound-messages` (the path is `ORDER_API_OUTBOUND_MESSAGE_PATH`):
//! Salesforce outbound messages, the SOAP webhook a workflow rule or Flow posts.
//!
//! ```text
//! body (≤ ORDER_API_BODY_LIMIT, XML) ─► soap::parse (no DOCTYPE, no entities, ≤ 100 notifications)
//!   ─► OrganizationId = SF_ORG_ID? (first 15 characters, case-sensitive)
//!   ─► one transaction: orderbridge_db::outbound::store (dedupe by notification Id)
//!        └ each new notification: effects (Order.Status → status + history; fulfilment trigger)
//!   ─► commit ─► 200 <Ack>true</Ack>
//! ```
//!
//! Anything else is a SOAP fault with nothing stored: 400 malformed, 403 another org, 413 too
//! big or too many notifications, 415 not XML, 500/503 our failure (Salesforce delivers again
//! later). Not behind the API key: Salesforce cannot send one. The org id and a secret segment
//! in the configured path authenticate the sender (see the README's security notes).

pub mod reply;
pub mod soap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use orderbridge_db::fulfilment::{self, NewRequest};
use orderbridge_db::outbound::{self, NewNotification};
use orderbridge_db::status::{self, StatusApplied, StatusChange};
use orderbridge_domain::fulfilment::{Trigger, idem_key};
use sqlx::{Connection, PgConnection};

use crate::AppState;
use crate::error::ApiError;
use crate::log_text;
use reply::FaultCode;
use soap::{Message, Notification, SoapError};

/// The `source` of statuses set by an outbound message in the order's history.
pub const SOURCE: &str = orderbridge_domain::StatusSource::OUTBOUND_MESSAGE;

/// Receive a Salesforce outbound message.
///
/// A SOAP 1.1 envelope of Salesforce's `notifications` (namespace
/// `http://soap.sforce.com/2005/09/outbound`, 1 to 100 `Notification`s). Each notification is
/// stored once by its `Id` (a repeat is acknowledged and not processed again) with its effects:
/// for an `Order` whose `Status` was selected, the mapped status (`SUBSCRIBER_STATUS_MAP`) is
/// applied with source `outbound_message`. Only then the answer is `<Ack>true</Ack>`.
/// `OrganizationId` must be the configured org (`SF_ORG_ID`, 15 or 18 characters). The path is
/// `ORDER_API_OUTBOUND_MESSAGE_PATH` (this default, or one with a secret segment). Every error
/// is a SOAP fault and stores nothing. No API key: Salesforce cannot send one.
#[utoipa::path(
    post,
    path = "/v1/salesforce/outbound-messages",
    tag = "salesforce",
    request_body(content = String, content_type = "text/xml",
        description = "Salesforce's SOAP notifications envelope."),
    responses(
        (status = 200, description = "Every notification stored: `<Ack>true</Ack>`.", body = String, content_type = "text/xml"),
        (status = 400, description = "Malformed XML, a DOCTYPE or entity, or not an outbound message: a SOAP fault (`soapenv:Client`).", body = String, content_type = "text/xml"),
        (status = 403, description = "OrganizationId is not the configured org: a SOAP fault.", body = String, content_type = "text/xml"),
        (status = 413, description = "Body over the limit, or more than 100 notifications: a SOAP fault.", body = String, content_type = "text/xml"),
        (status = 415, description = "Not an XML body: a SOAP fault.", body = String, content_type = "text/xml"),
        (status = 500, description = "Unexpected error: a SOAP fault (`soapenv:Server`); Salesforce delivers again later.", body = String, content_type = "text/xml"),
        (status = 503, description = "The database is unavailable: a SOAP fault (`soapenv:Server`); Salesforce delivers again later.", body = String, content_type = "text/xml"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(stored) => {
            tracing::info!(
                notifications = stored.total,
                new = stored.new,
                statuses_applied = stored.applied,
                "outbound message acknowledged"
            );
            reply::ack()
        }
        Err(fault) => fault.into_response(),
    }
}

/// What one message did.
struct Stored {
    total: usize,
    new: usize,
    applied: usize,
}

/// Why a message was refused; each becomes a SOAP fault.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the body must be XML (text/xml)")]
    NotXml,
    #[error(transparent)]
    Body(ApiError),
    #[error(transparent)]
    Soap(#[from] SoapError),
    #[error("OrganizationId is not the organization this endpoint accepts")]
    WrongOrg,
    #[error(transparent)]
    Database(ApiError),
}

impl Refused {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::NotXml => (StatusCode::UNSUPPORTED_MEDIA_TYPE, FaultCode::Client),
            Self::Soap(SoapError::TooManyNotifications) => {
                (StatusCode::PAYLOAD_TOO_LARGE, FaultCode::Client)
            }
            Self::Soap(_) => (StatusCode::BAD_REQUEST, FaultCode::Client),
            Self::WrongOrg => (StatusCode::FORBIDDEN, FaultCode::Client),
            Self::Body(e) | Self::Database(e) => (
                e.status(),
                if e.status().is_server_error() {
                    FaultCode::Server
                } else {
                    FaultCode::Client
                },
            ),
        };
        let message = match &self {
            Self::Database(ApiError::Internal(e)) => {
                tracing::error!(error = ?e, "cannot store an outbound message");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            Self::Database(e) => {
                tracing::warn!(error = %e, "cannot store an outbound message");
                e.to_string()
            }
            other => {
                tracing::info!(
                    reason = log_text::bounded(&other.to_string()).as_ref(),
                    "outbound message refused"
                );
                other.to_string()
            }
        };
        reply::fault(status, code, &message)
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Stored, Refused> {
    if !is_xml(headers) {
        return Err(Refused::NotXml);
    }
    let body = body
        .map_err(|r| Refused::Body(crate::extract::body_rejection(r, state.config.body_limit)))?;
    let message = soap::parse(&body)?;
    if !same_org(&message.organization_id, &state.config.sf_org_id) {
        return Err(Refused::WrongOrg);
    }
    let received_at = Utc::now();
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(|e| Refused::Database(e.into()))?;
    store(&mut conn, state, &message, received_at)
        .await
        .map_err(|e| Refused::Database(e.into()))
}

/// `text/xml` (what Salesforce sends), `application/xml` or `application/soap+xml`.
fn is_xml(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    ["text/xml", "application/xml", "application/soap+xml"]
        .iter()
        .any(|m| media.eq_ignore_ascii_case(m))
}

/// Salesforce ids are case-sensitive in their 15-character form; the 18-character form adds a
/// case checksum. So the first 15 characters decide, compared exactly.
pub fn same_org(received: &str, configured: &str) -> bool {
    let ok = |id: &str| {
        (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    ok(received) && ok(configured) && received.get(..15) == configured.get(..15)
}

/// Stores the message and the effects of its new notifications in one transaction.
async fn store(
    conn: &mut PgConnection,
    state: &AppState,
    message: &Message,
    received_at: DateTime<Utc>,
) -> Result<Stored, sqlx::Error> {
    // Rows locked in one order (notification ids, then the orders by Salesforce id) by every
    // message, so two messages stored at once wait for each other instead of deadlocking. A
    // notification repeated in the message counts at its first place (stable sort); two for one
    // order apply in document order. Each keeps its place in the message (`usize`).
    let mut by_id: Vec<(usize, &Notification)> = message.notifications.iter().enumerate().collect();
    by_id.sort_by(|(_, a), (_, b)| a.id.cmp(&b.id));
    let fields: Vec<serde_json::Value> = by_id
        .iter()
        .map(|(_, n)| serde_json::json!(n.fields))
        .collect();
    let rows: Vec<NewNotification<'_>> = by_id
        .iter()
        .zip(&fields)
        .map(|((_, n), fields)| NewNotification {
            notification_id: &n.id,
            object: &n.object,
            record_id: n.record_id(),
            fields,
        })
        .collect();
    let mut tx = conn.begin().await?;
    let new = outbound::store(
        &mut tx,
        &message.organization_id,
        &message.action_id,
        received_at,
        &rows,
    )
    .await?;
    let mut fresh: Vec<(usize, &Notification)> = by_id
        .into_iter()
        .zip(new)
        .filter_map(|(n, new)| new.then_some(n))
        .collect();
    fresh.sort_by(|(i, a), (j, b)| (a.record_id(), i).cmp(&(b.record_id(), j)));
    let mut stored = Stored {
        total: message.notifications.len(),
        new: fresh.len(),
        applied: 0,
    };
    for (_, notification) in fresh {
        if apply_status(&mut tx, state, notification, received_at).await? {
            stored.applied += 1;
        }
        trigger_fulfilment(&mut tx, state, notification).await?;
    }
    tx.commit().await?;
    Ok(stored)
}

/// Like a change event: an `Order` notification that carries `Status` sets the mapped status.
/// The message has no time of its own, so the status counts from when it was received. Returns
/// whether a status was applied.
async fn apply_status(
    conn: &mut PgConnection,
    state: &AppState,
    notification: &Notification,
    received_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    if notification.object != "Order" {
        return Ok(false);
    }
    let (Some(record_id), Some(Some(value))) =
        (notification.record_id(), notification.fields.get("Status"))
    else {
        return Ok(false);
    };
    let mapped = match state.config.status_map.map(value) {
        Ok(mapped) => mapped,
        Err(e) => {
            // Acknowledged all the same: a redelivery would carry the same value. The row keeps it.
            tracing::warn!(
                notification = log_text::bounded(&notification.id).as_ref(),
                error = %e,
                "outbound message: a Status that cannot be mapped is not applied"
            );
            return Ok(false);
        }
    };
    let change = StatusChange {
        status: &mapped,
        at: received_at,
        source: SOURCE,
    };
    let outcome = status::apply_by_salesforce_id(conn, record_id, change).await?;
    if outcome == StatusApplied::UnknownOrder {
        tracing::info!(
            record = log_text::bounded(record_id).as_ref(),
            "outbound message for an order we do not know"
        );
    }
    Ok(matches!(outcome, StatusApplied::Applied { .. }))
}

/// Where a notification starts fulfilment: an `Order` notification whose `Status` is the
/// configured value (`SUBSCRIBER_PROVISION_ON_STATUS`, the same rule as for change events)
/// requests it, in the same transaction as the notification row, so the request is queued exactly
/// when the notification is first stored. Keyed by the notification id (`om:<Id>`): Salesforce's
/// redeliveries are duplicates already, and a second message for an order with an open or
/// provisioned request is a no-op in `orderbridge_db::fulfilment::request`.
async fn trigger_fulfilment(
    conn: &mut PgConnection,
    state: &AppState,
    notification: &Notification,
) -> Result<(), sqlx::Error> {
    let trigger_value = state.config.provision_on_status.as_str();
    if trigger_value.is_empty() || notification.object != "Order" {
        return Ok(());
    }
    let (Some(record_id), Some(Some(value))) =
        (notification.record_id(), notification.fields.get("Status"))
    else {
        return Ok(());
    };
    if value != trigger_value {
        return Ok(());
    }
    let key = idem_key::outbound_message(&notification.id);
    if !idem_key::is_valid(&key) {
        tracing::warn!(
            notification = log_text::bounded(&notification.id).as_ref(),
            "outbound message: a notification id that cannot key a fulfilment request"
        );
        return Ok(());
    }
    let new = NewRequest {
        salesforce_id: record_id,
        idem_key: &key,
        trigger: Trigger::OUTBOUND_MESSAGE,
        correlation_id: None,
    };
    let requested = fulfilment::request(conn, new).await?;
    tracing::info!(
        notification = log_text::bounded(&notification.id).as_ref(),
        record = log_text::bounded(record_id).as_ref(),
        ?requested,
        "outbound message: fulfilment requested"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_org;

    #[test]
    fn org_ids_compare_on_their_15_character_form() {
        let org18 = "00D5g0000000001EAA";
        assert!(same_org(org18, org18));
        assert!(same_org("00D5g0000000001", org18));
        assert!(same_org(org18, "00D5g0000000001"));
        assert!(!same_org("00d5g0000000001", org18), "case-sensitive");
        assert!(!same_org("00D5g0000000002EAA", org18));
        assert!(!same_org("00D5g000000000", org18));
        assert!(!same_org("00D5g0000000001EAAX", org18));
        assert!(!same_org("00D5g000000000é", org18));
    }
}
