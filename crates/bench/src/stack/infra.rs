//! The run's own database and broker namespace: creating the database (and, through
//! `order-api create-api-key`, its schema and the bench's API client), the broker settings the
//! services use, and removing both at the end. Names are unique per run, so runs beside each
//! other on a shared Postgres and RabbitMQ do not meet.

use std::fs::File;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use orderbridge_broker::{BrokerConfig, Supervisor};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use super::process::tail;
use super::{API, BENCH_APPLICATION_NAME, CLIENT_NAME, Stack};

/// (server URL with `database` as the database, the same URL with `postgres` instead).
pub(super) fn database_urls(server: &str, database: &str) -> Result<(String, String)> {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow!("DATABASE_URL is not a postgres:// URL"))?;
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    let with = |db: &str| match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    };
    Ok((with(database), with("postgres")))
}

/// Creates the empty database `database` through the server's `postgres` database.
pub(super) async fn create_database(admin_url: &str, database: &str) -> Result<()> {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .context("cannot reach Postgres (DATABASE_URL)")?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&mut admin)
        .await
        .context("cannot create the bench database")?;
    let _ = admin.close().await;
    Ok(())
}

impl Stack {
    /// `order-api create-api-key --name bench` (which also migrates the database), then a pool
    /// on the database. Returns the key.
    pub async fn create_api_key(&mut self) -> Result<String> {
        let log = self.out.join("logs/create-api-key.log");
        let output = self
            .command(API, &[])
            .args(["create-api-key", "--name", CLIENT_NAME])
            .stderr(File::create(&log)?)
            .output()
            .await
            .context("cannot run order-api create-api-key")?;
        if !output.status.success() {
            bail!(
                "order-api create-api-key failed ({}):\n{}",
                output.status,
                tail(&log, 20)
            );
        }
        let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if key.is_empty() {
            bail!("order-api create-api-key printed no key");
        }
        let options: PgConnectOptions = self
            .database_url
            .parse()
            .context("DATABASE_URL is not a Postgres URL")?;
        self.pool = Some(
            PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options.application_name(BENCH_APPLICATION_NAME))
                .await
                .context("cannot connect to the bench database")?,
        );
        Ok(key)
    }

    pub fn pool(&self) -> Result<&PgPool> {
        self.pool
            .as_ref()
            .ok_or_else(|| anyhow!("the database is not set up yet"))
    }

    /// The id of the bench's API client.
    pub async fn client_id(&self) -> Result<Uuid> {
        sqlx::query_scalar("SELECT id FROM api_clients WHERE name = $1")
            .bind(CLIENT_NAME)
            .fetch_one(self.pool()?)
            .await
            .context("the bench's API client is missing")
    }

    /// The signing key the services run with (an `--env BROKER_SIGNING_KEY=…` wins).
    pub fn signing_key(&self) -> &str {
        self.setting("BROKER_SIGNING_KEY")
            .unwrap_or(self.signing_key.as_str())
    }

    /// The broker settings the services ran with (an `--env` may change the queue arguments,
    /// which name the retry queues).
    pub fn broker_config(&self) -> Result<BrokerConfig> {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            broker: BrokerConfig,
        }
        let setting = |key: &str, default: &str| self.setting(key).unwrap_or(default).to_owned();
        let argv = [
            "bench".to_owned(),
            "--amqp-url".into(),
            self.args.amqp_url.clone(),
            "--broker-namespace".into(),
            self.namespace.clone(),
            "--broker-retry-tiers".into(),
            setting("BROKER_RETRY_TIERS", "5s,1m,10m"),
            "--broker-delivery-limit".into(),
            setting("BROKER_DELIVERY_LIMIT", "10"),
            "--broker-signing-key".into(),
            self.signing_key().to_owned(),
        ];
        Ok(Wrapper::try_parse_from(argv)?.broker)
    }

    /// The exchange and queue of `relay`'s raw publish loop: in the run's namespace, so that
    /// the teardown can remove them if the loop could not.
    pub fn raw_queue_name(&self) -> String {
        format!("{}.bench-raw", self.namespace)
    }

    pub(super) async fn delete_namespace(&self) -> Result<()> {
        let config = self.broker_config()?;
        let supervisor = Supervisor::new(config.clone(), "orderbridge-bench")?;
        let session = supervisor.try_connect().await?;
        let deleted = supervisor
            .topology()
            .delete(&config, &session.channel)
            .await;
        // What `relay`'s raw loop declares; it deletes them itself, unless the run failed.
        let raw = self.raw_queue_name();
        let _ = config
            .op(
                "queue.delete",
                session
                    .channel
                    .queue_delete(raw.as_str().into(), Default::default()),
            )
            .await;
        let _ = config
            .op(
                "exchange.delete",
                session
                    .channel
                    .exchange_delete(raw.as_str().into(), Default::default()),
            )
            .await;
        session.close(&config).await;
        Ok(deleted?)
    }

    pub(super) async fn drop_database(&self) -> Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database
        ))
        .execute(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn database_url_keeps_server_and_query() {
        let (db, admin) =
            database_urls("postgres://u:p@h:5433/orderbridge?sslmode=disable", "x").unwrap();
        assert_eq!(db, "postgres://u:p@h:5433/x?sslmode=disable");
        assert_eq!(admin, "postgres://u:p@h:5433/postgres?sslmode=disable");
        let (db, _) = database_urls("postgres://h", "x").unwrap();
        assert_eq!(db, "postgres://h/x");
        assert!(database_urls("h:5432", "x").is_err());
    }
}
