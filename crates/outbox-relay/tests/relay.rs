//! The relay against real Postgres and RabbitMQ: confirms and message properties, commit order,
//! two relays, unroutable messages, a terminated Postgres connection, retention.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use orderbridge_broker::lapin::options::QueueBindOptions;
use orderbridge_broker::lapin::options::QueueDeclareOptions;
use orderbridge_broker::lapin::types::{AMQPValue, FieldTable};
use orderbridge_broker::lapin::{Connection, ConnectionProperties};
use orderbridge_domain::OrderEvent;
use outbox_relay::Metrics;
use outbox_relay::metrics::FailureReason;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn publishes_with_confirms_and_message_properties() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-props");
    let client = api_client(&pool).await;
    let relay = RunningRelay::start(
        relay_config("relay-props"),
        broker_config(&ns),
        pool.clone(),
    );
    eventually(WAIT, "relay ready", || async { relay.metrics.ready() }).await;

    let (order_id, event_id) = create_order(&pool, client).await;
    let got = drain(&format!("{ns}.sf-sync"), 1, WAIT).await;
    assert_eq!(got.len(), 1);
    let msg = &got[0];
    let p = &msg.properties;
    assert_eq!(msg.message_id, event_id);
    assert_eq!(msg.routing_key, "order.submitted");
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.submitted");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(
        p.correlation_id().as_ref().unwrap().as_str(),
        format!("req-{order_id}")
    );
    assert!(p.timestamp().unwrap() > 1_700_000_000);
    let headers = p.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("schema_version"),
        Some(&AMQPValue::LongLongInt(1))
    );
    assert_eq!(
        headers.get("aggregate_id"),
        Some(&AMQPValue::LongString(order_id.to_string().into()))
    );
    // Signed, over the body the worker will read.
    assert_eq!(keyring().verify(p, &msg.body), Ok("dev"));
    // The body is the stored envelope: it decodes to the same event.
    let envelope = OrderEvent::decode(&msg.body).unwrap();
    assert_eq!(envelope.id.get(), event_id);
    let OrderEvent::Submitted(submitted) = envelope.data;
    assert_eq!(submitted.order.id.get(), order_id);

    // Marked published after the confirm, and the order moved pending → published with a new
    // version (so its ETag changes).
    eventually(WAIT, "row marked published", || {
        is_published(&pool, event_id)
    })
    .await;
    let (state, version): (String, i64) =
        sqlx::query_as("SELECT sync_state, version FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "published");
    assert_eq!(version, 2);
    assert_eq!(relay.metrics.published_total.load(Ordering::Relaxed), 1);
    let text = relay.metrics.render();
    assert!(text.contains("outbox_relay_published_total 1"));
    assert!(text.contains("outbox_relay_commit_to_confirm_lag_seconds_count 1"));

    relay.stop().await;
}

#[tokio::test]
async fn marking_published_never_moves_an_order_back() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-monotonic");
    let client = api_client(&pool).await;
    // The worker was faster than the relay's mark (or this is a resync event): the order is
    // already synced when its event is marked published.
    let (order_id, _) = create_order(&pool, client).await;
    sqlx::query("UPDATE orders SET sync_state = 'synced' WHERE id = $1")
        .bind(order_id)
        .execute(&pool)
        .await
        .unwrap();
    let event_id = add_event(&pool, order_id, "order.submitted").await;
    let relay = RunningRelay::start(
        relay_config("relay-monotonic"),
        broker_config(&ns),
        pool.clone(),
    );
    eventually(WAIT, "row marked published", || {
        is_published(&pool, event_id)
    })
    .await;
    let state: String = sqlx::query_scalar("SELECT sync_state FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "synced");
    relay.stop().await;
}

/// A transaction takes its outbox position first but commits last, while other writers commit
/// around it: a cursor on `position` would skip its row; the relay must not, and must publish
/// it after the rows that committed before it.
#[tokio::test]
async fn commit_order_with_concurrent_writers_and_a_late_commit() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-order");
    let client = api_client(&pool).await;
    let relay = RunningRelay::start(
        relay_config("relay-order"),
        broker_config(&ns),
        pool.clone(),
    );
    eventually(WAIT, "relay ready", || async { relay.metrics.ready() }).await;

    // The late transaction: its row gets the smallest position of what follows.
    let mut late = pool.begin().await.unwrap();
    let (late_order, late_envelope) = insert_order_row(&mut late, client).await;
    orderbridge_db::outbox::enqueue(&mut *late, "order", late_order, &late_envelope)
        .await
        .unwrap();
    let late_event_id = late_envelope.id.get();

    // Concurrent writers commit around it.
    let mut writers = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..10 {
                ids.push(create_order(&pool, client).await.1);
            }
            ids
        }));
    }
    let mut early = Vec::new();
    for w in writers {
        early.extend(w.await.unwrap());
    }
    eventually(WAIT, "early rows published", || async {
        published_count(&pool).await == 40
    })
    .await;
    assert!(!is_published(&pool, late_event_id).await);
    // Only the late transaction itself sees its row yet.
    let late_position: i64 = sqlx::query_scalar("SELECT position FROM outbox WHERE event_id = $1")
        .bind(late_event_id)
        .fetch_one(&mut *late)
        .await
        .unwrap();
    let min_other: i64 =
        sqlx::query_scalar("SELECT min(position) FROM outbox WHERE event_id <> $1")
            .bind(late_event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        late_position < min_other,
        "the late row must hold the lowest position"
    );

    late.commit().await.unwrap();
    eventually(WAIT, "late row published", || {
        is_published(&pool, late_event_id)
    })
    .await;

    let got = drain(&format!("{ns}.sf-sync"), 41, WAIT).await;
    let ids: Vec<Uuid> = got.iter().map(|r| r.message_id).collect();
    assert_eq!(ids.len(), 41, "every row exactly once");
    assert_eq!(
        queue_len(&format!("{ns}.sf-sync")).await,
        0,
        "no duplicates"
    );
    // Commit order: the late row, committed last, arrives last.
    assert_eq!(ids.last(), Some(&late_event_id));
    for id in &early {
        assert!(ids.contains(id));
    }
    relay.stop().await;
}

/// Two relays at once: one leads, the other stands by; every row is published once, and the
/// events of each order arrive in the order they were written.
#[tokio::test]
async fn two_relays_publish_each_row_once_in_order_per_order() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-two-writer");
    let client = api_client(&pool).await;
    let a = RunningRelay::start(
        relay_config("relay-two-a"),
        broker_config(&ns),
        pool_named(&opts, "relay-two-a"),
    );
    let b = RunningRelay::start(
        relay_config("relay-two-b"),
        broker_config(&ns),
        pool_named(&opts, "relay-two-b"),
    );
    eventually(WAIT, "both relays up, one leader", || async {
        a.metrics.broker_up.load(Ordering::Relaxed)
            && b.metrics.broker_up.load(Ordering::Relaxed)
            && (a.metrics.leader.load(Ordering::Relaxed) ^ b.metrics.leader.load(Ordering::Relaxed))
    })
    .await;

    // 20 orders written concurrently, each with 4 events in separate transactions.
    let mut writers = Vec::new();
    for _ in 0..20 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let (order, first) = create_order(&pool, client).await;
            let mut events = vec![first];
            for i in 0..3 {
                let t = if i % 2 == 0 {
                    "order.updated"
                } else {
                    "order.submitted"
                };
                events.push(add_event(&pool, order, t).await);
            }
            (order, events)
        }));
    }
    let mut written: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for w in writers {
        let (order, events) = w.await.unwrap();
        written.insert(order, events);
    }
    eventually(WAIT, "all rows published", || async {
        published_count(&pool).await == 80
    })
    .await;
    let got = drain(&format!("{ns}.sf-sync"), 80, WAIT).await;
    assert_eq!(got.len(), 80, "each row published exactly once");
    assert_eq!(
        queue_len(&format!("{ns}.sf-sync")).await,
        0,
        "no duplicates"
    );
    assert_eq!(
        a.metrics.published_total.load(Ordering::Relaxed)
            + b.metrics.published_total.load(Ordering::Relaxed),
        80
    );

    let mut arrived: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for r in &got {
        arrived
            .entry(aggregate_of(r))
            .or_default()
            .push(r.message_id);
    }
    assert_eq!(arrived, written, "per-order order preserved");

    // The standby takes over when the leader stops, and publishes what comes next.
    let (leader, standby) = if a.metrics.leader.load(Ordering::Relaxed) {
        (a, b)
    } else {
        (b, a)
    };
    leader.stop().await;
    let (_, next) = create_order(&pool, client).await;
    eventually(WAIT, "standby took over", || is_published(&pool, next)).await;
    assert!(standby.metrics.leader.load(Ordering::Relaxed));
    standby.stop().await;
}

/// A row whose routing key no queue is bound for comes back as basic.return: it stays
/// unpublished, is counted, and goes out once a queue is bound.
#[tokio::test]
async fn unroutable_message_stays_unpublished_until_routable() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-unroutable");
    let client = api_client(&pool).await;
    let mut config = relay_config("relay-unroutable");
    config.poll_interval = Duration::from_millis(200);
    // Fewer rows per batch than refused rows at the head of the outbox: refused rows must not
    // block the orders behind them.
    config.batch_size = 5;
    let relay = RunningRelay::start(config, broker_config(&ns), pool.clone());
    eventually(WAIT, "relay ready", || async { relay.metrics.ready() }).await;

    let (order, first) = create_order(&pool, client).await;
    eventually(WAIT, "first row published", || is_published(&pool, first)).await;
    // Nothing binds `invoice.#`. The order's next event (routable) must wait behind its stray.
    let stray = add_event(&pool, order, "invoice.created").await;
    let after_stray = add_event(&pool, order, "order.updated").await;
    let mut strays = vec![stray];
    for _ in 0..7 {
        let (o, _) = create_order(&pool, client).await;
        strays.push(add_event(&pool, o, "invoice.created").await);
    }
    let (_, routable) = create_order(&pool, client).await;
    eventually(WAIT, "routable row behind the strays published", || {
        is_published(&pool, routable)
    })
    .await;
    // Retried, refused again, still unpublished; the order's later event waits behind it.
    eventually(WAIT, "unroutable counted repeatedly", || async {
        relay.metrics.failures(FailureReason::Unroutable) >= 16
    })
    .await;
    for s in &strays {
        assert!(!is_published(&pool, *s).await);
    }
    assert!(!is_published(&pool, after_stray).await);
    assert!(
        relay
            .metrics
            .render()
            .contains("outbox_relay_publish_failures_total{reason=\"unroutable\"}")
    );

    // Another system binds a queue for invoices: the rows go out, and the order's later event
    // right after its stray.
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = format!("{ns}.invoices");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        format!("{ns}.events").into(),
        "invoice.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    eventually(WAIT, "order's later event published", || {
        is_published(&pool, after_stray)
    })
    .await;
    let need: std::collections::HashSet<Uuid> = strays.iter().copied().collect();
    let got = drain_covering(&q, &need, WAIT).await;
    assert_eq!(got.len(), strays.len());
    let (stray_at, after_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT (SELECT published_at FROM outbox WHERE event_id = $1),
                    (SELECT published_at FROM outbox WHERE event_id = $2)",
        )
        .bind(stray)
        .bind(after_stray)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stray_at <= after_at);
    ch.queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    relay.stop().await;
}

#[tokio::test]
async fn terminated_postgres_connections_are_recovered() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool_opts = db.pool_options();
    let opts = db.connect_options();
    let pool = pool_opts.connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let app = format!("relay-pgkill-{}", Uuid::new_v4().simple());
    let client = api_client(&pool).await;
    let mut config = relay_config(&app);
    config.poll_interval = Duration::from_secs(60);
    let relay = RunningRelay::start(config, broker_config(&ns), pool_named(&opts, &app));
    eventually(WAIT, "relay ready", || async { relay.metrics.ready() }).await;

    let mut events = Vec::new();
    for _ in 0..20 {
        events.push(create_order(&pool, client).await.1);
    }
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                              WHERE application_name = $1) t",
    )
    .bind(&app)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        killed >= 2,
        "leader and LISTEN connections terminated, got {killed}"
    );
    for _ in 0..20 {
        events.push(create_order(&pool, client).await.1);
    }
    eventually(WAIT, "relay ready again", || async {
        relay.metrics.ready()
    })
    .await;
    eventually(WAIT, "leader again", || async {
        relay.metrics.leader.load(Ordering::Relaxed)
    })
    .await;
    // Wait until everything so far is out, then write one more: only a NOTIFY can deliver it
    // within the deadline, the poll is a minute away.
    eventually(WAIT, "rows written around the fault published", || async {
        published_count(&pool).await == 40
    })
    .await;
    let (_, last) = create_order(&pool, client).await;
    events.push(last);
    eventually(Duration::from_secs(20), "published via NOTIFY", || {
        is_published(&pool, last)
    })
    .await;
    let need: std::collections::HashSet<Uuid> = events.iter().copied().collect();
    let got = drain_covering(&format!("{ns}.sf-sync"), &need, WAIT).await;
    let ids: std::collections::HashSet<Uuid> = got.iter().map(|r| r.message_id).collect();
    for e in &events {
        assert!(ids.contains(e), "event {e} lost");
    }
    relay.stop().await;
}

#[tokio::test]
async fn retention_deletes_only_old_published_rows_in_batches() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let client = api_client(&pool).await;
    let mut old = Vec::new();
    for _ in 0..5 {
        old.push(create_order(&pool, client).await.1);
    }
    let (_, recent) = create_order(&pool, client).await;
    let (_, unpublished_old) = create_order(&pool, client).await;
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '8 days' WHERE event_id = ANY($1)",
    )
    .bind(&old)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE outbox SET published_at = now() - interval '1 day' WHERE event_id = $1")
        .bind(recent)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET created_at = now() - interval '30 days' WHERE event_id = $1")
        .bind(unpublished_old)
        .execute(&pool)
        .await
        .unwrap();

    let metrics = Metrics::default();
    let deleted = outbox_relay::relay::retention_pass(
        &pool,
        Duration::from_secs(7 * 24 * 3600),
        2,
        &metrics,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(deleted, 5);
    assert_eq!(metrics.retention_deleted_total.load(Ordering::Relaxed), 5);
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY position")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec![recent, unpublished_old]);
}

/// Both dependencies cut off for real (through TCP proxies that drop every connection and refuse
/// new ones): readiness goes false while either is down, nothing is published without the
/// broker, and once each comes back the relay recovers by itself and loses nothing.
#[tokio::test]
async fn readiness_follows_the_dependencies_and_the_relay_recovers() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool_opts = db.pool_options();
    let opts = db.connect_options();
    let pool = pool_opts.connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let client = api_client(&pool).await;
    let pg = PausableProxy::start(
        format!("{}:{}", opts.get_host(), opts.get_port())
            .parse()
            .unwrap(),
    )
    .await;
    let amqp = PausableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut broker = broker_config(&ns);
    broker.amqp_url = secrecy::SecretString::from(amqp.amqp_url());
    let mut config = relay_config("relay-cut");
    config.poll_interval = Duration::from_millis(200);
    config.db_timeout = Duration::from_secs(3);
    let relay = RunningRelay::start(
        config,
        broker,
        pool_named(&opts.clone().port(pg.port), "relay-cut"),
    );
    let m = relay.metrics.clone();
    eventually(WAIT, "ready", || async { m.ready() }).await;
    let mut events = Vec::new();
    for _ in 0..10 {
        events.push(create_order(&pool, client).await.1);
    }
    eventually(WAIT, "published", || async {
        published_count(&pool).await == 10
    })
    .await;

    // Broker gone.
    amqp.cut();
    eventually(WAIT, "not ready without the broker", || async {
        !m.ready() && !m.broker_up.load(Ordering::Relaxed)
    })
    .await;
    for _ in 0..10 {
        events.push(create_order(&pool, client).await.1);
    }
    assert_eq!(
        published_count(&pool).await,
        10,
        "nothing publishes without a broker"
    );
    amqp.restore().await;
    eventually(WAIT, "ready after the broker returns", || async {
        m.ready()
    })
    .await;
    eventually(WAIT, "backlog published", || async {
        published_count(&pool).await == 20
    })
    .await;

    // Postgres gone (for the relay; the test writes directly).
    pg.cut();
    eventually(WAIT, "not ready without Postgres", || async {
        !m.ready() && !m.db_up.load(Ordering::Relaxed)
    })
    .await;
    for _ in 0..10 {
        events.push(create_order(&pool, client).await.1);
    }
    pg.restore().await;
    eventually(WAIT, "ready after Postgres returns", || async { m.ready() }).await;
    eventually(WAIT, "everything published", || async {
        published_count(&pool).await == 30
    })
    .await;

    let need: std::collections::HashSet<Uuid> = events.iter().copied().collect();
    let got = drain_covering(&format!("{ns}.sf-sync"), &need, WAIT).await;
    let ids: std::collections::HashSet<Uuid> = got.iter().map(|r| r.message_id).collect();
    assert!(need.is_subset(&ids), "an event was lost");
    relay.stop().await;
}

/// Routable and unroutable rows interleaved in large batches: the broker coalesces confirms
/// (`multiple=true`) and lapin hands a return to whichever confirm completes next, so a return
/// must be attributed by its message id. No unroutable row may ever be marked published, and
/// every routable one must be.
#[tokio::test]
async fn returns_are_attributed_to_their_own_rows_in_mixed_batches() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let pool = pool_named(&opts, "relay-mixed");
    let client = api_client(&pool).await;
    let mut config = relay_config("relay-mixed");
    config.poll_interval = Duration::from_millis(200);
    config.batch_size = 500;

    // Write everything first, so the relay sees it in a few large batches.
    let mut routable = Vec::new();
    let mut strays = Vec::new();
    for i in 0..300 {
        let (order, first) = create_order(&pool, client).await;
        routable.push(first);
        if i % 2 == 0 {
            // A different order per stray, so parking one order never holds back another's row.
            let (other, other_first) = create_order(&pool, client).await;
            routable.push(other_first);
            let _ = order;
            strays.push(add_event(&pool, other, "invoice.created").await);
        }
    }
    let relay = RunningRelay::start(config, broker_config(&ns), pool.clone());
    eventually(WAIT, "every routable row published", || async {
        for r in &routable {
            if !is_published(&pool, *r).await {
                return false;
            }
        }
        true
    })
    .await;
    eventually(WAIT, "every stray refused at least once", || async {
        relay.metrics.failures(FailureReason::Unroutable) >= strays.len() as u64
    })
    .await;
    for s in &strays {
        assert!(
            !is_published(&pool, *s).await,
            "an unroutable row was marked published"
        );
    }
    let work = format!("{ns}.sf-sync");
    let got = drain(&work, routable.len(), WAIT).await;
    assert_eq!(got.len(), routable.len());
    relay.stop().await;
}
