//! Reading a delivery: the broker signature first (only what the relay signed is acted on),
//! then the envelope. The message is only a nudge naming a request: everything the worker acts
//! on is read from the request's row.

use lapin::message::Delivery;
use orderbridge_broker::{Keyring, SignatureError, headers};
use orderbridge_domain::fulfilment::FulfilmentEvent;
use orderbridge_domain::{DecodeError, Envelope};

/// One delivery, read.
pub struct Message {
    pub delivery: Delivery,
    /// `fulfilment.requested` or `fulfilment.result` v1, or why it is not acted on.
    pub read: Result<Envelope<FulfilmentEvent>, Unreadable>,
    /// Salesforce write-back attempts of this message so far (its `x-orderbridge-attempts`);
    /// the calls to the fulfilment system are counted in the request row instead.
    pub attempts: u32,
}

/// Why a delivery is not acted on.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Unreadable {
    /// The error code of the dead letter.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(e) => e.code(),
            Self::Decode(DecodeError::Unsupported { .. }) => "UNSUPPORTED_EVENT",
            Self::Decode(DecodeError::Malformed(_)) => "MALFORMED_MESSAGE",
        }
    }
}

/// Checks the signature, then decodes.
pub fn read(delivery: Delivery, keyring: &Keyring) -> Message {
    let attempts = headers::count(&delivery.properties, headers::ATTEMPTS).unwrap_or(0);
    let read = match keyring.verify(&delivery.properties, &delivery.data) {
        Err(e) => Err(Unreadable::Signature(e)),
        Ok(_) => FulfilmentEvent::decode(&delivery.data).map_err(Unreadable::Decode),
    };
    Message {
        delivery,
        read,
        attempts,
    }
}
