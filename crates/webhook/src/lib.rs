//! Webhook signatures in the [Standard Webhooks](https://www.standardwebhooks.com/) scheme, for
//! the fulfilment requests orderbridge sends and the callbacks it receives. Pure: no I/O, no
//! clock but the one the caller passes in ([`Webhook::verify_at`]) or [`std::time::SystemTime`].
//!
//! ```text
//! webhook-id:        <request id>                 (unique per message; the receiver dedupes on it)
//! webhook-timestamp: <unix seconds>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")> [v1,<…> …]
//! ```
//!
//! - The id and the timestamp are signed with the body, so neither can be changed or reused
//!   with another body; the timestamp must lie within a tolerance (default 300 s) of the
//!   receiver's clock, either way, so a captured request cannot be replayed later.
//! - Keys ([`Webhook::from_secrets`]): `whsec_<base64>` (the scheme's format; the key is the
//!   decoded bytes) or any other text (its bytes), at least [`MIN_KEY_BYTES`] bytes, several
//!   comma-separated. A sender signs with every key it has (one `v1,` entry each, space
//!   separated); a receiver accepts a message any of its keys signed. Rotating: (1) give both
//!   sides new + old, (2) drop the old one from both.
//! - Comparisons are constant-time; hostile headers (huge, not UTF-8, an unknown scheme such as
//!   `v2,`) are refused with a typed [`VerifyError`], never a panic.

mod key;
mod verify;

pub use key::{KeyError, MIN_KEY_BYTES};
pub use verify::{Headers, Verified, VerifyError};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The header carrying the message id.
pub const HEADER_ID: &str = "webhook-id";
/// The header carrying the unix time (seconds) the message was signed at.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The header carrying a fulfilment request's idempotency key (not part of the scheme: the
/// receiver dedupes on it; it is not signed, the body carries it too as `idem_key`).
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How far a timestamp may lie from the receiver's clock, either way, unless configured.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The development key `scripts/dev` and the tests use. It is public, so it authenticates
/// nothing: never use it outside a local run.
pub const DEV_SECRET: &str = "whsec_b3JkZXJicmlkZ2UtZGV2LWZ1bGZpbG1lbnQta2V5LW5vdC1zZWNyZXQ=";

/// The signature scheme this crate writes and reads (others are skipped when verifying).
const SCHEME: &str = "v1";

/// The headers of a signed message, as [`Webhook::sign`] makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// [`HEADER_ID`]'s value.
    pub id: String,
    /// [`HEADER_TIMESTAMP`]'s value.
    pub timestamp: String,
    /// [`HEADER_SIGNATURE`]'s value.
    pub signature: String,
}

impl SignedHeaders {
    /// The three headers as (name, value) pairs.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (HEADER_ID, self.id.as_str()),
            (HEADER_TIMESTAMP, self.timestamp.as_str()),
            (HEADER_SIGNATURE, self.signature.as_str()),
        ]
    }
}

/// Signs and verifies with a set of keys.
#[derive(Clone)]
pub struct Webhook {
    keys: Vec<key::Key>,
    tolerance: Duration,
}

impl std::fmt::Debug for Webhook {
    // Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Webhook {
    /// Keys from a comma-separated list of secrets (`whsec_<base64>` or plain text), with the
    /// default tolerance. Fails on an empty list or a key that is too short or not base64.
    pub fn from_secrets(secrets: &str) -> Result<Self, KeyError> {
        let keys = secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| key::Key::parse(s, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            keys,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// The same keys with another tolerance.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// The headers for `body` sent as message `id` at `timestamp` (unix seconds), signed with
    /// every key.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> SignedHeaders {
        let timestamp = timestamp.to_string();
        let signature = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{SCHEME},{}",
                    STANDARD.encode(k.tag(id.as_bytes(), timestamp.as_bytes(), body))
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        SignedHeaders {
            id: id.to_owned(),
            timestamp,
            signature,
        }
    }

    /// [`Self::sign`] at the current time.
    pub fn sign_now(&self, id: &str, body: &[u8]) -> SignedHeaders {
        self.sign(id, unix_now(SystemTime::now()), body)
    }

    /// Checks a received message against the current time; see [`Self::verify_at`].
    pub fn verify(&self, headers: Headers<'_>, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, SystemTime::now())
    }
}

/// Seconds since the epoch (0 for a clock set before it).
fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
