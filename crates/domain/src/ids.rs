//! Typed ids. An order id, an API client's id and an event id are all UUIDs; as bare `Uuid`s
//! they are interchangeable to the compiler, and a function taking `(client_id, order_id)` can be
//! called the other way round without a word (it happened: `get_order` took them in opposite
//! orders in two crates). As newtypes they cannot be mixed up.
//!
//! On the wire and in Postgres they are plain UUIDs (`#[serde(transparent)]`; the database
//! layer binds [`OrderId::get`] and friends, since this crate knows no database driver).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID that is known to be this kind of id.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID, for the database and the wire.
            pub const fn get(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// An order's id (a UUIDv7, so ids sort by creation).
    OrderId
);

impl OrderId {
    /// A new id for an order created now.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

uuid_id!(
    /// An API client's id: whose orders these are.
    ClientId
);

uuid_id!(
    /// An event's id (the envelope `id`, the AMQP `message_id`): consumers deduplicate on it.
    EventId
);

impl EventId {
    /// A new id for an event written now.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_are_plain_uuids_on_the_wire() {
        let id = OrderId::new_v7();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.get()));
        assert_eq!(serde_json::from_str::<OrderId>(&json).unwrap(), id);
        assert_eq!(id.to_string().parse::<OrderId>().unwrap(), id);
        assert!("not-a-uuid".parse::<ClientId>().is_err());
    }
}
