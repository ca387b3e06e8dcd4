//! Fulfilment triggers (issue 14), decided without any I/O like [`crate::effects`]: a platform
//! event on the provisioning topic (`OrderProvisionRequested__e` by default, published by a Flow
//! when an operator approves the order), or — when configured — an Order reaching a Status value.
//!
//! Either becomes a fulfilment request (`orderbridge_db::fulfilment::request`) written in the
//! batch's transaction, together with the inbox row and the cursor: nothing is lost between
//! "event stored" and "job queued", and a replayed event is a duplicate in the inbox.

use orderbridge_domain::fulfilment::{MAX_IDEM_KEY_LEN, idem_key};

use crate::effects::Unusable;

/// The platform event's field naming the Salesforce Order.
pub const ORDER_ID_FIELD: &str = "OrderId__c";
/// Optional: the key the fulfilment system deduplicates on.
pub const IDEM_KEY_FIELD: &str = "IdemKey__c";
/// Optional: carried into logs and the fulfilment request.
pub const CORRELATION_ID_FIELD: &str = "CorrelationId__c";

/// Longest correlation id kept (a header value elsewhere); longer ones are cut.
const MAX_CORRELATION_ID: usize = 128;

/// What triggers provisioning (`SUBSCRIBER_PROVISION_EVENT`, `SUBSCRIBER_PROVISION_ON_STATUS`).
#[derive(Debug, Clone, Default)]
pub struct ProvisionRules {
    /// The topic (`/event/OrderProvisionRequested__e`) whose events request provisioning.
    pub event_topic: Option<String>,
    /// The Salesforce Order Status value whose arrival requests provisioning.
    pub on_status: Option<String>,
}

impl ProvisionRules {
    /// Whether reaching the Salesforce Status `value` requests provisioning.
    pub fn on_status(&self, value: &str) -> bool {
        self.on_status.as_deref() == Some(value)
    }
}

/// A provisioning request read from a platform event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    pub salesforce_id: String,
    /// `IdemKey__c` when it is usable as a key; otherwise the caller keys the request by the
    /// event (`idem_key::event`), so a redelivered event still maps to the same request.
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
}

/// The provisioning request a platform event on `topic` carries; `None` when the topic is not
/// the provisioning topic (the event is only recorded).
pub fn from_platform_event(
    event: &crate::decode::Event,
    topic: &str,
    rules: &ProvisionRules,
) -> Result<Option<Provision>, Unusable> {
    if rules.event_topic.as_deref() != Some(topic) {
        return Ok(None);
    }
    let salesforce_id = event
        .string(ORDER_ID_FIELD)
        .ok_or(Unusable::MissingField(ORDER_ID_FIELD))?;
    if !crate::effects::salesforce_id(salesforce_id) {
        return Err(Unusable::BadRecordId(
            salesforce_id.chars().take(40).collect(),
        ));
    }
    // A key the table would refuse (too long, spaces, non-ASCII) is not a reason to lose the
    // request: the event's own id keys it instead.
    let idem_key = event
        .string(IDEM_KEY_FIELD)
        .filter(|k| idem_key::is_valid(k) && k.len() <= MAX_IDEM_KEY_LEN)
        .map(str::to_owned);
    let correlation_id = event
        .string(CORRELATION_ID_FIELD)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.chars()
                .filter(|ch| !ch.is_control())
                .take(MAX_CORRELATION_ID)
                .collect()
        });
    Ok(Some(Provision {
        salesforce_id: salesforce_id.to_owned(),
        idem_key,
        correlation_id,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use apache_avro::types::Value;

    use super::*;
    use crate::decode::Event;

    const TOPIC: &str = "/event/OrderProvisionRequested__e";

    fn rules() -> ProvisionRules {
        ProvisionRules {
            event_topic: Some(TOPIC.into()),
            on_status: Some("Activated".into()),
        }
    }

    fn event(fields: &[(&str, &str)]) -> Event {
        Event {
            header: None,
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value::Union(1, Box::new(Value::String((*v).into()))),
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn the_provisioning_event_becomes_a_request() {
        let e = event(&[
            ("OrderId__c", "801000000000001AAA"),
            ("IdemKey__c", "approve-42"),
            ("CorrelationId__c", "corr-1"),
        ]);
        assert_eq!(
            from_platform_event(&e, TOPIC, &rules()).unwrap(),
            Some(Provision {
                salesforce_id: "801000000000001AAA".into(),
                idem_key: Some("approve-42".into()),
                correlation_id: Some("corr-1".into()),
            })
        );
    }

    #[test]
    fn other_topics_are_only_recorded() {
        let e = event(&[("OrderId__c", "801000000000001AAA")]);
        assert_eq!(
            from_platform_event(&e, "/event/Other__e", &rules()).unwrap(),
            None
        );
        let off = ProvisionRules::default();
        assert_eq!(from_platform_event(&e, TOPIC, &off).unwrap(), None);
    }

    #[test]
    fn a_missing_or_hostile_order_id_is_unusable() {
        assert_eq!(
            from_platform_event(&event(&[]), TOPIC, &rules()),
            Err(Unusable::MissingField("OrderId__c"))
        );
        let e = event(&[("OrderId__c", "'; DROP TABLE orders;--")]);
        assert!(matches!(
            from_platform_event(&e, TOPIC, &rules()),
            Err(Unusable::BadRecordId(_))
        ));
    }

    #[test]
    fn an_unusable_idem_key_falls_back_and_correlation_ids_are_bounded() {
        let long = "k".repeat(300);
        let corr = format!("a\nb{}", "c".repeat(500));
        let e = event(&[
            ("OrderId__c", "801000000000001"),
            ("IdemKey__c", &long),
            ("CorrelationId__c", &corr),
        ]);
        let p = from_platform_event(&e, TOPIC, &rules()).unwrap().unwrap();
        assert_eq!(p.idem_key, None);
        let c = p.correlation_id.unwrap();
        assert_eq!(c.chars().count(), MAX_CORRELATION_ID);
        assert!(c.starts_with("abc"));
        let e = event(&[
            ("OrderId__c", "801000000000001"),
            ("IdemKey__c", "has space"),
        ]);
        assert_eq!(
            from_platform_event(&e, TOPIC, &rules())
                .unwrap()
                .unwrap()
                .idem_key,
            None
        );
    }

    #[test]
    fn the_status_trigger_matches_the_configured_value_only() {
        assert!(rules().on_status("Activated"));
        assert!(!rules().on_status("Draft"));
        assert!(!ProvisionRules::default().on_status("Activated"));
    }
}
