//! The whole path, in-process, as a portal sees it: order-api (HTTP on a free port) → Postgres
//! outbox → outbox-relay → RabbitMQ → sync-worker → emulator → status report → the relay's
//! status applier → `GET /v1/orders/{id}` shows `synced` with the Salesforce id. Also: resync,
//! a failure the portal can read, and a retry that ends synced.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use clap::Parser;
use common::{Harness, eventually};
use orderbridge_testkit::TestDatabase;
use serde_json::{Value, json};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    h: Harness,
    db: TestDatabase,
    base: String,
    key: String,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stack {
    async fn start() -> Self {
        let mut h = Harness::new().await;
        let db = TestDatabase::new().await;
        h.start_worker(&[]).await;

        // The relay and its status applier, on the harness's namespace and retry tiers.
        let tiers = h
            .topology
            .retry_tiers
            .iter()
            .map(|t| format!("{}ms", t.delay.as_millis()))
            .collect::<Vec<_>>()
            .join(",");
        let relay_cli = outbox_relay::Cli::parse_from([
            "outbox-relay",
            "--amqp-url",
            common::AMQP_URL,
            "--broker-namespace",
            &h.ns,
            "--broker-retry-tiers",
            &tiers,
            "--poll-interval",
            "100ms",
            "--broker-signing-key",
            common::SIGNING_KEY,
        ]);
        let (stop, rx) = watch::channel(false);
        let relay = outbox_relay::Relay::new(
            relay_cli.relay.clone(),
            relay_cli.broker.clone(),
            db.pool.clone(),
        )
        .unwrap();
        let applier = outbox_relay::status::StatusApplier::new(
            relay_cli.status.clone(),
            &relay_cli.relay,
            relay_cli.broker.clone(),
            &db.pool,
            relay.metrics(),
        )
        .unwrap();
        let mut tasks = Vec::new();
        let r = rx.clone();
        tasks.push(tokio::spawn(async move { relay.run(r).await.unwrap() }));
        let r = rx.clone();
        tasks.push(tokio::spawn(async move { applier.run(r).await.unwrap() }));

        // The API over real HTTP.
        let state =
            order_api::AppState::new(db.pool.clone(), order_api::config::ApiConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut r = rx.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, order_api::app(state))
                .with_graceful_shutdown(async move {
                    let _ = r.wait_for(|v| *v).await;
                })
                .await
                .unwrap();
        }));
        let key = order_api::auth::create_api_key(&db.pool, "portal")
            .await
            .unwrap()
            .key;
        Self {
            h,
            db,
            base,
            key,
            stop,
            tasks,
        }
    }

    async fn post(&self, body: &Value) -> (Value, String) {
        self.post_as(&self.key, body).await
    }

    /// Posts as the client whose API key is `key`.
    async fn post_as(&self, key: &str, body: &Value) -> (Value, String) {
        let r = self
            .h
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(key)
            .header("x-request-id", "walkthrough-1")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        (r.json().await.unwrap(), etag)
    }

    /// Polls the order as a portal does (If-None-Match); returns every distinct version seen as
    /// (ETag, sync state), until `until` holds for the order.
    async fn watch(
        &self,
        id: &str,
        etag: String,
        until: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<(String, String)>) {
        self.watch_as(&self.key, id, etag, until).await
    }

    /// [`Stack::watch`] as the client whose API key is `key`.
    async fn watch_as(
        &self,
        key: &str,
        id: &str,
        mut etag: String,
        until: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<(String, String)>) {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let r = self
                .h
                .http
                .get(format!("{}/v1/orders/{id}", self.base))
                .bearer_auth(key)
                .header("if-none-match", &etag)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                etag = r.headers()["etag"].to_str().unwrap().to_owned();
                let order: Value = r.json().await.unwrap();
                seen.push((
                    etag.clone(),
                    order["sync"]["state"].as_str().unwrap().to_owned(),
                ));
                if until(&order) {
                    return (order, seen);
                }
            } else {
                assert_eq!(r.status(), 304);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "order never got there; saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.h.cleanup().await;
        drop(self.db);
    }
}

fn walkthrough_order(client_ref: &str, skus: &[&str]) -> Value {
    order_for("CUST-42", client_ref, skus)
}

fn order_for(customer: &str, client_ref: &str, skus: &[&str]) -> Value {
    let lines: Vec<Value> = skus
        .iter()
        .map(|s| json!({"sku": s, "name": "thing", "quantity": 2, "unit_price": "12.50"}))
        .collect();
    json!({
        "client_ref": client_ref,
        "customer": {"external_id": customer, "name": "Acme GmbH", "email": "buyer@acme.example"},
        "shipping_address": {"line1": "Hauptstraße 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "currency": "EUR",
        "lines": lines
    })
}

fn is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |o| o["sync"]["state"] == state
}

#[tokio::test]
async fn an_order_posted_to_the_api_ends_synced_and_visible_in_salesforce() {
    let s = Stack::start().await;
    let (created, etag) = s
        .post(&walkthrough_order(
            "PO-1001",
            &["SKU-RED-MUG", "SKU-TEA", "SKU-SPOON"],
        ))
        .await;
    assert_eq!(created["sync"]["state"], "pending");
    assert_eq!(etag, "\"v1\"");
    let id = created["id"].as_str().unwrap().to_owned();

    let (order, seen) = s.watch(&id, etag, is("synced")).await;
    // Every change the portal saw came with a new ETag.
    let etags: std::collections::HashSet<_> = seen.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(etags.len(), seen.len(), "{seen:?}");
    let sf_id = order["sync"]["salesforce_id"].as_str().unwrap().to_owned();
    assert_eq!(order["sync"]["attempts"], 1);
    assert!(order["sync"]["synced_at"].is_string());
    assert!(order["sync"]["last_error"].is_null());

    // Visible in the emulator: the Order, its Account and its three items.
    let records = s.h.records("Order").await;
    let rec = records
        .iter()
        .find(|r| r["External_Id__c"] == id.as_str())
        .unwrap();
    assert_eq!(rec["Id"], sf_id.as_str());
    // Salesforce's own roll-up of the items equals the total the API computed.
    let total: f64 = order["total"].as_str().unwrap().parse().unwrap();
    assert_eq!(rec["TotalAmount"].as_f64().unwrap(), total);
    assert_eq!(s.h.count_by_external_id("OrderItem").await.len(), 3);
    // The account is keyed by the client's prefix and the customer id.
    assert_eq!(
        s.h.count_by_external_id("Account").await["portal:CUST-42"],
        1
    );

    // Resync: 202, pending again with a new ETag, then synced again onto the same record.
    let r =
        s.h.http
            .post(format!("{}/v1/orders/{id}/resync", s.base))
            .bearer_auth(&s.key)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 202);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sync"]["state"], "pending");
    let version_at_resync = body["version"].as_i64().unwrap();
    let (again, _) = s
        .watch(&id, etag, |o| {
            o["sync"]["state"] == "synced" && o["version"].as_i64().unwrap() > version_at_resync
        })
        .await;
    assert_eq!(again["sync"]["salesforce_id"], sf_id.as_str());
    assert_eq!(s.h.count_by_external_id("Order").await[&id], 1);
    assert_eq!(s.h.count_by_external_id("OrderItem").await.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn the_portal_sees_why_an_order_failed_and_a_retry_that_passed() {
    let s = Stack::start().await;
    // Unknown SKU: failed, with the reason.
    let (bad, etag) = s
        .post(&walkthrough_order("PO-BAD", &["SKU-RED-MUG", "SKU-GONE"]))
        .await;
    let bad_id = bad["id"].as_str().unwrap().to_owned();
    let (failed, _) = s.watch(&bad_id, etag, is("failed")).await;
    assert_eq!(failed["sync"]["last_error"]["code"], "UNKNOWN_SKU");
    assert!(
        failed["sync"]["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("SKU-GONE")
    );
    assert!(failed["sync"]["salesforce_id"].is_null());

    // The customer's Account is locked for one write: the order is retried through a delay
    // tier and synced at attempt 2, with the lock error recorded on the way.
    s.h.faults(json!({"lock_records": [{"key": "portal:CUST-LOCKED", "times": 1}]}))
        .await;
    let (ok, etag) = s
        .post(&order_for("CUST-LOCKED", "PO-LOCK", &["SKU-TEA"]))
        .await;
    let ok_id = ok["id"].as_str().unwrap().to_owned();
    let (synced, seen) = s.watch(&ok_id, etag, is("synced")).await;
    assert_eq!(synced["sync"]["attempts"], 2, "{synced}");
    assert!(synced["sync"]["last_error"].is_null());
    // The portal may or may not have polled during the short retry window; if it did, it saw
    // `retrying`, never `failed`.
    assert!(seen.iter().all(|(_, st)| st != "failed"), "{seen:?}");

    // The list endpoint filters by state, as a dashboard would.
    eventually(WAIT, "the failed order in the list", || async {
        let r: Value =
            s.h.http
                .get(format!("{}/v1/orders?sync_state=failed", s.base))
                .bearer_auth(&s.key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        r["items"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["id"] == bad_id.as_str())
    })
    .await;
    s.stop().await;
}

/// Issue 12: client B posting client A's customer id renamed client A's account. Now each API
/// client's customers are its own accounts: the same `CUST-42` from two clients is two
/// Accounts, each order points at its own client's, and nothing one client sends (not even a
/// customer id spelled like the other's key) reaches the other's.
#[tokio::test]
async fn two_clients_with_one_customer_id_never_share_an_account() {
    let s = Stack::start().await;
    let beta = order_api::auth::create_api_key(&s.db.pool, "beta")
        .await
        .unwrap()
        .key;
    let with_name = |client_ref: &str, customer: &str, name: &str| {
        let mut o = order_for(customer, client_ref, &["SKU-TEA"]);
        o["customer"]["name"] = json!(name);
        o
    };

    let (a, etag) = s
        .post(&with_name("PO-A", "CUST-42", "Acme (portal's)"))
        .await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    s.watch(&a_id, etag, is("synced")).await;
    let (b, etag) = s
        .post_as(&beta, &with_name("PO-B", "CUST-42", "PWNED by client B"))
        .await;
    let b_id = b["id"].as_str().unwrap().to_owned();
    s.watch_as(&beta, &b_id, etag, is("synced")).await;
    // Beta names a customer after portal's account key: it is beta's own customer all the same.
    let (c, etag) = s
        .post_as(&beta, &with_name("PO-C", "portal:CUST-42", "PWNED again"))
        .await;
    let c_id = c["id"].as_str().unwrap().to_owned();
    s.watch_as(&beta, &c_id, etag, is("synced")).await;

    let accounts = s.h.records("Account").await;
    let account = |key: &str| {
        let found: Vec<&Value> = accounts
            .iter()
            .filter(|r| r["External_Id__c"] == key)
            .collect();
        assert_eq!(found.len(), 1, "one account {key}: {accounts:?}");
        found[0].clone()
    };
    let portal_account = account("portal:CUST-42");
    let beta_account = account("beta:CUST-42");
    let beta_lookalike = account("beta:portal:CUST-42");
    assert_eq!(
        portal_account["Name"], "Acme (portal's)",
        "untouched by beta"
    );
    assert_eq!(beta_account["Name"], "PWNED by client B");
    assert_eq!(beta_lookalike["Name"], "PWNED again");
    assert_eq!(accounts.len(), 3, "{accounts:?}");

    // Each order hangs off its own client's account.
    let orders = s.h.records("Order").await;
    let account_of = |id: &str| {
        orders
            .iter()
            .find(|r| r["External_Id__c"] == id)
            .map(|r| r["AccountId"].clone())
            .unwrap()
    };
    assert_eq!(account_of(&a_id), portal_account["Id"]);
    assert_eq!(account_of(&b_id), beta_account["Id"]);
    assert_eq!(account_of(&c_id), beta_lookalike["Id"]);
    s.stop().await;
}
