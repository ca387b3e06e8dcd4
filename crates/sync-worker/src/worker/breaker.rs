//! The circuit breaker: a Salesforce call that fails as a whole (outage, spent API budget,
//! refused credentials) trips it; consumption pauses, and resumes only when a probe that
//! matches the cause succeeds.

use std::time::Duration;

use orderbridge_salesforce::ErrorClass;
use tokio::sync::watch;

use orderbridge_broker::Session;

use super::{Ctx, Stop, Worker};
use crate::writer::CallFailure;

/// Why consumption is paused.
#[derive(Debug, Clone, PartialEq)]
pub enum Pause {
    /// Salesforce is unreachable or failing (503, timeouts, connection refused).
    Outage(String),
    /// The API budget is spent (REQUEST_LIMIT_EXCEEDED, or our usage share reached).
    Budget(String, Option<Duration>),
    /// Authentication, configuration or a request the org refuses as a whole: a person may
    /// need to act (credentials, price book, permissions). Probed with real calls, slowly.
    Blocked(String),
}

impl Pause {
    /// The `reason` label of `sync_worker_pause_reason`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Outage(_) => "outage",
            Self::Budget(..) => "budget",
            Self::Blocked(_) => "blocked",
        }
    }

    pub(super) fn from_call(f: &CallFailure) -> Self {
        let what = format!("{}: {}", f.code, f.message);
        match f.class {
            ErrorClass::RateLimited => Self::Budget(what, f.retry_after),
            ErrorClass::Retryable => Self::Outage(what),
            ErrorClass::Session | ErrorClass::Config | ErrorClass::Permanent => Self::Blocked(what),
        }
    }
}

/// Consuming this long without a pause counts as recovered: the next outage starts probing at
/// the shortest interval again.
pub(super) const HEALTHY_STRETCH: Duration = Duration::from_secs(30);

impl Worker {
    /// Holds consumption until Salesforce answers again (or shutdown / session loss).
    pub(super) async fn wait_until_usable(
        &self,
        pause: Pause,
        session: &Session,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Stop> {
        self.metrics.set_pause(Some(pause.reason()));
        tracing::warn!(?pause, "Salesforce not usable: consumption paused");
        // The client may say how long its usage guard will refuse calls; that wins.
        let mut told: Option<Duration> = match &pause {
            Pause::Budget(_, after) => *after,
            _ => None,
        };
        loop {
            let wait = match (&pause, told.take()) {
                (_, Some(after)) => after.max(self.config.breaker_probe_min),
                (Pause::Outage(_), None) => self
                    .probe_backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail(),
                (Pause::Budget(..) | Pause::Blocked(_), None) => self.config.budget_probe,
            };
            let mut sleep = std::pin::pin!(tokio::time::sleep(wait));
            // Keep an eye on the session while waiting: a dead session is replaced first.
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    _ = shutdown.wait_for(|v| *v) => return Some(Stop::Shutdown),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !session.is_healthy() {
                            return Some(Stop::Lost("connection closed while paused".into()));
                        }
                    }
                }
            }
            let probe = match self.probe(&pause).await {
                Probe::Usable => Ok(()),
                Probe::Still => continue,
                Probe::Failed(e) => Err(e),
            };
            match probe {
                Ok(()) => {
                    tracing::info!("Salesforce answers again: consumption resumes");
                    self.breaker.send_replace(None);
                    self.metrics.set_pause(None);
                    return None;
                }
                Err(e) => {
                    told = e.retry_after();
                    tracing::info!(error = %e, retry_in = ?told, "Salesforce still not usable");
                }
            }
        }
    }
}

/// What a probe found.
enum Probe {
    /// Every target's Salesforce answers as the pause's cause needs.
    Usable,
    /// Answers, but not yet usable (budget still spent, still refused): probe again later.
    Still,
    /// A call failed.
    Failed(orderbridge_salesforce::Error),
}

impl Worker {
    /// Probes every target's org for the pause's cause; usable only when all are (a batch
    /// may hold orders for any of them).
    async fn probe(&self, pause: &Pause) -> Probe {
        for (target, writer) in self.writer.writers() {
            let client = writer.client();
            let probe = match pause {
                Pause::Outage(_) => match client.versions().await {
                    Ok(_) => Probe::Usable,
                    Err(e) => Probe::Failed(e),
                },
                // The real path: a fresh login (a cached token would hide a refused one) and
                // the price book lookup the writes need.
                Pause::Blocked(_) => {
                    let _ = client.logout().await;
                    match client.login().await {
                        Ok(_) => match writer.pricebook().resolve().await {
                            Ok(_) => Probe::Usable,
                            Err(e) => {
                                tracing::info!(target, error = %e, "Salesforce still refuses");
                                Probe::Still
                            }
                        },
                        Err(e) => Probe::Failed(e),
                    }
                }
                Pause::Budget(..) => match client.limits().await {
                    Ok(limits) => {
                        let spent = limits.daily_api_requests().is_some_and(|u| u.used >= u.max);
                        if spent || !client.usage_within_share() {
                            tracing::info!(target, usage = ?client.usage(), "API budget still spent");
                            Probe::Still
                        } else {
                            Probe::Usable
                        }
                    }
                    Err(e) => Probe::Failed(e),
                },
            };
            if !matches!(probe, Probe::Usable) {
                return probe;
            }
        }
        Probe::Usable
    }
}

/// Trips the breaker for a call that failed as a whole (the first such failure of a pause
/// decides its cause; later ones while paused change nothing).
pub(super) fn trip(ctx: &Ctx, f: &CallFailure) {
    let pause = Pause::from_call(f);
    let tripped = ctx.breaker.send_if_modified(|state| {
        if state.is_none() {
            *state = Some(pause.clone());
            true
        } else {
            false
        }
    });
    if tripped {
        tracing::warn!(code = %f.code, error = %f.message, "Salesforce call failed as a whole: pausing");
        ctx.metrics
            .breaker_trips_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
