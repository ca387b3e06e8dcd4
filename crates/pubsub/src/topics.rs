//! Topic names: `/data/…ChangeEvent` for Change Data Capture, `/event/…__e` for platform events.

/// The channel carrying the change events of every object selected for CDC.
pub const ALL_CHANGE_EVENTS: &str = "/data/ChangeEvents";

/// The CDC topic of one object: `/data/OrderChangeEvent` for a standard object,
/// `/data/Name__ChangeEvent` for a custom object `Name__c`.
pub fn change_event_topic(object: &str) -> String {
    format!("/data/{}", change_event_name(object))
}

/// The change event's own name (the Avro record name): `OrderChangeEvent`, `Name__ChangeEvent`.
pub fn change_event_name(object: &str) -> String {
    match object.strip_suffix("__c") {
        Some(base) => format!("{base}__ChangeEvent"),
        None => format!("{object}ChangeEvent"),
    }
}

/// The topic of a platform event: `/event/Name__e`.
pub fn platform_event_topic(event: &str) -> String {
    format!("/event/{event}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(change_event_topic("Order"), "/data/OrderChangeEvent");
        assert_eq!(
            change_event_topic("Invoice__c"),
            "/data/Invoice__ChangeEvent"
        );
        assert_eq!(
            platform_event_topic("OrderProvisionRequested__e"),
            "/event/OrderProvisionRequested__e"
        );
    }
}
