#![allow(clippy::unwrap_used)]
//! The portal's live view of an order: `status` and `status_history` on GET, the long-poll
//! (`Prefer: wait` with `If-None-Match`) and the event stream (`/v1/orders/{id}/events`), woken
//! by the process's one `LISTEN order_versions` when another connection changes the order
//! (`orderbridge_db::status::apply`, as the Salesforce subscriber does). Every bound is generous:
//! a failure means nothing arrived, not that a machine was slow.

mod common;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::Request;
use chrono::Utc;
use common::{TestApp, TestResponse, order_body};
use http_body_util::BodyExt;
use order_api::ApiConfig;
use order_api::serve::{Stopped, serve};
use orderbridge_db::status::{self, StatusApplied, StatusChange};
use orderbridge_domain::{OrderId, StatusSource};
use orderbridge_testkit::TestDatabase;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower::ServiceExt;
use uuid::Uuid;

/// Far beyond any wait a test expects to end: reaching it is a failure.
const BOUND: Duration = Duration::from_secs(20);

struct Live {
    app: TestApp,
    key: String,
    order: OrderId,
    etag: String,
    listener: JoinHandle<()>,
    _db: TestDatabase,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Live {
    async fn start(config: ApiConfig) -> Self {
        let db = TestDatabase::new().await;
        let app = TestApp::with_config(db.pool.clone(), config);
        let listener = order_api::spawn_listener(&app.state);
        let key = app.key("portal").await;
        let created = app.post_order(&key, &order_body("PO-LIVE"), None).await;
        assert_eq!(created.status, 201);
        let order = OrderId::from_uuid(created.json()["id"].as_str().unwrap().parse().unwrap());
        let etag = created.header("etag").unwrap().to_owned();
        Self {
            app,
            key,
            order,
            etag,
            listener,
            _db: db,
        }
    }

    fn uri(&self) -> String {
        format!("/v1/orders/{}", self.order)
    }

    fn long_poll(&self, etag: &str, prefer: &str) -> Request<Body> {
        Request::get(self.uri())
            .header("authorization", format!("Bearer {}", self.key))
            .header("if-none-match", etag)
            .header("prefer", prefer)
            .body(Body::empty())
            .unwrap()
    }

    /// Applies a business status from another connection, as the Salesforce subscriber does.
    async fn apply(&self, name: &str) -> i64 {
        let mut conn = self.app.pool.acquire().await.unwrap();
        let applied = status::apply(
            &mut conn,
            self.order,
            StatusChange {
                status: name,
                at: Utc::now(),
                source: StatusSource::SALESFORCE,
            },
        )
        .await
        .unwrap();
        let StatusApplied::Applied { version } = applied else {
            panic!("not applied: {applied:?}")
        };
        version
    }

    /// Until a request waits on the order (so a change made now must wake it).
    async fn until_waited(&self) {
        timeout(BOUND, async {
            while self.app.state.watch.waited_orders() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a waiter registered");
    }

    async fn open_stream(&self, last_event_id: Option<&str>) -> Result<Events, TestResponse> {
        let mut req = Request::get(format!("{}/events", self.uri()))
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        open_events(&self.app, req.body(Body::empty()).unwrap()).await
    }
}

fn config() -> ApiConfig {
    ApiConfig {
        sse_heartbeat: Duration::from_secs(60),
        ..ApiConfig::default()
    }
}

/// An open event stream, read block by block.
struct Events {
    body: Body,
    buf: String,
}

/// One SSE block: its fields, and its comments.
#[derive(Debug, Default)]
struct Block {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comments: Vec<String>,
}

impl Block {
    fn order(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap()
    }
}

async fn open_events(app: &TestApp, req: Request<Body>) -> Result<Events, TestResponse> {
    let res = app.router.clone().oneshot(req).await.unwrap();
    if res.status() != 200 {
        let (parts, body) = res.into_parts();
        return Err(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes().to_vec(),
        });
    }
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Ok(Events {
        body: res.into_body(),
        buf: String::new(),
    })
}

impl Events {
    /// The next block, `None` when the stream ended; panics when nothing comes within `within`.
    async fn next_within(&mut self, within: Duration) -> Option<Block> {
        timeout(within, self.next())
            .await
            .expect("an event or the end of the stream")
    }

    async fn next(&mut self) -> Option<Block> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut block = Block::default();
                for line in raw.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        block.comments.push(c.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                        match field {
                            "id" => block.id = Some(value),
                            "event" => block.event = Some(value),
                            "data" => block.data = Some(value),
                            _ => {}
                        }
                    }
                }
                return Some(block);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => return None,
            }
        }
    }

    /// The next `order` event, skipping heartbeats.
    async fn next_order(&mut self) -> Block {
        loop {
            let block = self.next_within(BOUND).await.expect("an order event");
            if block.event.is_some() {
                assert_eq!(block.event.as_deref(), Some("order"));
                return block;
            }
        }
    }
}

async fn response(app: &TestApp, req: Request<Body>) -> TestResponse {
    timeout(BOUND, app.send(req)).await.expect("an answer")
}

#[tokio::test]
async fn get_returns_the_business_status_and_its_history() {
    let live = Live::start(config()).await;
    let res = live.app.get(&live.key, &live.uri()).await;
    assert_eq!(res.status, 200);
    let order = res.json();
    assert_eq!(order["status"], "submitted");
    let history = order["status_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "submitted");
    assert_eq!(history[0]["source"], "api");
    assert_eq!(history[0]["at"], order["created_at"]);

    live.apply("Activated").await;
    let order = live.app.get(&live.key, &live.uri()).await.json();
    assert_eq!(order["status"], "Activated");
    let history: Vec<(&str, &str)> = order["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["status"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(history, [("submitted", "api"), ("Activated", "salesforce")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_the_new_version_when_a_status_is_applied() {
    let live = Live::start(config()).await;
    let app = live.app.clone();
    let req = live.long_poll(&live.etag, "wait=25");
    let polled = tokio::spawn(async move { response(&app, req).await });
    live.until_waited().await;
    let version = live.apply("Activated").await;

    let res = polled.await.unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("etag"), Some(format!("\"v{version}\"").as_str()));
    assert_eq!(res.header("preference-applied"), Some("wait=25"));
    let order = res.json();
    assert_eq!(order["version"], version);
    assert_eq!(order["status"], "Activated");
    assert_eq!(order["status_history"].as_array().unwrap().len(), 2);
    assert_eq!(live.app.state.watch.waited_orders(), 0, "the waiter left");
}

#[tokio::test]
async fn a_long_poll_on_a_stale_etag_answers_at_once() {
    let live = Live::start(config()).await;
    live.apply("Activated").await;
    let started = Instant::now();
    let res = response(&live.app, live.long_poll(&live.etag, "wait=25")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["status"], "Activated");
    assert!(started.elapsed() < BOUND);
}

#[tokio::test]
async fn a_long_poll_answers_304_at_its_bound_and_huge_waits_are_clamped() {
    let live = Live::start(ApiConfig {
        long_poll_max: Duration::from_secs(1),
        ..config()
    })
    .await;
    let started = Instant::now();
    let res = response(&live.app, live.long_poll(&live.etag, "wait=999999")).await;
    assert_eq!(res.status, 304);
    assert_eq!(res.header("preference-applied"), Some("wait=1"));
    assert_eq!(res.header("etag"), Some(live.etag.as_str()));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered before the wait ended"
    );
    assert_eq!(live.app.state.watch.waited_orders(), 0);
}

#[tokio::test]
async fn malformed_waits_are_ignored_never_an_error() {
    let live = Live::start(config()).await;
    for prefer in [
        "wait=abc",
        "wait=-5",
        "wait=1.5",
        "wait=",
        "wait",
        "wait=0",
        "=,;=,",
        "respond-async",
        "wait=\"",
    ] {
        let started = Instant::now();
        let res = response(&live.app, live.long_poll(&live.etag, prefer)).await;
        assert_eq!(res.status, 304, "{prefer}");
        assert_eq!(res.header("preference-applied"), None, "{prefer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{prefer} waited"
        );
    }
    // Not even valid UTF-8.
    let mut req = live.long_poll(&live.etag, "x");
    req.headers_mut().insert(
        "prefer",
        axum::http::HeaderValue::from_bytes(b"wait=\xff\xfe").unwrap(),
    );
    assert_eq!(response(&live.app, req).await.status, 304);
    // A wait without If-None-Match is a plain GET.
    let res = response(
        &live.app,
        Request::get(live.uri())
            .header("authorization", format!("Bearer {}", live.key))
            .header("prefer", "wait=20")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn a_long_poll_may_outlast_the_request_timeout() {
    // The request timeout bounds the work; the wait the client asked for comes on top.
    let live = Live::start(ApiConfig {
        request_timeout: Duration::from_millis(300),
        long_poll_max: Duration::from_secs(1),
        ..config()
    })
    .await;
    let res = response(&live.app, live.long_poll(&live.etag, "wait=1")).await;
    assert_eq!(res.status, 304, "{}", String::from_utf8_lossy(&res.body));
}

#[tokio::test]
async fn long_polls_are_authenticated_and_scoped() {
    let live = Live::start(config()).await;
    let mut req = live.long_poll(&live.etag, "wait=20");
    req.headers_mut().remove("authorization");
    response(&live.app, req).await.problem(401, "about:blank");
    let other = live.app.key("other").await;
    let mut req = live.long_poll(&live.etag, "wait=20");
    req.headers_mut()
        .insert("authorization", format!("Bearer {other}").parse().unwrap());
    response(&live.app, req).await.problem(404, "about:blank");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_long_poll_at_once() {
    let live = Live::start(ApiConfig {
        long_poll_max: Duration::from_secs(120),
        ..config()
    })
    .await;
    let app = live.app.clone();
    let req = live.long_poll(&live.etag, "wait=120");
    let polled = tokio::spawn(async move { app.send(req).await });
    live.until_waited().await;
    live.app.state.begin_shutdown();
    let res = timeout(BOUND, polled).await.expect("answered").unwrap();
    assert_eq!(res.status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_the_current_state_then_every_change() {
    let live = Live::start(config()).await;
    let mut events = live.open_stream(None).await.map_err(|r| r.status).unwrap();
    let first = events.next_order().await;
    let order = first.order();
    assert_eq!(
        first.id.as_deref(),
        Some(order["version"].to_string().as_str())
    );
    assert_eq!(order["status"], "submitted");
    assert_eq!(order["status_history"].as_array().unwrap().len(), 1);
    // Exactly what GET returns.
    let got = live.app.get(&live.key, &live.uri()).await.json();
    assert_eq!(order, got);

    let v2 = live.apply("Activated").await;
    let change = events.next_order().await;
    assert_eq!(change.id, Some(v2.to_string()));
    assert_eq!(change.order()["status"], "Activated");
    assert_eq!(
        change.order()["status_history"].as_array().unwrap().len(),
        2
    );

    // Any writer's version change reaches the stream, not only status changes.
    sqlx::query("UPDATE orders SET sync_attempts = sync_attempts + 1 WHERE id = $1")
        .bind(live.order.get())
        .execute(&live.app.pool)
        .await
        .unwrap();
    let change = events.next_order().await;
    assert_eq!(change.id, Some((v2 + 1).to_string()));

    drop(events);
    timeout(BOUND, async {
        while live.app.state.watch.waited_orders() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a closed stream stops waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_without_repeating_the_current_state() {
    let live = Live::start(ApiConfig {
        sse_heartbeat: Duration::from_millis(100),
        ..config()
    })
    .await;
    let v1 = live.apply("Activated").await;

    // Up to date: no state on connect, only heartbeats, until the next change.
    let mut events = live
        .open_stream(Some(&v1.to_string()))
        .await
        .map_err(|r| r.status)
        .unwrap();
    let block = events.next_within(BOUND).await.unwrap();
    assert!(block.event.is_none(), "no state on connect: {block:?}");
    assert_eq!(block.comments, ["heartbeat"]);
    let v2 = live.apply("Shipped").await;
    let change = events.next_order().await;
    assert_eq!(change.id, Some(v2.to_string()));

    // Behind: the current state at once.
    let mut events = live
        .open_stream(Some(&v1.to_string()))
        .await
        .map_err(|r| r.status)
        .unwrap();
    let first = events.next_order().await;
    assert_eq!(first.id, Some(v2.to_string()));
    assert_eq!(first.order()["status"], "Shipped");

    // Garbage is no resume point: the current state.
    for garbage in ["abc", "", "99999999999999999999999", "-"] {
        let mut events = live
            .open_stream(Some(garbage))
            .await
            .map_err(|r| r.status)
            .unwrap();
        assert_eq!(events.next_order().await.id, Some(v2.to_string()));
    }
}

#[tokio::test]
async fn heartbeats_keep_a_quiet_stream_alive() {
    let live = Live::start(ApiConfig {
        sse_heartbeat: Duration::from_millis(100),
        ..config()
    })
    .await;
    let mut events = live.open_stream(None).await.map_err(|r| r.status).unwrap();
    events.next_order().await;
    for _ in 0..3 {
        let block = events.next_within(BOUND).await.unwrap();
        assert_eq!(block.comments, ["heartbeat"], "{block:?}");
    }
}

#[tokio::test]
async fn a_stream_ends_at_its_maximum_duration() {
    let live = Live::start(ApiConfig {
        sse_max_duration: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut events = live.open_stream(None).await.map_err(|r| r.status).unwrap();
    events.next_order().await;
    assert!(events.next_within(BOUND).await.is_none(), "the stream ends");
}

#[tokio::test]
async fn streams_beyond_the_cap_get_503_with_retry_after() {
    let live = Live::start(ApiConfig {
        sse_max_streams: 1,
        ..config()
    })
    .await;
    let mut first = live.open_stream(None).await.map_err(|r| r.status).unwrap();
    first.next_order().await;
    let Err(refused) = live.open_stream(None).await else {
        panic!("a second stream was opened")
    };
    refused.problem(503, "about:blank");
    assert!(refused.header("retry-after").is_some());
    // A closed stream gives its slot back.
    drop(first);
    let mut again = live.open_stream(None).await.map_err(|r| r.status).unwrap();
    again.next_order().await;
}

#[tokio::test]
async fn streams_are_authenticated_and_scoped() {
    let live = Live::start(config()).await;
    let uri = format!("{}/events", live.uri());
    let Err(res) = open_events(&live.app, Request::get(&uri).body(Body::empty()).unwrap()).await
    else {
        panic!("opened without a key")
    };
    res.problem(401, "about:blank");

    let other = live.app.key("other").await;
    let Err(res) = open_events(
        &live.app,
        Request::get(&uri)
            .header("authorization", format!("Bearer {other}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    else {
        panic!("another client's order streamed")
    };
    res.problem(404, "about:blank");

    let Err(res) = open_events(
        &live.app,
        Request::get(format!("/v1/orders/{}/events", Uuid::now_v7()))
            .header("authorization", format!("Bearer {}", live.key))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    else {
        panic!("a missing order streamed")
    };
    res.problem(404, "about:blank");
    assert_eq!(
        live.app.state.watch.waited_orders(),
        0,
        "refusals leave no waiter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_the_server_drains() {
    let db = TestDatabase::new().await;
    let config = ApiConfig {
        shutdown_grace: Duration::from_secs(60),
        ..config()
    };
    let app = TestApp::with_config(db.pool.clone(), config.clone());
    let listener_task = order_api::spawn_listener(&app.state);
    let key = app.key("portal").await;
    let created = app.post_order(&key, &order_body("PO-SHUT"), None).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = app.router.clone();
    let state = app.state.clone();
    let served = tokio::spawn(async move {
        let signal = async {
            let _ = stopped.await;
        };
        serve(
            tcp,
            router,
            &config,
            order_api::until_shutdown(state, signal),
        )
        .await
    });

    let client = reqwest::Client::new();
    let mut stream = client
        .get(format!("http://{addr}/v1/orders/{id}/events"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first: Bytes = timeout(BOUND, stream.chunk())
        .await
        .expect("the first event")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: order"));

    let started = Instant::now();
    let _ = stop.send(());
    // The stream ends (no more chunks), and the server is done long before its grace.
    let ended = timeout(BOUND, async {
        // Until the end of the body (or the connection).
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream was not ended by the shutdown");
    let stopped = timeout(BOUND, served)
        .await
        .expect("served returned")
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
    assert!(started.elapsed() < BOUND);
    listener_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_re_read_after_the_listener_reconnects() {
    // Notifications sent while the listener's connection was down are lost: when it is back,
    // every waiter is woken and re-reads.
    let live = Live::start(config()).await;
    let app = live.app.clone();
    let req = live.long_poll(&live.etag, "wait=25");
    let polled = tokio::spawn(async move { response(&app, req).await });
    live.until_waited().await;
    // Kill the listener's connection from the server side, and change the order meanwhile.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&live.app.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the one listener connection");
    let version = live.apply("Activated").await;
    let res = polled.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["version"], version);
}
