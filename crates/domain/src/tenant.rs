//! Which API client an order belongs to, as far as Salesforce is concerned.
//!
//! Orders and their items are keyed in Salesforce by the order id, unique across clients. A
//! customer's account is not: it is keyed by the client's own customer id, and two clients may
//! both have a `CUST-42`. Keyed by that id alone, client B's order renamed client A's account.
//! So every key not made from the order id starts with the client's **external-id prefix**
//! (`alpha:CUST-42`), stored with the client in Postgres (`api_clients.external_id_prefix`) and
//! carried by every `order.submitted` event ([`ClientScope`]).
//!
//! A prefix is empty (the keys of a deployment that had one client before prefixes existed,
//! kept as they were) or 1 to 40 letters, digits, `-` and `_` followed by `:`. Prefixes are
//! unique regardless of case (Salesforce matches external ids case-insensitively). Since a
//! non-empty prefix has exactly one `:`, at its end, two keys `prefix + id` of different clients
//! can only be equal if one prefix is empty and that client's id contains a `:`; such ids are
//! therefore refused for a client with an empty prefix ([`ClientScope::admits`]).

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;

/// What ends every non-empty prefix and appears nowhere else in it.
pub const PREFIX_SEPARATOR: char = ':';
/// Longest prefix, separator excluded.
pub const MAX_PREFIX_LEN: usize = 40;

/// The API client an order was accepted from, as events carry it (`data.client`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClientScope {
    pub id: ClientId,
    /// Starts the Salesforce external id of every record not keyed by the order id (the
    /// customer's account): `alpha:` makes `CUST-42` the account `alpha:CUST-42`. Empty, or 1
    /// to 40 letters, digits, `-` and `_` followed by `:`.
    #[schemars(pattern(r"^([A-Za-z0-9_-]{1,40}:)?$"))]
    pub external_id_prefix: String,
}

impl ClientScope {
    /// Whether `value` may follow this client's prefix in a key without possibly equalling
    /// another client's key: always with a prefix; without one, only if it has no `:`.
    pub fn admits(&self, value: &str) -> bool {
        !self.external_id_prefix.is_empty() || !value.contains(PREFIX_SEPARATOR)
    }
}

/// Whether `prefix` has the shape every stored prefix has (the database checks the same).
pub fn is_valid_prefix(prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let Some(body) = prefix.strip_suffix(PREFIX_SEPARATOR) else {
        return false;
    };
    (1..=MAX_PREFIX_LEN).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_have_one_separator_at_the_end() {
        for ok in [
            "",
            "alpha:",
            "a:",
            "0190f0a27c417b3e9d552f1c0e6a1b11:",
            "x_y-z:",
        ] {
            assert!(is_valid_prefix(ok), "{ok}");
        }
        for bad in [
            "alpha",
            ":",
            "a:b:",
            "a b:",
            "ä:",
            &format!("{}:", "a".repeat(41)),
        ] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn an_empty_prefix_admits_no_separator() {
        let scope = |p: &str| ClientScope {
            id: ClientId::from_uuid(uuid::Uuid::nil()),
            external_id_prefix: p.into(),
        };
        assert!(scope("alpha:").admits("beta:CUST-42"));
        assert!(scope("").admits("CUST-42"));
        assert!(!scope("").admits("beta:CUST-42"));
    }
}
