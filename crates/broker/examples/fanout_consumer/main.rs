//! A worked fan-out example: another system (a billing service) reading orderbridge's
//! `order.submitted` events from its own queue, with its own dead letters, checking each
//! message's signature and handling each `message_id` once (the rules: `billing.rs`).
//!
//! ```sh
//! # beside a running orderbridge (scripts/dev): the same broker, namespace and signing key
//! BROKER_SIGNING_KEY=dev:orderbridge-development-signing-key-not-secret \
//!   cargo run -p orderbridge-broker --example fanout_consumer -- --subscriber billing
//! ```
//!
//! It declares `billing.order-submitted` (bound to `{ns}.events` with `order.submitted`),
//! `billing.dlx` and `billing.dead-letters`, then prints one line per message until Ctrl-C.
//! A real service would reconnect when the connection drops (orderbridge's own services use
//! `orderbridge_broker::Supervisor`); this one exits.

mod billing;

use std::process::ExitCode;

use clap::Parser;
use orderbridge_broker::BrokerConfig;
use orderbridge_broker::lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;

#[derive(Parser)]
struct Cli {
    /// AMQP_URL, BROKER_NAMESPACE (whose `{ns}.events` to read), BROKER_SIGNING_KEY (the key
    /// orderbridge signs with) and BROKER_SIGNING_KEYS_PREVIOUS (during a rotation).
    #[command(flatten)]
    broker: BrokerConfig,
    /// The prefix of this subscriber's own queue, dead-letter exchange and queue.
    #[arg(long, default_value = "billing")]
    subscriber: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout_consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let keyring = cli.broker.keyring()?;
    let events_exchange = cli.broker.topology()?.events_exchange;
    // The first node of a cluster list will do for an example.
    let url = orderbridge_broker::amqp_urls(cli.broker.amqp_url.expose_secret())
        .next()
        .ok_or("AMQP_URL is empty")?
        .to_owned();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let names = billing::Names::new(&cli.subscriber);
    billing::declare(&channel, &events_exchange, &names).await?;
    println!(
        "consuming {} (bound to {events_exchange} with {}), dead letters to {}",
        names.queue,
        billing::ROUTING_KEY,
        names.dead_letter_queue
    );
    let mut state = billing::Billing::new(keyring);
    let print = |id: &str, outcome: &billing::Outcome| match outcome {
        billing::Outcome::Invoiced(i) => println!(
            "{id}: invoiced order {} ({}) {} {}",
            i.order_id, i.client_ref, i.total, i.currency
        ),
        billing::Outcome::Duplicate => println!("{id}: already handled, acknowledged"),
        billing::Outcome::Refused(why) => println!("{id}: dead-lettered: {why}"),
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    billing::run(&channel, &names, &mut state, print, ctrl_c).await?;
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}
