#![allow(clippy::unwrap_used)]
//! The external-id prefixes that keep API clients' Salesforce keys apart: what the migration
//! gives existing clients (a lone client keeps its keys, several get their own), what new
//! clients get, and what the database refuses.

use clap::Parser;
use orderbridge_db::{DbConfig, MIGRATOR, clients};
use orderbridge_domain::ClientId;
use orderbridge_testkit::FreshDatabase;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

const PREFIX_MIGRATION: i64 = 20261201000047;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    db: DbConfig,
}

/// A database migrated up to (not including) the prefix migration, as a deployment of the
/// previous release has it.
async fn before_prefixes() -> (FreshDatabase, PgPool) {
    let fresh = FreshDatabase::new("ob_prefix");
    let pool = Cli::parse_from(["test", "--database-url", &fresh.url])
        .db
        .connect("prefix-test")
        .await
        .unwrap();
    // The migrations of the previous release, read from a copy of the directory without the
    // prefix migration and what came after it.
    let dir = std::env::temp_dir().join(format!("ob-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = orderbridge_testkit::workspace_root().join("migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < PREFIX_MIGRATION {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    let old = Migrator::new(dir.as_path()).await.unwrap();
    old.run(&pool).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (fresh, pool)
}

async fn add_client(pool: &PgPool, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_clients (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(pool)
        .await
        .unwrap();
    id
}

async fn prefix(pool: &PgPool, id: Uuid) -> String {
    clients::scope(pool, ClientId::from_uuid(id))
        .await
        .unwrap()
        .unwrap()
        .external_id_prefix
}

#[tokio::test]
async fn a_lone_existing_client_keeps_its_keys() {
    let (_db, pool) = before_prefixes().await;
    let portal = add_client(&pool, "portal").await;
    MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(prefix(&pool, portal).await, "", "unprefixed, as before");
    // Clients added later are scoped from the start.
    let shop = add_client(&pool, "Shop GmbH").await;
    assert_eq!(prefix(&pool, shop).await, "shop-gmbh:");
}

#[tokio::test]
async fn several_existing_clients_are_each_scoped() {
    let (_db, pool) = before_prefixes().await;
    let a = add_client(&pool, "alpha").await;
    let b = add_client(&pool, "beta").await;
    MIGRATOR.run(&pool).await.unwrap();
    for id in [a, b] {
        assert_eq!(prefix(&pool, id).await, format!("{}:", id.simple()));
    }
}

#[tokio::test]
async fn new_prefixes_are_unique_regardless_of_case_and_well_formed() {
    let (_db, pool) = before_prefixes().await;
    MIGRATOR.run(&pool).await.unwrap();
    let a = add_client(&pool, "Alpha").await;
    assert_eq!(prefix(&pool, a).await, "alpha:");
    // Another name with the same readable form falls back to its id.
    let b = add_client(&pool, "ALPHA").await;
    assert_eq!(prefix(&pool, b).await, format!("{}:", b.simple()));
    // A name with nothing readable, too.
    let c = add_client(&pool, "日本").await;
    assert_eq!(prefix(&pool, c).await, format!("{}:", c.simple()));

    // The operator's migration path: one client may take the empty prefix…
    assert!(
        clients::set_prefix(&pool, ClientId::from_uuid(a), "")
            .await
            .unwrap()
    );
    assert_eq!(prefix(&pool, a).await, "");
    // …but not two, nor one differing only in case, nor a malformed one.
    let b_upper = format!("{}:", b.simple().to_string().to_uppercase());
    for (id, bad) in [(b, ""), (c, b_upper.as_str()), (c, "no-colon"), (c, "a:b:")] {
        let err = clients::set_prefix(&pool, ClientId::from_uuid(id), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, sqlx::Error::Database(_)), "{bad}: {err}");
    }
    assert!(
        !clients::set_prefix(&pool, ClientId::from_uuid(Uuid::now_v7()), "x:")
            .await
            .unwrap()
    );
}
