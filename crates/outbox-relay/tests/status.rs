//! The return path on a real broker and database: status reports published to `{ns}.status`
//! are applied to their orders by the status applier, idempotently and monotonically;
//! unreadable ones are dead-lettered; the applier survives losing the broker and Postgres.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use common::*;
use orderbridge_broker::headers::{self, DeadLetterReason};
use orderbridge_broker::lapin::BasicProperties;
use orderbridge_broker::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use orderbridge_broker::lapin::types::AMQPValue;
use orderbridge_broker::{BrokerConfig, Keyring, Session, SigningConfig, Supervisor};
use orderbridge_domain::{Envelope, SyncError, SyncState, SyncStatus};
use outbox_relay::status::{Applied, Report, apply_reports};
use outbox_relay::{Metrics, StatusApplier, StatusConfig};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A status applier running in this process.
struct RunningApplier {
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl RunningApplier {
    fn start(app_name: &str, ns: &str, pool: &PgPool, config: StatusConfig) -> Self {
        Self::start_with(app_name, broker_config(ns), pool, config)
    }

    fn start_with(
        app_name: &str,
        broker: BrokerConfig,
        pool: &PgPool,
        config: StatusConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        // Its connections carry `app_name`, as the binary's would.
        let pool = pool_named(&pool.connect_options(), app_name);
        let applier = StatusApplier::new(
            config,
            &relay_config(app_name),
            broker,
            &pool,
            metrics.clone(),
        )
        .unwrap();
        let (shutdown, rx) = watch::channel(false);
        let handle = tokio::spawn(async move { applier.run(rx).await.unwrap() });
        Self {
            metrics,
            shutdown,
            handle,
        }
    }

    async fn started(app_name: &str, ns: &str, pool: &PgPool) -> Self {
        let a = Self::start(app_name, ns, pool, StatusConfig::default());
        a.wait_up().await;
        a
    }

    async fn wait_up(&self) {
        eventually(WAIT, "status consumer up", || async {
            self.metrics.status_consumer_up.load(Ordering::Relaxed)
        })
        .await;
    }

    fn count(&self, which: &str) -> u64 {
        let m = &self.metrics;
        match which {
            "applied" => &m.status_applied_total,
            "stale" => &m.status_stale_total,
            "unknown" => &m.status_unknown_order_total,
            "rejected" => &m.status_rejected_total,
            "bad_signature" => &m.status_bad_signature_total,
            _ => unreachable!(),
        }
        .load(Ordering::Relaxed)
    }

    /// Waits until `applied` is exactly `want.0` and the other counters (stale, unknown,
    /// rejected) reach at least theirs. Other tests on this machine may close every broker
    /// connection (`rabbitmqctl close_all_connections`): a report whose ack was lost then comes
    /// back and counts a second time as stale (or unknown, or rejected), never as applied.
    async fn wait_counts(&self, want: (u64, u64, u64, u64)) {
        eventually(WAIT, &format!("counts {want:?}"), || async {
            let c = self.counts();
            c.0 >= want.0 && c.1 >= want.1 && c.2 >= want.2 && c.3 >= want.3
        })
        .await;
        assert_eq!(self.counts().0, want.0, "applied: {:?}", self.counts());
    }

    fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.count("applied"),
            self.count("stale"),
            self.count("unknown"),
            self.count("rejected"),
        )
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("status applier did not stop")
            .unwrap();
        assert!(!self.metrics.status_consumer_up.load(Ordering::Relaxed));
    }
}

/// A publisher on the status exchange, as the sync worker publishes: JSON envelope,
/// persistent, message_id = envelope id, correlation_id, routing key by state, signed, with
/// confirms.
/// Survives other tests closing every broker connection: it reconnects and publishes again (a
/// duplicate is possible then, as in production).
struct Publisher {
    supervisor: Supervisor,
    session: Option<Session>,
    exchange: String,
}

impl Publisher {
    async fn new(ns: &str) -> Self {
        let supervisor = Supervisor::new(broker_config(ns), "status-test-publisher").unwrap();
        let exchange = supervisor.topology().status_exchange.clone();
        let mut p = Self {
            supervisor,
            session: None,
            exchange,
        };
        p.session().await;
        p
    }

    async fn session(&mut self) -> &Session {
        loop {
            if self.session.as_ref().is_some_and(Session::is_healthy) {
                return self.session.as_ref().unwrap();
            }
            let s = self.supervisor.connect().await;
            if s.channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_ok()
            {
                self.session = Some(s);
            }
        }
    }

    async fn publish(&mut self, envelope: &Envelope<SyncStatus>) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(envelope.id.to_string().into())
            .with_correlation_id(envelope.correlation_id.clone().unwrap_or_default().into());
        self.raw(
            &envelope.data.routing_key(),
            &serde_json::to_vec(envelope).unwrap(),
            props,
        )
        .await;
    }

    /// Publishes `body`, signed with the worker's key.
    async fn raw(&mut self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let props = keyring().sign(props, body);
        self.as_is(routing_key, body, props).await;
    }

    /// Publishes `body` with `props` exactly as given (signed or not).
    async fn as_is(&mut self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let exchange = self.exchange.clone();
            let channel = self.session().await.channel.clone();
            let sent = async {
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        props.clone(),
                    )
                    .await?
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(5), sent).await {
                Ok(Ok(confirm)) => {
                    assert_eq!(
                        confirm.take_message(),
                        None,
                        "status message was unroutable"
                    );
                    return;
                }
                _ => {
                    assert!(std::time::Instant::now() < deadline, "cannot publish");
                    self.session = None;
                }
            }
        }
    }

    async fn close(self) {
        if let Some(s) = self.session {
            s.close(self.supervisor.config()).await;
        }
    }
}

/// Waits until the queue holds exactly `n` ready messages.
async fn wait_queue_len(queue: &str, n: u32) {
    eventually(WAIT, &format!("{n} messages on {queue}"), || async {
        queue_len_if_exists(queue).await == Some(n)
    })
    .await;
}

/// A status report envelope. Postgres keeps microseconds: times are truncated so they compare
/// equal after a round trip.
fn report(
    order_id: Uuid,
    order_version: i64,
    state: SyncState,
    attempts: u32,
    at: DateTime<Utc>,
) -> Envelope<SyncStatus> {
    let error = (state != SyncState::Synced).then(|| SyncError {
        code: "UNABLE_TO_LOCK_ROW".into(),
        message: format!("attempt {attempts} failed"),
    });
    SyncStatus {
        order_id: order_id.into(),
        order_version,
        state,
        salesforce_id: (state == SyncState::Synced).then(|| format!("801{attempts:015}")),
        attempts,
        error,
        source_event_id: Uuid::now_v7().into(),
        source_occurred_at: at,
    }
    .into_envelope(at.trunc_subsecs(6), Some(format!("req-{order_id}")))
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct SyncRow {
    sync_state: String,
    salesforce_id: Option<String>,
    sync_attempts: i32,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    synced_at: Option<DateTime<Utc>>,
    sync_event_version: i64,
    sync_reported_at: Option<DateTime<Utc>>,
    version: i64,
}

async fn row(pool: &PgPool, id: Uuid) -> SyncRow {
    sqlx::query_as(
        "SELECT sync_state, salesforce_id, sync_attempts, last_error_code, last_error_message,
                synced_at, sync_event_version, sync_reported_at, version
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_state(pool: &PgPool, id: Uuid, state: &str) -> SyncRow {
    eventually(WAIT, &format!("order {id} {state}"), || async {
        row(pool, id).await.sync_state == state
    })
    .await;
    row(pool, id).await
}

/// What a resync does to the row: a new event version, state back to pending.
async fn resync(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "UPDATE orders SET sync_state = 'pending', sync_attempts = 0, last_error_code = NULL,
             last_error_message = NULL, sync_reported_at = NULL,
             sync_event_version = version + 1
         WHERE id = $1 RETURNING sync_event_version",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

struct Fixture {
    _db: orderbridge_testkit::TestDatabase,
    pool: PgPool,
    ns: Namespace,
    client: Uuid,
    app: String,
}

async fn fixture() -> Fixture {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let client = api_client(&pool).await;
    Fixture {
        _db: db,
        pool,
        ns: namespace(),
        client,
        app: format!("status-{}", Uuid::new_v4()),
    }
}

#[tokio::test]
async fn retrying_then_synced_lands_on_the_order_and_bumps_its_version() {
    let f = fixture().await;
    let (order, _) = create_order(&f.pool, f.client).await;
    let applier = RunningApplier::started(&f.app, &f.ns, &f.pool).await;
    let mut publisher = Publisher::new(&f.ns).await;
    let v0 = row(&f.pool, order).await.version;

    let t1 = Utc::now().trunc_subsecs(6);
    publisher
        .publish(&report(order, 1, SyncState::Retrying, 1, t1))
        .await;
    let r = wait_state(&f.pool, order, "retrying").await;
    assert_eq!(r.sync_attempts, 1);
    assert_eq!(r.last_error_code.as_deref(), Some("UNABLE_TO_LOCK_ROW"));
    assert_eq!(r.last_error_message.as_deref(), Some("attempt 1 failed"));
    assert_eq!(r.salesforce_id, None);
    assert_eq!(r.synced_at, None);
    assert_eq!(r.sync_reported_at, Some(t1));
    assert_eq!(r.version, v0 + 1, "the ETag changes");

    let t2 = t1 + chrono::Duration::seconds(5);
    publisher
        .publish(&report(order, 1, SyncState::Synced, 2, t2))
        .await;
    let r = wait_state(&f.pool, order, "synced").await;
    assert_eq!(r.sync_attempts, 2);
    assert_eq!(r.salesforce_id.as_deref(), Some("801000000000000002"));
    assert_eq!(r.synced_at, Some(t2));
    assert_eq!(r.last_error_code, None);
    assert_eq!(r.last_error_message, None);
    assert_eq!(r.sync_event_version, 1);
    assert_eq!(r.version, v0 + 2);
    applier.wait_counts((2, 0, 0, 0)).await;

    let metrics = applier.metrics.render();
    assert!(metrics.contains("outbox_relay_status_applied_total 2"));
    assert!(metrics.contains("outbox_relay_status_consumer_up 1"));
    assert!(metrics.contains("outbox_relay_status_apply_lag_seconds_count 2"));
    publisher.close().await;
    applier.stop().await;
}

#[tokio::test]
async fn late_and_stale_reports_never_overwrite_newer_ones() {
    let f = fixture().await;
    let (a, _) = create_order(&f.pool, f.client).await;
    let (b, _) = create_order(&f.pool, f.client).await;
    let (c, _) = create_order(&f.pool, f.client).await;
    let applier = RunningApplier::started(&f.app, &f.ns, &f.pool).await;
    let mut publisher = Publisher::new(&f.ns).await;
    let t = Utc::now().trunc_subsecs(6);
    let s = chrono::Duration::seconds;

    // a: synced, then a retrying that occurred before it and one that claims to be later
    // (a delayed retry): synced is final for its event version.
    let synced = report(a, 1, SyncState::Synced, 2, t + s(10));
    publisher.publish(&synced).await;
    let after_synced = wait_state(&f.pool, a, "synced").await;
    publisher
        .publish(&report(a, 1, SyncState::Retrying, 1, t + s(5)))
        .await;
    publisher
        .publish(&report(a, 1, SyncState::Retrying, 3, t + s(20)))
        .await;
    // The same message again (a redelivery): a no-op.
    publisher.publish(&synced).await;
    applier.wait_counts((1, 3, 0, 0)).await;
    let r = row(&f.pool, a).await;
    assert_eq!(r.sync_state, "synced");
    assert_eq!(r.sync_attempts, 2);
    assert_eq!(r.version, after_synced.version, "nothing changed");

    // b: a resync made event version 2 current; reports about version 1 are stale, one
    // claiming a version the order never had is ignored, version 2 applies.
    let v2 = resync(&f.pool, b).await;
    assert_eq!(v2, 2);
    publisher
        .publish(&report(b, 1, SyncState::Synced, 1, t + s(30)))
        .await;
    publisher
        .publish(&report(b, 9, SyncState::Synced, 1, t + s(30)))
        .await;
    applier.wait_counts((1, 5, 0, 0)).await;
    assert_eq!(row(&f.pool, b).await.sync_state, "pending");
    publisher
        .publish(&report(b, 2, SyncState::Failed, 10, t + s(1)))
        .await;
    let r = wait_state(&f.pool, b, "failed").await;
    assert_eq!(r.sync_event_version, 2);
    assert_eq!(r.sync_attempts, 10);

    // c: failed, then synced for the same version (a dead letter replayed): ends synced, even
    // if the synced report's clock is behind; a later failed does not undo it.
    publisher
        .publish(&report(c, 1, SyncState::Failed, 10, t + s(60)))
        .await;
    wait_state(&f.pool, c, "failed").await;
    publisher
        .publish(&report(c, 1, SyncState::Synced, 11, t + s(59)))
        .await;
    let r = wait_state(&f.pool, c, "synced").await;
    assert_eq!(r.last_error_code, None);
    assert_eq!(r.sync_attempts, 11);
    publisher
        .publish(&report(c, 1, SyncState::Failed, 12, t + s(90)))
        .await;
    applier.wait_counts((4, 6, 0, 0)).await;
    assert_eq!(row(&f.pool, c).await.sync_state, "synced");

    // An order that does not exist: counted, acknowledged, dropped.
    publisher
        .publish(&report(Uuid::now_v7(), 1, SyncState::Synced, 1, t))
        .await;
    applier.wait_counts((4, 6, 1, 0)).await;
    // Everything acknowledged, and (the queue being FIFO, also across redeliveries) every
    // report above processed: the end states hold.
    wait_queue_len(&format!("{}.status-events", f.ns), 0).await;
    let (ra, rb, rc) = (
        row(&f.pool, a).await,
        row(&f.pool, b).await,
        row(&f.pool, c).await,
    );
    assert_eq!(
        (ra.sync_state.as_str(), ra.version),
        ("synced", after_synced.version)
    );
    assert_eq!(
        (rb.sync_state.as_str(), rb.sync_event_version),
        ("failed", 2)
    );
    assert_eq!((rc.sync_state.as_str(), rc.sync_attempts), ("synced", 11));
    publisher.close().await;
    applier.stop().await;
}

/// A batch holding several reports for one order is applied as if one at a time, in order.
#[tokio::test]
async fn one_batch_applies_several_reports_per_order_in_order() {
    let f = fixture().await;
    let (a, _) = create_order(&f.pool, f.client).await;
    let (b, _) = create_order(&f.pool, f.client).await;
    let t = Utc::now().trunc_subsecs(6);
    let s = chrono::Duration::seconds;
    let decode =
        |e: &Envelope<SyncStatus>| Report::decode(&serde_json::to_vec(e).unwrap()).unwrap();
    let reports: Vec<Report> = [
        report(a, 1, SyncState::Retrying, 1, t + s(1)),
        report(b, 1, SyncState::Failed, 5, t + s(2)),
        report(a, 1, SyncState::Retrying, 2, t + s(3)),
        report(b, 1, SyncState::Retrying, 4, t + s(1)), // older than b's failed
        report(a, 1, SyncState::Synced, 3, t + s(4)),
        report(Uuid::now_v7(), 1, SyncState::Synced, 1, t),
        report(a, 1, SyncState::Retrying, 4, t + s(5)), // after a's synced
        report(a, 1, SyncState::Synced, 3, t + s(4)),   // duplicate of a's synced
    ]
    .iter()
    .map(decode)
    .collect();
    let va = row(&f.pool, a).await.version;
    let mut conn = f.pool.acquire().await.unwrap();
    let out = apply_reports(&mut conn, &reports).await.unwrap();
    use Applied::{Stale, UnknownOrder};
    let ok = Applied::Applied;
    assert_eq!(out, [ok, ok, ok, Stale, ok, UnknownOrder, Stale, Stale]);
    let r = row(&f.pool, a).await;
    assert_eq!((r.sync_state.as_str(), r.sync_attempts), ("synced", 3));
    assert_eq!(r.synced_at, Some(t + s(4)));
    assert_eq!(r.version, va + 3, "one bump per applied report");
    let r = row(&f.pool, b).await;
    assert_eq!((r.sync_state.as_str(), r.sync_attempts), ("failed", 5));

    // Applying the whole batch again changes nothing.
    let version = row(&f.pool, a).await.version;
    let again = apply_reports(&mut conn, &reports).await.unwrap();
    assert!(again.iter().all(|o| *o != Applied::Applied), "{again:?}");
    assert_eq!(row(&f.pool, a).await.version, version);

    // The same through the broker: all queued before the applier starts, so they arrive
    // together and are gathered into one batch.
    let (c, _) = create_order(&f.pool, f.client).await;
    let mut publisher = Publisher::new(&f.ns).await;
    for (state, attempts, at) in [
        (SyncState::Retrying, 1, 1),
        (SyncState::Retrying, 2, 2),
        (SyncState::Synced, 3, 3),
        (SyncState::Retrying, 4, 4),
    ] {
        publisher
            .publish(&report(c, 1, state, attempts, t + s(at)))
            .await;
    }
    let applier = RunningApplier::start(
        &f.app,
        &f.ns,
        &f.pool,
        StatusConfig {
            status_linger: Duration::from_millis(300),
            ..StatusConfig::default()
        },
    );
    applier.wait_counts((3, 1, 0, 0)).await;
    let r = row(&f.pool, c).await;
    assert_eq!((r.sync_state.as_str(), r.sync_attempts), ("synced", 3));
    publisher.close().await;
    applier.stop().await;
}

fn x_death_queue(headers: &orderbridge_broker::lapin::types::FieldTable) -> (String, String) {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death header: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    let get = |k: &str| match first.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("x-death {k}: {other:?}"),
    };
    (get("queue"), get("reason"))
}

#[tokio::test]
async fn unreadable_messages_are_dead_lettered_and_do_not_block_the_queue() {
    let f = fixture().await;
    let (order, _) = create_order(&f.pool, f.client).await;
    let applier = RunningApplier::started(&f.app, &f.ns, &f.pool).await;
    let mut publisher = Publisher::new(&f.ns).await;
    let t = Utc::now().trunc_subsecs(6);

    let props = |id: Uuid| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.to_string().into())
    };
    let (poison1, poison2) = (Uuid::now_v7(), Uuid::now_v7());
    publisher
        .raw("order.sync_status.synced", b"{not json", props(poison1))
        .await;
    let mut other = serde_json::to_value(report(order, 1, SyncState::Synced, 1, t)).unwrap();
    other["type"] = "order.something_else".into();
    publisher
        .raw(
            "order.sync_status.synced",
            &serde_json::to_vec(&other).unwrap(),
            props(poison2),
        )
        .await;
    // A state the worker never reports.
    let pending = report(order, 1, SyncState::Pending, 1, t);
    publisher.publish(&pending).await;
    // The next good message is still applied.
    publisher
        .publish(&report(order, 1, SyncState::Synced, 1, t))
        .await;
    wait_state(&f.pool, order, "synced").await;
    applier.wait_counts((1, 0, 0, 3)).await;

    let dead = drain(&format!("{}.dead-letters", f.ns), 3, WAIT).await;
    let ids: HashSet<Uuid> = dead.iter().map(|d| d.message_id).collect();
    assert_eq!(ids, HashSet::from([poison1, poison2, pending.id.get()]));
    for d in &dead {
        let (queue, reason) = x_death_queue(d.properties.headers().as_ref().unwrap());
        assert_eq!(queue, format!("{}.status-events", f.ns));
        assert_eq!(reason, "rejected");
    }
    wait_queue_len(&format!("{}.status-events", f.ns), 0).await;
    publisher.close().await;
    applier.stop().await;
}

/// Anyone who can publish on the status exchange could mark any order synced, failed or
/// anything else: reports that are not signed by the sync worker's key (unsigned, another
/// secret, changed after signing) are dead-lettered with the reason and never touch the order;
/// during a key rotation, a report signed with the previous key is still applied.
#[tokio::test]
async fn forged_reports_are_dead_lettered_and_change_nothing() {
    let f = fixture().await;
    let (order, _) = create_order(&f.pool, f.client).await;
    // Rotating: signs with a new key, still accepts the tests' (previous) key.
    const NEW_KEY: &str = "k2:a-brand-new-secret-of-at-least-32-bytes";
    let mut rotating = broker_config(&f.ns);
    rotating.signing = SigningConfig {
        broker_signing_key: Some(NEW_KEY.into()),
        broker_signing_keys_previous: Some(SIGNING_KEY.into()),
    };
    let applier = RunningApplier::start_with(&f.app, rotating, &f.pool, StatusConfig::default());
    applier.wait_up().await;
    let mut publisher = Publisher::new(&f.ns).await;
    let t = Utc::now().trunc_subsecs(6);
    let before = row(&f.pool, order).await;

    let envelope = report(order, 1, SyncState::Failed, 3, t);
    let body = serde_json::to_vec(&envelope).unwrap();
    // Each its own message id, so the dead letters can be told apart.
    let props = || {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(Uuid::now_v7().to_string().into())
            .with_type("order.sync_status".into())
    };
    // No signature at all.
    publisher
        .as_is(&envelope.data.routing_key(), &body, props())
        .await;
    // The key's id, but another secret.
    let forger = Keyring::single("dev:a-guess-at-the-secret-0123456789abcdef").unwrap();
    publisher
        .as_is(
            &envelope.data.routing_key(),
            &body,
            forger.sign(props(), &body),
        )
        .await;
    // Genuinely signed, then changed on the way: `synced` instead of `failed`.
    let mut changed = serde_json::to_value(&envelope).unwrap();
    changed["data"]["state"] = "synced".into();
    publisher
        .as_is(
            &envelope.data.routing_key(),
            &serde_json::to_vec(&changed).unwrap(),
            keyring().sign(props(), &body),
        )
        .await;
    eventually(WAIT, "three forged reports dead-lettered", || async {
        applier.count("bad_signature") >= 3
    })
    .await;
    assert_eq!(
        applier.counts(),
        (0, 0, 0, 0),
        "nothing applied or rejected"
    );
    assert_eq!(row(&f.pool, order).await, before, "the order is untouched");

    let dead = drain(&format!("{}.dead-letters", f.ns), 3, WAIT).await;
    assert!(dead.len() >= 3, "{dead:?}");
    let mut codes: Vec<String> = dead
        .iter()
        .map(|d| {
            let p = &d.properties;
            assert_eq!(
                headers::text(p, headers::REASON).as_deref(),
                Some(DeadLetterReason::BadSignature.as_str())
            );
            assert_eq!(
                headers::text(p, headers::ORIGIN_QUEUE),
                Some(format!("{}.status-events", f.ns))
            );
            headers::text(p, headers::ERROR_CODE).unwrap()
        })
        .collect();
    codes.sort();
    codes.dedup();
    assert_eq!(
        codes,
        ["SIGNATURE_MISMATCH", "SIGNATURE_MISSING"],
        "another secret and a changed body are both mismatches"
    );
    wait_queue_len(&format!("{}.status-events", f.ns), 0).await;

    // Signed with the previous key (the worker not yet rolled over): applied.
    publisher.publish(&envelope).await;
    let r = wait_state(&f.pool, order, "failed").await;
    assert_eq!(r.sync_attempts, 3);
    assert_eq!(applier.count("applied"), 1);
    publisher.close().await;
    applier.stop().await;
}

/// The pids of the broker connections with this client-provided name.
fn broker_connections(name: &str) -> Vec<String> {
    // One line per connection: `<pid>\t[{client properties}]`, the pid in the form
    // `close_connection` takes (the JSON formatter prints it differently).
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl must be installed to run this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let needle = format!("\"{name}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split('\t').next())
        .map(str::to_owned)
        .collect()
}

/// Closes only this test's connection (a server-side `connection.close`, as
/// `close_all_connections` sends to every connection), so tests running alongside on the same
/// broker are not disturbed.
fn close_connection(pid: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "close_connection",
            pid,
            "orderbridge status applier fault test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_applier_recovers_from_broker_and_database_connection_loss() {
    let f = fixture().await;
    let (order, _) = create_order(&f.pool, f.client).await;
    let applier = RunningApplier::started(&f.app, &f.ns, &f.pool).await;
    let mut publisher = Publisher::new(&f.ns).await;
    let t = Utc::now().trunc_subsecs(6);
    let s = chrono::Duration::seconds;
    publisher
        .publish(&report(order, 1, SyncState::Retrying, 1, t))
        .await;
    wait_state(&f.pool, order, "retrying").await;

    // The broker closes the applier's connection.
    let name = format!("{} (status applier)", f.app);
    let before = broker_connections(&name);
    assert_eq!(before.len(), 1, "{before:?}");
    close_connection(&before[0]);
    eventually(WAIT, "a new broker connection", || async {
        let now = broker_connections(&name);
        now.len() == 1 && now != before
    })
    .await;
    applier.wait_up().await;
    publisher
        .publish(&report(order, 1, SyncState::Retrying, 2, t + s(1)))
        .await;
    eventually(WAIT, "second retry applied", || async {
        row(&f.pool, order).await.sync_attempts == 2
    })
    .await;

    // Postgres drops the applier's connection: the next batch reconnects.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()) t",
    )
    .bind(&f.app)
    .fetch_one(&f.pool)
    .await
    .unwrap();
    assert!(killed >= 1);
    publisher
        .publish(&report(order, 1, SyncState::Synced, 3, t + s(2)))
        .await;
    let r = wait_state(&f.pool, order, "synced").await;
    assert_eq!(r.sync_attempts, 3);
    applier.wait_counts((3, 0, 0, 0)).await;
    wait_queue_len(&format!("{}.status-events", f.ns), 0).await;
    publisher.close().await;
    applier.stop().await;
}

/// Acknowledged only after commit: while Postgres is unreachable the batch is held, and a
/// shutdown meanwhile hands it back to the queue for the next applier.
#[tokio::test]
async fn nothing_is_acknowledged_before_it_is_committed() {
    let f = fixture().await;
    let (order, _) = create_order(&f.pool, f.client).await;
    let proxy = PausableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = pool_named(
        &(*f.pool.connect_options()).clone().port(proxy.port),
        &f.app,
    );
    let applier = RunningApplier::started(&f.app, &f.ns, &via_proxy).await;
    let mut publisher = Publisher::new(&f.ns).await;
    let queue = format!("{}.status-events", f.ns);

    proxy.cut();
    publisher
        .publish(&report(order, 1, SyncState::Synced, 1, Utc::now()))
        .await;
    // Delivered to the applier (no longer ready) but not applied.
    wait_queue_len(&queue, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(row(&f.pool, order).await.sync_state, "pending");
    applier.stop().await;
    // Handed back on shutdown.
    wait_queue_len(&queue, 1).await;

    let next = RunningApplier::started(&format!("{}-2", f.app), &f.ns, &f.pool).await;
    wait_state(&f.pool, order, "synced").await;
    next.wait_counts((1, 0, 0, 0)).await;
    publisher.close().await;
    next.stop().await;
}
