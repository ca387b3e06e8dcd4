//! `sf-emulator` binary: a local Salesforce stand-in. See the crate README.

use clap::Parser;
use orderbridge_runtime::{LogConfig, shutdown_signal};
use sf_emulator::EmulatorConfig;

/// A local Salesforce org speaking the real REST API.
#[derive(Debug, Parser)]
#[command(name = "sf-emulator", version, about)]
struct Cli {
    #[command(flatten)]
    emulator: EmulatorConfig,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    sf_emulator::serve(cli.emulator, shutdown_signal()).await
}
