//! Test harness: a database per test, a unique broker namespace on the local RabbitMQ, the
//! emulator in-process (with the Order fields the result is written to), the outbox relay
//! in-process (it publishes the `fulfilment.*` events as in production), a fulfilment receiver
//! in the test (axum, verifying every signature with the webhook crate, answering from a
//! script) and the worker in-process.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use clap::Parser;
use fulfilment_worker::call::Caller;
use fulfilment_worker::config::Cli;
use fulfilment_worker::metrics::Metrics;
use fulfilment_worker::worker::Worker;
use fulfilment_worker::writeback::WriteBack;
use orderbridge_broker::lapin::options::{BasicGetOptions, QueueDeclareOptions};
use orderbridge_broker::lapin::types::FieldTable;
use orderbridge_broker::lapin::{BasicProperties, Channel};
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_broker::{BrokerConfig, Supervisor, Topology};
use orderbridge_db::create::{Created, create_order};
use orderbridge_db::fulfilment::{self as requests, FulfilmentRequest, NewRequest, Requested};
use orderbridge_domain::fulfilment::Trigger;
use orderbridge_domain::{ClientId, ClientScope, NewOrder, NewOrderRequest, OrderId};
use orderbridge_salesforce::{Client, SalesforceConfig};
use orderbridge_testkit::TestDatabase;
use orderbridge_webhook::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Headers, Webhook};
use serde_json::{Value, json};
use sf_emulator::{EmulatorConfig, RunningEmulator};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SIGNING_KEY: &str = DEV_SIGNING_KEY;
/// The secret the worker signs with and the test receiver verifies with.
pub const WEBHOOK_SECRET: &str = "whsec_dGVzdC1mdWxmaWxtZW50LXNpZ25pbmctc2VjcmV0LTMyYg==";
pub const WAIT: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `f` until it returns true, failing the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request the receiver got (its signature verified).
#[derive(Debug, Clone)]
pub struct Call {
    pub webhook_id: String,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub body: Value,
}

/// The test's fulfilment system: verifies, records, answers from the script (then
/// `{"status":"provisioned"}`).
#[derive(Default)]
pub struct Receiver {
    pub calls: Mutex<Vec<Call>>,
    /// Calls refused because their signature did not verify.
    pub forged: Mutex<u32>,
    script: Mutex<VecDeque<(u16, String)>>,
    /// How long each answer takes (a slow fulfilment system), so a test can have a second
    /// delivery arrive while the first call is in progress.
    answer_after: Mutex<Duration>,
    /// When set, the receiver stores a `provisioned` result the way the callback endpoint does
    /// (record it, queue `fulfilment.result`) before it answers: a callback racing the 202.
    callback_first: Mutex<Option<PgPool>>,
}

impl Receiver {
    pub fn answer(&self, status: u16, body: &str) {
        self.script
            .lock()
            .unwrap()
            .push_back((status, body.to_owned()));
    }

    pub fn answer_after(&self, delay: Duration) {
        *self.answer_after.lock().unwrap() = delay;
    }

    pub fn callback_before_answering(&self, pool: PgPool) {
        *self.callback_first.lock().unwrap() = Some(pool);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn receive(
    State((receiver, webhook)): State<(Arc<Receiver>, Webhook)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let h = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let verified = webhook.verify(
        Headers {
            id: h(HEADER_ID),
            timestamp: h(HEADER_TIMESTAMP),
            signature: h(HEADER_SIGNATURE),
        },
        &body,
    );
    let Ok(verified) = verified else {
        *receiver.forged.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let callback = receiver.callback_first.lock().unwrap().clone();
    if let Some(pool) = callback {
        let id: Uuid = verified.id.parse().unwrap();
        let request = requests::load(&pool, id).await.unwrap().unwrap();
        let mut tx = pool.begin().await.unwrap();
        requests::record_outcome(&mut tx, id, requests::Outcome::Provisioned)
            .await
            .unwrap();
        requests::queue_result(&mut tx, id, request.order_id, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    receiver.calls.lock().unwrap().push(Call {
        webhook_id: verified.id,
        idem_key: text("idempotency-key"),
        correlation_id: text("x-correlation-id"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let delay = *receiver.answer_after.lock().unwrap();
    tokio::time::sleep(delay).await;
    let (status, answer) = receiver
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, r#"{"status":"provisioned"}"#.into()));
    (StatusCode::from_u16(status).unwrap(), answer)
}

/// The emulator's default schema with the Order fields the results are written to, in case
/// the build at hand does not declare them yet.
fn schema_file(dir: &std::path::Path) -> PathBuf {
    let mut schema: Value = serde_json::from_str(sf_emulator::schema::DEFAULT_SCHEMA_JSON).unwrap();
    let objects = schema["objects"].as_array_mut().unwrap();
    let order = objects.iter_mut().find(|o| o["name"] == "Order").unwrap();
    let fields = order["fields"].as_array_mut().unwrap();
    for (name, length) in [("Activation_Status__c", 40), ("Activation_Error__c", 255)] {
        if !fields.iter().any(|f| f["name"] == name) {
            fields.push(json!({"name": name, "type": "string", "length": length}));
        }
    }
    let path = dir.join(format!("schema-{}.json", Uuid::now_v7()));
    std::fs::write(&path, schema.to_string()).unwrap();
    path
}

pub struct Harness {
    pub db: TestDatabase,
    pub ns: String,
    pub broker: BrokerConfig,
    pub topology: Topology,
    pub emulator: RunningEmulator,
    pub sf: Client,
    pub receiver: Arc<Receiver>,
    pub receiver_url: String,
    pub client: ClientScope,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub metrics: Option<Arc<Metrics>>,
}

impl Harness {
    /// Everything but the worker and the relay.
    pub async fn new() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let db = TestDatabase::new().await;
        let schema = schema_file(&std::env::temp_dir());
        let emulator = sf_emulator::spawn(EmulatorConfig {
            schema_file: Some(schema),
            seed_file: Some(repo_root().join("config/sf-emulator-seed.json")),
            ..EmulatorConfig::ephemeral()
        })
        .await
        .unwrap();
        let sf = Client::new(&SalesforceConfig {
            login_url: emulator.base_url.clone(),
            request_timeout: Duration::from_secs(5),
            ..SalesforceConfig::default()
        })
        .unwrap();
        let ns = format!("t-fw-{}", Uuid::now_v7());
        let cli = Cli::parse_from(Self::base_args(
            &ns,
            &emulator.base_url,
            "http://127.0.0.1:1/",
            &db,
        ));
        let broker = cli.broker;
        let topology = broker.topology().unwrap();
        // Declares the topology.
        let session = Supervisor::new(broker.clone(), "fulfilment-test")
            .unwrap()
            .try_connect()
            .await
            .unwrap();
        session.close(&broker).await;

        let receiver = Arc::new(Receiver::default());
        let webhook = Webhook::from_secrets(WEBHOOK_SECRET).unwrap();
        let app = axum::Router::new()
            .route("/provision", post(receive))
            .with_state((receiver.clone(), webhook));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver_url = format!("http://{}/provision", listener.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        let mut server_stop = rx.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|v| *v).await;
                })
                .await;
        });

        let client = Self::api_client(&db.pool).await;
        Self {
            db,
            ns,
            broker,
            topology,
            emulator,
            sf,
            receiver,
            receiver_url,
            client,
            stop,
            tasks: vec![server],
            metrics: None,
        }
    }

    /// The worker's command line for this harness (program name first), to start the real
    /// binary with.
    pub fn worker_args(&self) -> Vec<String> {
        Self::base_args(
            &self.ns,
            &self.emulator.base_url,
            &self.receiver_url,
            &self.db,
        )
    }

    fn base_args(ns: &str, sf_url: &str, fulfilment_url: &str, db: &TestDatabase) -> Vec<String> {
        [
            "fulfilment-worker",
            "--amqp-url",
            AMQP_URL,
            "--broker-namespace",
            ns,
            "--broker-retry-tiers",
            "100ms,200ms,300ms",
            "--broker-reconnect-min",
            "50ms",
            "--broker-reconnect-max",
            "500ms",
            "--broker-signing-key",
            SIGNING_KEY,
            "--database-url",
            db.url(),
            "--sf-login-url",
            sf_url,
            "--sf-request-timeout",
            "5s",
            "--fulfilment-url",
            fulfilment_url,
            "--fulfilment-signing-secret",
            WEBHOOK_SECRET,
            "--fulfilment-timeout",
            "5s",
            "--fulfilment-max-attempts",
            "5",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    /// An API client with a prefix, as `orderbridge keys create` makes one.
    async fn api_client(pool: &PgPool) -> ClientScope {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("client-{id}"))
            .execute(pool)
            .await
            .unwrap();
        orderbridge_db::clients::scope(pool, ClientId::from_uuid(id))
            .await
            .unwrap()
            .unwrap()
    }

    /// Starts the worker in-process.
    pub async fn start_worker(&mut self) -> Arc<Metrics> {
        self.start_worker_with(&[]).await
    }

    /// Starts the worker in-process with `extra` flags.
    pub async fn start_worker_with(&mut self, extra: &[&str]) -> Arc<Metrics> {
        let mut args = self.worker_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let cli = Cli::parse_from(args);
        let f = cli.fulfilment.clone();
        let caller = Caller::new(
            f.fulfilment_url.clone(),
            f.fulfilment_signing_secret.clone(),
            f.fulfilment_timeout,
        )
        .unwrap();
        let write_back = WriteBack::new(Client::new(&cli.salesforce).unwrap(), &f);
        let metrics = Arc::new(Metrics::default());
        let worker = Worker::new(
            f,
            cli.broker,
            self.db.pool.clone(),
            caller,
            write_back,
            metrics.clone(),
        )
        .unwrap();
        let rx = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { worker.run(rx).await.unwrap() }));
        self.metrics = Some(metrics.clone());
        metrics
    }

    /// Starts the sweeper in-process (as the binary does beside the worker) with `extra` flags.
    pub fn start_sweeper_with(&mut self, extra: &[&str]) -> Arc<Metrics> {
        let mut args = self.worker_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let cli = Cli::parse_from(args);
        let metrics = Arc::new(Metrics::default());
        let rx = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(fulfilment_worker::sweeper::run(
                self.db.pool.clone(),
                cli.fulfilment,
                metrics.clone(),
                rx,
            )));
        metrics
    }

    /// Starts the outbox relay in-process: it publishes the `fulfilment.*` events (signed).
    pub fn start_relay(&mut self) {
        let relay_cli = outbox_relay::Cli::parse_from([
            "outbox-relay",
            "--amqp-url",
            AMQP_URL,
            "--broker-namespace",
            &self.ns,
            "--broker-retry-tiers",
            "100ms,200ms,300ms",
            "--poll-interval",
            "100ms",
            "--broker-signing-key",
            SIGNING_KEY,
        ]);
        let relay = outbox_relay::Relay::new(
            relay_cli.relay.clone(),
            relay_cli.broker.clone(),
            self.db.pool.clone(),
        )
        .unwrap();
        let rx = self.stop.subscribe();
        self.tasks
            .push(tokio::spawn(async move { relay.run(rx).await.unwrap() }));
    }

    /// An order created as the API does, with an Order in the emulator it was synced to.
    /// Returns the local id and the Salesforce id.
    pub async fn synced_order(&self) -> (OrderId, String) {
        let account = self
            .sf
            .create(
                "Account",
                &json!({"Name": format!("Acme {}", Uuid::now_v7())}),
            )
            .await
            .unwrap();
        let sf_id = self
            .sf
            .create(
                "Order",
                &json!({"AccountId": account, "EffectiveDate": "2026-12-03", "Status": "Draft"}),
            )
            .await
            .unwrap();
        let req: NewOrderRequest = serde_json::from_value(json!({
            "client_ref": format!("PO-{}", Uuid::now_v7()),
            "customer": {"external_id": "C-1", "name": "One", "email": "one@example.com"},
            "currency": "EUR",
            "lines": [{"sku": "SKU-RED-MUG", "name": "mug", "quantity": 2, "unit_price": "12.50"}]
        }))
        .unwrap();
        let order = NewOrder::parse(req)
            .unwrap()
            .into_order(Uuid::now_v7(), Utc::now());
        let Created::New { order, .. } =
            create_order(&self.db.pool, &self.client, None, order, None)
                .await
                .unwrap()
        else {
            panic!("not created")
        };
        sqlx::query("UPDATE orders SET salesforce_id = $2, sync_state = 'synced' WHERE id = $1")
            .bind(order.id.get())
            .bind(&sf_id)
            .execute(&self.db.pool)
            .await
            .unwrap();
        (order.id, sf_id)
    }

    /// Opens a fulfilment request as a trigger does (row, status, outbox event, one
    /// transaction).
    pub async fn request(&self, sf_id: &str, idem_key: &str) -> Uuid {
        let mut tx = self.db.pool.begin().await.unwrap();
        let requested = requests::request(
            &mut tx,
            NewRequest {
                salesforce_id: sf_id,
                idem_key,
                trigger: Trigger::PLATFORM_EVENT,
                correlation_id: Some("corr-test-1"),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        match requested {
            Requested::Queued { id, .. } => id,
            other => panic!("not queued: {other:?}"),
        }
    }

    pub async fn load(&self, id: Uuid) -> FulfilmentRequest {
        requests::load(&self.db.pool, id).await.unwrap().unwrap()
    }

    /// Waits until the request's result reached Salesforce.
    pub async fn wait_written_back(&self, id: Uuid) -> FulfilmentRequest {
        eventually("the result written back", || async {
            self.load(id).await.written_back_at.is_some()
        })
        .await;
        self.load(id).await
    }

    pub async fn status(&self, id: OrderId) -> String {
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(id.get())
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// (status, source) of the order's history, oldest first.
    pub async fn history(&self, id: OrderId) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT status, source FROM order_status_history WHERE order_id = $1 ORDER BY at, id",
        )
        .bind(id.get())
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    /// The Salesforce Order's activation fields, read over REST.
    pub async fn activation(&self, sf_id: &str) -> (Option<String>, Option<String>) {
        let record: Value = self
            .sf
            .get(
                "Order",
                sf_id,
                &["Activation_Status__c", "Activation_Error__c"],
            )
            .await
            .unwrap();
        let s = |k: &str| record[k].as_str().map(str::to_owned);
        (s("Activation_Status__c"), s("Activation_Error__c"))
    }

    /// The envelope the relay published for the request (from the outbox), to send again.
    pub async fn outbox_envelope(&self, request_id: Uuid) -> (String, Value) {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT event_type, payload FROM outbox WHERE event_type LIKE 'fulfilment.%'
             ORDER BY position",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .find(|(_, p)| p["data"]["request_id"] == json!(request_id))
            .unwrap()
    }

    /// Publishes `body` on the events exchange with `properties`, confirmed.
    pub async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let session = Supervisor::new(self.broker.clone(), "fulfilment-test-publisher")
            .unwrap()
            .try_connect()
            .await
            .unwrap();
        session.enable_confirms(&self.broker).await.unwrap();
        let confirm = session
            .channel
            .basic_publish(
                self.topology.events_exchange.as_str().into(),
                routing_key.into(),
                orderbridge_broker::lapin::options::BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        session.close(&self.broker).await;
    }

    /// Takes every message on the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<(BasicProperties, Vec<u8>)> {
        let session = Supervisor::new(self.broker.clone(), "fulfilment-test-dlq")
            .unwrap()
            .try_connect()
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(m) = session
            .channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push((m.delivery.properties.clone(), m.delivery.data.clone()));
        }
        session.close(&self.broker).await;
        out
    }

    /// Ready messages on `queue`.
    pub async fn ready(&self, queue: &str) -> u32 {
        let session = Supervisor::new(self.broker.clone(), "fulfilment-test-count")
            .unwrap()
            .try_connect()
            .await
            .unwrap();
        let ch: &Channel = &session.channel;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        session.close(&self.broker).await;
        q.message_count()
    }

    /// Stops everything and deletes the namespace.
    pub async fn cleanup(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let session = Supervisor::new(self.broker.clone(), "fulfilment-test-cleanup")
            .unwrap()
            .try_connect()
            .await
            .unwrap();
        let _ = self.topology.delete(&self.broker, &session.channel).await;
        session.close(&self.broker).await;
    }
}

/// A header of a message as text.
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    orderbridge_broker::headers::text(props, name)
}
