//! Worker throughput against the emulator at a given latency per call:
//! `cargo run --release -p sync-worker --example throughput -- [orders] [latency_ms] [lines]`
//! (defaults 5000 orders, 150 ms, 3 lines).
//!
//! Publishes the orders' `order.submitted` events to a fresh namespace first (a backlog), then
//! starts the worker in-process and times it from start to the last `synced` report. Prints
//! orders/s and Salesforce API calls per 1,000 orders (from the emulator's own counters).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orderbridge_broker::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use orderbridge_broker::lapin::types::FieldTable;
use orderbridge_broker::lapin::{BasicProperties, Connection, ConnectionProperties};
use orderbridge_domain::{NewOrder, NewOrderRequest, OrderEvent, SyncState, SyncStatus};
use orderbridge_mapping::Mapping;
use orderbridge_salesforce::Client;
use serde_json::json;
use sf_emulator::EmulatorConfig;
use sync_worker::config::Cli;
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::worker::Worker;
use sync_worker::writer::Writer;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let latency: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(150);
    let lines: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);

    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let emulator = sf_emulator::spawn(EmulatorConfig {
        seed_file: Some(root.join("config/sf-emulator-seed.json")),
        daily_api_limit: 1_000_000,
        ..EmulatorConfig::ephemeral()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let ns = format!("bench-{}", uuid::Uuid::now_v7());
    let cli = Cli::parse_from([
        "sync-worker",
        "--broker-namespace",
        &ns,
        "--sf-login-url",
        &emulator.base_url,
        "--broker-signing-key",
        orderbridge_broker::signing::DEV_SIGNING_KEY,
    ]);
    let topology = cli.broker.topology().unwrap();
    // The backlog is signed as the relay signs it.
    let keyring = cli.broker.keyring().unwrap();
    let session = orderbridge_broker::Supervisor::new(cli.broker.clone(), "bench")
        .unwrap()
        .try_connect()
        .await
        .unwrap();

    // The backlog.
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        let lines: Vec<_> = (0..lines)
            .map(|l| json!({"sku": format!("SKU-{:03}", l % 20 + 1), "name": "x", "quantity": 1 + l, "unit_price": "9.99"}))
            .collect();
        let req: NewOrderRequest = serde_json::from_value(json!({
            "client_ref": format!("B-{i}"),
            "customer": {"external_id": format!("C-{}", i % 500), "name": "Bench", "email": "b@x.example"},
            "currency": "EUR", "lines": lines
        }))
        .unwrap();
        let order = NewOrder::parse(req)
            .unwrap()
            .into_order(uuid::Uuid::now_v7(), chrono::Utc::now());
        let client = orderbridge_domain::ClientScope {
            id: orderbridge_domain::ClientId::from_uuid(uuid::Uuid::nil()),
            external_id_prefix: "throughput:".into(),
        };
        let env = OrderEvent::submitted(order, client).into_envelope(chrono::Utc::now(), None);
        let body = serde_json::to_vec(&env).unwrap();
        confirms.push(
            ch.basic_publish(
                topology.events_exchange.as_str().into(),
                "order.submitted".into(),
                BasicPublishOptions::default(),
                &body,
                keyring.sign(
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(env.id.to_string().into()),
                    &body,
                ),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }

    http.post(format!("{}/__admin/faults", emulator.base_url))
        .json(&json!({"latency_ms": latency, "jitter_ms": latency / 5}))
        .send()
        .await
        .unwrap();

    // Count synced reports as they arrive.
    let consumer = ch
        .basic_consume(
            topology.status_queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let metrics = Arc::new(Metrics::default());
    let client = Client::new(&cli.salesforce).unwrap();
    let mapping = Arc::new(Mapping::load(None).unwrap());
    let pricebook = Arc::new(PriceBook::new(client.clone(), None));
    let writer = Writer::new(client, mapping, pricebook, metrics.clone());
    let worker = Worker::new(
        cli.worker.clone(),
        cli.broker.clone(),
        writer,
        metrics.clone(),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(worker.run(rx));

    use futures_util::StreamExt;
    let mut consumer = consumer;
    let mut synced = 0usize;
    let mut other = 0usize;
    while synced < n {
        let d = tokio::time::timeout(Duration::from_secs(120), consumer.next())
            .await
            .expect("status reports keep coming")
            .unwrap()
            .unwrap();
        let s = SyncStatus::decode(&d.data).unwrap();
        if s.data.state == SyncState::Synced {
            synced += 1;
        } else {
            other += 1;
        }
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    let elapsed = started.elapsed();
    let stats: serde_json::Value = http
        .get(format!("{}/__admin/stats", emulator.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls = stats["api_calls_total"].as_u64().unwrap_or(0);
    println!(
        "{n} orders of {lines} lines, emulator latency {latency} ms (+0-{} ms jitter), batch {} in-flight at most {}",
        latency / 5,
        cli.worker.batch_size,
        cli.worker.max_in_flight
    );
    println!(
        "synced in {:.2} s: {:.0} orders/s; non-synced reports: {other}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "Salesforce API calls: {calls} ({:.2} per 1,000 orders); by route: {}",
        calls as f64 * 1000.0 / n as f64,
        stats["api_calls_by_route"]
    );
    let _ = tx.send(true);
    let _ = task.await;
    let _ = topology.delete(&cli.broker, &session.channel).await;
    session.close(&cli.broker).await;
    let _ = conn.close(200, "bye".into()).await;
}
