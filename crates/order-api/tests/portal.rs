#![allow(clippy::unwrap_used)]
//! The portal page in a real browser: headless Chromium (Debian's `chromium`), driven over
//! WebDriver (`chromedriver`) with plain JSON requests, against the real server on a free port
//! and a per-test database. The page creates an order, then the order's status is changed in the
//! database as the Salesforce side would (`orderbridge_db::status::apply`), and the page must
//! show each status and the history, live (the event stream). A screenshot of the last state is
//! kept as `target/artifacts/portal.png`.
//!
//! Needs `/usr/bin/chromium` and `chromedriver` (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::Utc;
use common::TestApp;
use order_api::ApiConfig;
use order_api::serve::serve;
use orderbridge_db::status::{self, StatusApplied, StatusChange};
use orderbridge_domain::{OrderId, StatusSource};
use orderbridge_testkit::{ChildGuard, TestDatabase, free_port, workspace_root};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Far beyond anything the page needs: reaching it means the page never showed the state.
const BOUND: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

/// A W3C WebDriver session on chromedriver. Dropped (also when the test fails), it ends the
/// session, so chromedriver closes Chromium, and then stops chromedriver: killing chromedriver
/// alone would leave the browser running.
struct Browser {
    http: reqwest::Client,
    base: String,
    driver_port: u16,
    session: String,
    _driver: ChildGuard,
}

impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        // Plain HTTP/1.1 on a std socket: Drop cannot await.
        if let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) {
            let _ = socket.set_read_timeout(Some(BOUND));
            let _ = write!(
                socket,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            // The answer comes once the browser is closed; chromedriver keeps the connection.
            let _ = socket.read(&mut [0u8; 1024]);
        }
    }
}

impl Browser {
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
        );
        let port = free_port().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: apt-get install -y chromium-driver");
        let driver = ChildGuard(driver);
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = match http.get(format!("{root}/status")).send().await {
                Ok(res) => res.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|s| s["value"]["ready"] == json!(true)) {
                break;
            }
            assert!(started.elapsed() < BOUND, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session: Value = http
            .post(format!("{root}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless", "--no-sandbox", "--disable-background-networking",
                             "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"]
                }
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"));
        Self {
            base: format!("{root}/session/{id}"),
            http,
            driver_port: port,
            session: id.to_owned(),
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(
            res["value"]["error"].is_null(),
            "WebDriver {path} failed: {res}"
        );
        res["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/value"), json!({"text": text}))
            .await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// What the page shows: status, order id, history rows, the error box (`alert`) and the
    /// connection line.
    async fn shown(&self) -> Value {
        self.script(
            "const $ = (id) => document.getElementById(id);
             return {
               status: $('status').textContent,
               order_id: $('order-id').value,
               history: Array.from(document.querySelectorAll('#history tr'))
                 .map((tr) => Array.from(tr.children).map((td) => td.textContent)),
               alert: $('error').hidden ? null : $('error').textContent,
               connection: $('connection').dataset.state,
               current_step: (document.querySelector('#steps li.current') || {}).textContent || null,
             };",
        )
        .await
    }

    /// Waits until the page shows `status` (live, with no error), and returns what it shows.
    async fn wait_for_status(&self, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let shown = self.shown().await;
            if shown["status"] == json!(status) && shown["connection"] == json!("live") {
                return shown;
            }
            assert!(shown["alert"].is_null(), "the page shows an error: {shown}");
            assert!(
                started.elapsed() < BOUND,
                "the page never showed {status}: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, to: &PathBuf) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

fn artifacts() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("artifacts")
}

async fn set_status(app: &TestApp, order: OrderId, status_name: &str) {
    let mut conn = app.pool.acquire().await.unwrap();
    let applied = status::apply(
        &mut conn,
        order,
        StatusChange {
            status: status_name,
            at: Utc::now(),
            source: StatusSource::SALESFORCE,
        },
    )
    .await
    .unwrap();
    assert!(matches!(applied, StatusApplied::Applied { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_creates_an_order_and_shows_it_move_live() {
    let db = TestDatabase::new().await;
    let config = ApiConfig::default();
    let app = TestApp::with_config(db.pool.clone(), config.clone());
    let version_listener = order_api::spawn_listener(&app.state);
    let key = app.key("portal").await;
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (router, state) = (app.router.clone(), app.state.clone());
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

    // The page is served with its policy: nothing but its own files and connections.
    let page = reqwest::get(format!("http://{addr}/portal")).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");

    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/portal")).await;
    browser.type_into("#api-key", &key).await;
    browser.click("#create-demo").await;

    let shown = browser.wait_for_status("submitted").await;
    let order = OrderId::from_uuid(shown["order_id"].as_str().unwrap().parse().unwrap());
    assert_eq!(shown["history"][0][0], json!("submitted"));
    assert_eq!(shown["history"][0][2], json!("api"));
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(
        app.count("idempotency_keys").await,
        1,
        "sent an Idempotency-Key"
    );

    set_status(&app, order, "activated").await;
    let shown = browser.wait_for_status("activated").await;
    assert_eq!(shown["current_step"], json!("activated"));

    set_status(&app, order, "provisioned").await;
    let shown = browser.wait_for_status("provisioned").await;
    let statuses: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["submitted", "activated", "provisioned"]);
    assert_eq!(shown["current_step"], json!("provisioned"));
    browser.screenshot(&artifacts().join("portal.png")).await;

    // A wrong key is shown as the problem's detail, readably.
    browser
        .script("document.getElementById('api-key').value = '';")
        .await;
    browser.type_into("#api-key", "obk_wrong_key").await;
    browser.click("#watch").await;
    let started = Instant::now();
    let error = loop {
        let shown = browser.shown().await;
        if let Some(error) = shown["alert"].as_str() {
            break error.to_owned();
        }
        assert!(started.elapsed() < BOUND, "no error shown: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("missing or invalid API key"), "{error}");

    drop(browser);
    let _ = stop.send(());
    let _ = served.await;
    version_listener.abort();
}
