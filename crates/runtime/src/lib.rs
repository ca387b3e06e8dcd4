//! Process plumbing shared by every orderbridge binary: log set-up ([`LogConfig::init`]) and the
//! shutdown signal ([`shutdown_signal`]), the parser for loop intervals ([`parse_interval`]), the
//! admin server ([`admin`]), Prometheus rendering ([`metrics`]) and reconnect delays
//! ([`backoff::Backoff`]).

pub mod admin;
pub mod backoff;
pub mod metrics;

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
#[command(next_help_heading = "Logging")]
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
    /// Installs the global subscriber. Call once, first thing in `main`. Logs go to stderr, so
    /// a command's real output on stdout (an API key, a document) can be piped cleanly.
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
                        .with_writer(std::io::stderr)
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false),
                )
                .try_init(),
            LogFormat::Pretty => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init(),
        };
        Ok(())
    }
}

/// Parses a duration (`humantime` syntax: `500ms`, `1s`, `5m`) that paces a loop or bounds a wait:
/// at least 10 ms, so a zero cannot turn a poll or reconnect loop into a busy loop.
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(10) {
        return Err(format!("`{s}` is too short: use at least 10ms"));
    }
    Ok(d)
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

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn intervals_must_not_make_busy_loops() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("1ms").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
