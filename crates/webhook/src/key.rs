//! Signing keys: parsing a secret, and the MAC of one message under one key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes (the scheme's own lower bound).
pub const MIN_KEY_BYTES: usize = 24;

/// The prefix of a key in the scheme's format; the rest is the key in base64.
const PREFIX: &str = "whsec_";

/// Why a secret cannot be used. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no signing secret given")]
    Empty,
    #[error("secret #{0}: `whsec_` is not followed by base64")]
    NotBase64(usize),
    #[error("secret #{0} is shorter than {MIN_KEY_BYTES} bytes")]
    TooShort(usize),
}

/// One key, keyed once (the MAC state is cloned for every message, cheaper than keying again;
/// the raw secret is not kept).
#[derive(Clone)]
pub(crate) struct Key {
    mac: HmacSha256,
}

impl Key {
    /// `position` (1-based) names the secret in errors.
    pub(crate) fn parse(secret: &str, position: usize) -> Result<Self, KeyError> {
        let bytes = match secret.strip_prefix(PREFIX) {
            Some(b64) => STANDARD
                .decode(b64)
                .map_err(|_| KeyError::NotBase64(position))?,
            None => secret.as_bytes().to_vec(),
        };
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(position));
        }
        // HMAC takes keys of any length.
        let mac = HmacSha256::new_from_slice(&bytes).map_err(|_| KeyError::TooShort(position))?;
        Ok(Self { mac })
    }

    /// HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub(crate) fn tag(&self, id: &[u8], timestamp: &[u8], body: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(id);
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}
