//! Capped exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delays grow `min, 2·min, 4·min, …` up to `max`; each is drawn uniformly from its upper half
/// ("equal jitter"), so many processes that lost the broker at the same moment do not all come
/// back at the same moment, while the delay still grows.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    pending: Option<Duration>,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            pending: None,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(2u32.saturating_pow(self.failures.min(20)));
        let cap = exp.min(self.max);
        let half = cap / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        let delay = half + Duration::from_millis(jitter);
        let delay = delay.min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.pending = Some(delay);
        delay
    }

    /// The delay owed since the last failure, if it has not been waited out yet.
    pub fn pending_delay(&mut self) -> Option<Duration> {
        self.pending.take()
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        let mut upper = min;
        for _ in 0..10 {
            let d = b.fail();
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} not in [{:?}, {upper:?}]",
                upper / 2
            );
            upper = (upper * 2).min(max);
        }
        assert!(b.pending_delay().is_some());
        assert!(b.pending_delay().is_none());
        b.reset();
        assert!(b.fail() <= min);
    }
}
