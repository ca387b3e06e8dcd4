//! One fetched batch, handled in ONE Postgres transaction: the batch's inbox rows in one statement
//! (an event whose id is not new stops there: a duplicate), then each event's effect (a status
//! applied, a dead letter); last the cursor moves to the batch's last replay id. Commit, and only then does the stream ask for more. A crash before
//! the commit leaves nothing: the server replays the batch from the stored cursor.
//!
//! The network work an event needs (its schema, a REST re-read) happens before the transaction,
//! so no transaction waits on Salesforce.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderbridge_db::fulfilment::{self, NewRequest, Requested};
use orderbridge_db::status::{StatusApplied, StatusChange, apply_by_salesforce_id_in};
use orderbridge_domain::fulfilment::{Trigger, idem_key};
use orderbridge_pubsub::proto::FetchResponse;
use orderbridge_salesforce::{ErrorClass, SessionToken};
use sqlx::PgPool;
use tracing::Instrument;

use crate::effects::{Effect, Rules, decide};
use crate::grpc::Failure;
use crate::metrics::{Metrics, hex};
use crate::provision::{Provision, ProvisionRules, from_platform_event};
use crate::schemas::SchemaCache;
use crate::store::{self, DeadLetter};
use orderbridge_domain::status_map::StatusMap;

/// What every batch needs, shared by the topics' streams.
pub struct Context {
    pub pool: PgPool,
    pub salesforce: orderbridge_salesforce::Client,
    pub status_map: StatusMap,
    pub rules: Rules,
    pub provision: ProvisionRules,
    pub metrics: Arc<Metrics>,
    pub call_timeout: std::time::Duration,
}

/// The source recorded with statuses that came from Salesforce.
pub const SOURCE: &str = orderbridge_domain::StatusSource::SALESFORCE;

/// What one event turned into before the transaction.
enum Plan {
    Dead(String),
    Echo,
    Apply(Vec<Change>),
    PlatformEvent,
    Provision(Provision),
    Ignore,
}

/// A status to apply to the order synced to a Salesforce record.
struct Change {
    record_id: String,
    /// The mapped (orderbridge) status.
    status: String,
    at: DateTime<Utc>,
    /// The Salesforce Status value, when reaching it requests provisioning
    /// (`SUBSCRIBER_PROVISION_ON_STATUS`).
    provision_on: Option<String>,
}

/// Counts of one batch, added to the metrics after its commit.
#[derive(Default)]
struct Tally {
    applied: u64,
    echo: u64,
    duplicate: u64,
    stale: u64,
    late: u64,
    unchanged: u64,
    unknown: u64,
    decode_failures: u64,
    dead: u64,
    platform: u64,
    rereads: u64,
    provision_requested: u64,
    provision_ignored: u64,
    provision_unknown: u64,
    /// The latest `commitTimestamp` among the batch's change events (for the lag).
    last_commit: Option<DateTime<Utc>>,
}

impl Tally {
    fn count_request(&mut self, requested: &Requested) {
        match requested {
            Requested::Queued { .. } => self.provision_requested += 1,
            Requested::UnknownOrder => self.provision_unknown += 1,
            Requested::Duplicate { .. }
            | Requested::AlreadyProvisioned { .. }
            | Requested::NotSynced { .. } => self.provision_ignored += 1,
        }
    }
}

/// The key an event is deduplicated by: its id, or (when that is empty or absurd) its replay id.
fn inbox_key(event_id: &str, replay_id: &[u8]) -> String {
    if event_id.is_empty() || event_id.len() > 255 || event_id.chars().any(char::is_control) {
        format!("replay:{}", hex(replay_id))
    } else {
        event_id.to_owned()
    }
}

/// Handles one response. `owed` is true when the server still owed events (so a keepalive's
/// latest replay id is safe to resume from: nothing newer exists).
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    ctx: &Context,
    topic: &str,
    response: &FetchResponse,
    schemas: &mut SchemaCache,
    grpc: &mut orderbridge_pubsub::proto::pub_sub_client::PubSubClient<tonic::transport::Channel>,
    token: &SessionToken,
    org_id: &str,
    owed: bool,
) -> Result<(), Failure> {
    let mut tally = Tally::default();
    let mut plans = Vec::with_capacity(response.events.len());
    for consumer in &response.events {
        let replay = hex(&consumer.replay_id);
        let Some(event) = &consumer.event else {
            plans.push(Plan::Dead("ConsumerEvent without an event".into()));
            continue;
        };
        let span = tracing::info_span!("event", event_id = %event.id.chars().take(64).collect::<String>(), topic, replay_id = %replay);
        let plan = plan(ctx, topic, event, schemas, grpc, token, org_id, &mut tally)
            .instrument(span)
            .await?;
        plans.push(plan);
    }

    let started = std::time::Instant::now();
    let commit = async {
        let mut tx = ctx.pool.begin().await?;
        let keys: Vec<String> = response
            .events
            .iter()
            .map(|c| inbox_key(c.event.as_ref().map_or("", |e| e.id.as_str()), &c.replay_id))
            .collect();
        // The whole batch's inbox rows in one round trip; an event whose key was not fresh
        // (or was taken by an earlier event of this batch) is a duplicate.
        let mut fresh = store::insert_inbox(&mut tx, &keys, topic).await?;
        for ((consumer, plan), key) in response.events.iter().zip(&plans).zip(keys) {
            let (schema_id, payload) = consumer
                .event
                .as_ref()
                .map(|e| (e.schema_id.as_str(), e.payload.as_slice()))
                .unwrap_or(("", &[]));
            if !fresh.remove(&key) {
                tally.duplicate += 1;
                continue;
            }
            match plan {
                Plan::Dead(reason) => {
                    store::dead_letter(
                        &mut tx,
                        &DeadLetter {
                            topic,
                            schema_id: &schema_id.chars().take(128).collect::<String>(),
                            replay_id: &consumer.replay_id,
                            event_id: &key,
                            payload,
                            reason,
                        },
                    )
                    .await?;
                    tracing::warn!(event_id = %key, topic, replay_id = %hex(&consumer.replay_id), reason = %reason, "event dead-lettered");
                    tally.dead += 1;
                }
                Plan::Echo => tally.echo += 1,
                Plan::PlatformEvent => tally.platform += 1,
                Plan::Provision(p) => {
                    tally.platform += 1;
                    let key = p.idem_key.clone().unwrap_or_else(|| idem_key::event(&key));
                    let new = NewRequest {
                        salesforce_id: &p.salesforce_id,
                        idem_key: &key,
                        trigger: Trigger::PLATFORM_EVENT,
                        correlation_id: p.correlation_id.as_deref(),
                    };
                    let requested = fulfilment::request(&mut tx, new).await?;
                    tally.count_request(&requested);
                    tracing::info!(idem_key = %key, topic, salesforce_id = %p.salesforce_id, correlation_id = ?p.correlation_id, ?requested, "provisioning requested");
                }
                Plan::Ignore => {}
                Plan::Apply(changes) => {
                    for c in changes {
                        let outcome = apply_by_salesforce_id_in(
                            &mut tx,
                            &c.record_id,
                            StatusChange {
                                status: &c.status,
                                at: c.at,
                                source: SOURCE,
                            },
                        )
                        .await?;
                        tracing::info!(event_id = %key, topic, salesforce_id = %c.record_id, status = %c.status, ?outcome, "status change");
                        match outcome {
                            StatusApplied::Applied { .. } => tally.applied += 1,
                            StatusApplied::Unchanged => tally.unchanged += 1,
                            StatusApplied::Late { .. } => tally.late += 1,
                            StatusApplied::Stale => tally.stale += 1,
                            StatusApplied::UnknownOrder => tally.unknown += 1,
                        }
                        // A late or stale change must not start work the order has moved past; an
                        // unchanged one may (the status arrived first another way, e.g. an
                        // outbound message): the key makes a second request a duplicate.
                        if let (
                            Some(value),
                            StatusApplied::Applied { .. } | StatusApplied::Unchanged,
                        ) = (&c.provision_on, outcome)
                        {
                            let key = idem_key::status(&c.record_id, value);
                            let new = NewRequest {
                                salesforce_id: &c.record_id,
                                idem_key: &key,
                                trigger: Trigger::STATUS_CHANGE,
                                correlation_id: None,
                            };
                            let requested = fulfilment::request(&mut tx, new).await?;
                            tally.count_request(&requested);
                            tracing::info!(idem_key = %key, salesforce_id = %c.record_id, ?requested, "provisioning requested by a Status");
                        }
                    }
                }
            }
        }
        let last = response.events.last().map(|e| e.replay_id.as_slice());
        let resume = match last {
            Some(id) => Some(id),
            None if owed && !response.latest_replay_id.is_empty() => {
                Some(response.latest_replay_id.as_slice())
            }
            None => None,
        };
        store::advance(
            &mut tx,
            topic,
            resume,
            &response.latest_replay_id,
            !response.events.is_empty(),
        )
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(resume.map(hex))
    };
    let resume = tokio::time::timeout(ctx.call_timeout, commit)
        .await
        .map_err(|_| Failure::Other("the batch's transaction timed out".into()))?
        .map_err(|e| Failure::Other(format!("the batch's transaction failed: {e}")))?;

    let c = &ctx.metrics.counters;
    use std::sync::atomic::Ordering::Relaxed;
    c.received.fetch_add(response.events.len() as u64, Relaxed);
    c.applied.fetch_add(tally.applied, Relaxed);
    c.echo.fetch_add(tally.echo, Relaxed);
    c.duplicate.fetch_add(tally.duplicate, Relaxed);
    c.stale.fetch_add(tally.stale, Relaxed);
    c.late.fetch_add(tally.late, Relaxed);
    c.unchanged.fetch_add(tally.unchanged, Relaxed);
    c.unknown_order.fetch_add(tally.unknown, Relaxed);
    c.decode_failures.fetch_add(tally.decode_failures, Relaxed);
    c.dead_letters.fetch_add(tally.dead, Relaxed);
    c.platform_events.fetch_add(tally.platform, Relaxed);
    c.rereads.fetch_add(tally.rereads, Relaxed);
    c.provision_requested
        .fetch_add(tally.provision_requested, Relaxed);
    c.provision_ignored
        .fetch_add(tally.provision_ignored, Relaxed);
    c.provision_unknown_order
        .fetch_add(tally.provision_unknown, Relaxed);
    let now = Utc::now();
    ctx.metrics.topic(topic, |s| {
        s.subscribed = true;
        if let Some(r) = resume {
            s.replay_id = Some(r);
        }
        if !response.events.is_empty() {
            s.last_event_at = Some(now);
        }
        if let Some(commit) = tally.last_commit {
            s.last_commit_at = Some(commit);
            s.lag_seconds = Some((now - commit).num_milliseconds().max(0) as f64 / 1000.0);
        }
    });
    if !response.events.is_empty() {
        tracing::debug!(topic, events = response.events.len(), elapsed = ?started.elapsed(), "batch committed");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn plan(
    ctx: &Context,
    topic: &str,
    event: &orderbridge_pubsub::proto::ProducerEvent,
    schemas: &mut SchemaCache,
    grpc: &mut orderbridge_pubsub::proto::pub_sub_client::PubSubClient<tonic::transport::Channel>,
    token: &SessionToken,
    org_id: &str,
    tally: &mut Tally,
) -> Result<Plan, Failure> {
    let schema = match schemas
        .get(grpc, token, org_id, &event.schema_id, ctx.call_timeout)
        .await?
    {
        Ok(s) => s,
        Err(reason) => return Ok(Plan::Dead(format!("schema unavailable: {reason}"))),
    };
    let decoded = match schema.decode(&event.payload) {
        Ok(d) => d,
        Err(e) => {
            tally.decode_failures += 1;
            return Ok(Plan::Dead(e.to_string()));
        }
    };
    if let Some(at) = decoded
        .header
        .as_ref()
        .and_then(|h| DateTime::from_timestamp_millis(h.commit_timestamp))
    {
        tally.last_commit = tally.last_commit.max(Some(at));
    }
    let effect = match decide(&decoded, &ctx.rules) {
        Ok(e) => e,
        Err(e) => {
            tally.decode_failures += 1;
            return Ok(Plan::Dead(e.to_string()));
        }
    };
    Ok(match effect {
        Effect::Echo => Plan::Echo,
        Effect::PlatformEvent => match from_platform_event(&decoded, topic, &ctx.provision) {
            Ok(Some(p)) => Plan::Provision(p),
            Ok(None) => {
                tracing::info!(topic, "platform event recorded");
                Plan::PlatformEvent
            }
            Err(e) => {
                tally.decode_failures += 1;
                Plan::Dead(e.to_string())
            }
        },
        Effect::Ignore(why) => {
            tracing::debug!(why, "event ignored");
            Plan::Ignore
        }
        Effect::Status {
            record_ids,
            value,
            at,
        } => match ctx.status_map.map(&value) {
            Ok(status) => {
                let provision_on = ctx.provision.on_status(&value).then_some(value);
                Plan::Apply(
                    record_ids
                        .into_iter()
                        .map(|record_id| Change {
                            record_id,
                            status: status.clone(),
                            at,
                            provision_on: provision_on.clone(),
                        })
                        .collect(),
                )
            }
            Err(e) => {
                tally.decode_failures += 1;
                Plan::Dead(format!("Status value: {e}"))
            }
        },
        Effect::Reread {
            record_ids,
            at,
            why,
        } => {
            let mut changes = Vec::new();
            for id in record_ids {
                tally.rereads += 1;
                tracing::info!(salesforce_id = %id, why, "re-reading the order's Status");
                match reread_status(ctx, &id).await? {
                    Some(value) => match ctx.status_map.map(&value) {
                        Ok(status) => changes.push(Change {
                            record_id: id,
                            status,
                            at,
                            provision_on: ctx.provision.on_status(&value).then_some(value),
                        }),
                        Err(e) => return Ok(Plan::Dead(format!("Status value: {e}"))),
                    },
                    None => tracing::info!(salesforce_id = %id, "record gone; nothing to apply"),
                }
            }
            Plan::Apply(changes)
        }
    })
}

/// The record's current Status; `None` when it no longer exists.
async fn reread_status(ctx: &Context, id: &str) -> Result<Option<String>, Failure> {
    #[derive(serde::Deserialize)]
    struct Row {
        #[serde(rename = "Status")]
        status: Option<String>,
    }
    let call = ctx
        .salesforce
        .get::<Row>(crate::effects::ORDER, id, &["Status"]);
    match tokio::time::timeout(ctx.call_timeout, call).await {
        Err(_) => Err(Failure::Other(format!("re-reading Order {id} timed out"))),
        Ok(Ok(row)) => Ok(row.status),
        Ok(Err(e)) if e.class() == ErrorClass::Permanent => {
            tracing::info!(salesforce_id = %id, error = %e, "Order cannot be re-read");
            Ok(None)
        }
        Ok(Err(e)) => Err(Failure::Other(format!("re-reading Order {id}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::inbox_key;

    #[test]
    fn inbox_key_falls_back_to_the_replay_id() {
        assert_eq!(inbox_key("e-1", &[1]), "e-1");
        assert_eq!(inbox_key("", &[1, 2]), "replay:0102");
        assert_eq!(inbox_key(&"x".repeat(256), &[1]), "replay:01");
        assert_eq!(inbox_key("a\nb", &[1]), "replay:01");
    }
}
