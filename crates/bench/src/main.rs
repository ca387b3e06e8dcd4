//! `orderbridge-bench`: measures the whole pipeline as it runs in production (the release
//! binaries, real Postgres and RabbitMQ, the Salesforce emulator at a realistic latency), prints
//! each figure beside its target (PASS/MISS), and checks at the end that every accepted order
//! is in Salesforce exactly once (`orderbridge_cli::reconcile`; intake, which runs no worker,
//! checks Postgres, and relay checks what it received from the broker).
//!
//! Every subcommand builds its own [`stack::Stack`] (a fresh database, a broker namespace, the
//! services on free ports, logs in the output directory) and tears it down. A new subcommand is
//! a module with an `Args` struct flattening [`stack::StackArgs`] and a `run` returning whether
//! its correctness checks held, measuring inside [`stack::with_stack`]; the poster, the
//! readings around a run ([`snapshot`]), the report, JSON and chart helpers are shared.

mod chaos;
mod chart;
mod common;
mod cost;
mod drain;
mod e2e;
mod fulfilment;
mod inbound;
mod intake;
mod load;
mod outbound;
mod poster;
mod procfs;
mod relay;
mod report;
mod slowloris;
mod snapshot;
mod stack;
mod stats;
mod verify;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderbridge_runtime::LogConfig;

/// Benchmarks of the orderbridge pipeline, each figure beside its target (PASS/MISS).
///
/// Each run starts what it measures (a fresh Postgres database, a RabbitMQ namespace, the
/// Salesforce emulator and the release binaries on free ports), tears it down afterwards, and
/// writes report.txt, report.json and an SVG chart to its output directory. Build the binaries
/// first: `cargo build --release --bins`. Exit status: 0 when every accepted order reached
/// Salesforce exactly once (performance targets are reported, not enforced), 1 when a
/// correctness check failed, 2 when the run could not be done.
#[derive(Debug, Parser)]
#[command(name = "orderbridge-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Orders through the whole path at a given rate: orders/s, POST→synced latency observed
    /// through the API, Salesforce API calls per 1,000 orders, peak RSS per process.
    E2e(e2e::E2eArgs),
    /// POST /v1/orders at full speed on N connections beside the same transaction straight on
    /// Postgres (the limit): orders/s, latency, the ratio. Only order-api runs.
    Intake(intake::IntakeArgs),
    /// Outbox → RabbitMQ: a raw publish-with-confirms loop (the limit), the relay draining a
    /// backlog, and commit → publish lag at a fixed rate. Only outbox-relay runs.
    Relay(relay::RelayArgs),
    /// A backlog already in the outbox drained into Salesforce: orders/s from the relay's start
    /// to the last synced order, time to publish everything, API calls per 1,000 orders.
    Drain(drain::DrainArgs),
    /// Orders at a steady rate while processes are killed and doubled, connections cut,
    /// Salesforce made to fail in every documented way and poison put on the queue; then every
    /// order classified (ok, lost, duplicated, unexpected, failed). Fails unless nothing was
    /// lost, duplicated or unexpected and only the poison was dead-lettered. See
    /// crates/bench/CHAOS.md.
    Chaos(Box<chaos::ChaosArgs>),
    /// order-api under 2,000 half-open connections (slowloris): the latency of normal requests
    /// on new connections before, during and after, and order-api's memory. Only order-api runs.
    Slowloris(slowloris::SlowlorisArgs),
    /// The return path: orders synced, then status changes made in Salesforce at a fixed rate
    /// and watched through the API (SSE), then a backlog drained by a restarted sf-subscriber:
    /// change → visible p99, backlog changes/s, the subscriber's memory; every order ends with
    /// Salesforce's status and one history entry per change.
    Inbound(inbound::InboundArgs),
    /// The fulfilment loop: orders synced, then approved in Salesforce at a fixed rate; a Flow
    /// publishes the provisioning event, fulfilment-worker calls the reference receiver and
    /// writes the result back: approval → provisioned (through the API) p50/p95/p99; every
    /// order ends provisioned on both sides, provisioned exactly once, nothing dead-lettered.
    Fulfilment(fulfilment::FulfilmentArgs),
    /// Salesforce outbound messages into order-api: SOAP envelopes of `--per-envelope` (100)
    /// notifications posted closed loop on `--connections`: notifications/s (target ≥ 1,000),
    /// per-envelope latency; every envelope acknowledged, every notification stored once, a
    /// redelivery changes nothing, every order's status history as its notifications said.
    Outbound(outbound::OutboundArgs),
    /// Cost growth: intake ratio, `GET /v1/orders/{id}` and list latencies on the fresh
    /// database, then again after `--preload` (5,000,000) orders were written in bulk; both
    /// side by side with after ÷ before (target: intake ratio and GET p99 within 10 %), the
    /// preload's time and the tables' sizes. Only order-api runs.
    Cost(cost::CostArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.log.init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::E2e(args) => e2e::run(args).await,
        Command::Drain(args) => drain::run(args).await,
        Command::Intake(args) => intake::run(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Chaos(args) => chaos::run(*args).await,
        Command::Slowloris(args) => slowloris::run(args).await,
        Command::Inbound(args) => inbound::run(args).await,
        Command::Fulfilment(args) => fulfilment::run(args).await,
        Command::Outbound(args) => outbound::run(args).await,
        Command::Cost(args) => cost::run(args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("a correctness check FAILED (see the table)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
