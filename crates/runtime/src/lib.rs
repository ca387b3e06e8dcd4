//! Process plumbing shared by every orderbridge binary: log set-up ([`LogConfig::init`]) and the
//! shutdown signal ([`shutdown_signal`]).

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Coloured, human-readable lines, for a terminal.
    Pretty,
}

/// Logging settings, flattened into each binary's command line.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,order_api=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// The log filter did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid RUST_LOG filter `{filter}`: {source}")]
pub struct InvalidLogFilter {
    filter: String,
    source: tracing_subscriber::filter::ParseError,
}

impl LogConfig {
    /// Installs the global subscriber. Call once, first thing in `main`.
    pub fn init(&self) -> Result<(), InvalidLogFilter> {
        let filter = EnvFilter::try_new(&self.log_filter).map_err(|source| InvalidLogFilter {
            filter: self.log_filter.clone(),
            source,
        })?;
        let registry = tracing_subscriber::registry().with(filter);
        // `try_init` fails only when a subscriber is already set (tests): keep that one.
        let _ = match self.log_format {
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false),
                )
                .try_init(),
            LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).try_init(),
        };
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and Kubernetes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
