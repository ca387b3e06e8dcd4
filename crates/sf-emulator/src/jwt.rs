//! RS256 JWT-bearer assertions: loading the verification key (PEM public key, PKCS#1 RSA public
//! key or X.509 certificate, as uploaded to a Salesforce connected app) and checking signatures.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::Value;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWT public key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JWT public key: {0}")]
    Invalid(String),
}

/// Parses a PEM public key or certificate.
pub fn load_public_key(pem: &str) -> Result<RsaPublicKey, KeyError> {
    if pem.contains("BEGIN CERTIFICATE") {
        let der = pem_body(pem, "CERTIFICATE")?;
        let spki = certificate_spki(&der).ok_or_else(|| {
            KeyError::Invalid("cannot find the public key in the certificate".into())
        })?;
        return RsaPublicKey::from_public_key_der(spki)
            .map_err(|e| KeyError::Invalid(format!("certificate key is not RSA: {e}")));
    }
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        return RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| KeyError::Invalid(e.to_string()));
    }
    RsaPublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Invalid(e.to_string()))
}

fn pem_body(pem: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| KeyError::Invalid(format!("no {label} block")))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| KeyError::Invalid(format!("unterminated {label} block")))?
        + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| KeyError::Invalid(format!("bad base64 in {label}: {e}")))
}

/// One DER TLV: (tag, whole element including header, content, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    if input.len() < total {
        return None;
    }
    Some((tag, &input[..total], &input[header..total], &input[total..]))
}

/// The SubjectPublicKeyInfo of an X.509 certificate (tbsCertificate's 7th element, or 6th
/// without the explicit version).
fn certificate_spki(der: &[u8]) -> Option<&[u8]> {
    let (_, _, cert, _) = tlv(der)?;
    let (_, _, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.3;
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    let (tag, whole, _, _) = tlv(rest)?;
    (tag == 0x30).then_some(whole)
}

/// Why an assertion was refused (mapped to OAuth errors by the caller).
#[derive(Debug, PartialEq, Eq)]
pub enum AssertionError {
    Malformed(&'static str),
    BadSignature,
}

/// Checks the RS256 signature and returns the claims.
pub fn verify(key: &RsaPublicKey, assertion: &str) -> Result<Value, AssertionError> {
    let mut parts = assertion.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed(
            "not a compact JWS (header.claims.signature)",
        ));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AssertionError::Malformed("header is not base64url JSON"))?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(AssertionError::Malformed("alg must be RS256"));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AssertionError::Malformed("signature is not base64url"))?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| AssertionError::BadSignature)?;
    let signing_input = &assertion[..h.len() + 1 + c.len()];
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| AssertionError::BadSignature)?;
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AssertionError::Malformed("claims are not base64url JSON"))
}
