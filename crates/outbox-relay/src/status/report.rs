//! A status message read and checked: the [`Report`] the applier applies, or the reason it
//! cannot be applied (the message is then dead-lettered).
//!
//! Decoding is apart from the consume loop and the SQL so the rules on what the applier
//! accepts, and the cleaning of text for Postgres, can be read and tested on their own.

use chrono::{DateTime, Datelike, Utc};
use orderbridge_domain::{SyncState, SyncStatus};
use uuid::Uuid;

/// Longest error message kept on an order; Salesforce's are far shorter, this only bounds a
/// misbehaving producer.
const MAX_ERROR_MESSAGE_CHARS: usize = 4000;
/// Longest error code or Salesforce id kept.
const MAX_CODE_CHARS: usize = 255;

/// A status report, checked and ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub order_id: Uuid,
    /// `data.version` of the `order.submitted` event the report is about.
    pub order_version: i64,
    /// `retrying`, `synced` or `failed`.
    pub state: SyncState,
    pub salesforce_id: Option<String>,
    pub attempts: i32,
    /// `None` when synced, whatever the message said.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The envelope's `occurred_at`: when the worker made the report.
    pub occurred_at: DateTime<Utc>,
}

impl Report {
    /// Reads and checks a status message. The error says why it cannot be applied; such a
    /// message is dead-lettered, never retried (it would fail the same way every time).
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let envelope = SyncStatus::decode(body).map_err(|e| e.to_string())?;
        let status = envelope.data;
        if !matches!(
            status.state,
            SyncState::Retrying | SyncState::Synced | SyncState::Failed
        ) {
            return Err(format!(
                "state `{}` is not something the sync worker reports",
                status.state
            ));
        }
        if status.order_version < 1 {
            return Err(format!(
                "order_version {} is not a version",
                status.order_version
            ));
        }
        // Postgres refuses timestamps chrono accepts (before 4713 BC); a refused statement
        // would fail the whole batch. No real report is outside these years.
        if !(1..=9999).contains(&envelope.occurred_at.year()) {
            return Err(format!(
                "occurred_at {} is out of range",
                envelope.occurred_at
            ));
        }
        let synced = status.state == SyncState::Synced;
        let (error_code, error_message) = match status.error {
            Some(e) if !synced => (
                Some(clean(&e.code, MAX_CODE_CHARS)),
                Some(clean(&e.message, MAX_ERROR_MESSAGE_CHARS)),
            ),
            _ => (None, None),
        };
        Ok(Self {
            order_id: status.order_id.get(),
            order_version: status.order_version,
            state: status.state,
            salesforce_id: status
                .salesforce_id
                .map(|id| clean(&id, MAX_CODE_CHARS))
                .filter(|id| !id.is_empty()),
            attempts: i32::try_from(status.attempts).unwrap_or(i32::MAX),
            error_code,
            error_message,
            occurred_at: envelope.occurred_at,
        })
    }
}

/// Postgres text cannot hold NUL; and a bound on length, at a character boundary.
fn clean(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use orderbridge_domain::SyncError;

    fn status(state: SyncState) -> SyncStatus {
        SyncStatus {
            order_id: Uuid::now_v7().into(),
            order_version: 1,
            state,
            salesforce_id: Some("801xx0000000001AAA".into()),
            attempts: 2,
            error: Some(SyncError {
                code: "UNABLE_TO_LOCK_ROW".into(),
                message: "locked\0row".into(),
            }),
            source_event_id: Uuid::now_v7().into(),
            source_occurred_at: Utc::now(),
        }
    }

    fn body(s: SyncStatus) -> Vec<u8> {
        serde_json::to_vec(&s.into_envelope(Utc::now(), None)).unwrap()
    }

    #[test]
    fn decodes_reports_and_refuses_what_cannot_be_applied() {
        let r = Report::decode(&body(status(SyncState::Retrying))).unwrap();
        assert_eq!(r.error_code.as_deref(), Some("UNABLE_TO_LOCK_ROW"));
        assert_eq!(r.error_message.as_deref(), Some("locked\u{fffd}row"));
        // Synced carries no error, whatever the message says.
        let r = Report::decode(&body(status(SyncState::Synced))).unwrap();
        assert_eq!(r.error_code, None);
        assert_eq!(r.salesforce_id.as_deref(), Some("801xx0000000001AAA"));

        assert!(Report::decode(b"not json").is_err());
        assert!(Report::decode(&body(status(SyncState::Pending))).is_err());
        let mut s = status(SyncState::Failed);
        s.order_version = 0;
        assert!(Report::decode(&body(s)).is_err());
        let mut other =
            serde_json::to_value(status(SyncState::Synced).into_envelope(Utc::now(), None))
                .unwrap();
        other["version"] = 2.into();
        assert!(Report::decode(&serde_json::to_vec(&other).unwrap()).is_err());
        other["version"] = 1.into();
        other["occurred_at"] = "-200000-01-01T00:00:00Z".into();
        assert!(Report::decode(&serde_json::to_vec(&other).unwrap()).is_err());
    }
}
