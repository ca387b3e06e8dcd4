//! Salesforce outbound messages (SOAP notifications, received by order-api): the dedupe store.
//!
//! A notification is stored once, by its id, in the caller's transaction, so its effects (the
//! order's status, a fulfilment request) commit with the row or not at all, and a repeat of the
//! same notification (Salesforce retries until it gets an Ack, and may repeat after one) finds
//! the row and is not processed again.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// One notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    /// The notification's `Id`: the dedupe key.
    pub notification_id: &'a str,
    /// The sObject type (`Order`).
    pub object: &'a str,
    /// The record's `Id`, when the message selected it.
    pub record_id: Option<&'a str>,
    /// The selected fields as a JSON object (`null` for `xsi:nil`).
    pub fields: &'a serde_json::Value,
}

/// Stores the notifications of one message and answers, for each, whether it is new (`true`)
/// or was stored before (`false`: a repeat, not to be processed again). A notification id
/// repeated within `notifications` is new only at its first occurrence. One statement whatever
/// the count (a message holds up to 100); concurrent deliveries of the same notification
/// serialize on the primary key, and the second finds it stored.
pub async fn store(
    conn: &mut PgConnection,
    organization_id: &str,
    action_id: &str,
    received_at: DateTime<Utc>,
    notifications: &[NewNotification<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<&str> = notifications.iter().map(|n| n.notification_id).collect();
    let objects: Vec<&str> = notifications.iter().map(|n| n.object).collect();
    let records: Vec<Option<&str>> = notifications.iter().map(|n| n.record_id).collect();
    let fields: Vec<String> = notifications.iter().map(|n| n.fields.to_string()).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO outbound_messages
             (notification_id, organization_id, action_id, object, record_id, fields, received_at)
         SELECT n.id, $5, $6, n.object, n.record_id, n.fields::jsonb, $7
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
              AS n(id, object, record_id, fields)
         ON CONFLICT (notification_id) DO NOTHING
         RETURNING notification_id",
    )
    .bind(&ids)
    .bind(&objects)
    .bind(&records)
    .bind(&fields)
    .bind(organization_id)
    .bind(action_id)
    .bind(received_at)
    .fetch_all(&mut *conn)
    .await?;
    let mut new: std::collections::HashSet<String> = inserted.into_iter().collect();
    // `remove`: a second occurrence of an id in the same message is a repeat.
    Ok(ids.iter().map(|id| new.remove(*id)).collect())
}
