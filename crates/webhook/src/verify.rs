//! Checking a received message: headers present and well-formed, timestamp within the
//! tolerance, and one `v1` signature made by one of our keys.
//!
//! Everything is checked before any MAC is computed except the signatures themselves, and the
//! work per message is bounded ([`MAX_SIGNATURE_HEADER_BYTES`], [`MAX_SIGNATURES`]), so a
//! flood of junk costs little.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use crate::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SCHEME, Webhook, unix_now};

/// Longest message id accepted (bytes).
pub const MAX_ID_BYTES: usize = 256;
/// Longest signature header accepted (bytes): room for a dozen signatures.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;
/// Most signature entries looked at.
pub const MAX_SIGNATURES: usize = 16;
/// Longest timestamp (digits): any unix time in seconds fits.
const MAX_TIMESTAMP_DIGITS: usize = 19;

/// The three headers as received (raw bytes: a header value need not be UTF-8). `None`: the
/// header is absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    pub id: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
}

/// A message whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message id (visible ASCII, at most [`MAX_ID_BYTES`]).
    pub id: String,
    /// When it was signed (unix seconds).
    pub timestamp: u64,
}

/// Why a message is not accepted. Nothing in it comes from the message, so it can be logged
/// and returned as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the {HEADER_TIMESTAMP} header is not a unix time in seconds")]
    BadTimestamp,
    #[error("the message was signed {age_secs} s ago, outside the {tolerance_secs} s window")]
    TooOld { age_secs: u64, tolerance_secs: u64 },
    #[error("the message is dated {ahead_secs} s ahead, outside the {tolerance_secs} s window")]
    TooNew {
        ahead_secs: u64,
        tolerance_secs: u64,
    },
    #[error("no v1 signature matches the message and our keys")]
    NoMatchingSignature,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

impl VerifyError {
    /// A stable, short code (logs, metrics, problem details).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::BadTimestamp => "bad_timestamp",
            Self::TooOld { .. } => "too_old",
            Self::TooNew { .. } => "too_new",
            Self::NoMatchingSignature => "no_matching_signature",
            Self::Malformed(_) => "malformed",
        }
    }
}

impl Webhook {
    /// Checks `body` received with `headers` at `now`: the three headers present; the id 1 to
    /// [`MAX_ID_BYTES`] visible ASCII characters; the timestamp digits within the tolerance of
    /// `now` either way; and among at most [`MAX_SIGNATURES`] space-separated
    /// `scheme,signature` entries (other schemes skipped) one `v1` signature equal, in constant
    /// time, to the MAC of one of our keys.
    pub fn verify_at(
        &self,
        headers: Headers<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let id = headers.id.ok_or(VerifyError::MissingHeader(HEADER_ID))?;
        let timestamp = headers
            .timestamp
            .ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature = headers
            .signature
            .ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;

        if id.is_empty() || id.len() > MAX_ID_BYTES || !id.iter().all(u8::is_ascii_graphic) {
            return Err(VerifyError::Malformed(
                "webhook-id must be 1 to 256 visible ASCII characters",
            ));
        }
        let ts = parse_timestamp(timestamp)?;
        let now = unix_now(now);
        let tolerance_secs = self.tolerance.as_secs();
        if now > ts && now - ts > tolerance_secs {
            return Err(VerifyError::TooOld {
                age_secs: now - ts,
                tolerance_secs,
            });
        }
        if ts > now && ts - now > tolerance_secs {
            return Err(VerifyError::TooNew {
                ahead_secs: ts - now,
                tolerance_secs,
            });
        }

        let candidates = parse_signatures(signature)?;
        if candidates.is_empty() {
            return Err(VerifyError::NoMatchingSignature);
        }
        // Every key's tag is computed and compared with every candidate, match or not, so the
        // time taken says nothing about which one matched.
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            let tag = key.tag(id, timestamp, body);
            for candidate in &candidates {
                matched |= tag.ct_eq(candidate);
            }
        }
        if !bool::from(matched) {
            return Err(VerifyError::NoMatchingSignature);
        }
        Ok(Verified {
            // Checked above: visible ASCII.
            id: String::from_utf8_lossy(id).into_owned(),
            timestamp: ts,
        })
    }
}

fn parse_timestamp(raw: &[u8]) -> Result<u64, VerifyError> {
    if raw.is_empty() || raw.len() > MAX_TIMESTAMP_DIGITS || !raw.iter().all(u8::is_ascii_digit) {
        return Err(VerifyError::BadTimestamp);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(VerifyError::BadTimestamp)
}

/// The decoded `v1` signatures. Entries of other schemes, and `v1` entries that are not
/// base64 of 32 bytes (they cannot match), are skipped.
fn parse_signatures(raw: &[u8]) -> Result<Vec<[u8; 32]>, VerifyError> {
    if raw.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(VerifyError::Malformed("webhook-signature is too long"));
    }
    let raw = std::str::from_utf8(raw)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(VerifyError::Malformed("webhook-signature is not ASCII"))?;
    let mut out = Vec::new();
    for (n, entry) in raw.split(' ').filter(|e| !e.is_empty()).enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(VerifyError::Malformed(
                "webhook-signature has too many entries",
            ));
        }
        let (scheme, value) = entry.split_once(',').ok_or(VerifyError::Malformed(
            "a webhook-signature entry is not `scheme,signature`",
        ))?;
        if scheme != SCHEME {
            continue;
        }
        if let Some(tag) = STANDARD
            .decode(value)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            out.push(tag);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{DEV_SECRET, KeyError, SignedHeaders};

    const T: u64 = 1_764_763_200; // 2025-12-03T12:00:00Z
    const OTHER: &str = "another-secret-of-at-least-24-bytes";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(s: &SignedHeaders) -> Headers<'_> {
        Headers {
            id: Some(s.id.as_bytes()),
            timestamp: Some(s.timestamp.as_bytes()),
            signature: Some(s.signature.as_bytes()),
        }
    }

    fn dev() -> Webhook {
        Webhook::from_secrets(DEV_SECRET).unwrap()
    }

    #[test]
    fn a_signed_message_verifies() {
        let wh = dev();
        let body = br#"{"request_id":"r-1"}"#;
        let signed = wh.sign("msg_1", T, body);
        assert_eq!(signed.timestamp, T.to_string());
        assert!(signed.signature.starts_with("v1,"));
        let v = wh.verify_at(headers(&signed), body, at(T + 10)).unwrap();
        assert_eq!(
            v,
            Verified {
                id: "msg_1".into(),
                timestamp: T
            }
        );
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The test vector of the standard-webhooks reference libraries.
        let wh = Webhook::from_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signed = wh.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(
            signed.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_does_not_verify() {
        let wh = dev();
        let signed = wh.sign("msg_1", T, b"{\"a\":1}");
        assert_eq!(
            wh.verify_at(headers(&signed), b"{\"a\":2}", at(T)),
            Err(VerifyError::NoMatchingSignature)
        );
        let mut other_id = signed.clone();
        other_id.id = "msg_2".into();
        assert_eq!(
            wh.verify_at(headers(&other_id), b"{\"a\":1}", at(T)),
            Err(VerifyError::NoMatchingSignature)
        );
        let mut other_ts = signed.clone();
        other_ts.timestamp = (T + 1).to_string();
        assert_eq!(
            wh.verify_at(headers(&other_ts), b"{\"a\":1}", at(T)),
            Err(VerifyError::NoMatchingSignature)
        );
        // Signed with another key.
        let theirs = Webhook::from_secrets(OTHER)
            .unwrap()
            .sign("msg_1", T, b"{\"a\":1}");
        assert_eq!(
            wh.verify_at(headers(&theirs), b"{\"a\":1}", at(T)),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn replays_outside_the_window_are_refused_both_ways() {
        let wh = dev().with_tolerance(Duration::from_secs(300));
        let signed = wh.sign("msg_1", T, b"x");
        assert!(wh.verify_at(headers(&signed), b"x", at(T + 300)).is_ok());
        assert!(wh.verify_at(headers(&signed), b"x", at(T - 300)).is_ok());
        assert_eq!(
            wh.verify_at(headers(&signed), b"x", at(T + 301)),
            Err(VerifyError::TooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            wh.verify_at(headers(&signed), b"x", at(T - 3600)),
            Err(VerifyError::TooNew {
                ahead_secs: 3600,
                tolerance_secs: 300
            })
        );
        // A timestamp far in the past or future: no overflow, just refused.
        let ancient = wh.sign("msg_1", 0, b"x");
        assert!(matches!(
            wh.verify_at(headers(&ancient), b"x", at(T)),
            Err(VerifyError::TooOld { .. })
        ));
        let far = wh.sign("msg_1", u64::MAX / 2, b"x");
        assert!(matches!(
            wh.verify_at(headers(&far), b"x", at(T)),
            Err(VerifyError::TooNew { .. })
        ));
    }

    #[test]
    fn key_rotation_signs_with_all_and_accepts_any() {
        let old = Webhook::from_secrets(DEV_SECRET).unwrap();
        let both = Webhook::from_secrets(&format!("{OTHER}, {DEV_SECRET}")).unwrap();
        let new = Webhook::from_secrets(OTHER).unwrap();

        // A sender with both keys: two entries; a receiver with either key accepts.
        let signed = both.sign("msg_1", T, b"x");
        assert_eq!(signed.signature.split(' ').count(), 2);
        assert!(old.verify_at(headers(&signed), b"x", at(T)).is_ok());
        assert!(new.verify_at(headers(&signed), b"x", at(T)).is_ok());
        // A receiver with both keys accepts a sender with either.
        for sender in [&old, &new] {
            let signed = sender.sign("msg_1", T, b"x");
            assert!(both.verify_at(headers(&signed), b"x", at(T)).is_ok());
        }
        // A matching signature after non-matching ones still verifies.
        let mut mixed = new.sign("msg_1", T, b"x");
        let good = old.sign("msg_1", T, b"x").signature;
        mixed.signature = format!("v1,AAAA v2,whatever {} {good}", mixed.signature);
        assert!(old.verify_at(headers(&mixed), b"x", at(T)).is_ok());
    }

    #[test]
    fn missing_headers_are_named() {
        let wh = dev();
        let signed = wh.sign("msg_1", T, b"x");
        let full = headers(&signed);
        for (h, name) in [
            (Headers { id: None, ..full }, "webhook-id"),
            (
                Headers {
                    timestamp: None,
                    ..full
                },
                "webhook-timestamp",
            ),
            (
                Headers {
                    signature: None,
                    ..full
                },
                "webhook-signature",
            ),
        ] {
            assert_eq!(
                wh.verify_at(h, b"x", at(T)),
                Err(VerifyError::MissingHeader(name))
            );
        }
        assert_eq!(
            wh.verify_at(Headers::default(), b"x", at(T)),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn hostile_headers_get_typed_errors() {
        let wh = dev();
        let signed = wh.sign("msg_1", T, b"x");
        let full = headers(&signed);
        let check = |h: Headers<'_>| wh.verify_at(h, b"x", at(T));

        // Timestamps that are not plain digits, or too many of them.
        for ts in [
            &b""[..],
            b"-1",
            b"+1764763200",
            b"1764763200.5",
            b" 1764763200",
            b"1e9",
            b"99999999999999999999",
            b"\xff\xfe",
            &[b'1'; 10_000][..],
        ] {
            assert_eq!(
                check(Headers {
                    timestamp: Some(ts),
                    ..full
                }),
                Err(VerifyError::BadTimestamp),
                "{ts:?}"
            );
        }
        // Ids that are empty, huge, not ASCII, or hold spaces.
        let huge_id = vec![b'a'; 100_000];
        for id in [
            &b""[..],
            &huge_id,
            b"\xc3\xa9t\xc3\xa9",
            b"msg 1",
            b"msg\n1",
        ] {
            assert!(
                matches!(
                    check(Headers {
                        id: Some(id),
                        ..full
                    }),
                    Err(VerifyError::Malformed(_))
                ),
                "{id:?}"
            );
        }
        // Signature headers: huge, not UTF-8, too many entries, no scheme.
        let huge_sig = format!("{} {}", signed.signature, "v1,AAAA ".repeat(100_000));
        let many = vec![signed.signature.as_str(); MAX_SIGNATURES + 1].join(" ");
        for sig in [
            huge_sig.as_bytes(),
            b"v1,\xff\xfe",
            many.as_bytes(),
            b"no-comma-here",
        ] {
            assert!(
                matches!(
                    check(Headers {
                        signature: Some(sig),
                        ..full
                    }),
                    Err(VerifyError::Malformed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(&sig[..sig.len().min(40)])
            );
        }
        // Only other schemes, or v1 values that cannot be a SHA-256 MAC: nothing matches.
        let v2 = signed.signature.replacen("v1,", "v2,", 1);
        let v1_upper = signed.signature.replacen("v1,", "V1,", 1);
        let truncated = &signed.signature[..signed.signature.len() - 4];
        for sig in [
            v2.as_str(),
            v1_upper.as_str(),
            truncated,
            "v1,not-base64!!",
            "v1,",
            "",
            "   ",
            "v1a,xyz",
        ] {
            assert_eq!(
                check(Headers {
                    signature: Some(sig.as_bytes()),
                    ..full
                }),
                Err(VerifyError::NoMatchingSignature),
                "{sig:?}"
            );
        }
        // A body of any size and content is just hashed.
        let big = vec![0xffu8; 1 << 20];
        let signed_big = wh.sign("msg_1", T, &big);
        assert!(wh.verify_at(headers(&signed_big), &big, at(T)).is_ok());
    }

    #[test]
    fn keys_are_checked() {
        assert_eq!(Webhook::from_secrets("").unwrap_err(), KeyError::Empty);
        assert_eq!(Webhook::from_secrets(" , ").unwrap_err(), KeyError::Empty);
        assert_eq!(
            Webhook::from_secrets("short").unwrap_err(),
            KeyError::TooShort(1)
        );
        assert_eq!(
            Webhook::from_secrets(&format!("{DEV_SECRET},whsec_!!!")).unwrap_err(),
            KeyError::NotBase64(2)
        );
        assert_eq!(
            Webhook::from_secrets("whsec_c2hvcnQ=").unwrap_err(),
            KeyError::TooShort(1)
        );
        // Debug shows no key material.
        let shown = format!("{:?}", dev());
        assert!(
            !shown.contains("whsec") && shown.contains("keys: 1"),
            "{shown}"
        );
        assert!(
            dev()
                .verify(headers(&dev().sign_now("msg_1", b"x")), b"x")
                .is_ok()
        );
    }
}
