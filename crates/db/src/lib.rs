//! Postgres plumbing shared by the orderbridge binaries: the connection pool ([`connect`]), the
//! schema migrations ([`MIGRATOR`]), the transactional outbox ([`outbox`]), the order-creating
//! transaction ([`create`], with its [`idempotency`] keys), the order reads and writes more
//! than one binary needs ([`orders`]), the business status and its history ([`status`]),
//! fulfilment requests ([`fulfilment`]), API keys ([`keys`]), the API clients' Salesforce scopes
//! ([`clients`]) and the Salesforce outbound messages received ([`outbound`]).

pub mod clients;
pub mod create;
pub mod fulfilment;
pub mod idempotency;
pub mod keys;
pub mod orders;
pub mod outbound;
pub mod outbox;
pub mod status;

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The schema, from the workspace's top-level `migrations/` directory.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Database settings, flattened into each binary's command line.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbConfig {
    /// Postgres connection URL. The database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderbridge",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub database_url: SecretString,
    /// Most connections this process keeps open.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, global = true)]
    pub db_max_connections: u32,
    /// How long a piece of work waits for a free database connection before giving up (order-api
    /// answers 503; the other services retry), so an unreachable database fails fast instead of
    /// hanging.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub db_acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub db_statement_timeout: Duration,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

/// Why the database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    // The URL may hold a password: never echo it.
    #[error("DATABASE_URL is not a valid Postgres URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot create the database")]
    Create(#[source] sqlx::Error),
    #[error("cannot apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbConfig {
    /// Builds a pool (creating the database if needed). Connections are opened lazily, checked
    /// before use (`test_before_acquire`) and recycled after `max_lifetime`, so connections that
    /// died in a network glitch or a Postgres restart are not handed out again.
    pub async fn connect(&self, application_name: &str) -> Result<PgPool, DbError> {
        let url = self.database_url.expose_secret();
        let options: PgConnectOptions = url.parse().map_err(DbError::InvalidUrl)?;
        ensure_database(url).await?;
        let statement_timeout = self.db_statement_timeout.as_millis().to_string();
        // Server-side TCP keepalives: a client that vanished (network partition, frozen VM)
        // is noticed in ~25 s instead of the kernel's ~2 h, so the locks its session held
        // (the relay's leader lock, row locks) are released for the others.
        let options = options.application_name(application_name).options([
            ("statement_timeout", statement_timeout.as_str()),
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]);
        Ok(PgPoolOptions::new()
            .max_connections(self.db_max_connections)
            .acquire_timeout(self.db_acquire_timeout)
            .test_before_acquire(true)
            .max_lifetime(Duration::from_secs(30 * 60))
            .idle_timeout(Duration::from_secs(10 * 60))
            .connect_lazy_with(options))
    }
}

async fn ensure_database(url: &str) -> Result<(), DbError> {
    if Postgres::database_exists(url)
        .await
        .map_err(DbError::Create)?
    {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Ok(()) => {
            tracing::info!("created the database");
            Ok(())
        }
        // Another process created it between our check and our CREATE: 42P04 if its CREATE
        // committed first, 23505 (pg_database's unique index) if both ran at the same time.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(e) => Err(DbError::Create(e)),
    }
}

/// Applies pending migrations. Safe to run from several processes at once: sqlx takes an
/// advisory lock around them.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    // sqlx's `CREATE TABLE IF NOT EXISTS _sqlx_migrations` answers every start after the first
    // with a NOTICE ("already exists, skipping") that sqlx logs at INFO: noise in every
    // service's start-up. The migrations run on a connection of their own with notices off
    // (warnings and errors still come through); the pool's connections keep the default.
    let options = (*pool.connect_options())
        .clone()
        .options([("client_min_messages", "warning")]);
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_with(options)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)?;
    let applied = MIGRATOR.run(&own).await;
    own.close().await;
    applied?;
    Ok(())
}
