//! Salesforce Order `Status` values → orderbridge business statuses (`SUBSCRIBER_STATUS_MAP`),
//! shared by the subscriber (change events) and `orderbridge reconcile statuses` (SOQL reads), so
//! both name a status the same way.
//!
//! Listed values map as configured; any other value is lower-cased with spaces (and any other
//! character that is not a letter, digit, `_` or `-`) turned into `_`, so a status an admin adds
//! in Salesforce (`In Fulfilment`) reaches the API as `in_fulfilment` without a redeploy.

use std::collections::BTreeMap;

/// Longest status (in bytes) the map accepts or produces; longer Salesforce values are refused
/// (a picklist value is at most 255 characters, but nothing sensible is that long).
pub const MAX_STATUS_LEN: usize = 64;

/// The map, parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMap(BTreeMap<String, String>);

/// Why `SUBSCRIBER_STATUS_MAP` was refused, or a value cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusMapError {
    #[error("entry {0:?} is not `SalesforceValue=status`")]
    NotAPair(String),
    #[error("entry {0:?} has an empty Salesforce value or status")]
    Empty(String),
    #[error("Salesforce value {0:?} is mapped twice")]
    Duplicate(String),
    #[error(
        "status {0:?} must be 1-{MAX_STATUS_LEN} lower-case letters, digits, `_` or `-`, starting with a letter"
    )]
    BadStatus(String),
    #[error("Salesforce value is empty, too long or holds control characters")]
    BadValue,
}

impl Default for StatusMap {
    /// `Draft=submitted,Activated=activated`.
    fn default() -> Self {
        Self(BTreeMap::from([
            ("Draft".to_owned(), "submitted".to_owned()),
            ("Activated".to_owned(), "activated".to_owned()),
        ]))
    }
}

impl std::str::FromStr for StatusMap {
    type Err = StatusMapError;

    /// `Draft=submitted,Activated=activated`; entries are added to the defaults and replace
    /// them. Whitespace around entries and around `=` is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = StatusMap::default();
        let mut seen = std::collections::BTreeSet::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (from, to) = entry
                .split_once('=')
                .ok_or_else(|| StatusMapError::NotAPair(entry.to_owned()))?;
            let (from, to) = (from.trim(), to.trim());
            if from.is_empty() || to.is_empty() {
                return Err(StatusMapError::Empty(entry.to_owned()));
            }
            if from.len() > 255 || from.chars().any(char::is_control) {
                return Err(StatusMapError::BadValue);
            }
            if !valid_status(to) {
                return Err(StatusMapError::BadStatus(to.to_owned()));
            }
            if !seen.insert(from.to_owned()) {
                return Err(StatusMapError::Duplicate(from.to_owned()));
            }
            map.0.insert(from.to_owned(), to.to_owned());
        }
        Ok(map)
    }
}

fn valid_status(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STATUS_LEN
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl StatusMap {
    /// The business status for a Salesforce value.
    pub fn map(&self, value: &str) -> Result<String, StatusMapError> {
        if let Some(mapped) = self.0.get(value) {
            return Ok(mapped.clone());
        }
        let value = value.trim();
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(StatusMapError::BadValue);
        }
        let mapped: String = value
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if mapped.len() > MAX_STATUS_LEN {
            return Err(StatusMapError::BadValue);
        }
        Ok(mapped)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_fallback() {
        let m = StatusMap::default();
        assert_eq!(m.map("Draft").unwrap(), "submitted");
        assert_eq!(m.map("Activated").unwrap(), "activated");
        assert_eq!(m.map("In Fulfilment").unwrap(), "in_fulfilment");
        assert_eq!(m.map("Shipped").unwrap(), "shipped");
        assert_eq!(m.map("Größe").unwrap(), "gr__e");
        assert!(m.map("").is_err());
        assert!(m.map("a\u{0}b").is_err());
        assert!(m.map(&"x".repeat(65)).is_err());
    }

    #[test]
    fn configured_entries_replace_defaults() {
        let m: StatusMap = " Activated = live , On Hold=held ".parse().unwrap();
        assert_eq!(m.map("Activated").unwrap(), "live");
        assert_eq!(m.map("On Hold").unwrap(), "held");
        assert_eq!(m.map("Draft").unwrap(), "submitted");
        assert_eq!("".parse::<StatusMap>().unwrap(), StatusMap::default());
    }

    #[test]
    fn hostile_maps_are_refused_with_the_reason() {
        for (bad, why) in [
            ("Draft", "not `SalesforceValue=status`"),
            ("=x", "empty"),
            ("Draft=", "empty"),
            ("Draft=Submitted", "lower-case"),
            ("Draft=a b", "lower-case"),
            ("Draft=1a", "lower-case"),
            ("A=a,A=b", "mapped twice"),
            ("A\u{7}=a", "control"),
        ] {
            let err = bad.parse::<StatusMap>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(
            format!("A={}", "a".repeat(65))
                .parse::<StatusMap>()
                .is_err()
        );
    }
}
