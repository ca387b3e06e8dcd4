//! `rabbitmqctl close_all_connections` while a batch is in its Salesforce call: the worker
//! reconnects by itself, every order ends synced, exactly once in Salesforce.
//!
//! This closes EVERY connection on the broker, so it is the only test of this binary (cargo runs
//! test binaries one after another). The harness opens a connection per broker operation, so it
//! is not disturbed itself.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Harness, assert_exactly_once, eventually, order};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn close_all_connections() {
    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "sync-worker fault test"])
        .output()
        .expect("rabbitmqctl must be installed to run this test");
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_closed_during_a_salesforce_call_lose_nothing() {
    let mut h = Harness::new().await;
    let metrics = h.start_worker(&["--batch-linger", "200ms"]).await;
    // Warm up without latency: session and price book cached, so a batch is one Composite call.
    let warm = order("C-0", 1);
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;

    let mut all = vec![warm];
    for round in 1..=2u64 {
        // rabbitmqctl itself takes a second or more to start: the call must outlast that.
        h.faults(json!({"latency_ms": 4000})).await;
        let calls_before = h.composite_calls().await;
        let delayed_before = h.delayed_requests().await;
        let orders: Vec<_> = (0..20)
            .map(|i| order(&format!("C-{round}-{i}"), 3))
            .collect();
        h.publish_orders(&orders).await;
        eventually(WAIT, "the orders taken from the queue", || async {
            h.message_count(&h.topology.sf_sync_queue).await == 0
        })
        .await;
        // Taken from the queue is not yet sent: the batch lingers before its call. Closing the
        // connections then would only requeue it, and this test is about a call in flight.
        eventually(WAIT, "the Composite call held by the emulator", || async {
            h.delayed_requests().await > delayed_before
        })
        .await;
        tokio::task::spawn_blocking(close_all_connections)
            .await
            .unwrap();
        // The emulator counts a call after its latency: not counted yet means the connections
        // were closed while the call was in flight.
        assert_eq!(
            h.composite_calls().await,
            calls_before,
            "round {round}: the Composite call was still in flight"
        );
        // The redelivered batch need not be slow.
        h.faults(json!({"latency_ms": 0})).await;
        eventually(WAIT, "the worker reconnected", || async {
            metrics.broker_reconnects_total.load(Ordering::Relaxed) >= round
                && metrics.broker_up.load(Ordering::Relaxed)
        })
        .await;
        let reports = h.wait_synced(&orders, WAIT).await;
        assert!(
            reports
                .iter()
                .all(|r| r.data.state == orderbridge_domain::SyncState::Synced),
            "round {round}: only synced reports"
        );
        // The call's outcome was lost with the connection: the redelivered batch was written
        // again (and found already there).
        assert!(
            h.composite_calls().await >= calls_before + 2,
            "round {round}: written again after the reconnect"
        );
        all.extend(orders);
        assert_exactly_once(&h, &all).await;
    }
    assert!(metrics.broker_reconnects_total.load(Ordering::Relaxed) >= 2);
    assert_eq!(metrics.failed_total.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.retried_total.load(Ordering::Relaxed), 0);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    assert_eq!(h.records("Order").await.len(), all.len());
    h.cleanup().await;
}
