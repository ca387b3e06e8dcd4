//! `orderbridge broker setup-users` on the real local RabbitMQ: one user per component, each
//! able to do its own job and nothing else, and the relay and the worker running a whole order
//! through as their own users.
//!
//! Every test works in a namespace of its own with users named after it, and removes both
//! afterwards (also when it fails): `guest` and every other user of the broker stay as they are.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_broker::{BrokerConfig, Component, Supervisor, Topology};
use orderbridge_domain::{NewOrder, NewOrderRequest};
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::Client;
use orderbridge_testkit::{TestDatabase, workspace_root};
use serde_json::json;
use sf_emulator::EmulatorConfig;
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::worker::Worker;
use sync_worker::writer::Writer;
use tokio::sync::watch;
use uuid::Uuid;

const ADMIN_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const WAIT: Duration = Duration::from_secs(30);

fn admin_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| ADMIN_URL.to_owned())
}

/// A namespace, its topology and its users; all removed on drop.
struct Users {
    ns: String,
}

impl Users {
    fn new() -> Self {
        Self {
            ns: format!("t-users-{}", Uuid::now_v7()),
        }
    }

    fn user(&self, c: Component) -> String {
        orderbridge_cli::broker::user_name(&self.ns, c)
    }

    /// `orderbridge broker <args>` as AMQP_URL's (admin) user, with `env`.
    fn orderbridge(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderbridge"));
        cmd.arg("broker")
            .args(args)
            .env("AMQP_URL", admin_url())
            .env("BROKER_NAMESPACE", &self.ns)
            .env("RUST_LOG", "warn");
        for var in [
            "BROKER_PASSWORD_OUTBOX_RELAY",
            "BROKER_PASSWORD_SYNC_WORKER",
            "BROKER_PASSWORD_OPERATOR",
            "BROKER_PASSWORD_FULFILMENT_WORKER",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for c in Component::ALL {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", &self.user(c)])
                .output();
        }
        let ns = self.ns.clone();
        // Drop cannot await and may run inside the test's runtime: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let config = broker_config(&admin_url(), &ns, true);
                let supervisor = Supervisor::new(config.clone(), "users-test-cleanup").ok()?;
                let session = supervisor.try_connect().await.ok()?;
                let _ = supervisor
                    .topology()
                    .delete(&config, &session.channel)
                    .await;
                session.close(&config).await;
                Some(())
            })
        })
        .join();
    }
}

fn broker_config(url: &str, ns: &str, declare: bool) -> BrokerConfig {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        broker: BrokerConfig,
    }
    Wrapper::parse_from([
        "x",
        "--amqp-url",
        url,
        "--broker-namespace",
        ns,
        "--broker-declare-topology",
        if declare { "true" } else { "false" },
        "--broker-signing-key",
        DEV_SIGNING_KEY,
        "--broker-reconnect-min",
        "50ms",
        "--broker-reconnect-max",
        "500ms",
    ])
    .broker
}

/// `NAME_AMQP_URL='…'` lines of the command's output, by component.
fn urls(output: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(output)
        .lines()
        .filter_map(|l| l.split_once("_AMQP_URL="))
        .map(|(name, url)| (name.to_owned(), url.trim_matches('\'').to_owned()))
        .collect()
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap()
}

/// One thing a user may or may not do.
enum Op<'a> {
    /// Publish (with a confirm) to an exchange (`""`: the default exchange) with a routing key.
    Publish(&'a str, &'a str),
    Consume(&'a str),
    Get(&'a str),
    /// Declare a queue (not passively).
    Declare(&'a str),
}

/// The broker's refusal of `op` (tried on a fresh channel), or `None` if it was allowed.
async fn refusal(conn: &Connection, op: Op<'_>) -> Option<String> {
    let ch = conn.create_channel().await.unwrap();
    let attempt = async {
        match op {
            Op::Publish(exchange, key) => {
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let confirm = ch
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        BasicProperties::default(),
                    )
                    .await?
                    .await?;
                assert!(matches!(confirm, Confirmation::Ack(_)), "{confirm:?}");
                // A refused publish closes the channel after the fact: have the broker answer
                // once more on it.
                ch.basic_qos(1, Default::default()).await
            }
            Op::Consume(queue) => ch
                .basic_consume(
                    queue.into(),
                    "users-test".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(drop),
            Op::Get(queue) => ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map(drop),
            Op::Declare(queue) => ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(drop),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => panic!("the broker neither allowed nor refused"),
    }
}

async fn assert_refused(conn: &Connection, what: &str, op: Op<'_>) {
    let why = refusal(conn, op)
        .await
        .unwrap_or_else(|| panic!("{what}: allowed, should be refused"));
    assert!(why.contains("ACCESS_REFUSED"), "{what}: {why}");
}

async fn assert_allowed(conn: &Connection, what: &str, op: Op<'_>) {
    assert_eq!(
        refusal(conn, op).await,
        None,
        "{what}: refused, should be allowed"
    );
}

#[tokio::test]
async fn each_component_user_can_do_its_job_and_nothing_else() {
    let users = Users::new();
    let out = users.orderbridge(&["setup-users"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let urls = urls(&out.stdout);
    let t = Topology::new(
        &users.ns,
        10,
        &[
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(600),
        ],
    )
    .unwrap();

    // The worker: consumes the work queue; publishes retries, dead letters and status reports.
    let worker = connect(&urls["SYNC_WORKER"]).await;
    let w = &worker;
    assert_allowed(
        w,
        "worker consumes the work queue",
        Op::Consume(&t.sf_sync_queue),
    )
    .await;
    for x in [
        &t.retry_exchange,
        &t.dead_letter_exchange,
        &t.status_exchange,
    ] {
        assert_allowed(
            w,
            &format!("worker publishes to {x}"),
            Op::Publish(x, "order.sync_status.synced"),
        )
        .await;
    }
    assert_refused(
        w,
        "worker publishes an order event",
        Op::Publish(&t.events_exchange, "order.submitted"),
    )
    .await;
    assert_refused(
        w,
        "worker publishes through the default exchange",
        Op::Publish("", &t.sf_sync_queue),
    )
    .await;
    assert_refused(
        w,
        "worker reads the status queue",
        Op::Consume(&t.status_queue),
    )
    .await;
    assert_refused(
        w,
        "worker reads the dead letters",
        Op::Get(&t.dead_letter_queue),
    )
    .await;
    let spy = format!("{}.spy", users.ns);
    assert_refused(
        w,
        "worker declares a queue in the namespace",
        Op::Declare(&spy),
    )
    .await;
    let unrelated = format!("unrelated-{}", Uuid::now_v7());
    assert_refused(
        w,
        "worker declares an unrelated queue",
        Op::Declare(&unrelated),
    )
    .await;

    // The fulfilment worker: consumes its own queue; publishes retries and dead letters only.
    let fulfilment = connect(&urls["FULFILMENT_WORKER"]).await;
    let f = &fulfilment;
    assert_allowed(
        f,
        "fulfilment worker consumes the fulfilment queue",
        Op::Consume(&t.fulfilment_queue),
    )
    .await;
    for x in [&t.retry_exchange, &t.dead_letter_exchange] {
        assert_allowed(
            f,
            &format!("fulfilment worker publishes to {x}"),
            Op::Publish(x, "fulfilment.5s"),
        )
        .await;
    }
    assert_refused(
        f,
        "fulfilment worker consumes the Salesforce work queue",
        Op::Consume(&t.sf_sync_queue),
    )
    .await;
    assert_refused(
        f,
        "fulfilment worker publishes an event",
        Op::Publish(&t.events_exchange, "fulfilment.result"),
    )
    .await;
    assert_refused(
        f,
        "fulfilment worker publishes a status report",
        Op::Publish(&t.status_exchange, "order.sync_status.synced"),
    )
    .await;
    assert_refused(
        f,
        "fulfilment worker publishes through the default exchange",
        Op::Publish("", &t.fulfilment_queue),
    )
    .await;

    // The relay: publishes order events (and forged reports' dead letters); consumes reports.
    let relay = connect(&urls["OUTBOX_RELAY"]).await;
    let r = &relay;
    assert_allowed(
        r,
        "relay publishes an order event",
        Op::Publish(&t.events_exchange, "order.submitted"),
    )
    .await;
    assert_allowed(
        r,
        "relay dead-letters",
        Op::Publish(&t.dead_letter_exchange, "x"),
    )
    .await;
    assert_allowed(
        r,
        "relay consumes the status queue",
        Op::Consume(&t.status_queue),
    )
    .await;
    assert_refused(
        r,
        "relay reads the work queue",
        Op::Consume(&t.sf_sync_queue),
    )
    .await;
    assert_refused(
        r,
        "relay publishes a status report",
        Op::Publish(&t.status_exchange, "order.sync_status.synced"),
    )
    .await;
    assert_refused(
        r,
        "relay publishes a retry",
        Op::Publish(&t.retry_exchange, "requeue"),
    )
    .await;

    // The operator: reads dead letters, replays them through the default exchange.
    let operator = connect(&urls["OPERATOR"]).await;
    let o = &operator;
    assert_allowed(
        o,
        "operator reads the dead letters",
        Op::Get(&t.dead_letter_queue),
    )
    .await;
    assert_allowed(
        o,
        "operator looks through a retry tier (orders show)",
        Op::Get(&t.retry_tiers[0].queue),
    )
    .await;
    assert_allowed(o, "operator replays", Op::Publish("", &t.sf_sync_queue)).await;
    assert_refused(
        o,
        "operator reads the work queue",
        Op::Get(&t.sf_sync_queue),
    )
    .await;
    assert_refused(
        o,
        "operator publishes an order event",
        Op::Publish(&t.events_exchange, "order.submitted"),
    )
    .await;

    // No one may declare: only check (BROKER_DECLARE_TOPOLOGY=false), which needs nothing.
    for (name, url) in &urls {
        let checking = Supervisor::new(broker_config(url, &users.ns, false), "users-test").unwrap();
        checking
            .try_connect()
            .await
            .unwrap_or_else(|e| panic!("{name} cannot check: {e}"))
            .close(checking.config())
            .await;
        let declaring = Supervisor::new(broker_config(url, &users.ns, true), "users-test").unwrap();
        let err = declaring
            .try_connect()
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} declared the topology"));
        assert!(err.to_string().contains("ACCESS_REFUSED"), "{name}: {err}");
    }
    for c in [worker, relay, operator] {
        let _ = c.close(200, "bye".into()).await;
    }

    // Again: existing users keep their passwords (the URLs above still work), permissions are
    // set again.
    let again = users.orderbridge(&["setup-users"], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains(&format!(
            "user {} exists and keeps its password",
            users.user(Component::SyncWorker)
        )),
        "{text}"
    );
    let worker = connect(&urls["SYNC_WORKER"]).await;
    assert_allowed(
        &worker,
        "worker after a second set-up",
        Op::Consume(&t.sf_sync_queue),
    )
    .await;
    let _ = worker.close(200, "bye".into()).await;
}

/// The whole path with each component as its own user: the relay publishes the order event,
/// the worker writes it to Salesforce and reports, the relay's applier marks the order synced.
/// The users come from the `--print` script, run by `sh` as an operator would.
#[tokio::test]
async fn the_relay_and_the_worker_run_an_order_through_as_their_own_users() {
    let users = Users::new();
    let out = users.orderbridge(
        &["setup-users", "--print"],
        &[
            ("BROKER_PASSWORD_OUTBOX_RELAY", "relay-pw"),
            ("BROKER_PASSWORD_SYNC_WORKER", "worker-pw"),
            ("BROKER_PASSWORD_OPERATOR", "operator-pw"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sh = Command::new("sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let ran = sh.wait_with_output().unwrap();
    assert!(
        ran.status.success(),
        "script failed: {}\n{}",
        String::from_utf8_lossy(&ran.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let urls = urls(&out.stderr);
    assert!(urls["SYNC_WORKER"].contains(":worker-pw@"), "{urls:?}");

    let emulator = sf_emulator::spawn(EmulatorConfig {
        seed_file: Some(workspace_root().join("config/sf-emulator-seed.json")),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .unwrap();
    let db = TestDatabase::new().await;
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let relay_cli = outbox_relay::Cli::parse_from([
        "outbox-relay",
        "--amqp-url",
        &urls["OUTBOX_RELAY"],
        "--broker-namespace",
        &users.ns,
        "--broker-declare-topology",
        "false",
        "--broker-signing-key",
        DEV_SIGNING_KEY,
        "--poll-interval",
        "100ms",
    ]);
    let relay = outbox_relay::Relay::new(
        relay_cli.relay.clone(),
        relay_cli.broker.clone(),
        db.pool.clone(),
    )
    .unwrap();
    let applier = outbox_relay::StatusApplier::new(
        relay_cli.status.clone(),
        &relay_cli.relay,
        relay_cli.broker.clone(),
        &db.pool,
        relay.metrics(),
    )
    .unwrap();
    let r = rx.clone();
    tasks.push(tokio::spawn(async move { relay.run(r).await.unwrap() }));
    let r = rx.clone();
    tasks.push(tokio::spawn(async move { applier.run(r).await.unwrap() }));

    let worker_cli = sync_worker::config::Cli::parse_from([
        "sync-worker",
        "--amqp-url",
        &urls["SYNC_WORKER"],
        "--broker-namespace",
        &users.ns,
        "--broker-declare-topology",
        "false",
        "--broker-signing-key",
        DEV_SIGNING_KEY,
        "--sf-login-url",
        &emulator.base_url,
    ]);
    let metrics = Arc::new(Metrics::default());
    let client = Client::new(&worker_cli.salesforce).unwrap();
    let mapping = Arc::new(Mapping::load(None).unwrap());
    let pricebook = Arc::new(PriceBook::new(client.clone(), mapping.pricebook.clone()));
    let writer = Writer::new(client, mapping, pricebook, metrics.clone());
    let worker = Worker::new(worker_cli.worker, worker_cli.broker, writer, metrics).unwrap();
    let r = rx.clone();
    tasks.push(tokio::spawn(async move { worker.run(r).await.unwrap() }));

    // An order as the API accepts it.
    let client_id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, 'portal')")
        .bind(client_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let request: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": "PO-users-1",
        "customer": {"external_id": "CUST-USERS", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": "SKU-RED-MUG", "name": "Red mug", "quantity": 2, "unit_price": "12.50"}]
    }))
    .unwrap();
    let order = NewOrder::parse(request)
        .unwrap()
        .into_order(Uuid::now_v7(), chrono::Utc::now());
    let order_id = order.id;
    let scope = orderbridge_db::clients::scope(&db.pool, client_id.into())
        .await
        .unwrap()
        .unwrap();
    orderbridge_db::create::create_order(&db.pool, &scope, None, order, None)
        .await
        .unwrap();

    let deadline = Instant::now() + WAIT;
    loop {
        let state: String = sqlx::query_scalar("SELECT sync_state FROM orders WHERE id = $1")
            .bind(order_id.get())
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if state == "synced" {
            break;
        }
        assert!(Instant::now() < deadline, "order stuck in {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records: serde_json::Value =
        reqwest::get(format!("{}/__admin/records/Order", emulator.base_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let written = records["records"].as_array().unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["External_Id__c"], order_id.to_string());

    // The operator looks at the dead letters as its own user, checking only.
    let mut dlq = Vec::new();
    orderbridge_cli::dlq::run(
        orderbridge_cli::dlq::DlqCommand::List {
            limit: 5,
            json: false,
        },
        &broker_config(&urls["OPERATOR"], &users.ns, false),
        &mut dlq,
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8(dlq).unwrap(), "no dead letters\n");

    let _ = stop.send(true);
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    let _ = emulator.shutdown().await;
}
