//! `sync-worker dlq list|show|replay` (placeholder until the dead-letter tool lands).

/// Dead-letter commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List,
}

/// Placeholder.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter tool not built yet")]
pub struct DlqError;

/// Placeholder.
pub async fn run(
    _cmd: DlqCommand,
    _broker: &orderbridge_broker::BrokerConfig,
    _out: &mut (impl std::io::Write + Send),
) -> Result<(), DlqError> {
    Err(DlqError)
}
