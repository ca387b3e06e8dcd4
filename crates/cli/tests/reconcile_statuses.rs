//! `orderbridge reconcile statuses --since`: what the Salesforce subscriber missed (a gap) is
//! read over SOQL and applied, once; gaps from then on are marked closed.
#![allow(clippy::unwrap_used)]

use clap::Parser;
use orderbridge_cli::command::{Cli, Command, ReconcileArgs, ReconcileTarget};
use orderbridge_cli::statuses;
use orderbridge_testkit::TestDatabase;
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use sf_emulator::config::{
    DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_PASSWORD, DEV_SECURITY_TOKEN, DEV_USERNAME,
};
use uuid::Uuid;

const V: &str = "/services/data/v62.0";

async fn token(http: &reqwest::Client, base: &str) -> String {
    let body: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", DEV_CLIENT_ID),
            ("client_secret", DEV_CLIENT_SECRET),
            ("username", DEV_USERNAME),
            ("password", &format!("{DEV_PASSWORD}{DEV_SECURITY_TOKEN}")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let r = http
        .request(method.parse().unwrap(), format!("{base}{V}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn local_order(pool: &sqlx::PgPool, salesforce_id: &str) -> Uuid {
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
             now() - interval '1 hour', now() - interval '1 hour')",
    )
    .bind(id)
    .bind(client)
    .bind(salesforce_id)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn statuses_changed_since_a_gap_are_applied_once_and_the_gap_closed() {
    let db = TestDatabase::new().await;
    let emu = sf_emulator::spawn(EmulatorConfig::ephemeral())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = emu.base_url.clone();
    let token = token(&http, &base).await;
    let account = call(
        &http,
        &base,
        &token,
        "POST",
        "/sobjects/Account",
        json!({"Name": "Acme"}),
    )
    .await;
    let account = account["id"].as_str().unwrap().to_owned();
    let mut orders = Vec::new();
    for _ in 0..3 {
        let r = call(
            &http,
            &base,
            &token,
            "POST",
            "/sobjects/Order",
            json!({"AccountId": account, "EffectiveDate": "2026-12-01", "Status": "Draft"}),
        )
        .await;
        let sf = r["id"].as_str().unwrap().to_owned();
        let local = local_order(&db.pool, &sf).await;
        orders.push((sf, local));
    }
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    // Two orders activated while the subscriber was not listening; the third stays a draft.
    for (sf, _) in &orders[..2] {
        call(
            &http,
            &base,
            &token,
            "PATCH",
            &format!("/sobjects/Order/{sf}"),
            json!({"Status": "Activated"}),
        )
        .await;
    }
    sqlx::query("INSERT INTO pubsub_gaps (topic, missed_from, fallback) VALUES ('/data/OrderChangeEvent', $1, 'latest')")
        .bind(since)
        .execute(&db.pool)
        .await
        .unwrap();

    let cli = Cli::try_parse_from([
        "orderbridge",
        "--database-url",
        db.url(),
        "--sf-login-url",
        &base,
        "reconcile",
        "statuses",
        "--since",
        &since.to_rfc3339(),
    ])
    .unwrap();
    let Command::Reconcile(ReconcileArgs {
        target: Some(ReconcileTarget::Statuses(args)),
        ..
    }) = &cli.command
    else {
        panic!("not parsed as reconcile statuses: {:?}", cli.command);
    };
    let mut out = Vec::new();
    let first = statuses::run(args, &cli.db, &cli.salesforce, &mut out)
        .await
        .unwrap();
    assert_eq!(first.read, 3, "every Order changed since then: {first:?}");
    assert_eq!(
        (
            first.applied,
            first.unchanged,
            first.unknown_order,
            first.unusable
        ),
        (2, 1, 0, 0),
        "{first:?}"
    );
    assert_eq!(first.gaps_closed, 1);
    assert!(String::from_utf8(out).unwrap().contains("2 applied"));
    for (i, (_, local)) in orders.iter().enumerate() {
        let (status, from_reconcile): (String, i64) = sqlx::query_as(
            "SELECT o.status, (SELECT count(*) FROM order_status_history h
                WHERE h.order_id = o.id AND h.source = 'reconcile') FROM orders o WHERE o.id = $1",
        )
        .bind(local)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let expected = if i < 2 {
            ("activated", 1)
        } else {
            ("submitted", 0)
        };
        assert_eq!((status.as_str(), from_reconcile), expected);
    }
    // Again: nothing new.
    let mut out = Vec::new();
    let again = statuses::run(args, &cli.db, &cli.salesforce, &mut out)
        .await
        .unwrap();
    assert_eq!((again.applied, again.gaps_closed), (0, 0), "{again:?}");

    // The plain `reconcile` still parses as before.
    let plain = Cli::try_parse_from([
        "orderbridge",
        "reconcile",
        "--since",
        "2026-11-24T00:00:00Z",
    ])
    .unwrap();
    assert!(matches!(
        plain.command,
        Command::Reconcile(ReconcileArgs {
            target: None,
            since: Some(_),
            ..
        })
    ));
    assert!(Cli::try_parse_from(["orderbridge", "reconcile", "statuses"]).is_err());
}
