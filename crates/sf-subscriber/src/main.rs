//! `sf-subscriber`: see the library docs and README.md.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use orderbridge_runtime::backoff::Backoff;
use sf_subscriber::batch::Context;
use sf_subscriber::effects::Rules;
use sf_subscriber::metrics::Metrics;
use sf_subscriber::provision::ProvisionRules;
use sf_subscriber::stream::{self, StreamSettings};
use sf_subscriber::{Cli, admin, store};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest allocation the Avro decoder may make for one value: a hostile length prefix in a
/// payload cannot make it reserve gigabytes (events are at most 1 MB).
const AVRO_MAX_ALLOCATION: usize = 16 * 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    let _ = apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION);
    let s = &cli.subscriber;
    // TLS is set up (and SF_CA_CERT_FILE read) now, so a bad file stops the start at once.
    let tls = if s.pubsub_endpoint.starts_with("https://") {
        Some(
            sf_subscriber::grpc::tls_config(cli.salesforce.ca_cert_file.as_deref())
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let signal_tx = shutdown_tx.clone();
    tokio::spawn(async move {
        orderbridge_runtime::shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    // Bind first: a taken admin port is a configuration error worth failing on at once.
    let admin_listener = orderbridge_runtime::admin::bind(s.admin_addr)
        .await
        .with_context(|| format!("cannot bind SUBSCRIBER_ADMIN_ADDR {}", s.admin_addr))?;
    let metrics = Arc::new(Metrics::new(&s.topics.0));
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_task = tokio::spawn(admin::serve(admin_listener, metrics.clone(), async move {
        let _ = admin_shutdown.wait_for(|v| *v).await;
    }));

    let salesforce = orderbridge_salesforce::Client::new(&cli.salesforce)?;

    // Postgres may still be starting: wait for it (and migrate) instead of crash-looping.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let pool = loop {
        let attempt = async {
            let pool = cli.db.connect(&s.db_application_name).await?;
            orderbridge_db::migrate(&pool).await?;
            Ok::<_, orderbridge_db::DbError>(pool)
        };
        match tokio::time::timeout(s.call_timeout * 4, attempt).await {
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

    let ctx = Arc::new(Context {
        pool: pool.clone(),
        salesforce,
        status_map: s.status_map.clone(),
        rules: Rules {
            client_name: cli.salesforce.client_name.clone(),
            extra_status_fields: s.extra_status_fields.0.clone(),
        },
        provision: ProvisionRules {
            event_topic: s.provision_topic(),
            on_status: s.provision_on_status.0.clone(),
        },
        metrics: metrics.clone(),
        call_timeout: s.call_timeout,
    });
    if let Some(topic) = s.provision_topic().filter(|t| !s.topics.0.contains(t)) {
        tracing::warn!(%topic, "SUBSCRIBER_PROVISION_EVENT's topic is not in SF_PUBSUB_TOPICS: its events will not be received");
    }
    let settings = StreamSettings {
        endpoint: s.pubsub_endpoint.clone(),
        tls,
        batch: s.batch,
        initial: s.initial_replay,
        fallback: s.replay_fallback,
        reconnect_min: s.reconnect_min,
        reconnect_max: s.reconnect_max,
        call_timeout: s.call_timeout,
        idle_timeout: s.idle_timeout,
    };
    let mut tasks = JoinSet::new();
    for topic in &s.topics.0 {
        tasks.spawn(stream::run(
            ctx.clone(),
            settings.clone(),
            topic.clone(),
            shutdown_rx.clone(),
        ));
    }
    tasks.spawn(purge_inbox(pool, s.inbox_retention, shutdown_rx.clone()));
    tracing::info!(admin = %s.admin_addr, endpoint = %s.pubsub_endpoint, topics = ?s.topics.0, "sf-subscriber starting");

    // Run until a signal. The tasks only end when told to; one that ends on its own (a panic)
    // stops the process, so that a supervisor restarts it rather than it running half-deaf.
    let mut rx = shutdown_rx.clone();
    tokio::select! {
        _ = rx.wait_for(|v| *v) => {}
        ended = tasks.join_next() => {
            match ended {
                Some(Err(e)) => tracing::error!(error = %e, "a subscriber task failed; stopping"),
                _ => tracing::error!("a subscriber task ended on its own; stopping"),
            }
            let _ = shutdown_tx.send(true);
        }
    }
    // Each stream commits or drops its batch when it sees the shutdown; wait for them briefly.
    let deadline = tokio::time::Instant::now() + s.call_timeout + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => tracing::error!(error = %e, "a subscriber task failed"),
            Err(_) => {
                tracing::warn!(left = tasks.len(), "subscriber tasks did not stop in time");
                tasks.abort_all();
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("sf-subscriber stopped");
    Ok(())
}

/// Deletes inbox rows past the retention, hourly.
async fn purge_inbox(pool: sqlx::PgPool, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(4));
        loop {
            match store::purge_inbox(&pool, before).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(rows = n, "inbox purged"),
                Err(e) => {
                    tracing::warn!(error = %e, "inbox purge failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}
