//! The built `sync-worker` binary as a child process: a SIGKILL between the Salesforce write and
//! the ack, SIGTERM with a batch in flight, the admin endpoints, `check-mapping`, and the
//! dead-letter round trip through `dlq list` / `dlq replay`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, assert_exactly_once, eventually, order, order_with_skus};
use orderbridge_domain::{Envelope, Order, SyncState, SyncStatus};
use orderbridge_testkit::{ChildGuard, free_port};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> Self {
        Self(std::env::temp_dir().join(format!("sync-worker-{what}-{}", uuid::Uuid::now_v7())))
    }

    fn with(what: &str, text: &str) -> Self {
        let f = Self::new(what);
        std::fs::write(&f.0, text).unwrap();
        f
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The binary with the harness's command line; `env` as the deployment would set it.
fn command(h: &Harness, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sync-worker"));
    cmd.args(&h.args(&[])[1..]).args(args);
    // The test runner's own settings must not leak into the child.
    for var in [
        "WORKER_ADMIN_ADDR",
        "WORKER_MAPPING_FILE",
        "WORKER_FAULT_PAUSE_BEFORE_ACK",
        "WORKER_SHUTDOWN_GRACE",
        "WORKER_BATCH_LINGER",
        "WORKER_LATENCY_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").env("LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A running `sync-worker run`, its logs going to a file (shown when an assertion needs them).
struct Proc {
    child: ChildGuard,
    port: u16,
    log: TempFile,
    http: reqwest::Client,
}

impl Proc {
    fn start(h: &Harness, env: &[(&str, &str)]) -> Self {
        let port = free_port().unwrap();
        let log = TempFile::new("log");
        let admin = format!("127.0.0.1:{port}");
        let mut all = vec![("WORKER_ADMIN_ADDR", admin.as_str())];
        all.extend_from_slice(env);
        let child = command(h, &all, &[])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log.0).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: ChildGuard(child),
            port,
            log,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self
            .get("/health/ready")
            .await
            .is_none_or(|(s, _)| s != 200)
        {
            assert!(
                Instant::now() < deadline,
                "worker not ready; log:\n{}",
                self.log.read()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric's value from `/metrics`.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {limit:?}; log:\n{}",
                self.log.read()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status.
    async fn stop(self) -> ExitStatus {
        self.stop_with_log().await.0
    }

    /// SIGTERM, then the exit status and what the process logged.
    async fn stop_with_log(mut self) -> (ExitStatus, String) {
        self.signal("-TERM");
        let status = self.wait_exit(WAIT).await;
        (status, self.log.read())
    }
}

/// A command that ends by itself (`dlq …`, `check-mapping`): exit status, stdout, stderr.
async fn run_to_end(mut cmd: Command) -> (ExitStatus, String, String) {
    let out = TempFile::new("out");
    let err = TempFile::new("err");
    let child = cmd
        .stdout(std::fs::File::create(&out.0).unwrap())
        .stderr(std::fs::File::create(&err.0).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish; stderr:\n{}",
            err.read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, out.read(), err.read())
}

/// Salesforce Id of each Order record by external id.
async fn order_ids(h: &Harness) -> HashMap<String, String> {
    h.records("Order")
        .await
        .iter()
        .filter_map(|r| {
            Some((
                r["External_Id__c"].as_str()?.to_owned(),
                r["Id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn synced_reports<'a>(
    reports: &'a [Envelope<SyncStatus>],
    o: &Order,
) -> Vec<&'a Envelope<SyncStatus>> {
    reports
        .iter()
        .filter(|r| r.data.order_id == o.id && r.data.state == SyncState::Synced)
        .collect()
}

/// Killed after the Salesforce write and before the outcomes and the ack: the restarted worker
/// gets the messages again, finds the records written, and reports them synced with their
/// existing ids. Nothing is written twice.
#[tokio::test]
async fn sigkill_between_the_salesforce_write_and_the_ack_writes_nothing_twice() {
    let h = Harness::new().await;
    let orders: Vec<_> = (0..5).map(|i| order(&format!("C-{i}"), 3)).collect();
    // On the queue before the worker starts, so they arrive together (one or a few batches,
    // all in flight at once).
    h.publish_orders(&orders).await;
    let mut first = Proc::start(
        &h,
        &[
            ("WORKER_FAULT_PAUSE_BEFORE_ACK", "60s"),
            ("WORKER_BATCH_LINGER", "200ms"),
            // Dispatch exactly after the linger: these tests time the batch in flight.
            ("WORKER_LATENCY_TARGET", "0s"),
        ],
    );
    eventually(WAIT, "every order written to Salesforce", || async {
        let ids = order_ids(&h).await;
        orders.iter().all(|o| ids.contains_key(&o.id.to_string()))
    })
    .await;
    eventually(WAIT, "every item written to Salesforce", || async {
        h.records("OrderItem").await.len() == 15
    })
    .await;
    // Paused before the ack: nothing reported, nothing acked.
    assert_eq!(h.message_count(&h.topology.status_queue).await, 0);
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    first.child.0.kill().unwrap(); // SIGKILL
    first.wait_exit(WAIT).await;
    let written = order_ids(&h).await;
    // The broker takes the unacked messages back when the connection dies.
    eventually(WAIT, "messages back in the work queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 5
    })
    .await;

    let second = Proc::start(&h, &[]);
    let reports = h.wait_synced(&orders, WAIT).await;
    for o in &orders {
        let synced = synced_reports(&reports, o);
        assert_eq!(synced.len(), 1, "one synced report for {}", o.id);
        assert_eq!(
            synced[0].data.salesforce_id.as_deref(),
            Some(written[&o.id.to_string()].as_str()),
            "the report names the record written before the kill"
        );
    }
    assert_exactly_once(&h, &orders).await;
    assert_eq!(order_ids(&h).await, written);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    let status = second.stop().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    h.cleanup().await;
}

/// SIGTERM while a Composite call is in flight (2 s of latency): the worker stops taking
/// messages, lets the batch finish, reports and acks it, and exits 0 within its grace.
#[tokio::test]
async fn sigterm_lets_the_batch_in_flight_finish_and_acks_it() {
    let h = Harness::new().await;
    let grace = Duration::from_secs(10);
    let proc = Proc::start(
        &h,
        &[
            ("WORKER_SHUTDOWN_GRACE", "10s"),
            ("WORKER_BATCH_LINGER", "200ms"),
            // Dispatch exactly after the linger: these tests time the batch in flight.
            ("WORKER_LATENCY_TARGET", "0s"),
        ],
    );
    proc.wait_ready().await;
    // Warm up without latency: session and price book are cached, so the next batch is one
    // Composite call.
    let warm = order("C-0", 1);
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;

    h.faults(json!({"latency_ms": 2000})).await;
    let calls_before = h.composite_calls().await;
    let orders: Vec<_> = (1..=5).map(|i| order(&format!("C-{i}"), 3)).collect();
    h.publish_orders(&orders).await;
    eventually(WAIT, "the orders taken from the queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 0
    })
    .await;
    // Past the batch linger, so the batch is in its Composite call (which the emulator counts
    // only after the latency).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.composite_calls().await,
        calls_before,
        "the Composite call is still in flight"
    );

    let started = Instant::now();
    let (status, log) = proc.stop_with_log().await;
    let took = started.elapsed();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // A clean shutdown logs no error (lapin used to, closing channels left half-closed).
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") || l.contains("\"level\":\"error\"")),
        "{log}"
    );
    eprintln!("SIGTERM with a batch in flight: exited after {took:?}");
    assert!(took < grace, "exited after {took:?}, grace {grace:?}");
    assert!(h.composite_calls().await > calls_before);

    // The batch was finished: reported once, acked (the process is gone, so anything unacked
    // would be back in the queue now).
    let reports = h.wait_synced(&orders, Duration::from_secs(2)).await;
    for o in &orders {
        let synced = synced_reports(&reports, o);
        assert_eq!(synced.len(), 1, "one synced report for {}", o.id);
        assert_eq!(synced[0].data.attempts, 1);
    }
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 0);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    assert_exactly_once(&h, &orders).await;
    h.cleanup().await;
}

/// SIGTERM while the batch's call outlasts the grace: the worker gives up on it, exits 0 at
/// the end of the grace, and the broker redelivers the batch to the next worker.
#[tokio::test]
async fn sigterm_past_the_grace_leaves_the_batch_for_redelivery() {
    let h = Harness::new().await;
    let proc = Proc::start(
        &h,
        &[
            ("WORKER_SHUTDOWN_GRACE", "1s"),
            ("WORKER_BATCH_LINGER", "200ms"),
            // Dispatch exactly after the linger: these tests time the batch in flight.
            ("WORKER_LATENCY_TARGET", "0s"),
        ],
    );
    proc.wait_ready().await;
    let warm = order("C-0", 1);
    h.publish_orders(std::slice::from_ref(&warm)).await;
    h.wait_synced(std::slice::from_ref(&warm), WAIT).await;

    h.faults(json!({"latency_ms": 3000})).await;
    let orders: Vec<_> = (1..=3).map(|i| order(&format!("C-{i}"), 2)).collect();
    h.publish_orders(&orders).await;
    eventually(WAIT, "the orders taken from the queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let (status, log) = proc.stop_with_log().await;
    let took = started.elapsed();
    eprintln!("SIGTERM past the grace: exited after {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited after {took:?} with a 1 s grace"
    );
    assert!(log.contains("did not finish in time"), "{log}");
    // Nothing was reported; the batch is back in the queue.
    assert_eq!(h.message_count(&h.topology.status_queue).await, 0);
    eventually(WAIT, "the batch back in the queue", || async {
        h.message_count(&h.topology.sf_sync_queue).await == 3
    })
    .await;

    // (The emulator drops a call whose client went away, so the abandoned call may or may not
    // have written anything: either way the next worker writes each order once.)
    h.faults(json!({"latency_ms": 0})).await;
    let next = Proc::start(&h, &[]);
    let reports = h.wait_synced(&orders, WAIT).await;
    let written = order_ids(&h).await;
    for o in &orders {
        let synced = synced_reports(&reports, o);
        assert_eq!(synced.len(), 1, "one synced report for {}", o.id);
        assert_eq!(
            synced[0].data.salesforce_id.as_deref(),
            Some(written[&o.id.to_string()].as_str())
        );
    }
    assert_exactly_once(&h, &orders).await;
    assert!(next.stop().await.success());
    h.cleanup().await;
}

/// SIGTERM while an outage holds consumption: the worker exits 0 at once, the orders wait in the
/// queue, untouched.
#[tokio::test]
async fn sigterm_while_paused_exits_at_once() {
    let h = Harness::new().await;
    let proc = Proc::start(&h, &[]);
    proc.wait_ready().await;
    h.faults(json!({"outage": true})).await;
    let orders: Vec<_> = (1..=3).map(|i| order(&format!("C-{i}"), 1)).collect();
    h.publish_orders(&orders).await;
    eventually(WAIT, "paused", || async {
        proc.get("/health/ready")
            .await
            .is_some_and(|(s, _)| s == 503)
    })
    .await;
    let started = Instant::now();
    let status = proc.stop().await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "exited after {took:?}");
    assert_eq!(h.message_count(&h.topology.sf_sync_queue).await, 3);
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);
    assert!(h.count_by_external_id("Order").await.is_empty());
    h.cleanup().await;
}

/// A worker started while the API budget is spent waits in its start-up check, and starts as
/// soon as the budget is back: not `SF_API_USAGE_RECHECK` (5 minutes by default) later.
#[tokio::test]
async fn started_with_a_spent_budget_starts_when_it_returns() {
    let h = Harness::new().await;
    h.faults(json!({"daily_limit_remaining": 0})).await;
    let proc = Proc::start(&h, &[]);
    eventually(WAIT, "the start-up check refused", || async {
        proc.log.read().contains("REQUEST_LIMIT_EXCEEDED")
    })
    .await;
    // Let the guard's local refusal take hold (the reading says the budget is spent).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        proc.get("/health/ready")
            .await
            .is_none_or(|(s, _)| s != 200),
        "ready while the budget is spent; log:\n{}",
        proc.log.read()
    );
    h.faults(json!({"daily_limit_remaining": 100000})).await;
    proc.wait_ready().await;
    let orders: Vec<_> = (1..=2).map(|i| order(&format!("C-{i}"), 1)).collect();
    h.publish_orders(&orders).await;
    h.wait_synced(&orders, WAIT).await;
    assert!(proc.stop().await.success());
    h.cleanup().await;
}

/// `/health/live`, `/health/ready` (503 while an outage pauses consumption), `/metrics`.
#[tokio::test]
async fn admin_endpoints_follow_the_worker() {
    let h = Harness::new().await;
    let proc = Proc::start(&h, &[]);
    eventually(WAIT, "admin endpoint up", || async {
        proc.get("/health/live").await == Some((200, "ok".into()))
    })
    .await;
    proc.wait_ready().await;

    let orders: Vec<_> = (0..3).map(|i| order(&format!("C-{i}"), 2)).collect();
    let bad = order_with_skus("C-9", &["SKU-NOPE"]);
    h.publish_orders(&orders).await;
    h.publish_orders(std::slice::from_ref(&bad)).await;
    h.wait_synced(&orders, WAIT).await;
    eventually(
        WAIT,
        "metrics: 3 synced, 1 failed, 1 dead letter",
        || async {
            proc.metric("sync_worker_orders_synced_total").await == Some(3.0)
                && proc.metric("sync_worker_orders_failed_total").await == Some(1.0)
                && proc.metric("sync_worker_dead_letters").await == Some(1.0)
        },
    )
    .await;
    let (status, body) = proc.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE sync_worker_orders_synced_total counter"));
    assert!(body.contains("# TYPE sync_worker_dead_letters gauge"));
    assert!(body.contains("sync_worker_broker_up 1"));

    // An outage: the next order's call fails, the breaker pauses consumption, not ready.
    h.faults(json!({"outage": true})).await;
    let during = order("C-10", 1);
    h.publish_orders(std::slice::from_ref(&during)).await;
    eventually(WAIT, "not ready while paused", || async {
        proc.get("/health/ready")
            .await
            .is_some_and(|(s, _)| s == 503)
    })
    .await;
    assert_eq!(proc.metric("sync_worker_paused").await, Some(1.0));
    assert_eq!(proc.get("/health/live").await, Some((200, "ok".into())));

    h.faults(json!({"outage": false})).await;
    proc.wait_ready().await;
    h.wait_synced(std::slice::from_ref(&during), WAIT).await;
    eventually(WAIT, "metrics: 4 synced", || async {
        proc.metric("sync_worker_orders_synced_total").await == Some(4.0)
    })
    .await;
    assert_eq!(proc.metric("sync_worker_paused").await, Some(0.0));
    assert!(proc.metric("sync_worker_breaker_trips_total").await >= Some(1.0));
    let status = proc.stop().await;
    assert!(status.success(), "{status:?}");
    h.cleanup().await;
}

/// The default mapping fits the emulated org; one naming a field the org lacks is refused by
/// `check-mapping --salesforce` and by `run` at start-up; a broken file is refused with the
/// place of the error.
#[tokio::test]
async fn check_mapping_against_the_org() {
    let h = Harness::new().await;
    let (status, out, err) = run_to_end(command(&h, &[], &["check-mapping", "--salesforce"])).await;
    assert!(status.success(), "{status:?}: {err}");
    assert!(out.contains("mapping fits the org"), "{out}");

    let mut m: Value = serde_json::from_str(orderbridge_mapping::DEFAULT_MAPPING).unwrap();
    m["order"]["fields"]["Nope__c"] = json!("client_ref");
    let file = TempFile::with("mapping.json", &m.to_string());
    let path = file.0.to_str().unwrap();
    let env = [("WORKER_MAPPING_FILE", path)];
    // Against the order model alone it is fine: the problem is the org's.
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping"])).await;
    assert!(status.success(), "{status:?}: {err}");
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping", "--salesforce"])).await;
    assert!(!status.success());
    assert!(err.contains("Order has no field Nope__c"), "{err}");

    let port = free_port().unwrap();
    let admin = format!("127.0.0.1:{port}");
    let env = [("WORKER_MAPPING_FILE", path), ("WORKER_ADMIN_ADDR", &admin)];
    let (status, _, err) = run_to_end(command(&h, &env, &[])).await;
    assert!(!status.success(), "run must refuse the mapping");
    assert!(err.contains("Nope__c"), "{err}");
    assert!(err.contains("does not fit the Salesforce org"), "{err}");
    // Refused before consuming: nothing was taken from the broker.
    assert_eq!(
        h.stats().await["api_calls_by_route"]["POST /composite"],
        Value::Null
    );

    // A syntax error inside `order.fields`: the message says where.
    let broken = TempFile::with(
        "broken.json",
        r#"{"order": {"sobject": "Order", "external_id_field": "External_Id__c", "key": "id",
            "fields": {"Status": {"const": "Draft"} "PoNumber": "client_ref"}}}"#,
    );
    let env = [("WORKER_MAPPING_FILE", broken.0.to_str().unwrap())];
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping"])).await;
    assert!(!status.success());
    assert!(
        err.contains("order.fields") && err.contains("line 2"),
        "{err}"
    );
    // A wrong type names the exact field.
    let mut m: Value = serde_json::from_str(orderbridge_mapping::DEFAULT_MAPPING).unwrap();
    m["items"]["external_id_field"] = json!(42);
    let typed = TempFile::with("typed.json", &m.to_string());
    let env = [("WORKER_MAPPING_FILE", typed.0.to_str().unwrap())];
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping"])).await;
    assert!(!status.success());
    assert!(err.contains("items.external_id_field"), "{err}");
    h.cleanup().await;
}

/// A targets file (two divisions, the second with its own `SF_AMER_*` settings): each
/// target's mapping is checked against its org with its credentials, named by target; a target
/// whose settings are missing or refused stops the check.
#[tokio::test]
async fn check_mapping_of_several_targets() {
    let h = Harness::new().await;
    let mapping: Value = serde_json::from_str(orderbridge_mapping::DEFAULT_MAPPING).unwrap();
    let targets = json!({
        "route": {"rules": [{"path": "currency", "in": ["USD"], "target": "amer"}], "default": "emea"},
        "targets": {"emea": {"mapping": mapping}, "amer": {"salesforce": "AMER", "mapping": mapping}}
    });
    let file = TempFile::with("targets.json", &targets.to_string());
    let path = file.0.to_str().unwrap();
    let user = ("SF_AMER_USERNAME", sf_emulator::config::DEV_USERNAME);
    let env = [("WORKER_MAPPING_FILE", path), user];
    let (status, out, err) =
        run_to_end(command(&h, &env, &["check-mapping", "--salesforce"])).await;
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        out.contains("targets amer, emea and their mappings are valid"),
        "{out}"
    );
    for target in ["amer", "emea"] {
        assert!(
            out.contains(&format!("target {target}: mapping fits the org")),
            "{out}"
        );
    }

    let env = [("WORKER_MAPPING_FILE", path)];
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping", "--salesforce"])).await;
    assert!(!status.success());
    assert!(
        err.contains("target amer: no SF_AMER_* setting is set"),
        "{err}"
    );
    let env = [
        ("WORKER_MAPPING_FILE", path),
        user,
        ("SF_AMER_PASSWORD", "not-the-password"),
    ];
    let (status, _, err) = run_to_end(command(&h, &env, &["check-mapping", "--salesforce"])).await;
    assert!(!status.success());
    assert!(err.contains("authentication failure"), "{err}");
    h.cleanup().await;
}

/// An unknown SKU is dead-lettered; once the product exists, `dlq replay --all` sends it back
/// and a fresh worker (the missing SKU is cached for 30 s by the old one) syncs it. Replaying
/// again finds nothing and writes nothing.
#[tokio::test]
async fn dead_letter_replayed_after_the_product_is_added() {
    let h = Harness::new().await;
    // `sync-worker dlq` runs the operator CLI's `orderbridge dlq`, which must sit beside it.
    orderbridge_testkit::build_bins(
        std::path::Path::new(env!("CARGO_BIN_EXE_sync-worker")),
        &["orderbridge-cli"],
    )
    .unwrap();
    let dlq = |args: &[&str]| {
        let mut all = vec!["dlq"];
        all.extend_from_slice(args);
        run_to_end(command(&h, &[], &all))
    };
    let proc = Proc::start(&h, &[]);
    proc.wait_ready().await;
    let o = order_with_skus("C-1", &["SKU-RED-MUG", "SKU-X"]);
    let envelopes = h.publish_orders(std::slice::from_ref(&o)).await;
    let event_id = envelopes[0].id.to_string();
    let mut reports = Vec::new();
    h.statuses_until(WAIT, &mut reports, |s| {
        s.iter().any(|r| r.data.state == SyncState::Failed)
    })
    .await;
    let failed = &reports[0].data;
    assert_eq!(failed.order_id, o.id);
    assert_eq!(failed.state, SyncState::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, "UNKNOWN_SKU");
    eventually(WAIT, "one dead letter", || async {
        h.message_count(&h.topology.dead_letter_queue).await == 1
    })
    .await;
    assert!(h.count_by_external_id("Order").await.is_empty());

    let (status, out, err) = dlq(&["list", "--json"]).await;
    assert!(status.success(), "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["id"], event_id.as_str());
    assert_eq!(listed[0]["error_code"], "UNKNOWN_SKU");
    assert_eq!(listed[0]["reason"], "permanent");
    assert_eq!(listed[0]["origin_queue"], h.topology.sf_sync_queue.as_str());
    let (status, out, _) = dlq(&["list"]).await;
    assert!(status.success());
    assert!(
        out.contains(&event_id) && out.contains("1 dead letter"),
        "{out}"
    );

    // The product arrives; the running worker has the SKU cached as missing: restart it.
    let r = h
        .http
        .post(format!("{}/__admin/seed", h.emulator.base_url))
        .json(&json!({"products": [{"Name": "X", "ProductCode": "SKU-X", "prices": {"Standard": 1}}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert!(proc.stop().await.success());
    let (status, out, err) = dlq(&["replay", "--all"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("replayed 1 dead letter"), "{out}");
    assert_eq!(h.message_count(&h.topology.dead_letter_queue).await, 0);

    let proc = Proc::start(&h, &[]);
    let reports = h.wait_synced(std::slice::from_ref(&o), WAIT).await;
    let synced = synced_reports(&reports, &o);
    assert_eq!(synced.len(), 1);
    // The replay starts the attempt count afresh.
    assert_eq!(synced[0].data.attempts, 1);
    assert_exactly_once(&h, std::slice::from_ref(&o)).await;
    let (status, out, _) = dlq(&["list"]).await;
    assert!(status.success());
    assert!(out.contains("no dead letters"), "{out}");

    let (status, out, err) = dlq(&["replay", "--all"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("replayed 0 dead letters"), "{out}");
    // Give a (wrongly) replayed copy time to be written before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&h, std::slice::from_ref(&o)).await;
    assert_eq!(h.message_count(&h.topology.status_queue).await, 0);
    assert!(proc.stop().await.success());
    h.cleanup().await;
}

/// Without a signing key the worker could verify nothing: it exits at once, naming the setting,
/// before it waits for Salesforce or the broker.
#[tokio::test]
async fn refuses_to_start_without_a_signing_key() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sync-worker"));
    cmd.env_remove("BROKER_SIGNING_KEY")
        .env_remove("BROKER_SIGNING_KEYS_PREVIOUS")
        .env(
            "WORKER_ADMIN_ADDR",
            format!("127.0.0.1:{}", free_port().unwrap()),
        )
        // Nothing listens on either: it must fail before trying them.
        .env("SF_LOGIN_URL", "http://127.0.0.1:1")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    let (status, _, err) = run_to_end(cmd).await;
    assert!(!status.success());
    assert!(err.contains("BROKER_SIGNING_KEY is not set"), "{err}");
}

/// `sync-worker dlq --help` is the operator command's help (the alias forwards it), not the
/// worker's own options.
#[test]
fn the_dlq_alias_forwards_help() {
    orderbridge_testkit::build_bins(
        std::path::Path::new(env!("CARGO_BIN_EXE_sync-worker")),
        &["orderbridge-cli"],
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-worker"))
        .args(["dlq", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Usage: orderbridge dlq"), "{text}");
    assert!(!text.contains("--batch-size"), "{text}");
}
