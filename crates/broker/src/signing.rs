//! HMAC-SHA256 signatures on the messages orderbridge's services send one another, so that a
//! message someone publishes straight onto the broker (a forged order event, a forged status
//! report) is dead-lettered instead of reaching Salesforce or Postgres.
//!
//! Who signs and who verifies:
//!
//! ```text
//!  outbox-relay ──signs──► order events ──► sync-worker verifies before any Salesforce write
//!  sync-worker  ──signs──► status reports ──► status applier (outbox-relay) verifies before Postgres
//!  sync-worker  re-signs the retry, requeue and dead-letter copies of messages it verified
//!  orderbridge dlq replay re-signs letters that verify (or, on request, letters that do not)
//! ```
//!
//! What is signed (scheme version 1), with the secret of the key the
//! [`headers::SIGNATURE_KEY_ID`] header names:
//!
//! ```text
//!  HMAC-SHA256(secret, field("orderbridge-signature-v1") ‖ field(key id) ‖ field(message_id)
//!                      ‖ field(type) ‖ field(body))
//!  field(x) = the length of x in bytes, as an unsigned 64-bit big-endian integer, then x
//! ```
//!
//! `message_id` and `type` are the AMQP properties (absent counts as empty); the
//! [`headers::SIGNATURE`] header holds the MAC as 64 lowercase hex digits. The length prefixes
//! make the concatenation unambiguous. The routing key and the other headers are not signed:
//! retries, dead-lettering and replays change them (the broker itself rewrites the routing key
//! when a retry tier's message expires back into the work queue), while the body, the id and the
//! type travel unchanged. Nothing a consumer acts on lives outside the signed part: the worker
//! and the applier read the order or the report from the body, whose `type` and `version` say what
//! it is, so a genuine status report replayed onto the work queue is still only a status report
//! (undecodable there).
//!
//! Keys are `id:secret` ([`SigningConfig`]): the id travels in every message, the secret never
//! does. One key signs; the others listed (`BROKER_SIGNING_KEYS_PREVIOUS`) are accepted too, so a
//! key is rotated without stopping anything, in three rolling steps: (1) every process accepts
//! the new key (old one signing, new one listed); (2) every process signs with the new key (old
//! one listed); (3) once nothing signed with the old key can still arrive (the longest retry
//! tier, plus any backlog; dead letters are re-signed when they are replayed), the old key goes.

use clap::Args;
use hmac::{Hmac, Mac};
use lapin::BasicProperties;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::headers::{self, long_string};

/// The first field of every signed message: a change of scheme changes the version here.
const SCHEME: &str = "orderbridge-signature-v1";
/// Shortest secret accepted, in bytes (HMAC-SHA256's own output size).
const MIN_SECRET_BYTES: usize = 32;
/// Longest key id accepted; ids are labels, and travel in every message.
const MAX_KEY_ID_BYTES: usize = 64;

/// The development key that `scripts/dev`, `docker-compose.yml` and the test harnesses use. It is
/// public, so it authenticates nothing: a process signing with it logs a warning at start-up.
pub const DEV_SIGNING_KEY: &str = "dev:orderbridge-development-signing-key-not-secret";

type HmacSha256 = Hmac<Sha256>;

/// The signing keys, flattened into [`crate::BrokerConfig`]. Read by the processes that sign or
/// verify (outbox-relay, sync-worker, `orderbridge dlq replay`); they refuse to start without a
/// key, so unsigned messages are never accepted by default.
#[derive(Debug, Clone, Default, Args)]
pub struct SigningConfig {
    /// The key that signs every message this process publishes, and is accepted when verifying:
    /// `id:secret`, the id 1 to 64 of `A-Z a-z 0-9 . _ -`, the secret at least 32 bytes (no
    /// commas). Make one with `orderbridge broker gen-key`. Required by the outbox-relay, the
    /// sync-worker and `orderbridge dlq replay`.
    #[arg(
        long,
        env = "BROKER_SIGNING_KEY",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub broker_signing_key: Option<SecretString>,
    /// Keys also accepted when verifying, never used to sign: during a rotation, the key being
    /// replaced (or, first, the one coming in). Comma-separated `id:secret` entries.
    #[arg(
        long,
        env = "BROKER_SIGNING_KEYS_PREVIOUS",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub broker_signing_keys_previous: Option<SecretString>,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

impl SigningConfig {
    /// Settings with `key` as the signing key and nothing else (tests, tools).
    pub fn with_key(key: &str) -> Self {
        Self {
            broker_signing_key: Some(SecretString::from(key)),
            broker_signing_keys_previous: None,
        }
    }

    /// The keys, parsed and checked. Fails without a signing key: a process that verifies or
    /// signs must not run without one.
    pub fn keyring(&self) -> Result<Keyring, SigningError> {
        let current = self
            .broker_signing_key
            .as_ref()
            .ok_or(SigningError::Missing)?;
        let signing = Key::parse(current.expose_secret(), "BROKER_SIGNING_KEY")?;
        let mut previous: Vec<Key> = Vec::new();
        if let Some(list) = &self.broker_signing_keys_previous {
            for entry in list
                .expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
            {
                let key = Key::parse(entry, "BROKER_SIGNING_KEYS_PREVIOUS")?;
                if key.id == signing.id || previous.iter().any(|k| k.id == key.id) {
                    return Err(SigningError::DuplicateId(key.id));
                }
                previous.push(key);
            }
        }
        Ok(Keyring { signing, previous })
    }

    /// These settings as the environment variables that set them (secrets exposed: for a child
    /// process only).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(k) = &self.broker_signing_key {
            env.push(("BROKER_SIGNING_KEY", k.expose_secret().to_owned()));
        }
        if let Some(k) = &self.broker_signing_keys_previous {
            env.push(("BROKER_SIGNING_KEYS_PREVIOUS", k.expose_secret().to_owned()));
        }
        env
    }
}

/// A signing key setting that cannot be used. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error(
        "BROKER_SIGNING_KEY is not set: every message between the services is signed, and \
         this process needs the key (make one with `orderbridge broker gen-key`; for local \
         development scripts/dev and docker-compose.yml set one)"
    )]
    Missing,
    #[error("{setting}: an entry is not `id:secret`")]
    NotIdAndSecret { setting: &'static str },
    #[error("{setting}: key id {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadId { setting: &'static str, id: String },
    #[error("{setting}: the secret of key {id:?} is shorter than 32 bytes")]
    ShortSecret { setting: &'static str, id: String },
    #[error("BROKER_SIGNING_KEYS_PREVIOUS: key id {0:?} is given twice (or is the signing key's)")]
    DuplicateId(String),
}

/// Why a message's signature is not accepted. The message is dead-lettered with
/// [`headers::DeadLetterReason::BadSignature`] and [`Self::code`] as its error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the message is not signed (no {} header)", headers::SIGNATURE)]
    Missing,
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("signed with key {0:?}, which is not among the accepted keys")]
    UnknownKey(String),
    #[error(
        "the signature does not match (key {0:?}): the body, message id or type was changed, \
         or it was signed with another secret"
    )]
    Mismatch(String),
}

impl SignatureError {
    /// The error code written in the dead letter's [`headers::ERROR_CODE`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "SIGNATURE_MISSING",
            Self::Malformed(_) => "SIGNATURE_MALFORMED",
            Self::UnknownKey(_) => "SIGNATURE_UNKNOWN_KEY",
            Self::Mismatch(_) => "SIGNATURE_MISMATCH",
        }
    }
}

#[derive(Clone)]
struct Key {
    id: String,
    /// Keyed once; cloned for every message (cheaper than keying again).
    mac: HmacSha256,
}

impl Key {
    fn parse(entry: &str, setting: &'static str) -> Result<Self, SigningError> {
        let (id, secret) = entry
            .split_once(':')
            .ok_or(SigningError::NotIdAndSecret { setting })?;
        let id_ok = !id.is_empty()
            && id.len() <= MAX_KEY_ID_BYTES
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(SigningError::BadId {
                setting,
                id: clip(id),
            });
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SigningError::ShortSecret {
                setting,
                id: id.to_owned(),
            });
        }
        let mac = HmacSha256::new_from_slice(secret.as_bytes())
            .map_err(|_| SigningError::NotIdAndSecret { setting })?;
        Ok(Self {
            id: id.to_owned(),
            mac,
        })
    }
}

/// The keys of one process: one signs, it and the previous ones verify. Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    signing: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: the secrets stay out of every log line.
        f.debug_struct("Keyring")
            .field("signing", &self.signing_key_id())
            .field(
                "accepted",
                &self.keys().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring of one key, `id:secret` (tests, tools).
    pub fn single(key: &str) -> Result<Self, SigningError> {
        SigningConfig::with_key(key).keyring()
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> &str {
        &self.signing.id
    }

    /// Every accepted key, the signing key first.
    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.signing).chain(&self.previous)
    }

    /// Whether the signing key is the public [`DEV_SIGNING_KEY`] (worth a warning outside
    /// development).
    pub fn signs_with_dev_key(&self) -> bool {
        let Ok(dev) = Keyring::single(DEV_SIGNING_KEY) else {
            return false;
        };
        let probe = BasicProperties::default();
        self.signing.id == dev.signing.id
            && signature(&self.signing, &probe, b"probe")
                == signature(&dev.signing, &probe, b"probe")
    }

    /// `properties` with the signature headers of `body` under the signing key (replacing any
    /// earlier signature).
    pub fn sign(&self, properties: BasicProperties, body: &[u8]) -> BasicProperties {
        let mac = signature(&self.signing, &properties, body);
        let mut table = properties.headers().clone().unwrap_or_default();
        table.insert(
            headers::SIGNATURE_KEY_ID.into(),
            long_string(self.signing_key_id()),
        );
        table.insert(headers::SIGNATURE.into(), long_string(&to_hex(&mac)));
        properties.with_headers(table)
    }

    /// Checks the signature of a received message; returns the id of the key that signed it.
    /// The MAC is compared in constant time ([`Mac::verify_slice`]), so the time it takes tells
    /// a forger nothing about how much of a guess was right.
    pub fn verify(
        &self,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<&str, SignatureError> {
        let id = headers::text(properties, headers::SIGNATURE_KEY_ID);
        let signature = headers::text(properties, headers::SIGNATURE);
        let (id, signature) = match (id, signature) {
            (None, None) => return Err(SignatureError::Missing),
            (None, Some(_)) => return Err(SignatureError::Malformed("no key id")),
            (Some(_), None) => return Err(SignatureError::Missing),
            (Some(id), Some(s)) => (id, s),
        };
        let signature =
            from_hex(&signature).ok_or(SignatureError::Malformed("not 64 hex digits"))?;
        let key = self
            .keys()
            .find(|k| k.id == id)
            .ok_or_else(|| SignatureError::UnknownKey(clip(&id)))?;
        mac(key, properties, body)
            .verify_slice(&signature)
            .map_err(|_| SignatureError::Mismatch(key.id.clone()))?;
        Ok(&key.id)
    }
}

fn signature(key: &Key, properties: &BasicProperties, body: &[u8]) -> Vec<u8> {
    mac(key, properties, body).finalize().into_bytes().to_vec()
}

/// The MAC of the signed fields under `key`.
fn mac(key: &Key, properties: &BasicProperties, body: &[u8]) -> HmacSha256 {
    let mut mac = key.mac.clone();
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or_default();
    let kind = properties
        .kind()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or_default();
    for field in [
        SCHEME.as_bytes(),
        key.id.as_bytes(),
        message_id.as_bytes(),
        kind.as_bytes(),
        body,
    ] {
        let len = u64::try_from(field.len()).unwrap_or(u64::MAX);
        mac.update(&len.to_be_bytes());
        mac.update(field);
    }
    mac
}

/// A new random key, `id:` and 64 hex digits (256 bits).
pub fn generate_key(id: &str) -> Result<SecretString, SigningError> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{id}:{}", to_hex(&secret));
    // Check the id the same way a process reading the key will.
    Key::parse(&key, "--id")?;
    Ok(SecretString::from(key))
}

/// An id from a message, bounded and printable, for errors and logs.
fn clip(id: &str) -> String {
    id.chars()
        .take(MAX_KEY_ID_BYTES)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// 64 hex digits (either case) as 32 bytes; anything else is `None`.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    const K1: &str = "k1:0123456789abcdef0123456789abcdef";
    const K2: &str = "k2:fedcba9876543210fedcba9876543210";

    fn props() -> BasicProperties {
        BasicProperties::default()
            .with_message_id("0190aa00-0000-7000-8000-000000000001".into())
            .with_type("order.submitted".into())
    }

    fn ring(current: &str, previous: Option<&str>) -> Keyring {
        SigningConfig {
            broker_signing_key: Some(current.into()),
            broker_signing_keys_previous: previous.map(SecretString::from),
        }
        .keyring()
        .unwrap()
    }

    #[test]
    fn a_signed_message_verifies_with_the_key_that_signed_it() {
        let k = ring(K1, None);
        let p = k.sign(props(), b"{\"a\":1}");
        assert_eq!(k.verify(&p, b"{\"a\":1}"), Ok("k1"));
        let sig = headers::text(&p, headers::SIGNATURE).unwrap();
        assert_eq!(sig.len(), 64);
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn signing_keeps_the_other_headers_and_replaces_an_old_signature() {
        let mut table = FieldTable::default();
        table.insert("aggregate_id".into(), long_string("a1"));
        let p = ring(K2, None).sign(props().with_headers(table), b"x");
        let p = ring(K1, None).sign(p, b"x");
        assert_eq!(headers::text(&p, "aggregate_id").as_deref(), Some("a1"));
        assert_eq!(
            headers::text(&p, headers::SIGNATURE_KEY_ID).as_deref(),
            Some("k1")
        );
        assert_eq!(ring(K1, None).verify(&p, b"x"), Ok("k1"));
    }

    #[test]
    fn another_secret_under_the_same_id_does_not_verify() {
        let forger = ring("k1:not-the-real-secret-but-long-enough!!", None);
        let p = forger.sign(props(), b"body");
        assert_eq!(
            ring(K1, None).verify(&p, b"body"),
            Err(SignatureError::Mismatch("k1".into()))
        );
    }

    #[test]
    fn a_changed_body_id_or_type_does_not_verify() {
        let k = ring(K1, None);
        let p = k.sign(props(), b"{\"total\":\"10.00\"}");
        let mismatch = Err(SignatureError::Mismatch("k1".into()));
        assert_eq!(k.verify(&p, b"{\"total\":\"99.00\"}"), mismatch);
        assert_eq!(k.verify(&p, b""), mismatch);
        let other_id = p.clone().with_message_id("another".into());
        assert_eq!(k.verify(&other_id, b"{\"total\":\"10.00\"}"), mismatch);
        let other_type = p.clone().with_type("order.sync_status".into());
        assert_eq!(k.verify(&other_type, b"{\"total\":\"10.00\"}"), mismatch);
        // The fields are length-prefixed: moving bytes from one field to the next is a change.
        let a = k.sign(
            BasicProperties::default()
                .with_message_id("ab".into())
                .with_type("c".into()),
            b"",
        );
        let shifted = a.clone().with_message_id("a".into()).with_type("bc".into());
        assert_eq!(k.verify(&shifted, b""), mismatch);
    }

    #[test]
    fn unsigned_unknown_and_malformed_are_told_apart() {
        let k = ring(K1, None);
        assert_eq!(k.verify(&props(), b"x"), Err(SignatureError::Missing));
        let by_k2 = ring(K2, None).sign(props(), b"x");
        assert_eq!(
            k.verify(&by_k2, b"x"),
            Err(SignatureError::UnknownKey("k2".into()))
        );
        let mut table = FieldTable::default();
        table.insert(headers::SIGNATURE_KEY_ID.into(), long_string("k1"));
        table.insert(headers::SIGNATURE.into(), long_string("zz"));
        let bad = props().with_headers(table.clone());
        assert_eq!(
            k.verify(&bad, b"x").unwrap_err().code(),
            "SIGNATURE_MALFORMED"
        );
        table.insert(headers::SIGNATURE.into(), AMQPValue::LongLongInt(7));
        assert_eq!(
            k.verify(&props().with_headers(table), b"x"),
            Err(SignatureError::Missing)
        );
        let codes = [
            SignatureError::Missing,
            SignatureError::Malformed("x"),
            SignatureError::UnknownKey("k".into()),
            SignatureError::Mismatch("k".into()),
        ]
        .map(|e| e.code());
        assert_eq!(
            codes,
            [
                "SIGNATURE_MISSING",
                "SIGNATURE_MALFORMED",
                "SIGNATURE_UNKNOWN_KEY",
                "SIGNATURE_MISMATCH"
            ]
        );
    }

    #[test]
    fn rotation_accepts_the_previous_key_and_signs_with_the_new_one() {
        let old = ring(K1, None);
        let rotating = ring(K2, Some(&format!(" {K1} ,")));
        let p = old.sign(props(), b"x");
        assert_eq!(rotating.verify(&p, b"x"), Ok("k1"));
        let q = rotating.sign(props(), b"x");
        assert_eq!(
            headers::text(&q, headers::SIGNATURE_KEY_ID).as_deref(),
            Some("k2")
        );
        // A process that does not accept the new key yet refuses it: rotation step 1 exists
        // for this (every process accepts the new key before any signs with it).
        assert_eq!(
            old.verify(&q, b"x"),
            Err(SignatureError::UnknownKey("k2".into()))
        );
        // Once the previous key is dropped, its messages no longer verify.
        assert_eq!(
            ring(K2, None).verify(&p, b"x"),
            Err(SignatureError::UnknownKey("k1".into()))
        );
    }

    /// The comparison is `Mac::verify_slice` (subtle's constant-time equality): a signature
    /// wrong in its first byte and one wrong only in its last are refused alike, and so is a
    /// prefix of the right one. (Timing itself is not measured in a test.)
    #[test]
    fn near_misses_are_refused_like_any_other_wrong_signature() {
        let k = ring(K1, None);
        let p = k.sign(props(), b"x");
        let good = headers::text(&p, headers::SIGNATURE).unwrap();
        let flip = |i: usize| {
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).unwrap()
        };
        for wrong in [flip(0), flip(63)] {
            let mut table = p.headers().clone().unwrap();
            table.insert(headers::SIGNATURE.into(), long_string(&wrong));
            assert_eq!(
                k.verify(&p.clone().with_headers(table), b"x"),
                Err(SignatureError::Mismatch("k1".into()))
            );
        }
        let mut table = p.headers().clone().unwrap();
        table.insert(headers::SIGNATURE.into(), long_string(&good[..62]));
        assert_eq!(
            k.verify(&p.clone().with_headers(table), b"x")
                .unwrap_err()
                .code(),
            "SIGNATURE_MALFORMED"
        );
    }

    #[test]
    fn bad_key_settings_are_refused_without_showing_the_secret() {
        let err = |key: &str, previous: Option<&str>| {
            SigningConfig {
                broker_signing_key: Some(key.into()),
                broker_signing_keys_previous: previous.map(SecretString::from),
            }
            .keyring()
            .unwrap_err()
        };
        assert_eq!(
            SigningConfig::default().keyring().unwrap_err(),
            SigningError::Missing
        );
        assert!(matches!(
            err("no-colon-here-but-long-enough-000000000", None),
            SigningError::NotIdAndSecret { .. }
        ));
        assert!(matches!(
            err(":0123456789abcdef0123456789abcdef", None),
            SigningError::BadId { .. }
        ));
        assert!(matches!(
            err("a b:0123456789abcdef0123456789abcdef", None),
            SigningError::BadId { .. }
        ));
        let short = err("k1:short-secret", None);
        assert!(matches!(short, SigningError::ShortSecret { .. }));
        assert!(!short.to_string().contains("short-secret"));
        assert_eq!(err(K1, Some(K1)), SigningError::DuplicateId("k1".into()));
        let debug = format!("{:?}", ring(K1, Some(K2)));
        assert!(debug.contains("k1") && debug.contains("k2"));
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    #[test]
    fn generated_keys_are_usable_and_the_dev_key_is_recognised() {
        let key = generate_key("2026-05").unwrap();
        let k = Keyring::single(key.expose_secret()).unwrap();
        assert_eq!(k.signing_key_id(), "2026-05");
        assert_eq!(key.expose_secret().len(), "2026-05:".len() + 64);
        assert_ne!(
            generate_key("a").unwrap().expose_secret(),
            generate_key("a").unwrap().expose_secret()
        );
        assert!(generate_key("no spaces").is_err());
        assert!(!k.signs_with_dev_key());
        assert!(
            Keyring::single(DEV_SIGNING_KEY)
                .unwrap()
                .signs_with_dev_key()
        );
        // Same id, other secret: not the dev key.
        assert!(
            !Keyring::single("dev:another-secret-of-at-least-32-bytes!!")
                .unwrap()
                .signs_with_dev_key()
        );
    }
}
