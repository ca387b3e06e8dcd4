//! `rabbitmqctl close_all_connections` while the relay is publishing: nothing is lost and the
//! relay reconnects by itself.
//!
//! This closes EVERY connection on the broker, so it lives in its own test binary (cargo runs
//! test binaries one after another): the other relay tests never see it. Tests elsewhere that
//! share the broker must tolerate it too; the harness's queue reader (`common::drain`) does.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn close_all_connections() {
    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "orderbridge relay fault test"])
        .output()
        .expect("rabbitmqctl must be installed to run this test");
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn broker_connections_closed_mid_stream_lose_nothing() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool_opts = db.pool_options();
    let opts = db.connect_options();
    let pool = pool_opts.connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let app = "relay-amqp-fault";
    let client = api_client(&pool).await;
    let mut config = relay_config(app);
    // Small batches, so the fault lands between and inside batches.
    config.batch_size = 20;
    let relay = RunningRelay::start(config.clone(), broker_config(&ns), pool_named(&opts, app));
    eventually(WAIT, "relay ready", || async { relay.metrics.ready() }).await;
    // A hot standby, which loses its broker connection too; leadership may move.
    let standby = RunningRelay::start(config, broker_config(&ns), pool_named(&opts, app));
    eventually(WAIT, "standby ready", || async { standby.metrics.ready() }).await;
    let reconnects = || {
        relay
            .metrics
            .broker_reconnects_total
            .load(Ordering::Relaxed)
            + standby
                .metrics
                .broker_reconnects_total
                .load(Ordering::Relaxed)
    };

    // A steady writer: 300 orders.
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..300 {
                ids.push(create_order(&pool, client).await.1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    eventually(WAIT, "publishing under way", || async {
        published_count(&pool).await >= 50
    })
    .await;
    close_all_connections();
    eventually(WAIT, "both reconnected", || async {
        reconnects() >= 2 && relay.metrics.ready() && standby.metrics.ready()
    })
    .await;
    // Once more, while the backlog may still be draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    close_all_connections();

    let written: Vec<Uuid> = writer.await.unwrap();
    eventually(WAIT, "every row published", || async {
        published_count(&pool).await == 300
    })
    .await;
    let need: HashSet<Uuid> = written.iter().copied().collect();
    let got = drain_covering(&format!("{ns}.sf-sync"), &need, WAIT).await;
    let ids: HashSet<Uuid> = got.iter().map(|r| r.message_id).collect();
    for id in &written {
        assert!(ids.contains(id), "event {id} lost");
    }
    assert!(reconnects() >= 4, "reconnects: {}", reconnects());
    // Exactly one leader again, both ready.
    eventually(WAIT, "exactly one leader, both ready", || async {
        relay.metrics.ready()
            && standby.metrics.ready()
            && (relay.metrics.leader.load(Ordering::Relaxed)
                ^ standby.metrics.leader.load(Ordering::Relaxed))
    })
    .await;
    relay.stop().await;
    standby.stop().await;
}
