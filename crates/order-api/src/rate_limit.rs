//! Per-client rate limiting (GCRA via `governor`): a sustained rate plus a burst allowance.

use std::num::NonZeroU32;
use std::sync::Arc;

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
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }

    /// Counts one request for `client`; `RateLimited` with the wait when it is over its quota.
    pub fn check(&self, client: ClientId) -> Result<(), ApiError> {
        self.limiter.check_key(&client).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited { retry_after }
        })
    }

    /// Forgets clients that are back to a full allowance, so the map does not grow forever.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
