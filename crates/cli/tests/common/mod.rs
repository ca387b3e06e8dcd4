//! What the pipeline tests (`orders_show.rs`, `status.rs`) share: an accepted order, waiting
//! for a sync state, emulator faults, removing a test's broker namespace.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::{Duration, Instant};

use chrono::Utc;
use orderbridge_broker::{BrokerConfig, Supervisor};
use orderbridge_domain::{NewOrder, NewOrderRequest, OrderId};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);

/// An order of one line of `sku`, accepted as `POST /v1/orders` accepts it.
pub async fn create_order(pool: &PgPool, client_id: Uuid, sku: &str) -> OrderId {
    let request: NewOrderRequest = serde_json::from_value(json!({
        "client_ref": format!("PO-{}", Uuid::now_v7()),
        "customer": {"external_id": "CUST-CLI", "name": "Acme GmbH", "email": "buyer@acme.example"},
        "currency": "EUR",
        "lines": [{"sku": sku, "name": "Red mug", "quantity": 2, "unit_price": "12.50"}]
    }))
    .unwrap();
    let order = NewOrder::parse(request)
        .unwrap()
        .into_order(Uuid::now_v7(), Utc::now());
    let id = order.id;
    let scope = orderbridge_db::clients::scope(pool, client_id.into())
        .await
        .unwrap()
        .unwrap();
    orderbridge_db::create::create_order(pool, &scope, None, order, None)
        .await
        .unwrap();
    id
}

/// Waits until the order's sync state is `state`.
pub async fn wait_for_state(pool: &PgPool, id: OrderId, state: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now: String = sqlx::query_scalar("SELECT sync_state FROM orders WHERE id = $1")
            .bind(id.get())
            .fetch_one(pool)
            .await
            .unwrap();
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} in {now}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Merges `body` into the emulator's faults.
pub async fn faults(emulator: &str, body: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{emulator}/__admin/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Deletes the test namespace's queues and exchanges.
pub async fn delete_namespace(cfg: &BrokerConfig) {
    let sup = Supervisor::new(cfg.clone(), "cli-test-cleanup").unwrap();
    let session = sup.try_connect().await.unwrap();
    sup.topology().delete(cfg, &session.channel).await.unwrap();
    session.close(cfg).await;
}
