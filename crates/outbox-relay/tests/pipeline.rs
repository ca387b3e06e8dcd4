//! Two batches in flight (`RELAY_PIPELINE`): while a backlog lasts, the next batch is read and
//! published while one batch's confirms are out, but never a later row of an order with a row
//! in flight. The broker's confirms are held back by a proxy, so "in flight" lasts as long as
//! the test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use outbox_relay::outbox::LEADER_LOCK_KEY;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// The outbox as the relay will find it: X1, Y1, X2, Z1 in that order (X has two events).
struct Backlog {
    x1: Uuid,
    y1: Uuid,
    x2: Uuid,
    z1: Uuid,
}

struct Setup {
    _db: orderbridge_testkit::TestDatabase,
    pool: PgPool,
    ns: Namespace,
    proxy: PausableProxy,
    relay: RunningRelay,
    backlog: Backlog,
}

/// A relay with batches of 2 through a proxy, started as a standby while the test holds the
/// leader lock; then the confirms are held back and the lock let go, so the relay's first
/// batch (X1, Y1) is full and its confirms stay out.
async fn setup(pipeline: bool) -> Setup {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let pool = db.pool_options().connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let client = api_client(&pool).await;
    let (x, x1) = create_order(&pool, client).await;
    let (_, y1) = create_order(&pool, client).await;
    let x2 = add_event(&pool, x, "order.updated").await;
    let (_, z1) = create_order(&pool, client).await;

    let mut leader = PgConnection::connect_with(&opts).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .execute(&mut leader)
        .await
        .unwrap();

    let proxy = PausableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut broker = broker_config(&ns);
    broker.amqp_url = secrecy::SecretString::from(proxy.amqp_url());
    // Held confirms must not count as a dead session within the test.
    broker.broker_op_timeout = Duration::from_secs(20);
    let mut config = relay_config("relay-pipeline");
    config.pipeline = pipeline;
    config.batch_size = 2;
    let relay = RunningRelay::start(config, broker, pool_named(&opts, "relay-pipeline"));
    let m = relay.metrics.clone();
    eventually(WAIT, "ready as a standby", || async { m.ready() }).await;
    assert_eq!(published_count(&pool).await, 0, "the standby published");

    proxy.pause_downstream(true);
    leader.close().await.unwrap();
    Setup {
        _db: db,
        pool,
        ns,
        proxy,
        relay,
        backlog: Backlog { x1, y1, x2, z1 },
    }
}

/// How many messages are on the work queue now.
async fn on_queue(ns: &Namespace) -> u32 {
    queue_len_if_exists(&format!("{ns}.sf-sync"))
        .await
        .unwrap_or(0)
}

/// The first batch (X1, Y1) is full, so while its confirms are held the next one goes out: Z1,
/// but not X2 (X has a row in flight). Once the confirms flow, everything is published once,
/// X's events in order.
#[tokio::test]
async fn during_a_backlog_the_next_batch_goes_out_while_confirms_are_held_but_not_an_orders_next_event()
 {
    let s = setup(true).await;
    let b = &s.backlog;
    eventually(
        WAIT,
        "X1, Y1 and Z1 reached the broker, confirms held",
        || async { on_queue(&s.ns).await == 3 },
    )
    .await;
    // Give the relay every chance to send X's second event too: it must not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        on_queue(&s.ns).await,
        3,
        "an order's second event went out while its first was unconfirmed"
    );
    assert_eq!(published_count(&s.pool).await, 0, "nothing confirmed yet");

    s.proxy.pause_downstream(false);
    eventually(WAIT, "all four published", || async {
        published_count(&s.pool).await == 4
    })
    .await;
    let got = drain(&format!("{}.sf-sync", s.ns), 4, WAIT).await;
    let order: Vec<Uuid> = got.iter().map(|r| r.message_id).collect();
    assert_eq!(order.len(), 4, "each event once: {order:?}");
    let pos = |id: Uuid| order.iter().position(|m| *m == id).unwrap();
    assert!(pos(b.x1) < pos(b.x2), "X's events out of order: {order:?}");
    assert!(order.contains(&b.y1) && order.contains(&b.z1), "{order:?}");
    s.relay.stop().await;
    cleanup(&s.ns).await;
}

/// With `RELAY_PIPELINE=false` a batch waits for the previous one's confirms: only the first
/// batch goes out while they are held (the behaviour the switch restores).
#[tokio::test]
async fn without_the_pipeline_nothing_more_goes_out_while_confirms_are_held() {
    let s = setup(false).await;
    eventually(WAIT, "the first batch reached the broker", || async {
        on_queue(&s.ns).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_queue(&s.ns).await, 2, "a second batch went out");

    s.proxy.pause_downstream(false);
    eventually(WAIT, "all four published", || async {
        published_count(&s.pool).await == 4
    })
    .await;
    s.relay.stop().await;
    cleanup(&s.ns).await;
}

/// A backlog larger than a batch, with several events per order, through the pipeline: every
/// event once, each order's in commit order.
#[tokio::test]
async fn a_pipelined_backlog_keeps_every_orders_order() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db
        .pool_options()
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let ns = namespace();
    let client = api_client(&pool).await;
    let mut orders = Vec::new();
    for _ in 0..300 {
        orders.push(create_order(&pool, client).await);
    }
    let mut expected: Vec<(Uuid, Vec<Uuid>)> = orders.iter().map(|(o, e)| (*o, vec![*e])).collect();
    for round in 0..3 {
        for (o, events) in expected.iter_mut() {
            events.push(add_event(&pool, *o, &format!("order.step{round}")).await);
        }
    }
    let mut config = relay_config("relay-pipeline-backlog");
    config.batch_size = 100;
    let relay = RunningRelay::start(config, broker_config(&ns), pool.clone());
    let total = expected.iter().map(|(_, e)| e.len()).sum::<usize>();
    eventually(WAIT, "the backlog published", || async {
        published_count(&pool).await == total as i64
    })
    .await;
    let got = drain(&format!("{}.sf-sync", ns), total, WAIT).await;
    assert_eq!(got.len(), total, "each event exactly once");
    for (order, events) in &expected {
        let seen: Vec<Uuid> = got
            .iter()
            .filter(|r| aggregate_of(r) == *order)
            .map(|r| r.message_id)
            .collect();
        assert_eq!(&seen, events, "order {order}'s events out of order");
    }
    relay.stop().await;
    cleanup(&ns).await;
}
