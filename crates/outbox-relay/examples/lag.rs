//! Measures commit → work-queue lag at a steady rate.
//!
//! Writes orders the way the API does (order row + outbox row in one transaction) at a fixed
//! rate into a scratch database, runs a relay in-process, consumes the Salesforce work queue and
//! reports percentiles of (message received − commit returned): the whole NOTIFY → read →
//! publish → confirm → route → deliver path, an upper bound of the relay's commit→confirm lag.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/orderbridge \
//!   cargo run --release -p outbox-relay --example lag -- 200 30   # 200 orders/s for 30 s
//! ```
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orderbridge_broker::lapin::message::DeliveryResult;
use orderbridge_broker::lapin::options::BasicConsumeOptions;
use orderbridge_broker::lapin::types::FieldTable;
use orderbridge_broker::lapin::{Connection, ConnectionProperties};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection as _, Executor};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args.get(1).map_or(200, |s| s.parse().unwrap());
    let seconds: u64 = args.get(2).map_or(30, |s| s.parse().unwrap());
    let base: PgConnectOptions = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
        .parse()
        .unwrap();

    // A scratch database, dropped at the end.
    let db = format!("orderbridge_lag_{}", std::process::id());
    let mut admin = base.connect().await.unwrap();
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap();
    let opts = base.clone().database(&db);
    let pool = common::pool_named(&opts, "lag-writer");
    orderbridge_db::migrate(&pool).await.unwrap();
    let client = common::api_client(&pool).await;

    let ns = common::namespace();
    let relay = common::RunningRelay::start(
        common::relay_config("lag-relay"),
        common::broker_config(&ns),
        common::pool_named(&opts, "lag-relay"),
    );
    common::eventually(Duration::from_secs(30), "relay ready", || async {
        relay.metrics.ready()
    })
    .await;

    // Consumer: push delivery, no acks, receive time taken as soon as the delivery is handed over.
    let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Uuid, Instant)>();
    let consumer = ch
        .basic_consume(
            format!("{ns}.sf-sync").into(),
            "lag".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    consumer.set_delegate(move |d: DeliveryResult| {
        let tx = tx.clone();
        async move {
            let at = Instant::now();
            if let Ok(Some(d)) = d {
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|s| Uuid::parse_str(s.as_str()).ok());
                if let Some(id) = id {
                    let _ = tx.send((id, at));
                }
            }
        }
    });

    // Steady writer: one order every 1/rate s, each in its own transaction.
    let total = rate * seconds;
    let mut committed = HashMap::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for _ in 0..total {
        ticker.tick().await;
        let (_, event) = common::create_order(&pool, client).await;
        committed.insert(event, Instant::now());
    }
    let wrote_for = started.elapsed();

    let mut lags = Vec::with_capacity(committed.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    while lags.len() < committed.len() && Instant::now() < deadline {
        if let Ok(Some((id, at))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            && let Some(c) = committed.get(&id)
        {
            lags.push(at.saturating_duration_since(*c));
        }
    }
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "orders: {} at {:.0}/s over {:.1}s; received {}",
        committed.len(),
        committed.len() as f64 / wrote_for.as_secs_f64(),
        wrote_for.as_secs_f64(),
        lags.len()
    );
    println!(
        "commit -> work queue lag: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.90).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lags.last().unwrap().as_secs_f64() * 1e3
    );
    let metrics = relay.metrics.render();
    for line in metrics.lines().filter(|l| {
        l.starts_with("outbox_relay_commit_to_confirm_lag_seconds_bucket")
            || l.starts_with("outbox_relay_published_total")
    }) {
        println!("{line}");
    }

    let _ = conn.close(200, "bye".into()).await;
    relay.stop().await;
    pool.close().await;
    let _ = admin
        .execute(format!("DROP DATABASE {db} WITH (FORCE)").as_str())
        .await;
    let _ = admin.close().await;
}
