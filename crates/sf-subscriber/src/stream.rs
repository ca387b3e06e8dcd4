//! One topic's subscription, kept open for the life of the process: open (CUSTOM from the
//! stored replay id), receive, hand each response to [`crate::batch`], top the request up by
//! what was delivered, and on any failure re-open: at once after a token refresh or a replay
//! fallback, after a backoff otherwise. Nothing here exits the process.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use orderbridge_pubsub::proto::{FetchRequest, ReplayPreset};
use orderbridge_runtime::backoff::Backoff;
use tokio::sync::{mpsc, watch};

use crate::batch::{self, Context};
use crate::config::Preset;
use crate::grpc::{self, Failure};
use crate::metrics::{Metrics, hex};
use crate::schemas::SchemaCache;
use crate::store;

/// How one topic's stream is opened and kept.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub endpoint: String,
    /// For an `https://` endpoint.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub batch: i32,
    pub initial: Preset,
    pub fallback: Preset,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub call_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a stream session ended.
enum Ended {
    Shutdown,
    StreamEnd,
}

/// Runs the topic's subscription until shutdown.
pub async fn run(
    ctx: Arc<Context>,
    settings: StreamSettings,
    topic: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    // Set after the stored replay id was refused: where the next session starts.
    let mut fallback: Option<Preset> = None;
    let mut schemas = SchemaCache::default();
    let mut auth_failed_last = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = session(
            &ctx,
            &settings,
            &topic,
            fallback,
            &mut schemas,
            &mut shutdown,
            &mut backoff,
        )
        .await;
        ctx.metrics.topic(&topic, |s| s.subscribed = false);
        let auth_failure = matches!(outcome, Err(Failure::Auth { .. }));
        let wait = match outcome {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::StreamEnd) => {
                tracing::warn!(topic, "the server ended the stream; re-opening");
                Some(backoff.fail())
            }
            Err(failure) => {
                record_error(&ctx.metrics, &topic, &failure);
                match failure {
                    Failure::Auth { generation, detail } => {
                        Metrics::inc(&ctx.metrics.counters.auth_refreshes);
                        tracing::warn!(topic, %detail, "the Pub/Sub API refused the token; logging in again");
                        match ctx.salesforce.refresh_session(generation).await {
                            // A fresh token: re-open at once; a token refused again before any
                            // message arrived backs off, so a server refusing every token is
                            // not hammered with logins.
                            Ok(_) if !auth_failed_last => None,
                            Ok(_) => Some(backoff.fail()),
                            Err(e) => {
                                tracing::error!(topic, error = %e, "Salesforce login failed");
                                Some(backoff.fail())
                            }
                        }
                    }
                    Failure::ReplayInvalid(detail) => {
                        match replay_fallback(&ctx, &settings, &topic, &detail).await {
                            Some(preset) => {
                                fallback = Some(preset);
                                None
                            }
                            // Nothing recorded (no stored id, or Postgres failed): try again
                            // after a pause rather than in a loop.
                            None => Some(backoff.fail()),
                        }
                    }
                    Failure::Other(detail) => {
                        let wait = backoff.fail();
                        tracing::warn!(topic, %detail, retry_in = ?wait, "stream failed; re-opening");
                        Some(wait)
                    }
                }
            }
        };
        Metrics::inc(&ctx.metrics.counters.reconnects);
        auth_failed_last = auth_failure;
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }
}

fn record_error(metrics: &Metrics, topic: &str, failure: &Failure) {
    let text = failure.to_string();
    metrics.topic(topic, |s| {
        s.last_error = Some(text);
        s.last_error_at = Some(Utc::now());
    });
}

/// The stored replay id was refused: count it, say loudly which window may have been missed,
/// record the gap for the operator (forgetting the id in the same transaction), and pick where
/// to resume. `None` when there was no stored id to refuse or the gap could not be recorded.
async fn replay_fallback(
    ctx: &Context,
    settings: &StreamSettings,
    topic: &str,
    detail: &str,
) -> Option<Preset> {
    let stored = match store::cursor(&ctx.pool, topic).await {
        Ok(Some(c)) if c.replay_id.is_some() => c,
        Ok(_) => {
            tracing::warn!(topic, %detail, "replay refused without a stored replay id");
            return None;
        }
        Err(e) => {
            tracing::warn!(topic, error = %e, "cannot read the cursor after a refused replay id");
            return None;
        }
    };
    let from = stored.last_event_at.map_or_else(
        || "unknown (no event received before)".to_owned(),
        |t| t.to_rfc3339(),
    );
    let gap = store::record_gap(&ctx.pool, topic, &stored, settings.fallback.as_str()).await;
    tracing::error!(
        topic,
        %detail,
        stored_replay_id = %stored.replay_id.as_deref().map(hex).unwrap_or_default(),
        missed_from = %from,
        missed_until = %Utc::now().to_rfc3339(),
        fallback = settings.fallback.as_str(),
        gap_id = ?gap.as_ref().ok(),
        "the stored replay id is no longer valid (past the event bus's retention): changes in this window may have been missed; close the gap with `orderbridge reconcile statuses --since {from}`"
    );
    match gap {
        Ok(_) => {
            Metrics::inc(&ctx.metrics.counters.replay_fallbacks);
            Some(settings.fallback)
        }
        Err(e) => {
            tracing::error!(topic, error = %e, "cannot record the gap in pubsub_gaps");
            None
        }
    }
}

async fn session(
    ctx: &Context,
    settings: &StreamSettings,
    topic: &str,
    fallback: Option<Preset>,
    schemas: &mut SchemaCache,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<Ended, Failure> {
    let token = tokio::time::timeout(settings.call_timeout, ctx.salesforce.session_token())
        .await
        .map_err(|_| Failure::Other("Salesforce login timed out".into()))?
        .map_err(|e| Failure::Other(format!("Salesforce login failed: {e}")))?;
    let org_id = token.org_id.clone().ok_or_else(|| {
        Failure::Other(
            "the token response has no identity URL, so the org id (tenantid) is unknown".into(),
        )
    })?;
    let cursor = store::cursor(&ctx.pool, topic)
        .await
        .map_err(|e| Failure::Other(format!("cannot read the cursor: {e}")))?
        .unwrap_or_default();
    let (preset, replay_id) = match &cursor.replay_id {
        Some(id) => (ReplayPreset::Custom, id.clone()),
        None => match fallback.unwrap_or(settings.initial) {
            Preset::Latest => (ReplayPreset::Latest, Vec::new()),
            Preset::Earliest => (ReplayPreset::Earliest, Vec::new()),
        },
    };
    let mut grpc = grpc::connect(
        &settings.endpoint,
        settings.tls.as_ref(),
        settings.call_timeout,
    )
    .await?;
    let (requests, rx) = mpsc::channel::<FetchRequest>(4);
    let first = FetchRequest {
        topic_name: topic.to_owned(),
        replay_preset: preset as i32,
        replay_id: replay_id.clone(),
        num_requested: settings.batch,
        ..FetchRequest::default()
    };
    requests
        .send(first)
        .await
        .map_err(|_| Failure::Other("request channel closed".into()))?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let request = grpc::authed(outbound, &token, &org_id)?;
    let mut stream = tokio::time::timeout(settings.call_timeout, grpc.subscribe(request))
        .await
        .map_err(|_| Failure::Other("Subscribe timed out".into()))?
        .map_err(|s| Failure::from_status(&s, token.generation))?
        .into_inner();
    tracing::info!(topic, preset = ?preset, replay_id = %hex(&replay_id), batch = settings.batch, "subscribed");
    ctx.metrics.topic(topic, |s| s.subscribed = true);

    // Events requested and not delivered yet: the server owes us this many.
    let mut owed = settings.batch;
    loop {
        let message = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return Ok(Ended::Shutdown),
            m = tokio::time::timeout(settings.idle_timeout, stream.message()) => m,
        };
        let response = match message {
            Err(_) => {
                return Err(Failure::Other(format!(
                    "nothing received for {:?} (not even a keepalive)",
                    settings.idle_timeout
                )));
            }
            Ok(Err(status)) => return Err(Failure::from_status(&status, token.generation)),
            Ok(Ok(None)) => return Ok(Ended::StreamEnd),
            Ok(Ok(Some(r))) => r,
        };
        backoff.reset();
        let delivered = i32::try_from(response.events.len()).unwrap_or(i32::MAX);
        batch::handle(
            ctx,
            topic,
            &response,
            schemas,
            &mut grpc,
            &token,
            &org_id,
            owed > 0,
        )
        .await?;
        owed = owed.saturating_sub(delivered).max(0);
        // Top up only now that the batch committed: at most `batch` events are ever in flight
        // or in memory.
        if delivered > 0 {
            let more = delivered.min(settings.batch - owed).max(0);
            if more > 0 {
                requests
                    .send(FetchRequest {
                        topic_name: topic.to_owned(),
                        num_requested: more,
                        ..FetchRequest::default()
                    })
                    .await
                    .map_err(|_| Failure::Other("the request stream closed".into()))?;
                owed += more;
            }
        }
    }
}
