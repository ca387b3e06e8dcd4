//! Rate limits (GCRA via `governor`: a sustained rate plus a burst allowance):
//! - [`RateLimiter`]: requests per authenticated API client;
//! - [`AuthFailures`]: failed authentications per peer address, checked *before* the key lookup,
//!   so a flood of bad keys costs neither Postgres nor log volume once the peer is over its rate;
//! - the same [`RateLimiter`] type keyed by client for resyncs, which cost Salesforce calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use orderbridge_domain::ClientId;

use crate::error::ApiError;

#[derive(Clone)]
pub struct RateLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<ClientId>>,
}

impl RateLimiter {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self::with_quota(Quota::per_second(per_second).allow_burst(burst))
    }

    pub fn with_quota(quota: Quota) -> Self {
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }

    /// Counts one request for `client`; the wait when it is over its quota.
    pub fn check(&self, client: ClientId) -> Result<(), Duration> {
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Counts one request for `client`; `RateLimited` with the wait when it is over its quota.
    pub fn check_request(&self, client: ClientId) -> Result<(), ApiError> {
        self.check(client)
            .map_err(|retry_after| ApiError::RateLimited { retry_after })
    }

    /// Forgets clients that are back to a full allowance, so the map does not grow forever.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Failed authentications per peer address. Over its quota a peer is refused with 429 for the
/// wait the quota gives, without looking its key up.
#[derive(Clone)]
pub struct AuthFailures {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peers over their quota, until when. Checked first on every request from that peer.
    blocked: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

impl AuthFailures {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            blocked: Arc::default(),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // The map holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `peer` must still wait, when it is over its quota of failures.
    pub fn check(&self, peer: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut blocked = self.blocked();
        match blocked.get(&peer) {
            Some(until) if *until > now => Err(ApiError::AuthThrottled {
                retry_after: *until - now,
            }),
            Some(_) => {
                blocked.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed authentication from `peer`; `AuthThrottled` once it is over its quota
    /// (this request included), `Unauthorized` otherwise.
    pub fn failed(&self, peer: IpAddr) -> ApiError {
        match self.limiter.check_key(&peer) {
            Ok(()) => ApiError::Unauthorized,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.blocked().insert(peer, Instant::now() + wait);
                tracing::warn!(%peer, ?wait, "too many failed authentications; peer throttled");
                ApiError::AuthThrottled { retry_after: wait }
            }
        }
    }

    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    #[test]
    fn a_peer_over_its_failures_is_throttled_and_others_are_not() {
        let f = AuthFailures::new(nz(1), nz(3));
        let bad: IpAddr = [192, 0, 2, 1].into();
        let good: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..3 {
            assert!(f.check(bad).is_ok());
            assert!(matches!(f.failed(bad), ApiError::Unauthorized));
        }
        assert!(matches!(f.failed(bad), ApiError::AuthThrottled { .. }));
        assert!(matches!(f.check(bad), Err(ApiError::AuthThrottled { .. })));
        assert!(f.check(good).is_ok());
        f.housekeeping();
        assert!(matches!(f.check(bad), Err(ApiError::AuthThrottled { .. })));
    }
}
