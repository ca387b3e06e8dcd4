//! `orderbridge broker gen-key|permissions|setup-users`: the broker's security set-up.
//!
//! - `gen-key`: a new random signing key for `BROKER_SIGNING_KEY` (see
//!   [`orderbridge_broker::signing`]);
//! - `permissions`: what each component's broker user may do, derived from the topology
//!   ([`orderbridge_broker::permissions`]);
//! - `setup-users` ([`users`]): declares the topology, then creates (or updates) one RabbitMQ
//!   user per component with exactly those permissions, through `rabbitmqctl` (run here, or
//!   printed as a script to run where the broker is).

mod users;

use std::io::Write;

use clap::{Args, Subcommand};
use orderbridge_broker::{BrokerConfig, BrokerError, Component, SigningError};
use secrecy::{ExposeSecret, SecretString};

pub use users::{SetupError, UserAccount, setup_users, user_name};

/// The `broker` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum BrokerCommand {
    /// Print a new random signing key (`id:secret`, 256 bits) for BROKER_SIGNING_KEY.
    GenKey {
        /// The key's id, which travels in every message (1 to 64 of A-Z a-z 0-9 . _ -).
        /// Default: `k` and today's date.
        #[arg(long)]
        id: Option<String>,
    },
    /// Print the broker permissions (configure, write, read) of each component's user.
    Permissions,
    /// Declare the topology (as AMQP_URL's user, who may), then create or update one RabbitMQ
    /// user per component (outbox-relay, sync-worker, operator, fulfilment-worker) on AMQP_URL's vhost with only the
    /// permissions it needs, using rabbitmqctl. Prints the AMQP_URL each component should use
    /// (run them with BROKER_DECLARE_TOPOLOGY=false). Exit status 0 on success, 2 on errors.
    SetupUsers(SetupUsersArgs),
}

/// `orderbridge broker setup-users` options.
#[derive(Debug, Clone, Args)]
pub struct SetupUsersArgs {
    /// Prefix of the user names (`<prefix>-outbox-relay`, `<prefix>-sync-worker`,
    /// `<prefix>-operator`, `<prefix>-fulfilment-worker`). Default: BROKER_NAMESPACE.
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// How to run rabbitmqctl, split at spaces: e.g. `docker compose exec -T rabbitmq
    /// rabbitmqctl` for a broker in a container.
    #[arg(long, default_value = "rabbitmqctl")]
    pub rabbitmqctl: String,
    /// Print the rabbitmqctl commands as a shell script on stdout (the component URLs go to
    /// stderr) instead of running them; the topology is still declared.
    #[arg(long)]
    pub print: bool,
    /// The outbox-relay user's password. Unset: a new user gets a random one (printed once), an
    /// existing user keeps its own.
    #[arg(long, env = "BROKER_PASSWORD_OUTBOX_RELAY", value_parser = secret, hide_env_values = true)]
    pub outbox_relay_password: Option<SecretString>,
    /// The sync-worker user's password (as above).
    #[arg(long, env = "BROKER_PASSWORD_SYNC_WORKER", value_parser = secret, hide_env_values = true)]
    pub sync_worker_password: Option<SecretString>,
    /// The operator user's password, for `orderbridge dlq` (as above).
    #[arg(long, env = "BROKER_PASSWORD_OPERATOR", value_parser = secret, hide_env_values = true)]
    pub operator_password: Option<SecretString>,
    /// The fulfilment-worker user's password (as above).
    #[arg(long, env = "BROKER_PASSWORD_FULFILMENT_WORKER", value_parser = secret, hide_env_values = true)]
    pub fulfilment_worker_password: Option<SecretString>,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

impl SetupUsersArgs {
    /// The password given for `component`'s user, if any.
    pub fn password(&self, component: Component) -> Option<&SecretString> {
        match component {
            Component::OutboxRelay => self.outbox_relay_password.as_ref(),
            Component::SyncWorker => self.sync_worker_password.as_ref(),
            Component::Operator => self.operator_password.as_ref(),
            Component::FulfilmentWorker => self.fulfilment_worker_password.as_ref(),
        }
    }
}

/// Why a `broker` command failed (exit status 2). Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum BrokerCommandError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `broker` command, writing its output to `out` (and, for `setup-users --print`, the
/// component URLs to `notes`).
pub async fn run(
    cmd: &BrokerCommand,
    broker: &BrokerConfig,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<(), BrokerCommandError> {
    match cmd {
        BrokerCommand::GenKey { id } => {
            let id = id
                .clone()
                .unwrap_or_else(|| chrono::Utc::now().format("k%Y%m%d").to_string());
            let key = orderbridge_broker::signing::generate_key(&id)?;
            writeln!(out, "{}", key.expose_secret())?;
        }
        BrokerCommand::Permissions => {
            let topology = broker.topology()?;
            writeln!(out, "user\tconfigure\twrite\tread")?;
            for c in Component::ALL {
                let p = topology.permissions(c);
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    user_name(&broker.broker_namespace, c),
                    p.configure,
                    p.write,
                    p.read
                )?;
            }
        }
        BrokerCommand::SetupUsers(args) => {
            let accounts = setup_users(args, broker, out).await?;
            let urls: &mut dyn Write = if args.print { notes } else { out };
            writeln!(
                urls,
                "# Each component's AMQP_URL (run them with BROKER_DECLARE_TOPOLOGY=false):"
            )?;
            for a in accounts {
                writeln!(urls, "{}", a.env_line())?;
            }
        }
    }
    Ok(())
}
