//! The built `outbox-relay` binary: admin endpoints, SIGTERM in the middle of a batch, and the
//! status applier running beside the relay.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn spawn_relay(opts: &PgConnectOptions, ns: &str, port: u16, batch: u32) -> Child {
    spawn_relay_via(opts, ns, port, batch, &amqp_url(), "5s")
}

fn spawn_relay_via(
    opts: &PgConnectOptions,
    ns: &str,
    port: u16,
    batch: u32,
    amqp: &str,
    grace: &str,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .env("DATABASE_URL", database_url(opts))
        .env("AMQP_URL", amqp)
        .env("RELAY_SHUTDOWN_GRACE", grace)
        .env("BROKER_NAMESPACE", ns)
        .env("BROKER_SIGNING_KEY", SIGNING_KEY)
        .env("RELAY_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("RELAY_BATCH_SIZE", batch.to_string())
        .env("RELAY_DB_APPLICATION_NAME", "relay-sigterm")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("relay did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn published_ids(pool: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM outbox WHERE published_at IS NOT NULL")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// 5,000 rows in ONE batch: SIGTERM arrives once the first messages reach the queue (usually
/// before the batch is confirmed). The relay stops sending, collects the confirms of what it
/// sent, marks only those, and exits 0; a second relay publishes the rest.
#[tokio::test]
async fn sigterm_mid_batch_marks_only_confirmed_rows() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool_opts = db.pool_options();
    let opts = db.connect_options();
    const ROWS: usize = 5000;
    let pool = pool_opts.connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let queue = format!("{ns}.sf-sync");
    let written: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload)
         SELECT gen_random_uuid(), 'order', gen_random_uuid(), 'order.submitted',
                jsonb_build_object('n', n)
         FROM generate_series(1, $1) n
         RETURNING event_id",
    )
    .bind(ROWS as i32)
    .fetch_all(&pool)
    .await
    .unwrap();

    let port = free_port();
    let mut child = spawn_relay(&opts, &ns, port, ROWS as u32);
    eventually(WAIT, "admin endpoint up", || async {
        get(port, "/health/live").is_some_and(|(s, b)| s == 200 && b == "ok")
    })
    .await;
    eventually(WAIT, "first messages on the queue", || async {
        queue_len_if_exists(&queue).await.is_some_and(|n| n > 0)
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let marked = published_ids(&pool).await;
    eprintln!("SIGTERM: {} of {ROWS} rows marked published", marked.len());

    // Everything marked published is on the queue; nothing unconfirmed was marked.
    let first = drain_covering(&queue, &marked, WAIT).await;
    let on_queue: HashSet<Uuid> = first.iter().map(|r| r.message_id).collect();
    assert!(
        marked.is_subset(&on_queue),
        "a row was marked published but is not on the queue"
    );

    // A new relay publishes the rest; admin endpoints report it.
    let mut child = spawn_relay(&opts, &ns, port, 500);
    eventually(WAIT, "rest published", || async {
        published_count(&pool).await == ROWS as i64
    })
    .await;
    eventually(WAIT, "ready", || async {
        get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("outbox_relay_published_total"));
    assert!(metrics.contains("outbox_relay_backlog_rows"));
    assert!(metrics.contains("outbox_relay_commit_to_confirm_lag_seconds_bucket"));
    sigterm(&child);
    assert!(wait_exit(&mut child).await.success());

    let missing: HashSet<Uuid> = written
        .iter()
        .filter(|id| !on_queue.contains(id))
        .copied()
        .collect();
    let rest = drain_covering(&queue, &missing, WAIT).await;
    let all: HashSet<Uuid> = on_queue
        .into_iter()
        .chain(rest.iter().map(|r| r.message_id))
        .collect();
    for id in &written {
        assert!(all.contains(id), "event {id} lost");
    }
}

/// Deterministically mid-batch: the broker's confirms are held back by a proxy, so the whole
/// batch reaches the broker but none of it is confirmed when SIGTERM arrives. The relay waits out
/// its shutdown grace, abandons the batch, marks nothing, and exits 0; the rows go out again
/// with the next relay (duplicates, never a loss).
#[tokio::test]
async fn sigterm_with_confirms_outstanding_marks_nothing() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool_opts = db.pool_options();
    let opts = db.connect_options();
    const ROWS: usize = 200;
    let pool = pool_opts.connect_with(opts.clone()).await.unwrap();
    let ns = namespace();
    let queue = format!("{ns}.sf-sync");
    let proxy = PausableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = free_port();
    let mut child = spawn_relay_via(&opts, &ns, port, 500, &proxy.amqp_url(), "1s");
    eventually(WAIT, "relay ready", || async {
        get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
    })
    .await;

    proxy.pause_downstream(true);
    let client = api_client(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    let mut written = HashSet::new();
    for _ in 0..ROWS {
        let (id, envelope) = insert_order_row(&mut tx, client).await;
        orderbridge_db::outbox::enqueue(&mut *tx, "order", id, &envelope)
            .await
            .unwrap();
        written.insert(envelope.id.get());
    }
    tx.commit().await.unwrap();
    eventually(WAIT, "the whole batch reached the broker", || async {
        queue_len_if_exists(&queue).await == Some(ROWS as u32)
    })
    .await;

    sigterm(&child);
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert_eq!(
        published_count(&pool).await,
        0,
        "nothing unconfirmed was marked"
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE sync_state = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, ROWS as i64);
    drop(proxy);

    // The next relay publishes everything again.
    let mut child = spawn_relay(&opts, &ns, port, 500);
    eventually(WAIT, "all published by the next relay", || async {
        published_count(&pool).await == ROWS as i64
    })
    .await;
    sigterm(&child);
    assert!(wait_exit(&mut child).await.success());
    assert_eq!(
        queue_len(&queue).await as usize,
        2 * ROWS,
        "each row twice: the abandoned copy and the republished one"
    );
    let got = drain_covering(&queue, &written, WAIT).await;
    let ids: HashSet<Uuid> = got.iter().map(|r| r.message_id).collect();
    assert_eq!(ids, written);
}

/// The binary runs the status applier beside the relay: a report published on the status
/// exchange lands on its order, `/metrics` counts it, and SIGTERM still ends it cleanly.
#[tokio::test]
async fn the_binary_applies_sync_status_reports() {
    use orderbridge_broker::Supervisor;
    use orderbridge_broker::lapin::BasicProperties;
    use orderbridge_broker::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use orderbridge_domain::{SyncState, SyncStatus};

    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let pool = db.pool.clone();
    let ns = namespace();
    let port = free_port();
    let client = api_client(&pool).await;
    let (order, event_id) = create_order(&pool, client).await;
    let mut child = spawn_relay(&opts, &ns, port, 500);
    eventually(WAIT, "status consumer up", || async {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains("outbox_relay_status_consumer_up 1"))
    })
    .await;
    eventually(WAIT, "order event published", || async {
        is_published(&pool, event_id).await
    })
    .await;

    let mut sup = Supervisor::new(broker_config(&ns), "status-binary-test").unwrap();
    let exchange = sup.topology().status_exchange.clone();
    let session = sup.connect().await;
    session
        .channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let status = SyncStatus {
        order_id: order.into(),
        order_version: 1,
        state: SyncState::Synced,
        salesforce_id: Some("801xx000003GZ8bAAG".into()),
        attempts: 1,
        error: None,
        source_event_id: event_id.into(),
        source_occurred_at: chrono::Utc::now(),
    };
    let routing_key = status.routing_key();
    let envelope = status.into_envelope(chrono::Utc::now(), None);
    session
        .channel
        .basic_publish(
            exchange.as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&envelope).unwrap(),
            keyring().sign(
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(envelope.id.to_string().into()),
                &serde_json::to_vec(&envelope).unwrap(),
            ),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(WAIT, "report applied", || async {
        sqlx::query_scalar::<_, String>("SELECT sync_state FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&pool)
            .await
            .unwrap()
            == "synced"
    })
    .await;
    let (_, metrics) = get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("outbox_relay_status_applied_total 1"),
        "{metrics}"
    );
    session.close(&broker_config(&ns)).await;
    sigterm(&child);
    assert!(wait_exit(&mut child).await.success());
}

/// Every message is signed, so a relay without a signing key must not run (an unsigned
/// deployment would look fine until the worker dead-lettered everything): it exits at once with
/// a message naming the setting, before it waits for the database or the broker.
#[tokio::test]
async fn the_binary_refuses_to_start_without_a_signing_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        // Nothing listens there: it must fail before trying.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("RELAY_ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env_remove("BROKER_SIGNING_KEY")
        .env_remove("BROKER_SIGNING_KEYS_PREVIOUS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BROKER_SIGNING_KEY is not set"), "{stderr}");
}
