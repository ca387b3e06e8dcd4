//! `fulfilment-receiver`: the reference fulfilment system (see the library docs).

use anyhow::Context;
use clap::Parser;
use fulfilment_receiver::{ReceiverConfig, ReceiverState, app};
use orderbridge_runtime::LogConfig;

#[derive(Parser)]
#[command(
    version,
    about = "The reference fulfilment system for local runs and tests"
)]
struct Cli {
    #[command(flatten)]
    log: LogConfig,
    #[command(flatten)]
    receiver: ReceiverConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    let addr = cli.receiver.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "fulfilment receiver listening");
    let state = ReceiverState::new(cli.receiver);
    let stopping = state.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            orderbridge_runtime::shutdown_signal().await;
            stopping.release_hangs();
        })
        .await
        .context("server failed")
}
