#![allow(clippy::unwrap_used)]
//! Several processes starting at once against a database that does not exist yet (the stack's
//! run script does exactly this): all of them must come up.

use clap::Parser;
use orderbridge_db::DbConfig;
use orderbridge_testkit::FreshDatabase;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    db: DbConfig,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_starts_create_and_migrate_once() {
    let fresh = FreshDatabase::new("ob_create");
    let config = Cli::parse_from(["test", "--database-url", &fresh.url]).db;
    let mut starts = Vec::new();
    for i in 0..6 {
        let config = config.clone();
        starts.push(tokio::spawn(async move {
            let pool = config.connect(&format!("create-test-{i}")).await?;
            orderbridge_db::migrate(&pool).await?;
            Ok::<_, orderbridge_db::DbError>(pool)
        }));
    }
    for s in starts {
        let pool = s.await.unwrap().unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied as usize, orderbridge_db::MIGRATOR.iter().count());
        pool.close().await;
    }
}
