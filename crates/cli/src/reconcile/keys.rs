//! The shapes of our external ids: an order's is its id, an item's `<order id>-<line number>`.
//! Kept apart because both the Salesforce side (to index what it read) and the comparison (to
//! scope orphans by the time in their id) rely on them, and anything else is not ours.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An order's external id: a hyphenated UUID (what the worker writes), in any case.
pub fn parse_order_key(s: &str) -> Option<Uuid> {
    if s.len() == 36 {
        Uuid::try_parse(s).ok()
    } else {
        None
    }
}

/// An item's external id: `<order id>-<line number>`.
pub fn parse_item_key(s: &str) -> Option<(Uuid, u32)> {
    let (head, tail) = s.split_at_checked(36)?;
    let digits = tail.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parse_order_key(head)?, digits.parse().ok()?))
}

/// When a UUIDv7 was made (what order ids are); `None` for other versions.
pub(crate) fn uuid_time(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_our_shapes() {
        let id = Uuid::now_v7();
        assert_eq!(parse_order_key(&id.to_string()), Some(id));
        assert_eq!(
            parse_order_key(&id.to_string().to_uppercase()),
            Some(id),
            "Salesforce matches external ids case-insensitively"
        );
        assert_eq!(parse_order_key(&id.simple().to_string()), None);
        assert_eq!(parse_order_key("ORD-1"), None);
        assert_eq!(parse_item_key(&format!("{id}-3")), Some((id, 3)));
        assert_eq!(parse_item_key(&format!("{id}-12")), Some((id, 12)));
        for bad in [
            format!("{id}"),
            format!("{id}-"),
            format!("{id}-x"),
            format!("{id}-+1"),
            format!("{id}--1"),
            format!("{id}-99999999999"),
            "é".repeat(20),
        ] {
            assert_eq!(parse_item_key(&bad), None, "{bad}");
        }
    }
}
