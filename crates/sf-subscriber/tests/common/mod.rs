//! Shared set-up: a per-test database, the emulator in-process (REST + Pub/Sub), orders in both
//! places, and the subscriber as a child process (a kill is the point of some tests).
#![allow(clippy::unwrap_used, dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orderbridge_testkit::{ChildGuard, TestDatabase, free_port};
use serde_json::{Value, json};
use sf_emulator::{EmulatorConfig, RunningEmulator};
use sqlx::PgPool;
use uuid::Uuid;

pub const V: &str = "/services/data/v62.0";
pub const TOPIC: &str = "/data/OrderChangeEvent";

pub struct Org {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
    pub token: String,
    pub account: String,
}

impl Org {
    pub async fn start(config: EmulatorConfig) -> Self {
        let emu = sf_emulator::spawn(config).await.unwrap();
        let http = reqwest::Client::new();
        let mut org = Self {
            emu,
            http,
            token: String::new(),
            account: String::new(),
        };
        org.login().await;
        let r = org
            .call(
                "POST",
                "/sobjects/Account",
                Some(json!({"Name": "Acme"})),
                None,
            )
            .await;
        assert_eq!(r.0, 201, "{}", r.1);
        org.account = r.1["id"].as_str().unwrap().to_owned();
        org
    }

    pub async fn login(&mut self) {
        let r = self
            .http
            .post(format!("{}/services/oauth2/token", self.emu.base_url))
            .form(&[
                ("grant_type", "password"),
                ("client_id", sf_emulator::config::DEV_CLIENT_ID),
                ("client_secret", sf_emulator::config::DEV_CLIENT_SECRET),
                ("username", sf_emulator::config::DEV_USERNAME),
                (
                    "password",
                    &format!(
                        "{}{}",
                        sf_emulator::config::DEV_PASSWORD,
                        sf_emulator::config::DEV_SECURITY_TOKEN
                    ),
                ),
            ])
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        self.token = body["access_token"].as_str().unwrap().to_owned();
    }

    /// A REST call; `client` is sent as `Sforce-Call-Options: client=<client>`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        client: Option<&str>,
    ) -> (u16, Value) {
        let url = if path.starts_with("/__admin") {
            format!("{}{path}", self.emu.base_url)
        } else {
            format!("{}{V}{path}", self.emu.base_url)
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.token);
        if let Some(c) = client {
            req = req.header("Sforce-Call-Options", format!("client={c}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == "POST" {
            req = req.json(&json!({}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A Draft Order in Salesforce; returns its id.
    pub async fn order(&self) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/sobjects/Order",
                Some(json!({"AccountId": self.account, "EffectiveDate": "2026-12-01", "Status": "Draft"})),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Sets the Order's Status over REST, as a person or another integration would (or as we
    /// would, with `client`).
    pub async fn set_status(&self, id: &str, status: &str, client: Option<&str>) {
        let (code, body) = self
            .call(
                "PATCH",
                &format!("/sobjects/Order/{id}"),
                Some(json!({ "Status": status })),
                client,
            )
            .await;
        assert_eq!(code, 204, "{body}");
    }
}

/// An order in Postgres synced to the Salesforce record `salesforce_id`; returns its id.
pub async fn local_order(pool: &PgPool, salesforce_id: &str) -> Uuid {
    let client = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
        .bind(client)
        .bind(format!("c-{client}"))
        .execute(pool)
        .await
        .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, client_id, client_ref, customer, currency, total, status,
             sync_state, salesforce_id, created_at, updated_at)
         VALUES ($1, $2, 'REF-1', '{}'::jsonb, 'EUR', 0, 'submitted', 'synced', $3,
             now() - interval '1 minute', now() - interval '1 minute')",
    )
    .bind(id)
    .bind(client)
    .bind(salesforce_id)
    .execute(pool)
    .await
    .unwrap();
    id
}

pub async fn status_of(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The order's history rows written by Salesforce changes: (status, source).
pub async fn salesforce_history(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT status FROM order_status_history WHERE order_id = $1 AND source = 'salesforce' ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits (up to 30 s) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The subscriber as a child process.
pub struct Subscriber {
    pub child: ChildGuard,
    pub admin: String,
}

/// No Flow rules: a test that wants the emulator's `provision-on-activate` rule (an activation
/// publishes `OrderProvisionRequested__e`) turns it on, so other tests see only their own events.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        pubsub_keepalive: Duration::from_secs(1),
        flows: sf_emulator::config::FlowsAtStart::None,
        ..EmulatorConfig::ephemeral()
    }
}

impl Subscriber {
    pub async fn start(db: &TestDatabase, org: &Org, extra: &[(&str, &str)]) -> Self {
        let port = free_port().unwrap();
        let admin = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sf-subscriber"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("SF_LOGIN_URL", &org.emu.base_url)
            .env("SF_PUBSUB_ENDPOINT", &org.emu.pubsub_url)
            .env("SUBSCRIBER_ADMIN_ADDR", &admin)
            .env("SUBSCRIBER_INITIAL_REPLAY", "earliest")
            .env("SUBSCRIBER_RECONNECT_MIN", "50ms")
            .env("SUBSCRIBER_RECONNECT_MAX", "500ms")
            .env("RUST_LOG", "info,sf_subscriber=debug")
            .stdout(Stdio::null());
        if std::env::var_os("SUBSCRIBER_TEST_LOGS").is_none() {
            cmd.stderr(Stdio::null());
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let sub = Self {
            child: ChildGuard(cmd.spawn().unwrap()),
            admin: format!("http://{admin}"),
        };
        sub.wait_ready().await;
        sub
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/health/ready", self.admin);
        eventually("the subscriber to be ready", || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) }
        })
        .await;
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    pub async fn sf_events(&self) -> Value {
        reqwest::get(format!("{}/health/sf-events", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.0.wait().unwrap()
    }
}
