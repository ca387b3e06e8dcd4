//! `orderbridge dlq list|show|replay`: inspect and replay the dead-letter queue (`sync-worker dlq …`
//! is an alias that runs this command).
//!
//! Dead letters reach `{ns}.dead-letters` two ways:
//!
//! - the worker gives up on a message (permanent Salesforce error, attempts exhausted,
//!   undecodable, at its last delivery) and publishes it to the dead-letter exchange with our failure headers
//!   ([`orderbridge_broker::headers`]); it came from the Salesforce work queue;
//! - the broker dead-letters it itself (delivery limit exceeded on the work queue, a consumer
//!   rejecting a status event, …). Those carry RabbitMQ's `x-death` header and none of ours.
//!
//! Every command connects once and declares the topology. Nothing here consumes: messages are
//! fetched one at a time with `basic.get`, held unacknowledged while the command looks at them,
//! and given back with `basic.nack` + requeue rather than `basic.reject` or closing the channel:
//! from RabbitMQ 4.3 those two count as failed deliveries towards a quorum queue's delivery
//! limit and `basic.nack` does not (older brokers count every return). If the command dies
//! half-way, the broker returns whatever it held when the connection goes.
//!
//! A dead letter's id is its AMQP `message_id` (the event id); a message without one is known by
//! `body-` and a short hash of its body.
//!
//! Every message between the services is signed (`orderbridge_broker::signing`), so `replay`
//! needs `BROKER_SIGNING_KEY`: a letter whose signature verifies (with the signing key or a
//! previous one) is re-signed with the signing key, so it still verifies after the key that
//! first signed it is retired. A letter that does not verify (dead-lettered as `bad_signature`:
//! forged, changed, or from before signing) is not replayed, unless the operator looked at it
//! and vouches for it with `--sign-unverified`.
//!
//! - `list`: `list` and `show`, which look without taking anything;
//! - `replay`: `replay`, which republishes and then removes;
//! - `letter`: what a fetched dead letter says (id, origin, failure record);
//! - `render`: the table and the full `show` rendering, with outside data made safe to print.

mod letter;
mod list;
mod render;
mod replay;
#[cfg(test)]
mod test_support;

use std::io::Write;

use clap::Subcommand;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use orderbridge_broker::{BrokerConfig, BrokerError, Session, Supervisor, Topology};

use letter::DeadLetter;

/// The `dlq` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DlqCommand {
    /// List dead letters without removing them.
    List {
        /// Show at most this many, the first in the queue. (Looking requeues them, and a quorum
        /// queue may put requeued messages at the back, so the order can change between runs.)
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: properties, every header, the body.
    Show {
        /// The message id (event id) as `list` prints it.
        id: String,
    },
    /// Republish dead letters to the queue they died in, then remove them from the dead-letter
    /// queue.
    Replay {
        /// The message id (event id) as `list` prints it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead letter present when the command starts.
        #[arg(long)]
        all: bool,
        /// Also replay letters whose signature does not verify (reason `bad_signature`), signed
        /// with BROKER_SIGNING_KEY: only after checking them with `show`, since this makes a
        /// forged message genuine.
        #[arg(long)]
        sign_unverified: bool,
    },
}

/// Why a `dlq` command failed. None of these carry the broker URL.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("no dead letter with id {0}")]
    NotFound(String),
    #[error(
        "{failed} dead letter(s) could not be replayed and stay in the dead-letter queue \
         ({replayed} replayed); first failure: {first}"
    )]
    ReplayFailed {
        failed: usize,
        replayed: usize,
        first: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one `dlq` command against the broker, writing what it reports to `out` (a progress bar,
/// if any, goes to stderr).
///
/// `replay` is at-least-once: a dead letter is acknowledged (removed) only after the broker
/// confirmed the republished copy, so a crash or timeout between the two leaves it in the
/// dead-letter queue as well, and replaying again sends a duplicate. The worker absorbs that: it
/// upserts by external id, so a duplicate event writes the same Salesforce record again.
pub async fn run(
    cmd: DlqCommand,
    broker: &BrokerConfig,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    // Replaying signs: without a key, fail before touching anything.
    let keyring = match cmd {
        DlqCommand::Replay { .. } => Some(broker.keyring()?),
        _ => None,
    };
    let supervisor = Supervisor::new(broker.clone(), "orderbridge-dlq")?;
    let session = supervisor.try_connect().await?;
    let ctx = Ctx {
        config: broker,
        topology: supervisor.topology(),
        session: &session,
    };
    let result = match (cmd, keyring) {
        (DlqCommand::List { limit, json }, _) => list::list(&ctx, limit, json, out).await,
        (DlqCommand::Show { id }, _) => list::show(&ctx, &id, out).await,
        (
            DlqCommand::Replay {
                id,
                sign_unverified,
                ..
            },
            Some(keyring),
        ) => {
            let signing = replay::Signing {
                keyring: &keyring,
                sign_unverified,
            };
            replay::replay(&ctx, id.as_deref(), &signing, out).await
        }
        (DlqCommand::Replay { .. }, None) => {
            Err(BrokerError::from(orderbridge_broker::SigningError::Missing).into())
        }
    };
    // Whatever is still unacknowledged (after an error) goes back to the queue with the
    // connection.
    session.close(broker).await;
    result
}

struct Ctx<'a> {
    pub(super) config: &'a BrokerConfig,
    pub(super) topology: &'a Topology,
    pub(super) session: &'a Session,
}

impl Ctx<'_> {
    pub(super) fn channel(&self) -> &Channel {
        &self.session.channel
    }

    /// Ready dead letters now: what a command looks at at most, so that letters arriving while
    /// it runs wait for the next run instead of keeping it going.
    pub(super) async fn count(&self) -> Result<u32, DlqError> {
        Ok(self
            .topology
            .dead_letter_count(self.config, self.channel())
            .await?)
    }

    /// The next ready dead letter, held unacknowledged; `None` when none is ready.
    pub(super) async fn get(&self) -> Result<Option<DeadLetter>, DlqError> {
        let got = self
            .config
            .op(
                "basic.get",
                self.channel().basic_get(
                    self.topology.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                ),
            )
            .await?;
        Ok(got.map(|m| {
            let d = m.delivery;
            DeadLetter::new(d.delivery_tag, d.properties, d.data)
        }))
    }

    /// Gives back every message still held, up to and including `last_tag` (the ones acked in
    /// between are settled already and unaffected).
    pub(super) async fn give_back(&self, last_tag: Option<u64>) -> Result<(), DlqError> {
        if let Some(tag) = last_tag {
            self.config
                .op(
                    "basic.nack",
                    self.channel().basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    ),
                )
                .await?;
        }
        Ok(())
    }

    pub(super) async fn ack(&self, tag: u64) -> Result<(), DlqError> {
        self.config
            .op(
                "basic.ack",
                self.channel().basic_ack(tag, BasicAckOptions::default()),
            )
            .await?;
        Ok(())
    }
}

pub(super) fn dead_letters(n: u64) -> String {
    if n == 1 {
        "1 dead letter".to_owned()
    } else {
        format!("{n} dead letters")
    }
}
