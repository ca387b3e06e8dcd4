//! What a decoded event asks for, decided without any I/O (so every rule is unit-tested):
//! apply a status, re-read the record, or nothing (and why).

use chrono::{DateTime, Utc};

use crate::decode::{ChangeType, Event};

/// The object whose status the subscriber follows.
pub const ORDER: &str = "Order";

/// The rules' settings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `SF_CLIENT_NAME`: changes whose `changeOrigin` names it are our own writes.
    pub client_name: String,
    /// `SUBSCRIBER_EXTRA_STATUS_FIELDS`.
    pub extra_status_fields: Vec<String>,
}

/// What to do about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Our own write coming back: nothing.
    Echo,
    /// Apply the Salesforce status `value` to the orders synced to these records.
    Status {
        record_ids: Vec<String>,
        value: String,
        at: DateTime<Utc>,
    },
    /// Read the records' Status over REST and apply it (gap events, unknown changed fields, an
    /// extra status field changed).
    Reread {
        record_ids: Vec<String>,
        at: DateTime<Utc>,
        why: &'static str,
    },
    /// A platform event: recorded in the inbox and counted; the provisioning topic's events
    /// become fulfilment requests (`crate::provision`).
    PlatformEvent,
    /// Nothing to do.
    Ignore(&'static str),
}

/// Why an event's content cannot be used (it is dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("commitTimestamp {0} is not a time")]
    BadTimestamp(i64),
    #[error("recordIds is empty")]
    NoRecords,
    #[error("record id {0:?} is not a Salesforce id")]
    BadRecordId(String),
    #[error("the event has no {0}")]
    MissingField(&'static str),
}

/// Decides what `event` asks for.
pub fn decide(event: &Event, rules: &Rules) -> Result<Effect, Unusable> {
    let Some(header) = &event.header else {
        return Ok(Effect::PlatformEvent);
    };
    if header.entity_name != ORDER {
        return Ok(Effect::Ignore("not an Order"));
    }
    if header.from_client(&rules.client_name) {
        return Ok(Effect::Echo);
    }
    let at = DateTime::from_timestamp_millis(header.commit_timestamp)
        .ok_or(Unusable::BadTimestamp(header.commit_timestamp))?;
    if header.record_ids.is_empty() {
        return Err(Unusable::NoRecords);
    }
    if let Some(bad) = header.record_ids.iter().find(|id| !salesforce_id(id)) {
        return Err(Unusable::BadRecordId(bad.chars().take(40).collect()));
    }
    let record_ids = header.record_ids.clone();
    let reread = |why| Effect::Reread {
        record_ids: record_ids.clone(),
        at,
        why,
    };
    let status = |value: &str| Effect::Status {
        record_ids: record_ids.clone(),
        value: value.to_owned(),
        at,
    };
    Ok(match &header.change_type {
        ChangeType::Gap(_) | ChangeType::Other(_) => reread("gap event"),
        ChangeType::Delete | ChangeType::Undelete => Effect::Ignore("delete or undelete"),
        // A CREATE carries every field that has a value (changedFields is empty).
        ChangeType::Create => match event.string("Status") {
            Some(v) => status(v),
            None => reread("created without a Status value"),
        },
        ChangeType::Update => {
            let changed = &header.changed_fields;
            if changed.is_empty() {
                reread("changed fields unknown")
            } else if changed.contains("Status") {
                match event.string("Status") {
                    Some(v) => status(v),
                    None => reread("Status changed but carries no value"),
                }
            } else if rules
                .extra_status_fields
                .iter()
                .any(|f| changed.contains(f))
            {
                reread("an extra status field changed")
            } else {
                Effect::Ignore("no status field changed")
            }
        }
    })
}

/// 15 or 18 letters and digits.
pub(crate) fn salesforce_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use apache_avro::types::Value;

    use super::*;
    use crate::decode::{ChangeHeader, FieldNames};

    const ID: &str = "801000000000001AAA";

    fn event(
        change_type: ChangeType,
        origin: &str,
        changed: &[&str],
        status: Option<&str>,
    ) -> Event {
        let mut fields = BTreeMap::new();
        if let Some(s) = status {
            fields.insert(
                "Status".to_owned(),
                Value::Union(1, Box::new(Value::String(s.into()))),
            );
        }
        Event {
            header: Some(ChangeHeader {
                entity_name: "Order".into(),
                record_ids: vec![ID.into()],
                change_type,
                change_origin: origin.into(),
                transaction_key: String::new(),
                commit_timestamp: 1_764_700_000_000,
                changed_fields: FieldNames(changed.iter().map(|s| (*s).to_owned()).collect()),
                nulled_fields: FieldNames::default(),
                diff_fields: FieldNames::default(),
            }),
            fields,
        }
    }

    fn rules() -> Rules {
        Rules {
            client_name: "orderbridge".into(),
            extra_status_fields: vec!["Activation__c".into()],
        }
    }

    #[test]
    fn status_changes_apply_and_our_own_are_echo() {
        let e = event(
            ChangeType::Update,
            "x;client=someone",
            &["Status"],
            Some("Activated"),
        );
        assert!(
            matches!(decide(&e, &rules()).unwrap(), Effect::Status { value, .. } if value == "Activated")
        );
        let e = event(
            ChangeType::Update,
            "com/salesforce/api/rest/62.0;client=orderbridge",
            &["Status"],
            Some("Activated"),
        );
        assert_eq!(decide(&e, &rules()).unwrap(), Effect::Echo);
    }

    #[test]
    fn gaps_unknown_fields_and_extra_fields_reread() {
        for (e, why) in [
            (
                event(ChangeType::Gap("GAP_UPDATE".into()), "", &[], None),
                "gap event",
            ),
            (
                event(ChangeType::Other("NEW_KIND".into()), "", &[], None),
                "gap event",
            ),
            (
                event(ChangeType::Update, "", &[], None),
                "changed fields unknown",
            ),
            (
                event(ChangeType::Update, "", &["Activation__c"], None),
                "an extra status field changed",
            ),
            (
                event(ChangeType::Update, "", &["Status"], None),
                "Status changed but carries no value",
            ),
            (
                event(ChangeType::Create, "", &[], None),
                "created without a Status value",
            ),
        ] {
            assert!(
                matches!(decide(&e, &rules()).unwrap(), Effect::Reread { why: w, .. } if w == why),
                "{why}"
            );
        }
    }

    #[test]
    fn other_changes_are_ignored() {
        let e = event(ChangeType::Update, "", &["Description"], None);
        assert_eq!(
            decide(&e, &rules()).unwrap(),
            Effect::Ignore("no status field changed")
        );
        let e = event(ChangeType::Delete, "", &[], None);
        assert!(matches!(decide(&e, &rules()).unwrap(), Effect::Ignore(_)));
        let mut e = event(ChangeType::Update, "", &["Status"], Some("Activated"));
        e.header.as_mut().unwrap().entity_name = "Account".into();
        assert_eq!(
            decide(&e, &rules()).unwrap(),
            Effect::Ignore("not an Order")
        );
        let pe = Event {
            header: None,
            fields: BTreeMap::new(),
        };
        assert_eq!(decide(&pe, &rules()).unwrap(), Effect::PlatformEvent);
    }

    #[test]
    fn unusable_headers_are_errors() {
        let mut e = event(ChangeType::Update, "", &["Status"], Some("Activated"));
        e.header.as_mut().unwrap().record_ids = vec![];
        assert_eq!(decide(&e, &rules()), Err(Unusable::NoRecords));
        e.header.as_mut().unwrap().record_ids = vec!["'; DROP TABLE orders;--".into()];
        assert!(matches!(
            decide(&e, &rules()),
            Err(Unusable::BadRecordId(_))
        ));
        e.header.as_mut().unwrap().record_ids = vec![ID.into()];
        e.header.as_mut().unwrap().commit_timestamp = i64::MAX;
        assert!(matches!(
            decide(&e, &rules()),
            Err(Unusable::BadTimestamp(_))
        ));
    }
}
