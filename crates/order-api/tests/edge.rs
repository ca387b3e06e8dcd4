#![allow(clippy::unwrap_used)]
//! The HTTP connection edge, over real TCP connections to `order_api::serve::serve` (the function
//! the binary serves with): slow and idle clients, the connection cap, shutdown, the whole-body
//! deadline, and the limits on the request head. Every bound is generous: a failure means the
//! server held on (or answered) where it must not, not that a machine was slow.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestApp, order_body};
use order_api::ApiConfig;
use order_api::serve::{Stopped, serve};
use orderbridge_testkit::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The real router and the real server on a free port, with a shutdown trigger.
struct Server {
    addr: SocketAddr,
    app: TestApp,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<Stopped>,
    _db: TestDatabase,
}

impl Server {
    async fn start(config: ApiConfig) -> Self {
        let db = TestDatabase::new().await;
        let app = TestApp::with_config(db.pool.clone(), config.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = app.router.clone();
        let served = tokio::spawn(async move {
            serve(listener, router, &config, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            app,
            stop: Some(stop),
            served,
            _db: db,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }
}

fn config() -> ApiConfig {
    ApiConfig {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        ..ApiConfig::default()
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Reads one response (head and a `Content-Length` body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut raw = Raw {
        status,
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = raw
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while raw.body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        raw.body.extend_from_slice(&chunk[..n]);
    }
    raw
}

/// Whether the server closes `stream` (EOF or reset) within `within`; data means a bug here.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected data from the server"),
        Err(_) => false,
    }
}

const HALF_A_REQUEST_LINE: &[u8] = b"GET /health/li";

fn get_live() -> &'static [u8] {
    b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"
}

/// The head of a `POST /v1/orders` whose body (`body_len` bytes) the caller sends later.
fn post_head(key: &str, body_len: usize) -> Vec<u8> {
    format!(
        "POST /v1/orders HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn half_open_connections_cannot_hold_the_server() {
    // The cap is far below the attack, and the header timeout far above the test: whatever
    // keeps the server answering here is the cap's eviction of the oldest idle connections.
    let server = Server::start(ApiConfig {
        max_connections: 64.try_into().unwrap(),
        ..config()
    })
    .await;
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let mut s = server.connect().await;
        s.write_all(HALF_A_REQUEST_LINE).await.unwrap();
        attackers.push(s);
    }

    let started = std::time::Instant::now();
    let answered = timeout(
        Duration::from_secs(3),
        reqwest::get(format!("http://{}/health/live", server.addr)),
    )
    .await
    .expect("a normal request must be answered beside 300 half-open connections")
    .unwrap();
    assert_eq!(answered.status(), 200);
    eprintln!(
        "answered in {:?} beside 300 half-open connections",
        started.elapsed()
    );

    // The server holds no more than its cap: the rest were closed, long before their timeout.
    let checks: Vec<_> = attackers
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(5)).await })
        })
        .collect();
    let mut closed = 0;
    for check in checks {
        closed += usize::from(check.await.unwrap());
    }
    eprintln!("{closed} of 300 half-open connections closed");
    assert!(
        closed >= 300 - 64,
        "only {closed} of 300 half-open connections were closed with a cap of 64"
    );
}

#[tokio::test]
async fn a_half_open_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(ApiConfig {
        header_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let mut half_sent = server.connect().await;
    half_sent.write_all(HALF_A_REQUEST_LINE).await.unwrap();
    let mut silent = server.connect().await;
    // Slow but steady bytes do not extend it: the head must be complete within the timeout.
    let mut trickling = server.connect().await;
    let trickle = async {
        for b in b"GET /health/live HTTP/1.1\r\nHost: a-very-slow-client.example\r\n" {
            if trickling.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (half_closed, silent_closed, ()) = tokio::join!(
        closed_within(&mut half_sent, Duration::from_secs(10)),
        closed_within(&mut silent, Duration::from_secs(10)),
        trickle,
    );
    assert!(half_closed, "a half-sent request line held its connection");
    assert!(silent_closed, "a connection that sent nothing was held");
    assert!(
        closed_within(&mut trickling, Duration::from_secs(1)).await,
        "a head trickled byte by byte was held past the header timeout"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(ApiConfig {
        idle_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let mut conn = server.connect().await;
    // Requests on one connection keep it alive; only a pause longer than the idle timeout ends it.
    for _ in 0..3 {
        conn.write_all(get_live()).await.unwrap();
        assert_eq!(read_response(&mut conn).await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        closed_within(&mut conn, Duration::from_secs(10)).await,
        "an idle keep-alive connection was held past the idle timeout"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = Server::start(ApiConfig {
        max_connections: 2.try_into().unwrap(),
        ..config()
    })
    .await;
    let key = server.app.key("portal").await;
    let body = order_body("PO-CAP").to_string();
    let (first, rest) = body.as_bytes().split_at(10);

    // Two requests in progress (their bodies half sent) fill the cap.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect().await;
        s.write_all(&post_head(&key, body.len())).await.unwrap();
        s.write_all(first).await.unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = server.connect().await;
    waiting.write_all(get_live()).await.unwrap();
    assert!(
        timeout(Duration::from_secs(1), read_response(&mut waiting))
            .await
            .is_err(),
        "a third connection was served while two requests were in progress with a cap of 2"
    );

    // One of them finishes: its slot goes to the waiting connection.
    busy[0].write_all(rest).await.unwrap();
    assert_eq!(read_response(&mut busy[0]).await.status, 201);
    drop(busy.remove(0));
    let served = timeout(Duration::from_secs(5), read_response(&mut waiting))
        .await
        .expect("the waiting connection was not served once a slot was free");
    assert_eq!(served.status, 200);
}

#[tokio::test]
async fn shutdown_closes_idle_and_half_open_connections_at_once_and_lets_requests_finish() {
    let mut server = Server::start(ApiConfig {
        shutdown_grace: Duration::from_secs(30),
        ..config()
    })
    .await;
    let key = server.app.key("portal").await;
    let body = order_body("PO-SHUTDOWN").to_string();
    let (first, rest) = body.as_bytes().split_at(10);

    let mut half_open = server.connect().await;
    half_open.write_all(HALF_A_REQUEST_LINE).await.unwrap();
    let mut idle = server.connect().await;
    idle.write_all(get_live()).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    let mut busy = server.connect().await;
    busy.write_all(&post_head(&key, body.len())).await.unwrap();
    busy.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.shut_down();
    assert!(
        closed_within(&mut half_open, Duration::from_secs(3)).await,
        "shutdown waited for a half-open connection"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "shutdown waited for an idle connection"
    );
    // No new connection is accepted (or, if the kernel completes it, none is served).
    if let Ok(mut late) = TcpStream::connect(server.addr).await {
        let _ = late.write_all(get_live()).await;
        assert!(closed_within(&mut late, Duration::from_secs(3)).await);
    }
    assert!(
        !server.served.is_finished(),
        "the request in progress was cut"
    );

    busy.write_all(rest).await.unwrap();
    let done = read_response(&mut busy).await;
    assert_eq!(done.status, 201);
    assert_eq!(done.header("connection").as_deref(), Some("close"));
    let stopped = timeout(Duration::from_secs(5), &mut server.served)
        .await
        .expect("the server did not stop once its last request was done")
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
}

#[tokio::test]
async fn a_trickled_body_gets_408_at_the_body_timeout() {
    let server = Server::start(ApiConfig {
        body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let key = server.app.key("portal").await;
    let body = order_body("PO-SLOW").to_string();
    let mut conn = server.connect().await;
    conn.write_all(&post_head(&key, body.len())).await.unwrap();
    let (mut read, mut write) = conn.split();
    let trickle = async {
        // A byte every 100 ms: never a pause as long as the body timeout, never done in time.
        for b in body.as_bytes() {
            if write.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answer = async {
        let mut buf = Vec::new();
        let _ = read.read_to_end(&mut buf).await;
        buf
    };
    let started = std::time::Instant::now();
    let raw = tokio::select! {
        raw = answer => raw,
        () = async { trickle.await; std::future::pending().await } => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("no answer within 10 s"),
    };
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(text.contains("\"status\":408"), "{text}");
    eprintln!("408 after {:?}", started.elapsed());
    assert_eq!(server.app.count("orders").await, 0);
}

#[tokio::test]
async fn a_malformed_request_line_gets_hyper_s_bare_400_and_the_connection_closes() {
    // Documented: hyper answers requests it cannot parse before the application sees them, so
    // there is no problem document, only the status and an empty body.
    let server = Server::start(config()).await;
    let mut conn = server.connect().await;
    conn.write_all(b"GET /a b c HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let raw = read_response(&mut conn).await;
    assert_eq!(raw.status, 400);
    assert!(raw.body.is_empty());
    assert!(closed_within(&mut conn, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_head_beyond_hyper_s_buffer_gets_a_bare_431() {
    let server = Server::start(config()).await;
    let mut conn = server.connect().await;
    let head = format!(
        "GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The server may close before it has read everything; the answer is what counts.
    let _ = conn.write_all(head.as_bytes()).await;
    let raw = read_response(&mut conn).await;
    assert_eq!(raw.status, 431);
}

/// What the application can see, it answers with a problem document, even before routing.
#[tokio::test]
async fn oversized_heads_and_missing_docs_get_problem_documents() {
    let server = Server::start(config()).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let expect_problem = |status: u16, res: reqwest::Response| async move {
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let p: serde_json::Value = res.json().await.unwrap();
        assert_eq!(p["status"], serde_json::json!(status));
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
    };

    let long_uri = format!("{base}/v1/orders/{}", "a".repeat(10 * 1024));
    expect_problem(414, http.get(long_uri).send().await.unwrap()).await;

    let big_header = http
        .get(format!("{base}/health/live"))
        .header("x-big", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    expect_problem(431, big_header).await;

    let mut many = http.get(format!("{base}/health/live"));
    for i in 0..150 {
        many = many.header(format!("x-h{i}"), "1");
    }
    expect_problem(431, many.send().await.unwrap()).await;

    let missing = http
        .get(format!("{base}/docs/no-such-file.js"))
        .send()
        .await
        .unwrap();
    expect_problem(404, missing).await;

    // The documentation itself is still there.
    let docs = http.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
}
