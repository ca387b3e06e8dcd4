//! `orderbridge`: see the library docs and README.md.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use orderbridge_cli::command::{Cli, Command, ReconcileArgs, ReconcileTarget, run_reconcile};

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with status 2 on bad arguments, as the other errors below. The operator's
    // command logs its own steps (a backfill's checkpoint, a replay) and the libraries' warnings
    // only: their INFO lines ("logged in to Salesforce") are noise around its output.
    let command = Cli::command().mut_arg("log_filter", |a| {
        a.default_value(orderbridge_cli::DEFAULT_LOG_FILTER)
    });
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    if let Err(e) = cli.log.init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match &cli.command {
        Command::Reconcile(ReconcileArgs {
            target: Some(ReconcileTarget::Statuses(args)),
            ..
        }) => {
            let mut out = std::io::stdout().lock();
            match orderbridge_cli::statuses::run(args, &cli.db, &cli.salesforce, &mut out).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Reconcile(args) => {
            let mut out = std::io::stdout().lock();
            match run_reconcile(args, &cli.db, &cli.salesforce, &mut out).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Backfill(args) => {
            let mut out = std::io::stdout().lock();
            match orderbridge_cli::backfill::run(args, &cli.db, &mut out).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Keys { command } => {
            let mut out = std::io::stdout().lock();
            match orderbridge_cli::keys::run(command.clone(), &cli.db, &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Broker { command } => {
            let mut out = std::io::stdout().lock();
            let mut notes = std::io::stderr().lock();
            match orderbridge_cli::broker::run(command, &cli.broker, &mut out, &mut notes).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Status(args) => {
            let mut out = std::io::stdout();
            match orderbridge_cli::status::run(args, &cli.db, &cli.broker, &mut out).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Orders { command } => {
            // Not locked: `run` needs a `Send` writer (a lock guard is not).
            let mut out = std::io::stdout();
            match orderbridge_cli::orders::run(
                command,
                &cli.db,
                &cli.broker,
                &cli.salesforce,
                &mut out,
            )
            .await
            {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Dlq { command } => {
            // Not locked: `run` needs a `Send` writer (a lock guard is not).
            let mut out = std::io::stdout();
            match orderbridge_cli::dlq::run(command.clone(), &cli.broker, &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The error and its sources, one after another, as anyhow's `{:#}` would print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
