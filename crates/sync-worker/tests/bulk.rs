//! Backlogs through Bulk API 2.0: the same orders written through Composite and through Bulk
//! give the same Salesforce records and the same per-order outcomes; a worker with Bulk on
//! drains a backlog in a handful of calls, each order once; a Bulk job that fails half-way, and
//! a worker SIGKILLed while its job runs, lose and duplicate nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, assert_exactly_once, eventually, order, order_with_skus, test_client};
use orderbridge_domain::{Order, SubmittedOrder, SyncState};
use orderbridge_mapping::Mapping;
use orderbridge_runtime::admin::AdminState;
use orderbridge_salesforce::Client;
use serde_json::{Value, json};
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::writer::{OrderResult, Writer};

fn writer(h: &Harness) -> Writer {
    let client = Client::new(&h.sf).unwrap();
    let mapping = Arc::new(Mapping::load(None).unwrap());
    let pricebook = Arc::new(PriceBook::new(client.clone(), mapping.pricebook.clone()));
    Writer::new(client, mapping, pricebook, Arc::new(Metrics::default()))
}

/// Orders over a few customers (so accounts repeat), 1 to 3 lines.
fn orders(n: usize) -> Vec<Order> {
    (0..n)
        .map(|i| order(&format!("CUST-{}", i % 37), 1 + i % 3))
        .collect()
}

fn submitted(orders: &[Order]) -> Vec<SubmittedOrder> {
    orders
        .iter()
        .map(|o| SubmittedOrder {
            order: o.clone(),
            client: Some(test_client()),
        })
        .collect()
}

/// What a result says, without the record id (ids differ between two orgs).
fn shape(r: &OrderResult) -> String {
    match r {
        OrderResult::Synced { salesforce_id } => format!("synced {}", &salesforce_id[..3]),
        OrderResult::Failed(f) => format!("failed {} retryable={}", f.code, f.retryable),
        OrderResult::CallFailed(f) => format!("call failed {}", f.code),
    }
}

/// An org's records of `sobject` by external id, with ids replaced by what they point at (the
/// target's external id, or its name for records nobody writes by key) and the fields that
/// differ between any two orgs (ids, timestamps, numbering) left out.
async fn records(h: &Harness, sobject: &str) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut by_id: HashMap<String, String> = HashMap::new();
    for object in [
        "Account",
        "Order",
        "PricebookEntry",
        "Pricebook2",
        "Product2",
    ] {
        for r in h.records(object).await {
            let id = r["Id"].as_str().unwrap().to_owned();
            let name = r["External_Id__c"]
                .as_str()
                .or(r["Name"].as_str())
                .or(r["UnitPrice"].as_f64().map(|_| "entry"))
                .unwrap_or("?")
                .to_owned();
            by_id.insert(id, name);
        }
    }
    let volatile = [
        "Id",
        "CreatedDate",
        "LastModifiedDate",
        "SystemModstamp",
        "CreatedById",
        "LastModifiedById",
        "OrderNumber",
        "OrderItemNumber",
        "attributes",
    ];
    h.records(sobject)
        .await
        .into_iter()
        .map(|r| {
            let key = r["External_Id__c"].as_str().unwrap().to_owned();
            let fields = r
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !volatile.contains(&k.as_str()))
                .map(|(k, v)| {
                    let v = match v.as_str().and_then(|s| by_id.get(s)) {
                        Some(target) => json!(format!("→ {target}")),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            (key, fields)
        })
        .collect()
}

#[tokio::test]
async fn composite_and_bulk_write_the_same_records_with_the_same_outcomes() {
    let composite = Harness::new().await;
    let bulk = Harness::new().await;
    let mut batch = orders(450);
    // Refused before anything is written: a SKU without a price book entry.
    batch.push(order_with_skus("CUST-X", &["SKU-RED-MUG", "NO-SUCH-SKU"]));
    // Refused by Salesforce: an order whose record is locked (retryable), in both orgs.
    let locked = batch[17].id.to_string();
    for h in [&composite, &bulk] {
        h.faults(json!({"lock_records": [{"key": locked}]})).await;
    }
    let batch = submitted(&batch);
    let refs: Vec<&SubmittedOrder> = batch.iter().collect();

    let by_composite = writer(&composite).write(&refs).await;
    let bulk_writer = writer(&bulk);
    let calls_before = bulk.stats().await["api_calls_total"].as_u64().unwrap();
    let by_bulk = bulk_writer.write_bulk(&refs).await;
    let bulk_calls = bulk.stats().await["api_calls_total"].as_u64().unwrap() - calls_before;

    let a: Vec<String> = by_composite.iter().map(shape).collect();
    let b: Vec<String> = by_bulk.iter().map(shape).collect();
    assert_eq!(a, b, "per-order outcomes differ");
    assert_eq!(a.iter().filter(|s| s.starts_with("synced")).count(), 449);
    assert_eq!(a[17], "failed UNABLE_TO_LOCK_ROW retryable=true");
    assert_eq!(a[450], "failed UNKNOWN_SKU retryable=false");
    for object in ["Account", "Order", "OrderItem"] {
        let (x, y) = (
            records(&composite, object).await,
            records(&bulk, object).await,
        );
        assert!(!x.is_empty());
        assert_eq!(x, y, "{object} records differ between Composite and Bulk");
    }
    // Three jobs of ~4 calls plus polls and the price book lookups, against 5 per 1,000.
    assert!(bulk_calls <= 30, "{bulk_calls} calls");
    let routes = bulk.stats().await["api_calls_by_route"].clone();
    assert!(routes.get("POST /composite").is_none(), "{routes}");
    assert_eq!(routes["POST /jobs/ingest"], 3, "{routes}");

    // Written again (a redelivery): every order is found already written, with its own id,
    // and nothing new is created.
    let written = bulk.records("Order").await.len();
    let again = bulk_writer.write_bulk(&refs).await;
    for (first, second) in by_bulk.iter().zip(&again) {
        if let OrderResult::Synced { .. } = first {
            assert_eq!(first, second);
        }
    }
    assert_eq!(bulk.records("Order").await.len(), written);
    composite.cleanup().await;
    bulk.cleanup().await;
}

#[tokio::test]
async fn a_backlog_is_drained_through_bulk_each_order_once() {
    let mut h = Harness::new().await;
    let batch = orders(3_000);
    h.publish_orders(&batch).await;
    // A job that fails half-way: its unprocessed rows come back as retryable failures and go
    // through the retry tiers; nothing is lost or written twice.
    h.faults(json!({"bulk_fail_jobs": 1})).await;
    // A batch becomes a Bulk batch once it fills to 200 before its deadline. The orders were
    // stamped before the worker started, so the latency target gives no slack and the deadline
    // is the linger: at the default 50 ms a loaded CI machine delivered fewer than 200 in time,
    // the backlog went through Composite and no job failed. A second's linger makes the switch
    // certain without changing what is tested.
    let metrics = h
        .start_worker(&[
            "--bulk-batch-size",
            "5000",
            "--bulk-min-orders",
            "1000",
            "--bulk-linger",
            "1s",
            "--batch-linger",
            "1s",
        ])
        .await;
    let statuses = h.wait_synced(&batch, Duration::from_secs(120)).await;
    assert!(
        statuses.iter().any(|s| s.data.state == SyncState::Retrying),
        "the failed job's orders were retried"
    );
    let counts = h.count_by_external_id("Order").await;
    assert_eq!(counts.len(), 3_000);
    assert!(counts.values().all(|n| *n == 1), "an order written twice");
    let items = h.count_by_external_id("OrderItem").await;
    assert_eq!(
        items.len(),
        batch.iter().map(|o| o.lines.len()).sum::<usize>()
    );
    assert!(items.values().all(|n| *n == 1));

    let stats = h.stats().await;
    let routes = &stats["api_calls_by_route"];
    assert!(
        routes["POST /jobs/ingest"].as_u64().unwrap() >= 3,
        "{routes}"
    );
    let calls = stats["api_calls_total"].as_u64().unwrap();
    // Composite alone would take 15 calls for 3,000 orders; with the failed job's retries
    // the Bulk drain stays in the same range, far from one call per order.
    assert!(calls <= 80, "{calls} calls: {routes}");
    assert_eq!(
        metrics
            .synced_total
            .load(std::sync::atomic::Ordering::Relaxed),
        3_000
    );
    let jobs = metrics
        .bulk_jobs_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(jobs >= 3, "{jobs} Bulk jobs counted");
    assert!(
        metrics
            .render()
            .contains("sync_worker_bulk_job_seconds_count"),
        "the job time histogram is exported"
    );
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    h.cleanup().await;
}

/// The real binary, SIGKILLed while its Bulk job is being processed: the job goes on in
/// Salesforce without it, the batch's messages are redelivered to the next worker, which
/// writes them again through Bulk; the orders the dead worker's job wrote are found already
/// written. Each order and each line exactly once.
#[tokio::test]
async fn a_worker_killed_during_a_bulk_job_loses_and_duplicates_nothing() {
    let mut h = Harness::new().await;
    let batch = orders(3_000);
    h.publish_orders(&batch).await;
    // Slow enough that the kill lands while the orders job runs.
    h.faults(json!({"bulk_rows_per_second": 1500})).await;
    let bulk = [
        "--bulk-batch-size",
        "5000",
        "--bulk-min-orders",
        "1000",
        "--bulk-linger",
        "500ms",
    ];
    let admin = format!("127.0.0.1:{}", orderbridge_testkit::free_port().unwrap());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sync-worker"))
        .args(&h.args(&bulk)[1..])
        .env_remove("WORKER_MAPPING_FILE")
        .env("WORKER_ADMIN_ADDR", &admin)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The orders job is the second job of the batch: once it is created, its rows are being
    // written.
    eventually(
        Duration::from_secs(60),
        "the orders job to start",
        || async {
            h.stats().await["api_calls_by_route"]["POST /jobs/ingest"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the first orders written",
        || async { !h.records("Order").await.is_empty() },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let written_before = h.records("Order").await.len();
    assert!(
        written_before < 3_000,
        "the kill came too late to test anything"
    );

    h.faults(json!({"bulk_rows_per_second": 0})).await;
    h.start_worker(&bulk).await;
    h.wait_synced(&batch, Duration::from_secs(120)).await;
    assert_exactly_once(&h, &batch).await;
    assert_eq!(h.records("Order").await.len(), 3_000);
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    h.cleanup().await;
}
