//! `fulfilment-worker`: see the library docs and README.md.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fulfilment_worker::call::Caller;
use fulfilment_worker::config::Cli;
use fulfilment_worker::metrics::Metrics;
use fulfilment_worker::worker::Worker;
use fulfilment_worker::writeback::WriteBack;
use orderbridge_runtime::admin;
use orderbridge_runtime::backoff::Backoff;
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
    let f = &cli.fulfilment;
    let caller = Caller::new(
        f.fulfilment_url.clone(),
        f.fulfilment_signing_secret.clone(),
        f.fulfilment_timeout,
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        orderbridge_runtime::shutdown_signal().await;
        let _ = shutdown_tx.send(true);
    });

    // Bind first: a taken admin port is a configuration error worth failing on at once.
    let admin_listener = admin::bind(f.admin_addr)
        .await
        .with_context(|| format!("cannot bind FULFILMENT_ADMIN_ADDR {}", f.admin_addr))?;
    let metrics = Arc::new(Metrics::default());
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_task = tokio::spawn(admin::serve(admin_listener, metrics.clone(), async move {
        let _ = admin_shutdown.wait_for(|v| *v).await;
    }));

    // Postgres may still be starting: wait for it (and migrate, advisory-locked like every
    // service with a database) instead of crash-looping.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let pool = loop {
        let attempt = async {
            let pool = cli.db.connect("fulfilment-worker").await?;
            orderbridge_db::migrate(&pool).await?;
            Ok::<_, orderbridge_db::DbError>(pool)
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
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

    if let Some(longest) = cli.broker.broker_retry_tiers.iter().max()
        && f.requeue_after <= *longest
    {
        tracing::warn!(requeue_after = %humantime::format_duration(f.requeue_after), longest_tier = %humantime::format_duration(*longest), "FULFILMENT_REQUEUE_AFTER is not above the longest retry tier: requests waiting out a delay will be queued again early");
    }
    let sweeper = tokio::spawn(fulfilment_worker::sweeper::run(
        pool.clone(),
        f.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let salesforce = orderbridge_salesforce::Client::new(&cli.salesforce)?;
    let write_back = WriteBack::new(salesforce, f);
    let worker = Worker::new(
        f.clone(),
        cli.broker.clone(),
        pool,
        caller,
        write_back,
        metrics,
    )?;
    tracing::info!(admin = %f.admin_addr, fulfilment_host = f.fulfilment_url.host_str().unwrap_or(""), namespace = %cli.broker.broker_namespace, "fulfilment worker starting");
    worker.run(shutdown_rx).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), sweeper).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("fulfilment worker stopped");
    Ok(())
}
