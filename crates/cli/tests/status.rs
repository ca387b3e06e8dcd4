//! `orderbridge status` against the real thing: the relay (with its status applier) and the
//! sync worker run in-process with their admin servers, against a per-test database, the local
//! RabbitMQ (a namespace of its own) and the Salesforce emulator. The system is looked at with
//! nothing running and an order waiting, running with a dead letter, and with Salesforce down
//! (the worker's breaker open), and every time the problems are exactly those.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_cli::command::{Cli, Command};
use orderbridge_cli::status::{self, Health, Status};
use orderbridge_domain::OrderId;
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::Client;
use orderbridge_testkit::{ReservedPort, TestDatabase, workspace_root};
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
    relay_port: u16,
    worker_port: u16,
    /// The admin ports, held (connections refused) until the services start on them.
    reserved: Option<(ReservedPort, ReservedPort)>,
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
        let (relay, worker) = (ReservedPort::new().unwrap(), ReservedPort::new().unwrap());
        Self {
            db,
            emulator,
            ns: format!("t-status-{}", Uuid::now_v7()),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            client_id,
            relay_port: relay.port(),
            worker_port: worker.port(),
            reserved: Some((relay, worker)),
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    fn broker_args(&self) -> Vec<String> {
        [
            "--amqp-url",
            &self.amqp_url,
            "--broker-namespace",
            &self.ns,
            "--broker-signing-key",
            DEV_SIGNING_KEY,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn cli(&self, extra: &[&str]) -> Cli {
        let mut args: Vec<String> = vec!["orderbridge".into()];
        args.extend(self.broker_args());
        args.extend(["--database-url", self.db.url()].map(str::to_owned));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(args).unwrap()
    }

    /// `status` over the relay and the worker of this test, as `orderbridge status` runs it;
    /// the text and whether it found no problem.
    async fn status_text(&self, extra: &[&str]) -> (bool, String) {
        let services = self.services();
        let mut argv = vec!["status", "--service", services.as_str()];
        argv.extend_from_slice(extra);
        let cli = self.cli(&argv);
        let Command::Status(args) = &cli.command else {
            panic!("not status");
        };
        let mut out = Vec::new();
        let clean = status::run(args, &cli.db, &cli.broker, &mut out)
            .await
            .unwrap();
        (clean, String::from_utf8(out).unwrap())
    }

    async fn status(&self, extra: &[&str]) -> Status {
        let services = self.services();
        let mut argv = vec!["status", "--service", services.as_str()];
        argv.extend_from_slice(extra);
        let cli = self.cli(&argv);
        let Command::Status(args) = &cli.command else {
            panic!("not status");
        };
        status::status(args, &cli.db, &cli.broker).await
    }

    fn services(&self) -> String {
        format!(
            "outbox-relay=http://127.0.0.1:{},sync-worker=http://127.0.0.1:{}",
            self.relay_port, self.worker_port
        )
    }

    async fn status_until(&self, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status(&[]).await;
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never: {s:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create(&self, sku: &str) -> OrderId {
        common::create_order(&self.db.pool, self.client_id, sku).await
    }

    fn serve_admin<S: orderbridge_runtime::admin::AdminState>(
        &mut self,
        port: ReservedPort,
        state: Arc<S>,
    ) {
        let mut stop = self.stop.subscribe();
        let listener = port.listen().unwrap();
        self.tasks.push(tokio::spawn(async move {
            orderbridge_runtime::admin::serve(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
        }));
    }

    fn start_services(&mut self) {
        let (relay_port, worker_port) = self.reserved.take().expect("services start once");
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
        self.serve_admin(relay_port, relay.metrics());
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { relay.run(r).await.unwrap() }));
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { applier.run(r).await.unwrap() }));

        let mut args = vec!["sync-worker".to_owned()];
        args.extend(self.broker_args());
        args.extend(
            [
                "--sf-login-url",
                &self.emulator.base_url,
                "--sf-request-timeout",
                "2s",
                "--dlq-check-interval",
                "200ms",
            ]
            .map(str::to_owned),
        );
        let cli = sync_worker::config::Cli::parse_from(args);
        let metrics = Arc::new(Metrics::default());
        let client = Client::new(&cli.salesforce).unwrap();
        let mapping = Arc::new(Mapping::load(None).unwrap());
        let pricebook = Arc::new(PriceBook::new(client.clone(), mapping.pricebook.clone()));
        let writer = Writer::new(client, mapping, pricebook, metrics.clone());
        let worker = Worker::new(cli.worker, cli.broker, writer, metrics.clone()).unwrap();
        self.serve_admin(worker_port, metrics);
        let r = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { worker.run(r).await.unwrap() }));
    }

    async fn wait_for(&self, id: OrderId, state: &str) {
        common::wait_for_state(&self.db.pool, id, state).await;
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
async fn status_names_exactly_the_problems_of_the_moment() {
    let mut env = Env::new().await;
    let relay_url = format!("http://127.0.0.1:{}", env.relay_port);
    let worker_url = format!("http://127.0.0.1:{}", env.worker_port);

    // Nothing runs; an order waits in the outbox.
    env.create("SKU-RED-MUG").await;
    let s = env.status(&["--outbox-age-limit", "0s"]).await;
    assert!(matches!(s.services[0].health, Health::Unreachable { .. }));
    assert!(matches!(s.services[1].health, Health::Unreachable { .. }));
    assert_eq!(s.database.found().unwrap().outbox.unpublished, 1);
    assert_eq!(s.problems.len(), 3, "{:#?}", s.problems);
    assert!(
        s.problems[0].starts_with(&format!("outbox-relay ({relay_url}) does not answer: ")),
        "{}",
        s.problems[0]
    );
    assert!(
        s.problems[1].starts_with(&format!("sync-worker ({worker_url}) does not answer: ")),
        "{}",
        s.problems[1]
    );
    assert!(
        s.problems[2].starts_with("the oldest of 1 unpublished outbox event(s) is "),
        "{}",
        s.problems[2]
    );
    // Within the default age limit the waiting order is no problem yet.
    let s = env.status(&[]).await;
    assert_eq!(s.problems.len(), 2, "{:#?}", s.problems);

    // Running, with one order dead-lettered (its product does not exist).
    env.start_services();
    let failed = env.create("SKU-NO-SUCH-PRODUCT").await;
    env.wait_for(failed, "failed").await;
    let s = env
        .status_until(|s| {
            s.services.iter().all(|x| x.health == Health::Ready)
                && s.database
                    .found()
                    .is_some_and(|d| d.outbox.unpublished == 0)
                && s.broker.found().is_some_and(|q| {
                    q.queues
                        .iter()
                        .any(|q| q.queue.ends_with(".dead-letters") && q.messages == 1)
                })
        })
        .await;
    assert_eq!(
        s.problems,
        [format!(
            "1 dead letter(s) in {}.dead-letters: `orderbridge dlq list`",
            env.ns
        )]
    );
    let relay = s.services[0].reading.as_ref().unwrap();
    assert_eq!(relay.partitions, Some(1));
    assert_eq!(relay.partitions_led, Some(vec![0]));
    assert!(relay.published_total.unwrap() >= 2.0);
    let worker = s.services[1].reading.as_ref().unwrap();
    assert_eq!(worker.paused, Some(false));
    // The worker exports the queue depths too (the dashboard's "Queue depths").
    let dead = format!(
        "sync_worker_queue_messages{{queue=\"{}.dead-letters\"}} 1",
        env.ns
    );
    let consumers = format!(
        "sync_worker_queue_consumers{{queue=\"{}.sf-sync\"}} 1",
        env.ns
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let text = reqwest::get(format!("{worker_url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == dead) && text.lines().any(|l| l == consumers) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {dead:?} / {consumers:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (clean, text) = env.status_text(&[]).await;
    assert!(!clean);
    assert!(
        text.contains(&format!(
            "  outbox-relay       {relay_url:<26} ready  leads partition(s) [0] of 1"
        )),
        "{text}"
    );
    assert!(text.contains("breaker closed"), "{text}");
    assert!(
        text.contains("4 batches in flight at most"),
        "the worker's window: {text}"
    );
    assert!(
        text.ends_with(&format!(
            "problems\n  - 1 dead letter(s) in {}.dead-letters: `orderbridge dlq list`\n",
            env.ns
        )),
        "{text}"
    );

    // Salesforce down: the next order trips the worker's breaker.
    env.faults(json!({"outage": true})).await;
    let waiting = env.create("SKU-RED-MUG").await;
    let s = env
        .status_until(|s| {
            s.services[1]
                .reading
                .as_ref()
                .is_some_and(|r| r.paused == Some(true))
        })
        .await;
    assert_eq!(s.services[1].health, Health::NotReady { status: 503 });
    assert_eq!(
        s.services[1]
            .reading
            .as_ref()
            .unwrap()
            .pause_reason
            .as_deref(),
        Some("outage")
    );
    assert!(
        s.problems.contains(
            &"sync-worker: circuit breaker open, consumption paused: Salesforce fails or does \
              not answer; it resumes by itself"
                .to_owned()
        ),
        "{:#?}",
        s.problems
    );
    // The JSON has the same facts.
    let (_, json_text) = env.status_text(&["--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(doc["services"][1]["health"]["state"], "not_ready");
    assert_eq!(doc["services"][1]["reading"]["pause_reason"], "outage");
    assert_eq!(doc["database"]["result"], "found");
    assert!(doc["problems"].as_array().unwrap().len() >= 2);

    // Salesforce back: the worker resumes by itself and the order goes through.
    env.faults(json!({"clear": true})).await;
    env.wait_for(waiting, "synced").await;
    let s = env
        .status_until(|s| s.services[1].health == Health::Ready)
        .await;
    assert_eq!(s.problems.len(), 1, "{:#?}", s.problems);

    // Unreachable broker and database are problems, not errors.
    let s = env
        .status(&[
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
        ])
        .await;
    assert!(
        s.problems[0].starts_with("Postgres cannot be read: "),
        "{:#?}",
        s.problems
    );
    assert!(
        s.problems[1].starts_with("the broker cannot be read: "),
        "{:#?}",
        s.problems
    );

    env.finish().await;
}

#[test]
fn a_malformed_service_is_refused_by_the_parser() {
    let e = Cli::try_parse_from(["orderbridge", "status", "--service", "sync-worker"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("NAME=URL"), "{e}");
}
