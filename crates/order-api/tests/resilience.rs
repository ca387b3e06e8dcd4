#![allow(clippy::unwrap_used)]
//! Real faults between the API and Postgres: the connection cut by a TCP proxy the test owns
//! (the shared Postgres server itself is never restarted), and requests outliving their timeout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use common::{TestApp, order_body};
use order_api::ApiConfig;
use sqlx::postgres::PgPoolOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to Postgres that can cut every connection and refuse new ones, then recover.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {} // dropping both sockets cuts the connection
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn database_outage_is_503_fast_and_recovers_by_itself() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let target: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(target).await;
    let options = (*pool.connect_options())
        .clone()
        .host("127.0.0.1")
        .port(proxy.addr.port());
    // The same pool settings the binary uses: short acquire timeout, test before acquire.
    let proxied = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .test_before_acquire(true)
        .connect_lazy_with(options);
    let key = TestApp::new(pool.clone()).key("portal").await;
    let app = TestApp::new(proxied);
    assert_eq!(
        app.post_order(&key, &order_body("PO-1"), None).await.status,
        201
    );

    proxy.cut();
    let started = Instant::now();
    let res = app.post_order(&key, &order_body("PO-2"), None).await;
    let p = res.problem(503, "about:blank");
    assert!(res.header("retry-after").is_some());
    assert!(p["detail"].as_str().unwrap().contains("database"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    app.get(&key, "/v1/orders")
        .await
        .problem(503, "about:blank");
    let ready = app
        .send(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, 503);
    let live = app
        .send(Request::get("/health/live").body(Body::empty()).unwrap())
        .await;
    assert_eq!(live.status, 200);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = app.post_order(&key, &order_body("PO-2"), None).await;
        if res.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {}", res.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = app
        .send(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, 200);
    // Nothing accepted before the outage was lost, nothing half-written during it.
    let refs: Vec<String> = sqlx::query_scalar("SELECT client_ref FROM orders ORDER BY client_ref")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(refs, ["PO-1", "PO-2"]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stuck, 0, "no connection may be left inside a transaction");
}

#[tokio::test]
async fn a_timed_out_request_still_commits_whole_and_a_retry_replays_it() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let pool = db.pool.clone();
    let config = ApiConfig {
        request_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(pool, config);
    let key = app.key("portal").await;
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let res = app
        .post_order(&key, &order_body("PO-1"), Some("slow"))
        .await;
    res.problem(503, "about:blank");
    assert!(res.header("retry-after").is_some());
    blocker.commit().await.unwrap();

    // The transaction was not abandoned with the request: it completes, and the client's retry
    // with the same key gets the order instead of a duplicate.
    let deadline = Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let r = app
            .post_order(&key, &order_body("PO-1"), Some("slow"))
            .await;
        if r.status != 409 {
            break r;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}
