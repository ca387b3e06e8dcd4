//! Shared test harness: orders written the way the API writes them, relays run in-process, and a
//! queue reader that survives broker connection loss.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use orderbridge_broker::lapin::options::{BasicAckOptions, BasicGetOptions};
use orderbridge_broker::lapin::{BasicProperties, Connection, ConnectionProperties};
use orderbridge_broker::signing::DEV_SIGNING_KEY;
use orderbridge_broker::{BrokerConfig, Keyring, SigningConfig, Topology};
use orderbridge_domain::{
    ClientId, ClientScope, CustomerInput, LineInput, NewOrder, NewOrderRequest, OrderEvent,
};
use outbox_relay::{Metrics, Relay, RelayConfig};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The signing key of the tests' relays, and of the sync worker they stand in for.
pub const SIGNING_KEY: &str = DEV_SIGNING_KEY;

/// Signs and verifies as the tests' relays do.
pub fn keyring() -> Keyring {
    Keyring::single(SIGNING_KEY).unwrap()
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| AMQP_URL.to_owned())
}

/// A fresh namespace per test, so tests never share exchanges or queues. Its exchanges and
/// queues are deleted when the returned guard drops, also when the test fails.
pub fn namespace() -> Namespace {
    Namespace(format!("test-{}", Uuid::new_v4()))
}

pub struct Namespace(pub String);

impl std::ops::Deref for Namespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside the test's runtime: clean up on a thread with
        // a runtime of its own.
        let ns = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(cleanup(&ns));
            }
        })
        .join();
    }
}

pub fn broker_config(namespace: &str) -> BrokerConfig {
    BrokerConfig {
        amqp_url: SecretString::from(amqp_url()),
        broker_namespace: namespace.to_owned(),
        broker_op_timeout: Duration::from_secs(5),
        broker_reconnect_min: Duration::from_millis(50),
        broker_reconnect_max: Duration::from_secs(2),
        broker_delivery_limit: 10,
        broker_retry_tiers: vec![
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(600),
        ],
        broker_declare_topology: true,
        signing: SigningConfig::with_key(SIGNING_KEY),
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `DATABASE_URL` for a relay binary, from the test database's options.
pub fn database_url(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://postgres@{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap()
    )
}

/// A plain HTTP/1.1 GET of a relay binary's admin endpoint: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

pub fn relay_config(app_name: &str) -> RelayConfig {
    RelayConfig {
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        batch_size: 500,
        pipeline: true,
        partitions: 1,
        poll_interval: Duration::from_secs(1),
        standby_interval: Duration::from_millis(200),
        retention: Duration::from_secs(7 * 24 * 3600),
        retention_interval: Duration::from_secs(3600),
        retention_batch: 1000,
        shutdown_grace: Duration::from_secs(5),
        db_timeout: Duration::from_secs(10),
        db_application_name: app_name.to_owned(),
    }
}

/// A pool whose connections carry `app_name`, as the binary's would.
pub fn pool_named(opts: &PgConnectOptions, app_name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(true)
        .connect_lazy_with(opts.clone().application_name(app_name))
}

/// A relay running in this process.
pub struct RunningRelay {
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl RunningRelay {
    pub fn start(config: RelayConfig, broker: BrokerConfig, pool: PgPool) -> Self {
        let relay = Relay::new(config, broker, pool).unwrap();
        let metrics = relay.metrics();
        let (shutdown, rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            relay.run(rx).await.unwrap();
        });
        Self {
            metrics,
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("relay did not stop")
            .unwrap();
    }
}

/// Waits until `check` holds, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn api_client(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(format!("client-{id}"))
        .execute(pool)
        .await
        .unwrap();
    id
}

fn new_order(client_ref: &str) -> NewOrder {
    NewOrder::parse(NewOrderRequest {
        client_ref: client_ref.to_owned(),
        customer: CustomerInput {
            external_id: "CUST-1".into(),
            name: "Acme GmbH".into(),
            email: "buyer@acme.example".into(),
            phone: None,
        },
        billing_address: None,
        shipping_address: None,
        currency: "EUR".into(),
        lines: vec![LineInput {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            quantity: 2.into(),
            unit_price: "12.50".into(),
        }],
        notes: None,
    })
    .unwrap()
}

/// Inserts an order row (no outbox row) inside `tx` and returns the event to enqueue for it.
pub async fn insert_order_row(
    tx: &mut sqlx::PgConnection,
    client_id: Uuid,
) -> (Uuid, orderbridge_domain::Envelope<Value>) {
    let id = Uuid::now_v7();
    let now = Utc::now();
    let order = new_order(&format!("PO-{id}")).into_order(id, now);
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, currency, total, status,
                             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(id)
    .bind(client_id)
    .bind(&order.client_ref)
    .bind(sqlx::types::Json(&order.customer))
    .bind(&order.currency)
    .bind(order.total)
    .bind(&order.status)
    .bind(now)
    .execute(&mut *tx)
    .await
    .unwrap();
    let client = ClientScope {
        id: ClientId::from_uuid(client_id),
        external_id_prefix: format!("{}:", client_id.simple()),
    };
    let envelope =
        OrderEvent::submitted(order, client).into_envelope(now, Some(format!("req-{id}")));
    (id, envelope)
}

/// Creates an order and its `order.submitted` outbox row in one transaction, as the API does.
/// Returns (order id, event id).
pub async fn create_order(pool: &PgPool, client_id: Uuid) -> (Uuid, Uuid) {
    let mut tx = pool.begin().await.unwrap();
    let (id, envelope) = insert_order_row(&mut tx, client_id).await;
    orderbridge_db::outbox::enqueue(&mut *tx, "order", id, &envelope)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (id, envelope.id.get())
}

/// Adds one more event for an existing order (like a resync), in its own transaction that
/// locks the order row first, as a real writer would. Returns the event id.
pub async fn add_event(pool: &PgPool, order_id: Uuid, event_type: &str) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let envelope = orderbridge_domain::Envelope {
        id: Uuid::now_v7().into(),
        event_type: event_type.to_owned(),
        version: 1,
        occurred_at: Utc::now(),
        correlation_id: None,
        data: serde_json::json!({ "order_id": order_id }),
    };
    orderbridge_db::outbox::enqueue(&mut *tx, "order", order_id, &envelope)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    envelope.id.get()
}

pub async fn published_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// False also while the row's transaction has not committed.
pub async fn is_published(pool: &PgPool, event_id: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(false)
}

/// The `aggregate_id` header the relay puts on every message.
pub fn aggregate_of(r: &Received) -> Uuid {
    match r
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("aggregate_id")
    {
        Some(orderbridge_broker::lapin::types::AMQPValue::LongString(s)) => {
            Uuid::parse_str(&s.to_string()).unwrap()
        }
        other => panic!("no aggregate_id header: {other:?}"),
    }
}

/// One message read back from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: Uuid,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Reads `queue` until `want` distinct message ids have arrived (duplicates are kept in the
/// result) or `limit` passes. Reconnects on any broker error, so it survives
/// `rabbitmqctl close_all_connections`; a message whose ack was lost comes back and shows up
/// as a duplicate, never as a loss.
pub async fn drain(queue: &str, want: usize, limit: Duration) -> Vec<Received> {
    drain_until(queue, |ids| ids.len() >= want, limit).await
}

/// Like [`drain`], until every id in `need` has arrived.
pub async fn drain_covering(queue: &str, need: &HashSet<Uuid>, limit: Duration) -> Vec<Received> {
    drain_until(queue, |ids| need.is_subset(ids), limit).await
}

async fn drain_until(
    queue: &str,
    done: impl Fn(&HashSet<Uuid>) -> bool,
    limit: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + limit;
    let mut out: Vec<Received> = Vec::new();
    let mut ids = HashSet::new();
    'connect: while !done(&ids) && Instant::now() < deadline {
        let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&amqp_url(), ConnectionProperties::default()),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(Ok(channel)) =
            tokio::time::timeout(Duration::from_secs(5), conn.create_channel()).await
        else {
            continue;
        };
        while !done(&ids) && Instant::now() < deadline {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
            )
            .await;
            match got {
                Ok(Ok(Some(msg))) => {
                    let d = msg.delivery;
                    let id = d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| Uuid::parse_str(s.as_str()).unwrap())
                        .unwrap();
                    ids.insert(id);
                    out.push(Received {
                        message_id: id,
                        routing_key: d.routing_key.to_string(),
                        properties: d.properties.clone(),
                        body: d.data.clone(),
                    });
                    let ack = tokio::time::timeout(
                        Duration::from_secs(5),
                        channel.basic_ack(d.delivery_tag, BasicAckOptions::default()),
                    )
                    .await;
                    if !matches!(ack, Ok(Ok(()))) {
                        continue 'connect;
                    }
                }
                Ok(Ok(None)) => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => continue 'connect,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    }
    out
}

/// Deletes the namespace's exchanges and queues.
pub async fn cleanup(namespace: &str) {
    let config = broker_config(namespace);
    let topology = Topology::new(namespace, 10, &config.broker_retry_tiers).unwrap();
    let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        let _ = topology.delete(&config, &channel).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Messages ready in a queue.
pub async fn queue_len(queue: &str) -> u32 {
    queue_len_if_exists(queue).await.unwrap()
}

/// Messages ready in a queue, or None if it does not exist (yet) or the broker is unreachable.
pub async fn queue_len_if_exists(queue: &str) -> Option<u32> {
    use orderbridge_broker::lapin::options::QueueDeclareOptions;
    use orderbridge_broker::lapin::types::FieldTable;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .ok()?;
    let channel = conn.create_channel().await.ok()?;
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    q.ok().map(|q| q.message_count())
}

/// A TCP proxy for fault injection (no `tc netem` here): the upstream→client direction can be
/// paused (the client keeps sending but hears nothing back, e.g. no publisher confirms), and the
/// whole proxy can be cut (every connection dropped, new ones refused) and restored on the same
/// port.
pub struct PausableProxy {
    pub port: u16,
    upstream: SocketAddr,
    paused: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl PausableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            port: listener.local_addr().unwrap().port(),
            upstream,
            paused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            tasks: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, paused, tasks) = (self.upstream, self.paused.clone(), self.tasks.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let up = tokio::spawn(pump(cr, sw, never));
                let down = tokio::spawn(pump(sr, cw, paused.clone()));
                tasks.lock().unwrap().extend([up, down]);
            }
        });
        self.tasks.lock().unwrap().push(acceptor);
    }

    pub fn pause_downstream(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every proxied connection and stops listening: the client sees its connections die
    /// and new ones refused.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Hold what was read while paused: nothing gets through.
        while paused.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
