//! Partitioned relays (`RELAY_PARTITIONS`), with the built binary: relays share the partitions,
//! a relay that joins gets its share, one killed with SIGKILL has its partitions taken over,
//! nothing is lost and every order's events arrive in order; a relay configured with another
//! partition count stands by.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use outbox_relay::outbox::partition_of;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// How long a surviving relay may take to lead a killed relay's partitions: Postgres drops the
/// dead connection's locks at once, and the survivor rebalances every 200 ms here.
const TAKEOVER: Duration = Duration::from_secs(10);

/// A relay binary and its admin port.
struct RelayProcess {
    child: Child,
    port: u16,
}

impl RelayProcess {
    fn start(opts: &PgConnectOptions, ns: &str, partitions: u16, name: &str) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .env("DATABASE_URL", database_url(opts))
            .env("AMQP_URL", amqp_url())
            .env("BROKER_NAMESPACE", ns)
            .env("BROKER_SIGNING_KEY", SIGNING_KEY)
            .env("RELAY_ADMIN_ADDR", format!("127.0.0.1:{port}"))
            .env("RELAY_PARTITIONS", partitions.to_string())
            .env("RELAY_STANDBY_INTERVAL", "200ms")
            .env("RELAY_BATCH_SIZE", "50")
            .env("RELAY_DB_APPLICATION_NAME", name)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, port }
    }

    fn metrics(&self) -> Option<String> {
        get(self.port, "/metrics")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    }

    /// The partitions its `/metrics` says it leads.
    fn led(&self) -> Option<Vec<u16>> {
        let text = self.metrics()?;
        let led = text
            .lines()
            .filter_map(|l| l.strip_prefix("outbox_relay_partition_leader{partition=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter(|(_, v)| *v == "1")
            .filter_map(|(p, _)| p.parse().ok())
            .collect();
        Some(led)
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let text = self.metrics()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL: no shutdown, no unlock
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Orders written by `writers` tasks until `stop`, each with four events in separate
/// transactions a little apart; returns every order's events in commit order.
async fn write_orders(
    pool: PgPool,
    client: Uuid,
    stop: Arc<AtomicBool>,
) -> HashMap<Uuid, Vec<Uuid>> {
    let mut writers = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut written = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let (order, first) = create_order(&pool, client).await;
                let mut events = vec![first];
                for t in ["order.updated", "order.submitted", "order.updated"] {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    events.push(add_event(&pool, order, t).await);
                }
                written.insert(order, events);
            }
            written
        }));
    }
    let mut all = HashMap::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all
}

#[tokio::test]
async fn relays_share_the_partitions_and_take_over_a_killed_ones() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let opts = db.connect_options();
    let ns = namespace();
    let queue = format!("{ns}.sf-sync");
    let pool = pool_named(&opts, "partitions-writer");
    let client = api_client(&pool).await;

    // A alone leads all four partitions; B joins and gets half of them.
    let mut a = RelayProcess::start(&opts, &ns, 4, "relay-part-a");
    eventually(WAIT, "A leads all four partitions", || async {
        a.led() == Some(vec![0, 1, 2, 3])
    })
    .await;
    let b = RelayProcess::start(&opts, &ns, 4, "relay-part-b");
    eventually(WAIT, "A and B lead two partitions each", || async {
        let (la, lb) = (a.led().unwrap_or_default(), b.led().unwrap_or_default());
        la.len() == 2 && lb.len() == 2 && la.iter().all(|p| !lb.contains(p))
    })
    .await;
    assert_eq!(a.gauge("outbox_relay_relays"), Some(2.0));
    let a_led = a.led().unwrap();

    // Orders flow while both publish; then A is killed mid-stream and B takes its partitions.
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(write_orders(pool.clone(), client, stop.clone()));
    eventually(WAIT, "both relays publish", || async {
        a.gauge("outbox_relay_published_total").unwrap_or(0.0) >= 20.0
            && b.gauge("outbox_relay_published_total").unwrap_or(0.0) >= 20.0
    })
    .await;
    a.kill();
    let killed = Instant::now();
    eventually(TAKEOVER, "B leads all four partitions", || async {
        b.led() == Some(vec![0, 1, 2, 3])
    })
    .await;
    eprintln!(
        "B took A's partitions {a_led:?} {} ms after the SIGKILL",
        killed.elapsed().as_millis()
    );
    assert_eq!(b.gauge("outbox_relay_relays"), Some(1.0));
    // Keep writing for a moment after the take-over, so B publishes A's partitions too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writing.await.unwrap();
    let events: usize = written.values().map(Vec::len).sum();
    eventually(WAIT, "every row published", || async {
        published_count(&pool).await == events as i64
    })
    .await;

    // Nothing lost; every order's events in order. A killed relay may have published rows it
    // never marked, which B publishes again: duplicates (at least once), which are skipped here;
    // the first arrivals must be the order's events exactly as committed.
    let need: HashSet<Uuid> = written.values().flatten().copied().collect();
    let got = drain_covering(&queue, &need, WAIT).await;
    let mut arrived: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for r in &got {
        if seen.insert(r.message_id) {
            arrived
                .entry(aggregate_of(r))
                .or_default()
                .push(r.message_id);
        } else {
            duplicates += 1;
        }
    }
    for (order, events) in &written {
        assert_eq!(
            arrived.get(order),
            Some(events),
            "order {order}: its events were lost or arrived out of order"
        );
    }
    // Every partition received orders (the partition function spreads them).
    let mut per_partition = [0usize; 4];
    for order in written.keys() {
        per_partition[usize::from(partition_of(*order, 4))] += 1;
    }
    assert!(per_partition.iter().all(|&n| n > 0), "{per_partition:?}");
    eprintln!(
        "{} orders, {events} events, {duplicates} redelivered after the kill; orders per partition {per_partition:?}",
        written.len()
    );

    // A relay with another partition count stands by while B publishes, and says why.
    let c = RelayProcess::start(&opts, &ns, 2, "relay-part-c");
    eventually(WAIT, "C reports the conflict", || async {
        c.gauge("outbox_relay_partition_conflict") == Some(1.0)
    })
    .await;
    assert_eq!(c.led(), Some(vec![]));
    let (_, next) = create_order(&pool, client).await;
    eventually(WAIT, "B publishes while C stands by", || {
        is_published(&pool, next)
    })
    .await;
    assert_eq!(b.led(), Some(vec![0, 1, 2, 3]));
    assert_eq!(c.gauge("outbox_relay_published_total"), Some(0.0));
    drop(b);
    drop(c);
    cleanup(&ns).await;
}

/// The relay filters rows with the SQL function `outbox_partition`; `partition_of` is the same
/// function in Rust (for tools and tests). They must agree, on random and on edge ids.
#[tokio::test]
async fn the_rust_and_sql_partition_functions_agree() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = pool_named(&db.connect_options(), "partitions-fn");
    let mut ids: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    ids.extend((0..500).map(|_| Uuid::new_v4()));
    ids.push(Uuid::nil());
    ids.push(Uuid::max());
    for n in [1u16, 2, 3, 4, 7, 64] {
        let sql: Vec<i32> =
            sqlx::query_scalar("SELECT outbox_partition(id, $2) FROM unnest($1::uuid[]) id")
                .bind(&ids)
                .bind(i32::from(n))
                .fetch_all(&pool)
                .await
                .unwrap();
        for (id, p) in ids.iter().zip(sql) {
            assert_eq!(i32::from(partition_of(*id, n)), p, "{id} of {n}");
        }
    }
}
