//! `outbox-relay`: see the library docs and README.md.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orderbridge_broker::Backoff;
use orderbridge_runtime::admin;
use outbox_relay::{Cli, Relay, StatusApplier};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;

    // No key, no start: before waiting for anything else.
    if cli.broker.keyring()?.signs_with_dev_key() {
        tracing::warn!(
            "BROKER_SIGNING_KEY is the public development key: fine locally, never in production"
        );
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        orderbridge_runtime::shutdown_signal().await;
        let _ = shutdown_tx.send(true);
    });

    // Bind first: a taken admin port is a configuration error worth failing on at once.
    let admin_listener = admin::bind(cli.relay.admin_addr)
        .await
        .with_context(|| format!("cannot bind RELAY_ADMIN_ADDR {}", cli.relay.admin_addr))?;

    // Postgres may still be starting: wait for it (and apply migrations, which is safe from
    // several processes at once) instead of crash-looping.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let pool = loop {
        let attempt = async {
            let pool = cli.db.connect(&cli.relay.db_application_name).await?;
            orderbridge_db::migrate(&pool).await?;
            Ok::<_, orderbridge_db::DbError>(pool)
        };
        match tokio::time::timeout(cli.relay.db_timeout * 4, attempt).await {
            Ok(Ok(pool)) => break pool,
            Ok(Err(e)) => tracing::warn!(error = %e, "database not ready"),
            Err(_) => tracing::warn!("database not ready: timed out"),
        }
        let mut rx = shutdown_rx.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff.fail()) => {}
            _ = rx.wait_for(|v| *v) => return Ok(()),
        }
    };

    let relay = Relay::new(cli.relay.clone(), cli.broker.clone(), pool.clone())?;
    let mut admin_shutdown = shutdown_rx.clone();
    let admin = tokio::spawn(admin::serve(admin_listener, relay.metrics(), async move {
        let _ = admin_shutdown.wait_for(|v| *v).await;
    }));
    // The return path runs on every instance, whoever publishes: applying a status report is
    // idempotent, so the instances are simply competing consumers of the status queue.
    let applier = StatusApplier::new(
        cli.status.clone(),
        &cli.relay,
        cli.broker.clone(),
        &pool,
        relay.metrics(),
    )?;
    let applier = tokio::spawn(applier.run(shutdown_rx.clone()));
    tracing::info!(admin = %cli.relay.admin_addr, namespace = %cli.broker.broker_namespace, "outbox relay starting");
    relay.run(shutdown_rx).await?;
    // Both saw the same shutdown; the applier finishes and acknowledges its batch meanwhile.
    let applier_limit = cli.relay.db_timeout + cli.broker.broker_op_timeout * 2;
    match tokio::time::timeout(applier_limit, applier).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => tracing::error!(error = %e, "status applier task failed"),
        Err(_) => tracing::warn!("status applier did not stop in time"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    Ok(())
}
