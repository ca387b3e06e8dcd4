//! Two batches in flight (`RELAY_PIPELINE`): while one batch's confirms are out, the next is
//! read and published, but never a later row of an order with a row in flight. The broker's
//! confirms are held back by a proxy, so "in flight" lasts as long as the test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    _db: orderbridge_testkit::TestDatabase,
    pool: PgPool,
    ns: Namespace,
    proxy: PausableProxy,
    relay: RunningRelay,
    client: Uuid,
}

async fn setup(pipeline: bool) -> Setup {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let pool = db.pool_options().connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let client = api_client(&pool).await;
    let proxy = PausableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut broker = broker_config(&ns);
    broker.amqp_url = secrecy::SecretString::from(proxy.amqp_url());
    // Held confirms must not count as a dead session within the test.
    broker.broker_op_timeout = Duration::from_secs(20);
    let mut config = relay_config("relay-pipeline");
    config.pipeline = pipeline;
    let relay = RunningRelay::start(config, broker, pool_named(&opts, "relay-pipeline"));
    let m = relay.metrics.clone();
    eventually(WAIT, "ready", || async { m.ready() }).await;
    Setup {
        _db: db,
        pool,
        ns,
        proxy,
        relay,
        client,
    }
}

/// How many messages are on the work queue now.
async fn on_queue(ns: &Namespace) -> u32 {
    queue_len_if_exists(&format!("{ns}.sf-sync"))
        .await
        .unwrap_or(0)
}

/// Order X's first event is in flight (its confirm held back). A new order Z goes out
/// meanwhile, X's second event does not; once the confirms flow, everything is published, X's
/// events in order.
#[tokio::test]
async fn the_next_batch_goes_out_while_confirms_are_held_but_not_an_orders_next_event() {
    let s = setup(true).await;
    s.proxy.pause_downstream(true);
    let (x, x1) = create_order(&s.pool, s.client).await;
    eventually(WAIT, "X's first event reached the broker", || async {
        on_queue(&s.ns).await == 1
    })
    .await;

    let (_, z1) = create_order(&s.pool, s.client).await;
    let x2 = add_event(&s.pool, x, "order.updated").await;
    eventually(WAIT, "Z's event reached the broker, confirms still held", || async {
        on_queue(&s.ns).await == 2
    })
    .await;
    // Give the relay every chance to send X's second event too: it must not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        on_queue(&s.ns).await,
        2,
        "an order's second event went out while its first was unconfirmed"
    );
    assert_eq!(published_count(&s.pool).await, 0, "nothing confirmed yet");

    s.proxy.pause_downstream(false);
    eventually(WAIT, "all three published", || async {
        published_count(&s.pool).await == 3
    })
    .await;
    let got = drain(&format!("{}.sf-sync", s.ns), 3, WAIT).await;
    let order: Vec<Uuid> = got.iter().map(|r| r.message_id).collect();
    assert_eq!(order.len(), 3, "each event once: {order:?}");
    let pos = |id: Uuid| order.iter().position(|m| *m == id).unwrap();
    assert!(pos(x1) < pos(x2), "X's events out of order: {order:?}");
    assert!(order.contains(&z1));
    s.relay.stop().await;
    cleanup(&s.ns).await;
}

/// With `RELAY_PIPELINE=false` a batch waits for the previous one's confirms: nothing new goes
/// out while they are held (the behaviour the switch restores).
#[tokio::test]
async fn without_the_pipeline_nothing_goes_out_while_confirms_are_held() {
    let s = setup(false).await;
    s.proxy.pause_downstream(true);
    create_order(&s.pool, s.client).await;
    eventually(WAIT, "the first event reached the broker", || async {
        on_queue(&s.ns).await == 1
    })
    .await;
    create_order(&s.pool, s.client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_queue(&s.ns).await, 1, "a second batch went out");

    s.proxy.pause_downstream(false);
    eventually(WAIT, "both published", || async {
        published_count(&s.pool).await == 2
    })
    .await;
    s.relay.stop().await;
    cleanup(&s.ns).await;
}

/// A backlog larger than a batch, with several events per order, through the pipeline: every
/// event once, each order's in commit order.
#[tokio::test]
async fn a_pipelined_backlog_keeps_every_orders_order() {
    let s = setup(true).await;
    s.relay.stop().await;
    let mut orders = Vec::new();
    for _ in 0..300 {
        orders.push(create_order(&s.pool, s.client).await);
    }
    let mut expected: Vec<(Uuid, Vec<Uuid>)> = orders.iter().map(|(o, e)| (*o, vec![*e])).collect();
    for round in 0..3 {
        for (o, events) in expected.iter_mut() {
            events.push(add_event(&s.pool, *o, &format!("order.step{round}")).await);
        }
    }
    let mut config = relay_config("relay-pipeline-backlog");
    config.batch_size = 100;
    let relay = RunningRelay::start(config, broker_config(&s.ns), s.pool.clone());
    let total = expected.iter().map(|(_, e)| e.len()).sum::<usize>();
    eventually(WAIT, "the backlog published", || async {
        published_count(&s.pool).await == total as i64
    })
    .await;
    let got = drain(&format!("{}.sf-sync", s.ns), total, WAIT).await;
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
    cleanup(&s.ns).await;
}
