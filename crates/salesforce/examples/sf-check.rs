//! Checks a Salesforce configuration end to end: logs in with the SF_* settings, checks that the
//! pinned API version is offered, and prints the org's API usage.
//!
//! ```sh
//! cargo run -p orderbridge-salesforce --example sf-check            # against the local emulator
//! SF_AUTH_FLOW=jwt SF_LOGIN_URL=https://login.salesforce.com SF_CLIENT_ID=… \
//!   SF_USERNAME=… SF_PRIVATE_KEY_FILE=server.key cargo run -p orderbridge-salesforce --example sf-check
//! ```

use clap::Parser;
use orderbridge_salesforce::{Client, SalesforceConfig};

#[derive(Parser)]
#[command(about = "Log in to Salesforce with the SF_* settings and print what the org reports")]
struct Cli {
    #[command(flatten)]
    salesforce: SalesforceConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = Client::new(&cli.salesforce)?;
    let instance = client.login().await?;
    println!(
        "logged in with {}: instance {instance}",
        cli.salesforce.auth_flow
    );
    if let Some(identity) = client.identity_url() {
        println!("identity: {identity}");
    }
    let versions = client.versions().await?;
    let pinned = client.api_version();
    match versions.iter().find(|v| v.version == pinned) {
        Some(v) => println!("API version {pinned} is offered ({})", v.label),
        None => anyhow::bail!(
            "API version {pinned} is not offered by this instance (newest: {:?}); set SF_API_VERSION",
            versions.last().map(|v| &v.version)
        ),
    }
    let limits = client.limits().await?;
    if let Some(daily) = limits.get("DailyApiRequests") {
        println!(
            "daily API requests: {} of {} remaining",
            daily.remaining, daily.max
        );
    }
    if let Some(usage) = client.usage() {
        println!("usage share: {:.1} %", usage.share() * 100.0);
    }
    Ok(())
}
