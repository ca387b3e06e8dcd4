//! `orderbridge keys` as an operator runs it, against a fresh database: create, list, rotate,
//! revoke; the keys it prints authenticate (or stop authenticating) as the API sees them.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use orderbridge_testkit::FreshDatabase;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_orderbridge");

fn keys(db: &FreshDatabase, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(out: Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

async fn authenticates(db: &FreshDatabase, key: &str) -> Option<String> {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let found = orderbridge_db::keys::authenticate(&pool, key)
        .await
        .unwrap();
    pool.close().await;
    found.map(|a| a.client.name)
}

#[tokio::test]
async fn create_list_rotate_revoke() {
    let db = FreshDatabase::new("orderbridge_keys");

    // Plain create: stdout is the key alone.
    let out = keys(&db, &["create", "--client", "portal", "--name", "web shop"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = ok(out).trim().to_owned();
    assert!(
        first.starts_with("obk_") && !first.contains('\n'),
        "{first}"
    );
    assert!(stderr.contains("shown once"), "{stderr}");
    assert_eq!(authenticates(&db, &first).await.as_deref(), Some("portal"));

    let listed = json(keys(&db, &["list", "--json"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert!(first.starts_with(&format!("obk_{id}_")));
    assert_eq!(listed[0]["client"], "portal");
    assert_eq!(listed[0]["name"], "web shop");
    assert_eq!(listed[0]["state"], "active");
    assert!(listed[0]["expires_at"].is_null());
    assert!(listed[0].get("key").is_none() && listed[0].get("key_hash").is_none());

    // Rotate: a new key for the same client and name; the old one still works, with an expiry.
    let rotated = json(keys(&db, &["rotate", &id, "--grace", "1h", "--json"]));
    let second = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(rotated["client"], "portal");
    assert_eq!(rotated["replaces"]["id"], id.as_str());
    assert!(rotated["replaces"]["expires_at"].is_string());
    assert_eq!(authenticates(&db, &first).await.as_deref(), Some("portal"));
    assert_eq!(authenticates(&db, &second).await.as_deref(), Some("portal"));

    // Revoke the old one: it stops authenticating; the new one goes on.
    let revoked = json(keys(&db, &["revoke", &id, "--json"]));
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(authenticates(&db, &first).await, None);
    assert_eq!(authenticates(&db, &second).await.as_deref(), Some("portal"));

    // The human table shows both, with their states; other clients are filtered out.
    keys(&db, &["create", "--client", "erp", "--expires-in", "30d"]);
    let table = ok(keys(&db, &["list", "--client", "portal"]));
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("revoked") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains("erp"), "{table}");
    let erp = json(keys(&db, &["list", "--client", "erp", "--json"]));
    assert!(erp[0]["expires_at"].is_string());
}

#[tokio::test]
async fn errors_are_clear_and_exit_2() {
    let db = FreshDatabase::new("orderbridge_keys_err");
    for (args, expect) in [
        (vec!["revoke", "0123456789abcdef"], "no API key with id"),
        (vec!["rotate", "0123456789abcdef"], "no API key with id"),
        (vec!["create", "--client", ""], "client name"),
        (
            vec![
                "create",
                "--client",
                "x",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "expiry must be in the future",
        ),
    ] {
        let out = keys(&db, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A revoked key cannot be rotated.
    let id = json(keys(&db, &["create", "--client", "portal", "--json"]))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(keys(&db, &["revoke", &id]));
    let out = keys(&db, &["rotate", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}
