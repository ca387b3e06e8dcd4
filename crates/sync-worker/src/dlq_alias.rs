//! `sync-worker dlq …`: kept so that existing runbooks and scripts keep working, and nothing
//! more than that. The dead-letter commands belong to the operator CLI (`orderbridge dlq`); this
//! runs that binary with the same arguments and this process's broker settings, and exits with
//! its status, so the worker carries no operator tooling of its own.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;

use orderbridge_broker::BrokerConfig;

/// The operator CLI's binary name.
const ORDERBRIDGE: &str = "orderbridge";

/// Why the alias could not run `orderbridge dlq`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`sync-worker dlq` runs `{ORDERBRIDGE} dlq`, which could not be started from {program:?} \
     (looked beside sync-worker, then on PATH): {source}"
)]
pub struct AliasError {
    program: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Runs `orderbridge dlq <args>` and waits for it.
pub async fn run(broker: &BrokerConfig, args: Vec<OsString>) -> Result<ExitStatus, AliasError> {
    let program = orderbridge_binary();
    tokio::process::Command::new(&program)
        .arg("dlq")
        .args(args)
        // Settings given to sync-worker as flags reach the child too.
        .envs(broker.to_env())
        .status()
        .await
        .map_err(|source| AliasError { program, source })
}

/// `orderbridge` beside this executable (how every install lays the binaries out: the release
/// image, `target/debug`), else whatever PATH finds.
fn orderbridge_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(ORDERBRIDGE))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(ORDERBRIDGE))
}
