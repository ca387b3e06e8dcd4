//! API usage: the `Sforce-Limit-Info` header on every response, `/limits`, and the guard that
//! keeps this client under its share of the org's daily allocation.
//!
//! The daily allocation is shared by every integration of the org; when it runs out, all of them
//! get `REQUEST_LIMIT_EXCEEDED` for up to 24 hours. The guard stops this client earlier, at
//! `SF_MAX_API_USAGE_SHARE`, so it cannot be the one that starves the others.
//!
//! ```text
//!  response ──Sforce-Limit-Info: api-usage=9000/10000──▶ observe() ──▶ last reading
//!  next call ──▶ admit(): below share → go
//!                         above share, reading fresh → refuse (or wait, with policy=delay)
//!                         above share, reading stale → one probe call goes, the rest wait/refuse
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::UsagePolicy;
use crate::error::Error;

/// One `Sforce-Limit-Info` reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUsage {
    /// Calls used in the rolling 24 hours (approximate, as Salesforce says).
    pub used: u64,
    /// The org's daily allocation.
    pub max: u64,
    /// This connected app's own figures, when the org set a per-app limit.
    pub per_app: Option<AppUsage>,
}

/// `per-app-api-usage=17/250(appName=x)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUsage {
    pub used: u64,
    pub max: u64,
    pub app_name: String,
}

impl ApiUsage {
    /// Used share of the daily allocation, 0..=1 (or above, when the org is over).
    pub fn share(&self) -> f64 {
        ratio(self.used, self.max)
    }

    /// The larger of the org's share and this app's own share (when the org set a per-app
    /// limit): whichever runs out first stops the calls.
    pub fn effective_share(&self) -> f64 {
        self.per_app.as_ref().map_or(self.share(), |app| {
            self.share().max(ratio(app.used, app.max))
        })
    }
}

fn ratio(used: u64, max: u64) -> f64 {
    if max == 0 {
        1.0
    } else {
        used as f64 / max as f64
    }
}

/// Parses `api-usage=10018/100000` optionally followed by `; per-app-api-usage=17/250(appName=x)`.
/// Unknown parts are ignored; `None` if `api-usage` is missing or malformed.
pub fn parse_limit_info(header: &str) -> Option<ApiUsage> {
    let mut usage = None;
    let mut per_app = None;
    for part in header.split([';', ',']) {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "api-usage" => usage = parse_fraction(value),
            "per-app-api-usage" => {
                let (fraction, rest) = value.split_once('(').unwrap_or((value, ""));
                if let Some((used, max)) = parse_fraction(fraction) {
                    let app_name = rest
                        .trim_end_matches(')')
                        .split_once('=')
                        .map(|(_, name)| name.to_owned())
                        .unwrap_or_default();
                    per_app = Some(AppUsage {
                        used,
                        max,
                        app_name,
                    });
                }
            }
            _ => {}
        }
    }
    usage.map(|(used, max)| ApiUsage { used, max, per_app })
}

fn parse_fraction(s: &str) -> Option<(u64, u64)> {
    let (used, max) = s.trim().split_once('/')?;
    Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
}

/// One entry of `GET /limits`: `{"Max":15000,"Remaining":14998}` (some entries carry more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Limit {
    #[serde(rename = "Max")]
    pub max: i64,
    #[serde(rename = "Remaining")]
    pub remaining: i64,
}

/// `GET /limits`, by limit name (`DailyApiRequests`, `DailyBulkV2QueryJobs`, …).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Limits(pub BTreeMap<String, Limit>);

impl Limits {
    pub fn get(&self, name: &str) -> Option<&Limit> {
        self.0.get(name)
    }

    /// `DailyApiRequests` as an [`ApiUsage`].
    pub fn daily_api_requests(&self) -> Option<ApiUsage> {
        let l = self.get("DailyApiRequests")?;
        let max = u64::try_from(l.max).ok()?;
        let remaining = u64::try_from(l.remaining.max(0)).ok()?;
        Some(ApiUsage {
            used: max.saturating_sub(remaining),
            max,
            per_app: None,
        })
    }
}

struct GuardState {
    last: Option<(ApiUsage, Instant)>,
    probe_in_flight: bool,
}

/// Tracks usage and admits calls.
pub(crate) struct UsageGuard {
    share: f64,
    policy: UsagePolicy,
    recheck: Duration,
    state: Mutex<GuardState>,
}

/// Held for the duration of one admitted call; clears the probe flag when that call was the probe.
pub(crate) struct Permit<'a> {
    guard: &'a UsageGuard,
    probe: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.guard.lock().probe_in_flight = false;
        }
    }
}

enum Decision {
    Go {
        probe: bool,
    },
    Wait {
        retry_after: Duration,
        usage: ApiUsage,
    },
}

impl UsageGuard {
    pub(crate) fn new(share: f64, policy: UsagePolicy, recheck: Duration) -> Self {
        Self {
            share,
            policy,
            recheck,
            state: Mutex::new(GuardState {
                last: None,
                probe_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // The state is two plain fields that are always consistent; a panic elsewhere while
        // holding the lock cannot leave them half-written, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn observe(&self, usage: ApiUsage) {
        self.lock().last = Some((usage, Instant::now()));
    }

    pub(crate) fn within_share(&self) -> bool {
        self.lock()
            .last
            .as_ref()
            .is_none_or(|(u, _)| u.effective_share() < self.share)
    }

    pub(crate) fn last(&self) -> Option<ApiUsage> {
        self.lock().last.as_ref().map(|(u, _)| u.clone())
    }

    fn decide(&self) -> Decision {
        let mut state = self.lock();
        let Some((usage, at)) = state.last.clone() else {
            return Decision::Go { probe: false };
        };
        if self.share >= 1.0 || usage.effective_share() < self.share {
            return Decision::Go { probe: false };
        }
        let age = at.elapsed();
        if age >= self.recheck && !state.probe_in_flight {
            // The reading is old: usage may have fallen as the 24 h window rolled on. Let one
            // call through to find out; its response header updates the reading.
            state.probe_in_flight = true;
            return Decision::Go { probe: true };
        }
        let retry_after = self
            .recheck
            .saturating_sub(age)
            .max(Duration::from_millis(10));
        Decision::Wait { retry_after, usage }
    }

    /// Admits a call, refuses it, or (policy delay) waits until it may go.
    pub(crate) async fn admit(&self) -> Result<Permit<'_>, Error> {
        // Under the delay policy a call waits at most about two recheck periods: one for the
        // reading to go stale, one for a concurrent probe to finish. Then it is refused.
        let deadline = Instant::now() + self.recheck * 2;
        loop {
            match self.decide() {
                Decision::Go { probe } => return Ok(Permit { guard: self, probe }),
                Decision::Wait { retry_after, usage } => {
                    let refuse = || Error::UsageShareExceeded {
                        used: usage.used,
                        max: usage.max,
                        share: self.share,
                        retry_after,
                    };
                    if self.policy == UsagePolicy::Refuse || Instant::now() + retry_after > deadline
                    {
                        return Err(refuse());
                    }
                    tracing::info!(
                        used = usage.used,
                        max = usage.max,
                        wait = ?retry_after,
                        "Salesforce API usage above the configured share; delaying the call"
                    );
                    tokio::time::sleep(retry_after.min(Duration::from_secs(1))).await;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_per_app_usage() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some(ApiUsage {
                used: 10018,
                max: 100000,
                per_app: None
            })
        );
        let u =
            parse_limit_info("api-usage=25/15000; per-app-api-usage=17/250(appName=orderbridge)")
                .unwrap();
        assert_eq!(u.used, 25);
        assert_eq!(u.max, 15000);
        assert_eq!(
            u.per_app,
            Some(AppUsage {
                used: 17,
                max: 250,
                app_name: "orderbridge".into()
            })
        );
        // The app's own limit is nearer than the org's.
        assert!((u.effective_share() - 17.0 / 250.0).abs() < 1e-9);
        assert_eq!(parse_limit_info("per-app-api-usage=1/2(appName=x)"), None);
        assert_eq!(parse_limit_info("api-usage=abc/100"), None);
        assert_eq!(parse_limit_info(""), None);
    }

    #[tokio::test]
    async fn delay_policy_waits_for_a_stale_reading_then_probes_once() {
        let guard = UsageGuard::new(0.5, UsagePolicy::Delay, Duration::from_millis(200));
        guard.observe(ApiUsage {
            used: 90,
            max: 100,
            per_app: None,
        });
        // Waits until the reading is stale, then goes as the probe.
        let permit = guard.admit().await.unwrap();
        assert!(permit.probe);
        // While the probe is out, another call under the refuse policy would be refused.
        assert!(matches!(guard.decide(), Decision::Wait { .. }));
        drop(permit);
        guard.observe(ApiUsage {
            used: 10,
            max: 100,
            per_app: None,
        });
        assert!(!guard.admit().await.unwrap().probe);
    }
}
