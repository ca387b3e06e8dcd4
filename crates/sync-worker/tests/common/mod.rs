//! Test harness: the emulator in-process on port 0 (seeded with the dev catalogue), a unique
//! broker namespace on the local RabbitMQ, and the worker in-process or as the real binary.
//! Every broker operation of the harness opens its own connection, so tests that close all
//! connections (`rabbitmqctl close_all_connections`) do not break the harness itself.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orderbridge_broker::lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use orderbridge_broker::lapin::types::FieldTable;
use orderbridge_broker::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_broker::{BrokerConfig, Keyring, Supervisor, Topology};
use orderbridge_domain::{
    ClientId, ClientScope, Envelope, NewOrder, NewOrderRequest, Order, OrderEvent, SyncStatus,
};
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::{Client, SalesforceConfig};
use serde_json::{Value, json};
use sf_emulator::{EmulatorConfig, RunningEmulator};
use sync_worker::config::Cli;
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::worker::Worker;
use sync_worker::writer::Writer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The signing key of the tests' worker, and of the relay the harness stands in for.
pub const SIGNING_KEY: &str = DEV_SIGNING_KEY;

/// Signs and verifies as the tests' relay and worker do.
pub fn keyring() -> Keyring {
    Keyring::single(SIGNING_KEY).unwrap()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `f` until it returns true, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API client the harness's orders come from (accounts are `test:<customer id>`).
pub fn test_client() -> ClientScope {
    ClientScope {
        id: ClientId::from_uuid(uuid::Uuid::from_u128(0x7e57)),
        external_id_prefix: "test:".into(),
    }
}

/// An order as the API would have accepted it, with `lines` lines over the seeded SKUs.
pub fn order(customer: &str, lines: usize) -> Order {
    order_with_skus(customer, &vec!["SKU-RED-MUG"; lines])
}

pub fn order_with_skus(customer: &str, skus: &[&str]) -> Order {
    let lines: Vec<Value> = skus
        .iter()
        .enumerate()
        .map(|(i, sku)| json!({"sku": sku, "name": format!("item {i}"), "quantity": i + 1, "unit_price": "12.50"}))
        .collect();
    let req: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": format!("PO-{}", uuid::Uuid::now_v7()),
        "customer": {"external_id": customer, "name": format!("Customer {customer}"), "email": "buyer@example.com"},
        "shipping_address": {"line1": "Hauptstraße 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "currency": "EUR",
        "lines": lines,
        "notes": "leave at the door"
    }))
    .unwrap();
    NewOrder::parse(req)
        .unwrap()
        .into_order(uuid::Uuid::now_v7(), chrono::Utc::now())
}

pub struct Harness {
    pub ns: String,
    pub broker: BrokerConfig,
    pub topology: Topology,
    pub emulator: RunningEmulator,
    pub sf: SalesforceConfig,
    pub http: reqwest::Client,
    worker: Option<(JoinHandle<()>, watch::Sender<bool>, Arc<Metrics>)>,
}

impl Harness {
    /// Emulator seeded with the dev catalogue, and a topology with short retry tiers.
    pub async fn new() -> Self {
        Self::with_retry_tiers("300ms,600ms").await
    }

    pub async fn with_retry_tiers(tiers: &str) -> Self {
        Self::with_emulator(tiers, EmulatorConfig::ephemeral()).await
    }

    /// With emulator settings of the test's own (e.g. a schema file); the dev catalogue is
    /// seeded unless the config names another seed file.
    pub async fn with_emulator(tiers: &str, emulator: EmulatorConfig) -> Self {
        // RUST_LOG=sync_worker=debug shows the worker's logs in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let emulator = sf_emulator::spawn(EmulatorConfig {
            seed_file: emulator
                .seed_file
                .or_else(|| Some(repo_root().join("config/sf-emulator-seed.json"))),
            ..emulator
        })
        .await
        .unwrap();
        let sf = SalesforceConfig {
            login_url: emulator.base_url.clone(),
            request_timeout: Duration::from_secs(5),
            ..SalesforceConfig::default()
        };
        let ns = format!("t-sw-{}", uuid::Uuid::now_v7());
        let broker = Cli::parse_from([
            "sync-worker",
            "--amqp-url",
            AMQP_URL,
            "--broker-namespace",
            &ns,
            "--broker-retry-tiers",
            tiers,
            "--broker-reconnect-min",
            "50ms",
            "--broker-reconnect-max",
            "500ms",
            "--broker-signing-key",
            SIGNING_KEY,
        ])
        .broker;
        let topology = broker.topology().unwrap();
        let h = Self {
            ns,
            broker,
            topology,
            emulator,
            sf,
            http: reqwest::Client::new(),
            worker: None,
        };
        // Declares the topology.
        let session = h.supervisor().try_connect().await.unwrap();
        session.close(&h.broker).await;
        h
    }

    pub fn supervisor(&self) -> Supervisor {
        Supervisor::new(self.broker.clone(), "sync-worker-test").unwrap()
    }

    /// The worker's command line for this harness, plus `extra` flags.
    pub fn cli(&self, extra: &[&str]) -> Cli {
        Cli::parse_from(self.args(extra))
    }

    /// The same command line as text (program name first), to start the real binary with.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "sync-worker".to_owned(),
            "--amqp-url".into(),
            AMQP_URL.into(),
            "--broker-namespace".into(),
            self.ns.clone(),
            "--broker-retry-tiers".into(),
            self.topology
                .retry_tiers
                .iter()
                .map(|t| format!("{}ms", t.delay.as_millis()))
                .collect::<Vec<_>>()
                .join(","),
            "--broker-reconnect-min".into(),
            "50ms".into(),
            "--broker-reconnect-max".into(),
            "500ms".into(),
            "--broker-signing-key".into(),
            SIGNING_KEY.into(),
            "--sf-login-url".into(),
            self.emulator.base_url.clone(),
            "--sf-request-timeout".into(),
            "5s".into(),
            "--breaker-probe-min".into(),
            "100ms".into(),
            "--breaker-probe-max".into(),
            "500ms".into(),
            "--budget-probe".into(),
            "300ms".into(),
            "--dlq-check-interval".into(),
            "200ms".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts the worker in-process.
    pub async fn start_worker(&mut self, extra: &[&str]) -> Arc<Metrics> {
        self.start_worker_with_mapping(extra, Mapping::load(None).unwrap())
            .await
    }

    pub async fn start_worker_with_mapping(
        &mut self,
        extra: &[&str],
        mapping: Mapping,
    ) -> Arc<Metrics> {
        let cli = self.cli(extra);
        self.start_worker_from(cli, mapping).await
    }

    /// Starts the worker in-process with a command line of the test's own making (say, other
    /// signing keys).
    pub async fn start_worker_from(&mut self, cli: Cli, mapping: Mapping) -> Arc<Metrics> {
        assert!(self.worker.is_none(), "worker already running");
        let metrics = Arc::new(Metrics::default());
        let client = Client::new(&cli.salesforce).unwrap();
        let mapping = Arc::new(mapping);
        let pricebook = Arc::new(PriceBook::new(client.clone(), mapping.pricebook.clone()));
        let writer = Writer::new(client, mapping, pricebook, metrics.clone());
        let worker = Worker::new(cli.worker, cli.broker, writer, metrics.clone()).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            worker.run(rx).await.unwrap();
        });
        self.worker = Some((task, tx, metrics.clone()));
        metrics
    }

    /// Starts the worker in-process with a writer (or a router over several targets) of the
    /// test's own making; `metrics` must be the ones the writers observe with.
    pub async fn start_worker_with_router(
        &mut self,
        extra: &[&str],
        router: impl Into<sync_worker::writer::Router>,
        metrics: Arc<Metrics>,
    ) {
        assert!(self.worker.is_none(), "worker already running");
        let cli = self.cli(extra);
        let worker = Worker::new(cli.worker, cli.broker, router, metrics.clone()).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            worker.run(rx).await.unwrap();
        });
        self.worker = Some((task, tx, metrics));
    }

    /// Graceful stop of the in-process worker.
    pub async fn stop_worker(&mut self) {
        if let Some((task, tx, _)) = self.worker.take() {
            let _ = tx.send(true);
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("worker stops within 30 s")
                .unwrap();
        }
    }

    async fn channel(&self) -> (Connection, Channel) {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (conn, ch)
    }

    /// Publishes `order.submitted` for each order as the relay does (signed), from
    /// [`test_client`]; returns the envelopes.
    pub async fn publish_orders(&self, orders: &[Order]) -> Vec<Envelope<Value>> {
        self.publish_orders_as(orders, &test_client()).await
    }

    /// Publishes `order.submitted` for each order as the relay does, accepted from `client`.
    pub async fn publish_orders_as(
        &self,
        orders: &[Order],
        client: &ClientScope,
    ) -> Vec<Envelope<Value>> {
        let envelopes: Vec<Envelope<Value>> = orders
            .iter()
            .map(|o| {
                OrderEvent::submitted(o.clone(), client.clone())
                    .into_envelope(o.created_at, Some(format!("req-{}", o.id)))
            })
            .collect();
        self.publish_envelopes(&envelopes).await;
        envelopes
    }

    /// Publishes ready-made `order.submitted` envelopes as the relay does: in order, then
    /// waits for every confirm (a backlog of thousands is published in a second or two).
    pub async fn publish_envelopes(&self, envelopes: &[Envelope<Value>]) {
        let (conn, ch) = self.channel().await;
        let mut confirms = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let o = &env.data;
            let body = serde_json::to_vec(&env).unwrap();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(env.id.to_string().into())
                .with_type(env.event_type.as_str().into())
                .with_correlation_id(
                    env.correlation_id
                        .clone()
                        .unwrap_or_else(|| format!("req-{}", o["id"]))
                        .into(),
                );
            let props = keyring().sign(props, &body);
            let confirm = ch
                .basic_publish(
                    self.topology.events_exchange.as_str().into(),
                    "order.submitted".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    props,
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.await.unwrap();
        }
        conn.close(200, "bye".into()).await.ok();
    }

    /// Publishes raw bytes on the work queue's binding (a poison message), signed as the relay
    /// would: the relay publishes what is in the outbox, readable or not.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id("poison-1".into());
        self.publish_as_is(routing_key, body, keyring().sign(props, body))
            .await;
    }

    /// Publishes `body` with `props` exactly as given on the events exchange (a forgery, when
    /// they carry no valid signature).
    pub async fn publish_as_is(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let (conn, ch) = self.channel().await;
        ch.basic_publish(
            self.topology.events_exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
        conn.close(200, "bye".into()).await.ok();
    }

    /// Takes the message at the head of `queue` and returns it unsettled, `times` times over: what
    /// a worker crashing on it would do (each return raises its `x-delivery-count`).
    pub async fn return_unsettled(&self, queue: &str, times: u32) {
        let (conn, ch) = self.channel().await;
        for _ in 0..times {
            let m = ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
                .expect("a message to return");
            m.delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .unwrap();
        }
        conn.close(200, "bye".into()).await.ok();
    }

    /// Takes every message now in `queue` (acked: removed).
    pub async fn drain(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let (conn, ch) = self.channel().await;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push((m.delivery.properties.clone(), m.delivery.data.clone()));
        }
        conn.close(200, "bye".into()).await.ok();
        out
    }

    /// Collects status reports until `done` says enough, or fails after `limit`.
    pub async fn statuses_until(
        &self,
        limit: Duration,
        collected: &mut Vec<Envelope<SyncStatus>>,
        done: impl Fn(&[Envelope<SyncStatus>]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            for (_, body) in self.drain(&self.topology.status_queue).await {
                collected.push(SyncStatus::decode(&body).unwrap());
            }
            if done(collected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for status reports; got {:?}",
                collected
                    .iter()
                    .map(|s| (s.data.order_id, s.data.state, s.data.error.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every order has a `synced` report; returns all reports seen.
    pub async fn wait_synced(
        &self,
        orders: &[Order],
        limit: Duration,
    ) -> Vec<Envelope<SyncStatus>> {
        let mut all = Vec::new();
        let ids: Vec<orderbridge_domain::OrderId> = orders.iter().map(|o| o.id).collect();
        self.statuses_until(limit, &mut all, |s| {
            ids.iter().all(|id| {
                s.iter().any(|r| {
                    r.data.order_id == *id && r.data.state == orderbridge_domain::SyncState::Synced
                })
            })
        })
        .await;
        all
    }

    pub async fn message_count(&self, queue: &str) -> u32 {
        let (conn, ch) = self.channel().await;
        let q = ch
            .queue_declare(
                queue.into(),
                orderbridge_broker::lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        conn.close(200, "bye".into()).await.ok();
        q.message_count()
    }

    pub async fn faults(&self, body: Value) {
        let r = self
            .http
            .post(format!("{}/__admin/faults", self.emulator.base_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "faults: {}",
            r.text().await.unwrap()
        );
    }

    pub async fn records(&self, sobject: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!(
                "{}/__admin/records/{sobject}",
                self.emulator.base_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["records"].as_array().cloned().unwrap_or_default()
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/__admin/stats", self.emulator.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests the emulator has held with injected latency (counted on arrival).
    pub async fn delayed_requests(&self) -> u64 {
        self.stats().await["delayed_requests"].as_u64().unwrap_or(0)
    }

    /// Composite calls the emulator has counted.
    pub async fn composite_calls(&self) -> u64 {
        self.stats().await["api_calls_by_route"]["POST /composite"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Records of `sobject` per external id value (for exactly-once checks).
    pub async fn count_by_external_id(
        &self,
        sobject: &str,
    ) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for r in self.records(sobject).await {
            if let Some(k) = r["External_Id__c"].as_str() {
                *m.entry(k.to_owned()).or_default() += 1;
            }
        }
        m
    }

    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        if let Ok(session) = self.supervisor().try_connect().await {
            let _ = self.topology.delete(&self.broker, &session.channel).await;
            session.close(&self.broker).await;
        }
        let _ = self.emulator.shutdown().await;
    }
}

/// A header as text (strings and integers), for assertions.
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    use orderbridge_broker::lapin::types::AMQPValue;
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Exactly one Order per order id and one OrderItem per `<order id>-<line>` in Salesforce.
pub async fn assert_exactly_once(h: &Harness, orders: &[Order]) {
    let in_sf = h.count_by_external_id("Order").await;
    let items = h.count_by_external_id("OrderItem").await;
    for o in orders {
        assert_eq!(in_sf.get(&o.id.to_string()), Some(&1), "order {}", o.id);
        for l in &o.lines {
            assert_eq!(
                items.get(&format!("{}-{}", o.id, l.line_number)),
                Some(&1),
                "item {} of {}",
                l.line_number,
                o.id
            );
        }
    }
}
