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
    /// Start with no products (without SF_EMULATOR_SEED_FILE the org starts with the built-in
    /// dev catalogue: SKU-RED-MUG, SKU-SPOON, SKU-TEA, SKU-001 … SKU-020).
    #[arg(long, env = "SF_EMULATOR_EMPTY")]
    empty: bool,
    #[command(flatten)]
    log: LogConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    let mut emulator = cli.emulator;
    if emulator.seed_file.is_none() && !cli.empty {
        emulator.seed_json = Some(sf_emulator::seed::DEV_CATALOGUE);
    }
    sf_emulator::serve(emulator, shutdown_signal()).await
}
