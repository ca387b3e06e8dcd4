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

/// Counts the Postgres notices sqlx logs (target `sqlx::postgres::notice`).
#[derive(Clone, Default)]
struct Notices(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Notices {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::postgres::notice" {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A start against a database already migrated logs no notice (sqlx's `CREATE TABLE IF NOT
/// EXISTS _sqlx_migrations` would log "already exists, skipping" at INFO on every start), and
/// the pool's connection is handed back as it was (notices on again).
#[tokio::test]
async fn a_second_start_logs_no_notice_and_leaves_the_session_as_it_was() {
    use tracing_subscriber::layer::SubscriberExt;
    let fresh = FreshDatabase::new("ob_create");
    let config = Cli::parse_from(["test", "--database-url", &fresh.url]).db;
    let pool = config.connect("create-notice-test").await.unwrap();
    orderbridge_db::migrate(&pool).await.unwrap();

    let notices = Notices::default();
    let subscriber = tracing_subscriber::registry().with(notices.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    // The same statement without the setting logs the notice: the counter sees it.
    sqlx::query("CREATE TABLE IF NOT EXISTS _sqlx_migrations ()")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(notices.0.load(std::sync::atomic::Ordering::Relaxed), 1);

    orderbridge_db::migrate(&pool).await.unwrap();
    assert_eq!(
        notices.0.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "migrating again logged a notice"
    );
    let level: String = sqlx::query_scalar("SHOW client_min_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(level, "notice");
    pool.close().await;
}
