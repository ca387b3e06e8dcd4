//! `orderbridge orders show` on orders in every state, made by the real pipeline: the relay,
//! the status applier and the sync worker run in-process against a per-test database, the local
//! RabbitMQ (a namespace of its own) and the Salesforce emulator. The order is looked at as it
//! waits in the outbox (no relay yet), on the broker (no worker yet), in a retry tier (its
//! record locked in Salesforce), failed and dead-lettered (an unknown product), synced, and
//! activated in Salesforce; and with the broker and Salesforce unreachable.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_cli::command::{Cli, Command};
use orderbridge_cli::orders::{self, OrdersCommand, Section, Shown};
use orderbridge_domain::OrderId;
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::Client;
use orderbridge_testkit::{TestDatabase, workspace_root};
use serde_json::json;
use sf_emulator::{EmulatorConfig, RunningEmulator};
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::worker::Worker;
use sync_worker::writer::Writer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

mod common;

use common::WAIT;

struct Env {
    db: TestDatabase,
    emulator: RunningEmulator,
    ns: String,
    amqp_url: String,
    client_id: Uuid,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Env {
    async fn new() -> Self {
        let emulator = sf_emulator::spawn(EmulatorConfig {
            seed_file: Some(workspace_root().join("config/sf-emulator-seed.json")),
            ..EmulatorConfig::ephemeral()
        })
        .await
        .unwrap();
        let db = TestDatabase::new().await;
        let client_id = Uuid::now_v7();
        sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, 'portal')")
            .bind(client_id)
            .execute(&db.pool)
            .await
            .unwrap();
        let (stop, _) = watch::channel(false);
        Self {
            db,
            emulator,
            ns: format!("t-orders-{}", Uuid::now_v7()),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            client_id,
            stop,
            tasks: Vec::new(),
        }
    }

    /// The broker settings every component gets: a retry tier of an hour, so a retried
    /// message stays where the command can find it.
    fn broker_args(&self) -> Vec<String> {
        [
            "--amqp-url",
            &self.amqp_url,
            "--broker-namespace",
            &self.ns,
            "--broker-signing-key",
            DEV_SIGNING_KEY,
            "--broker-retry-tiers",
            "1h",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The operator's command line, as parsed by `orderbridge`.
    fn cli(&self, extra: &[&str]) -> Cli {
        let mut args: Vec<String> = vec!["orderbridge".into()];
        args.extend(self.broker_args());
        args.extend(
            [
                "--database-url",
                self.db.url(),
                "--sf-login-url",
                &self.emulator.base_url,
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(args).unwrap()
    }

    async fn show_with(&self, id: OrderId, extra: &[&str]) -> Shown {
        let id = id.to_string();
        let mut argv = vec!["orders", "show", id.as_str()];
        argv.extend_from_slice(extra);
        let cli = self.cli(&argv);
        let Command::Orders {
            command: OrdersCommand::Show(args),
        } = &cli.command
        else {
            panic!("not orders show");
        };
        orders::show(args, &cli.db, &cli.broker, &cli.salesforce)
            .await
            .unwrap()
            .unwrap()
    }

    async fn show(&self, id: OrderId) -> Shown {
        self.show_with(id, &[]).await
    }

    /// The text output, through `orders::run`, as the binary prints it.
    async fn show_text(&self, id: &str) -> (bool, String) {
        let cli = self.cli(&["orders", "show", id]);
        let Command::Orders { command } = &cli.command else {
            panic!("not orders");
        };
        let mut out = Vec::new();
        let found = orders::run(command, &cli.db, &cli.broker, &cli.salesforce, &mut out)
            .await
            .unwrap();
        (found, String::from_utf8(out).unwrap())
    }

    /// An order as the API accepts it, of `sku`.
    async fn create(&self, sku: &str) -> OrderId {
        common::create_order(&self.db.pool, self.client_id, sku).await
    }

    fn start_relay(&mut self) {
        let mut args = vec!["outbox-relay".to_owned()];
        args.extend(self.broker_args());
        args.extend(["--poll-interval", "100ms"].map(str::to_owned));
        let cli = outbox_relay::Cli::parse_from(args);
        let relay =
            outbox_relay::Relay::new(cli.relay.clone(), cli.broker.clone(), self.db.pool.clone())
                .unwrap();
        let applier = outbox_relay::StatusApplier::new(
            cli.status.clone(),
            &cli.relay,
            cli.broker.clone(),
            &self.db.pool,
            relay.metrics(),
        )
        .unwrap();
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { relay.run(r).await.unwrap() }));
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { applier.run(r).await.unwrap() }));
    }

    fn start_worker(&mut self) {
        let mut args = vec!["sync-worker".to_owned()];
        args.extend(self.broker_args());
        args.extend(["--sf-login-url", &self.emulator.base_url].map(str::to_owned));
        let cli = sync_worker::config::Cli::parse_from(args);
        let metrics = Arc::new(Metrics::default());
        let client = Client::new(&cli.salesforce).unwrap();
        let mapping = Arc::new(Mapping::load(None).unwrap());
        let pricebook = Arc::new(PriceBook::new(client.clone(), mapping.pricebook.clone()));
        let writer = Writer::new(client, mapping, pricebook, metrics.clone());
        let worker = Worker::new(cli.worker, cli.broker, writer, metrics).unwrap();
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { worker.run(r).await.unwrap() }));
    }

    async fn wait_for(&self, id: OrderId, state: &str) {
        common::wait_for_state(&self.db.pool, id, state).await;
    }

    /// Shows `id` until `done` holds (broker counts settle a moment after a publish).
    async fn show_until(&self, id: OrderId, done: impl Fn(&Shown) -> bool) -> Shown {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self.show(id).await;
            if done(&shown) {
                return shown;
            }
            assert!(Instant::now() < deadline, "never: {shown:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn faults(&self, body: serde_json::Value) {
        common::faults(&self.emulator.base_url, body).await;
    }

    async fn finish(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
        let cfg = self.cli(&["dlq", "list"]).broker;
        common::delete_namespace(&cfg).await;
        let _ = self.emulator.shutdown().await;
    }
}

#[tokio::test]
async fn show_explains_an_order_in_every_state() {
    let mut env = Env::new().await;

    // Pending: no relay runs, the event waits in the outbox.
    let a = env.create("SKU-RED-MUG").await;
    let shown = env.show(a).await;
    assert_eq!(shown.stored.order.sync_state, "pending");
    assert_eq!(shown.stored.events.len(), 1);
    assert!(shown.stored.events[0].published_at.is_none());
    assert_eq!(shown.stored.backlog.as_ref().unwrap().ahead, 0);
    assert!(
        shown
            .diagnosis
            .starts_with("waiting in the outbox for the relay to publish it (next in line)"),
        "{}",
        shown.diagnosis
    );
    let Section::Found(records) = &shown.salesforce else {
        panic!("{:?}", shown.salesforce);
    };
    assert!(records.orders.is_empty() && records.items.is_empty());
    let (found, text) = env.show_text(&a.to_string()).await;
    assert!(found);
    assert!(
        text.contains("  0 unpublished event(s) of other orders ahead"),
        "{text}"
    );
    assert!(
        text.contains("\ndiagnosis: waiting in the outbox"),
        "{text}"
    );

    // Published: the relay runs, no worker consumes.
    env.start_relay();
    env.wait_for(a, "published").await;
    let shown = env
        .show_until(a, |s| {
            s.broker.found().is_some_and(|q| q.work.messages == 1)
        })
        .await;
    assert!(shown.stored.events[0].published_at.is_some());
    assert!(shown.stored.backlog.is_none());
    assert!(
        shown.diagnosis.starts_with("published ")
            && shown.diagnosis.ends_with(&format!(
                "({}.sf-sync 0 consumers, 1 ready): no sync worker is consuming it",
                env.ns
            )),
        "{}",
        shown.diagnosis
    );

    // Retrying, failed, synced: Salesforce refuses b's record for now, c's product does not
    // exist; the worker starts.
    let b = env.create("SKU-RED-MUG").await;
    let c = env.create("SKU-NO-SUCH-PRODUCT").await;
    env.faults(json!({"lock_records": [{"key": b.to_string()}]}))
        .await;
    env.start_worker();
    env.wait_for(a, "synced").await;
    env.wait_for(b, "retrying").await;
    env.wait_for(c, "failed").await;

    let shown = env
        .show_until(b, |s| s.broker.found().is_some_and(|q| !q.found.is_empty()))
        .await;
    let q = shown.broker.found().unwrap();
    assert_eq!(q.found.len(), 1, "{q:?}");
    assert_eq!(q.found[0].queue, format!("{}.sf-sync.retry.1h", env.ns));
    assert_eq!(
        q.found[0].message_id,
        shown.stored.events[0].event_id.to_string()
    );
    assert!(
        shown
            .diagnosis
            .starts_with("waiting in retry tier 1h after UNABLE_TO_LOCK_ROW"),
        "{}",
        shown.diagnosis
    );
    assert!(
        shown
            .diagnosis
            .contains(", attempt 1 of 8; next attempt in about 59m"),
        "{}",
        shown.diagnosis
    );
    // Looking gave the message back: it is still there for the next look.
    let again = env.show(b).await;
    assert_eq!(again.broker.found().unwrap().found.len(), 1);

    let shown = env
        .show_until(c, |s| s.broker.found().is_some_and(|q| !q.found.is_empty()))
        .await;
    let letter = &shown.broker.found().unwrap().found[0];
    assert_eq!(letter.queue, format!("{}.dead-letters", env.ns));
    assert!(letter.tier.is_none());
    assert!(
        shown
            .diagnosis
            .starts_with("failed after 1 attempt: UNKNOWN_SKU"),
        "{}",
        shown.diagnosis
    );
    assert!(
        shown
            .diagnosis
            .contains(&format!("`orderbridge dlq replay {}`", letter.message_id)),
        "{}",
        shown.diagnosis
    );

    let shown = env.show(a).await;
    let sf_id = shown.stored.order.salesforce_id.clone().unwrap();
    let records = shown.salesforce.found().unwrap();
    assert_eq!(records.orders.len(), 1);
    assert_eq!(records.orders[0].id, sf_id);
    assert_eq!(records.items.len(), 1);
    assert!(
        shown
            .diagnosis
            .starts_with(&format!("synced to Salesforce as {sf_id} ")),
        "{}",
        shown.diagnosis
    );
    assert!(
        shown.diagnosis.ends_with("; Salesforce Status Draft"),
        "{}",
        shown.diagnosis
    );

    // Activated: Salesforce's decision, applied as the subscriber applies it.
    let mut conn = env.db.pool.acquire().await.unwrap();
    orderbridge_db::status::apply(
        &mut conn,
        a,
        orderbridge_db::status::StatusChange {
            status: "activated",
            at: Utc::now(),
            source: "salesforce",
        },
    )
    .await
    .unwrap();
    drop(conn);
    let shown = env.show(a).await;
    assert_eq!(shown.stored.order.status, "activated");
    assert_eq!(shown.stored.history.len(), 2);
    assert!(
        shown
            .diagnosis
            .contains("; status activated since 0s ago (from salesforce)"),
        "{}",
        shown.diagnosis
    );

    // The JSON is the same facts.
    let cli = env.cli(&["orders", "show", &a.to_string(), "--json"]);
    let Command::Orders { command } = &cli.command else {
        panic!()
    };
    let mut out = Vec::new();
    assert!(
        orders::run(command, &cli.db, &cli.broker, &cli.salesforce, &mut out)
            .await
            .unwrap()
    );
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["order"]["status"], "activated");
    assert_eq!(doc["broker"]["result"], "found");
    assert_eq!(doc["salesforce"]["orders"][0]["id"], sf_id.as_str());
    assert_eq!(doc["diagnosis"], shown.diagnosis.as_str());

    // With several targets (divisions) the order's target is looked in, and named; an order
    // no target takes says so.
    let mapping: serde_json::Value =
        serde_json::from_str(orderbridge_mapping::DEFAULT_MAPPING).unwrap();
    let dir = std::env::temp_dir().join(format!("orders-show-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    for (eu, want) in [("EUR", Some("eu")), ("GBP", None)] {
        let targets = serde_json::json!({
            "route": {"rules": [{"path": "currency", "in": [eu], "target": "eu"},
                                {"path": "currency", "in": ["USD"], "target": "us"}]},
            "targets": {"eu": {"mapping": mapping}, "us": {"mapping": mapping}}
        });
        let file = dir.join("targets.json");
        std::fs::write(&file, targets.to_string()).unwrap();
        let shown = env
            .show_with(a, &["--mapping-file", file.to_str().unwrap()])
            .await;
        let records = shown.salesforce.found().cloned();
        match want {
            Some(target) => {
                let records = records.unwrap();
                assert_eq!(records.target.as_deref(), Some(target));
                assert_eq!(records.orders[0].id, sf_id);
            }
            None => match &shown.salesforce {
                orders::Section::Unavailable { error } => {
                    assert!(error.contains("no target takes this order"), "{error}");
                    assert!(error.contains("currency is \"EUR\""), "{error}");
                }
                other => panic!("{other:?}"),
            },
        }
    }
    let _ = std::fs::remove_dir_all(dir);

    let (_, text) = env.show_text(&b.to_string()).await;
    assert!(
        text.contains(&format!(
            "\n  found {} in {}.sf-sync.retry.1h: attempts 1, UNABLE_TO_LOCK_ROW",
            again.stored.events[0].event_id, env.ns
        )),
        "{text}"
    );
    // No such order: exit status 1, nothing else looked at.
    let missing = Uuid::now_v7().to_string();
    let (found, text) = env.show_text(&missing).await;
    assert!(!found);
    assert_eq!(text, format!("no order {missing}\n"));

    // Skipped, and unreachable: the diagnosis comes from Postgres alone.
    let shown = env.show_with(c, &["--no-broker", "--no-salesforce"]).await;
    assert!(matches!(shown.broker, Section::Skipped));
    assert!(matches!(shown.salesforce, Section::Skipped));
    assert!(
        shown
            .diagnosis
            .starts_with("failed after 1 attempt: UNKNOWN_SKU")
            && shown.diagnosis.contains("then `POST /v1/orders/"),
        "{}",
        shown.diagnosis
    );
    let shown = env
        .show_with(
            a,
            &[
                "--amqp-url",
                "amqp://guest:guest@127.0.0.1:1/%2f",
                "--sf-login-url",
                "http://127.0.0.1:1",
            ],
        )
        .await;
    assert!(
        matches!(shown.broker, Section::Unavailable { .. }),
        "{:?}",
        shown.broker
    );
    assert!(
        matches!(shown.salesforce, Section::Unavailable { .. }),
        "{:?}",
        shown.salesforce
    );
    assert!(shown.diagnosis.starts_with("synced to Salesforce as "));

    env.faults(json!({"clear": true})).await;
    env.finish().await;
}

#[test]
fn a_malformed_id_is_refused_by_the_parser() {
    let e = Cli::try_parse_from(["orderbridge", "orders", "show", "not-an-id"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("not-an-id"), "{e}");
}
