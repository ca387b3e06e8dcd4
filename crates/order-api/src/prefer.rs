//! The `Prefer: wait=<seconds>` request preference (RFC 7240 §4.3), which turns a conditional
//! GET into a long-poll.
//!
//! A preference is a hint: whatever a client sends, the worst outcome is that it is ignored.
//! A malformed value (`wait=abc`, `wait=-1`, `wait=1.5`) is ignored, a huge one is clamped to
//! the server's bound, never an error.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::HeaderName;

pub const PREFER: HeaderName = HeaderName::from_static("prefer");
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// Most digits of a wait value read; longer ones are clamped without parsing (and cannot
/// overflow anything).
const MAX_DIGITS: usize = 9;

/// The wait the client asked for, clamped to `max`: `None` when it asked for none (no `wait`
/// preference, a malformed one, or 0).
pub fn requested_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    if max.is_zero() {
        return None;
    }
    // Several Prefer fields combine like one comma-separated list; the first `wait` counts.
    let wait = headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(wait_value)?;
    let secs = match wait {
        Wait::Seconds(s) => Duration::from_secs(s),
        Wait::Huge => max,
    };
    (!secs.is_zero()).then(|| secs.min(max))
}

enum Wait {
    Seconds(u64),
    Huge,
}

/// `wait=10`, `wait="10"`, ` Wait = 10 ; param`: the seconds of one preference, if it is a
/// well-formed `wait`.
fn wait_value(preference: &str) -> Option<Wait> {
    let token = preference.split(';').next()?.trim();
    let (name, value) = token.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("wait") {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = value.trim_start_matches('0');
    if digits.len() > MAX_DIGITS {
        return Some(Wait::Huge);
    }
    if digits.is_empty() {
        return Some(Wait::Seconds(0));
    }
    // At most MAX_DIGITS digits: always fits.
    digits.parse().ok().map(Wait::Seconds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const MAX: Duration = Duration::from_secs(30);

    fn wait(values: &[&[u8]]) -> Option<u64> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(PREFER, HeaderValue::from_bytes(v).unwrap());
        }
        requested_wait(&h, MAX).map(|d| d.as_secs())
    }

    #[test]
    fn well_formed_waits_are_read_and_clamped() {
        assert_eq!(wait(&[b"wait=10"]), Some(10));
        assert_eq!(wait(&[b"Wait = 5"]), Some(5));
        assert_eq!(wait(&[b"wait=\"7\""]), Some(7));
        assert_eq!(wait(&[b"respond-async, wait=3;x=y"]), Some(3));
        assert_eq!(wait(&[b"return=minimal", b"wait=4"]), Some(4));
        assert_eq!(wait(&[b"wait=999999"]), Some(30));
        assert_eq!(wait(&[b"wait=0000000000000000000000000000012"]), Some(12));
        assert_eq!(
            wait(&[b"wait=99999999999999999999999999999999999999999"]),
            Some(30)
        );
    }

    #[test]
    fn anything_else_is_no_wait() {
        for v in [
            &b""[..],
            b"wait",
            b"wait=",
            b"wait=abc",
            b"wait=-1",
            b"wait=1.5",
            b"wait=0",
            b"wait= ",
            b"wait=\"",
            b"waited=5",
            b"respond-async",
            b"wait=\xff",
            b"=5",
            b",,,;;;===",
        ] {
            assert_eq!(wait(&[v]), None, "{:?}", String::from_utf8_lossy(v));
        }
        let mut h = HeaderMap::new();
        h.insert(PREFER, HeaderValue::from_static("wait=5"));
        assert_eq!(requested_wait(&h, Duration::ZERO), None, "long-poll off");
    }
}
