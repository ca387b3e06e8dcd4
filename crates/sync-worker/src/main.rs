//! `sync-worker`: see the library docs and README.md.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use orderbridge_broker::Backoff;
use orderbridge_mapping::Targets;
use orderbridge_runtime::admin;
use orderbridge_salesforce::ErrorClass;
use sync_worker::config::{Cli, Command};
use sync_worker::metrics::Metrics;
use sync_worker::pricebook::PriceBook;
use sync_worker::targets;
use sync_worker::worker::Worker;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;

    match cli.command.clone().unwrap_or(Command::Run) {
        Command::Dlq { args } => {
            let status = sync_worker::dlq_alias::run(&cli.broker, args).await?;
            // The CLI's own exit code (0, or 2 on errors), as if it had been run directly.
            std::process::exit(status.code().unwrap_or(2));
        }
        Command::CheckMapping { salesforce } => check_mapping(&cli, salesforce).await,
        Command::Run => run(cli).await,
    }
}

fn load_targets(cli: &Cli) -> anyhow::Result<Targets> {
    Ok(Targets::load(cli.worker.mapping_file.as_deref())?)
}

/// Reads an environment variable for a target's own Salesforce settings (`SF_<NAME>_*`).
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn check_mapping(cli: &Cli, salesforce: bool) -> anyhow::Result<()> {
    let targets = load_targets(cli)?;
    let names: Vec<&str> = targets.targets().iter().map(|t| t.name.as_str()).collect();
    if names.len() == 1 {
        println!("mapping is valid against the order model");
    } else {
        println!(
            "targets {} and their mappings are valid against the order model",
            names.join(", ")
        );
    }
    if !salesforce {
        return Ok(());
    }
    let clients = targets::clients(&cli.salesforce, &targets, &env)?;
    let problems = targets::check(&targets, &clients).await?;
    if !problems.0.is_empty() {
        bail!("mapping does not fit the org: {problems}");
    }
    for (target, client) in targets.targets().iter().zip(clients) {
        let name = cli
            .worker
            .pricebook
            .clone()
            .or_else(|| target.mapping.pricebook.clone());
        let pricebook = PriceBook::new(client, name);
        let resolved = pricebook.resolve().await?;
        let whose = if names.len() == 1 {
            String::new()
        } else {
            format!("target {}: ", target.name)
        };
        println!(
            "{whose}mapping fits the org; price book {:?} ({})",
            resolved.name, resolved.id
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let targets = Arc::new(load_targets(&cli)?);
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
    let admin_listener = admin::bind(cli.worker.admin_addr)
        .await
        .with_context(|| format!("cannot bind WORKER_ADMIN_ADDR {}", cli.worker.admin_addr))?;
    let metrics = Arc::new(Metrics::default());
    let mut admin_shutdown = shutdown_rx.clone();
    let admin = tokio::spawn(admin::serve(admin_listener, metrics.clone(), async move {
        let _ = admin_shutdown.wait_for(|v| *v).await;
    }));

    let clients = targets::clients(&cli.salesforce, &targets, &env)?;
    // Every target's mapping must fit its org before anything is consumed: a missing field
    // would otherwise dead-letter every order. Salesforce being down is not a reason to exit:
    // wait for it.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        for client in &clients {
            if !client.usage_within_share() {
                // The last reading says the budget is spent, so the client's guard would
                // refuse the check locally for SF_API_USAGE_RECHECK. `/limits` bypasses the
                // guard: ask it.
                if let Err(e) = client.limits().await {
                    tracing::debug!(error = %e, "API budget probe failed");
                }
            }
        }
        match targets::check(&targets, &clients).await {
            Ok(p) if p.0.is_empty() => break,
            Ok(p) => bail!("the mapping does not fit the Salesforce org: {p}"),
            Err(e) if matches!(e.class(), ErrorClass::Config | ErrorClass::Permanent) => {
                bail!("cannot check the mapping against Salesforce: {e}")
            }
            Err(e) => {
                let wait = backoff.fail();
                tracing::warn!(error = %e, retry_in = ?wait, "Salesforce not usable yet (unreachable, or the API budget is spent); checking the mapping again");
                let mut rx = shutdown_rx.clone();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = rx.wait_for(|v| *v) => return Ok(()),
                }
            }
        }
    }

    let target_names: Vec<String> = targets.targets().iter().map(|t| t.name.clone()).collect();
    let router = targets::router(targets, clients, cli.worker.pricebook.as_deref(), &metrics);
    let worker = Worker::new(cli.worker.clone(), cli.broker.clone(), router, metrics)?;
    tracing::info!(admin = %cli.worker.admin_addr, namespace = %cli.broker.broker_namespace, targets = ?target_names, "sync worker starting");
    worker.run(shutdown_rx).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    tracing::info!("sync worker stopped");
    Ok(())
}
