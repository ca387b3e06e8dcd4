//! `orderbridge status`: the whole system at a glance, from where each fact lives: every
//! service's admin endpoints (ready or not, and what its metrics say: a relay's partitions, a
//! worker's breaker and Salesforce API budget, the subscriber's streams and lag), Postgres (the
//! outbox backlog, the subscriber's open gaps, fulfilment under way) and the broker (every queue's
//! depth and consumers, the dead letters). It ends with the problems found, judged by the same
//! thresholds as the alert rules in `ops/prometheus/alerts.yml`, so the command and the pager
//! agree.
//!
//! A source that cannot be reached is itself a problem and is reported as such; the rest is
//! still shown. Nothing is changed anywhere.
//!
//! - `services`: the admin endpoints and the metrics page;
//! - `postgres`: the database's view;
//! - `problems`: the judgement;
//! - `render`: the text output.

mod postgres;
mod problems;
mod render;
mod services;

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Args;
use orderbridge_broker::{BrokerConfig, Supervisor, queue_stat};
use orderbridge_db::DbConfig;
use serde::Serialize;

pub use postgres::{Database, Fulfilment, Outbox, Subscriber, Topic};
pub use problems::{Thresholds, problems};
pub use services::{Health, Reading, Sample, Service, ServiceStatus, parse, read};

use crate::command::CommandError;

/// Where `scripts/dev` and the services' defaults put the admin endpoints.
pub const DEFAULT_SERVICES: &str = "order-api=http://127.0.0.1:9105,\
     outbox-relay=http://127.0.0.1:9101,sync-worker=http://127.0.0.1:9102,\
     sf-subscriber=http://127.0.0.1:9103,fulfilment-worker=http://127.0.0.1:9104";

/// `orderbridge status` options.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The services to ask, NAME=URL (the base of `/health/ready` and `/metrics`), comma
    /// separated or the option repeated. Several relays or workers: one entry each.
    #[arg(
        long = "service",
        env = "ORDERBRIDGE_SERVICES",
        value_delimiter = ',',
        default_value = DEFAULT_SERVICES
    )]
    pub services: Vec<Service>,
    /// Print everything as one JSON object instead of the text.
    #[arg(long)]
    pub json: bool,
    /// Do not look at the broker.
    #[arg(long)]
    pub no_broker: bool,
    /// An unpublished outbox event older than this is a problem (the OutboxBacklogOld alert's
    /// threshold).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub outbox_age_limit: std::time::Duration,
}

/// What a queue is for: a work queue has consumers; retry tiers and dead letters never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Work,
    Retry,
    DeadLetters,
}

/// One queue's depth.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub kind: QueueKind,
    /// Ready messages (not those delivered and not yet acknowledged).
    pub messages: u32,
    pub consumers: u32,
}

/// The broker's queues.
#[derive(Debug, Clone, Serialize)]
pub struct Queues {
    pub queues: Vec<QueueDepth>,
}

/// A source that answered, or why not: the same shape (and JSON) as `orders show`'s sections.
pub use crate::orders::Section as Source;

/// Everything `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub checked_at: DateTime<Utc>,
    pub services: Vec<ServiceStatus>,
    pub database: Source<Database>,
    pub broker: Source<Queues>,
    pub problems: Vec<String>,
}

/// Runs `status`; `Ok(false)` when problems were found.
pub async fn run(
    args: &StatusArgs,
    db: &DbConfig,
    broker: &BrokerConfig,
    out: &mut (impl Write + Send),
) -> Result<bool, CommandError> {
    let status = status(args, db, broker).await;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &status).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render::text(&status).as_bytes())?;
    }
    out.flush()?;
    Ok(status.problems.is_empty())
}

/// Asks everything at once.
pub async fn status(args: &StatusArgs, db: &DbConfig, broker: &BrokerConfig) -> Status {
    let (services, database, queues) = tokio::join!(
        services::probe_all(&args.services),
        database(db),
        queues(args, broker)
    );
    let checked_at = Utc::now();
    let thresholds = Thresholds {
        outbox_age_limit: chrono::Duration::from_std(args.outbox_age_limit)
            .unwrap_or(chrono::Duration::MAX),
        ..Thresholds::default()
    };
    let problems = problems(&services, &database, &queues, &thresholds, checked_at);
    Status {
        checked_at,
        services,
        database,
        broker: queues,
        problems,
    }
}

async fn database(db: &DbConfig) -> Source<Database> {
    let read = async {
        let pool = db
            .connect("orderbridge-status")
            .await
            .map_err(|e| e.to_string())?;
        let read = postgres::read(&pool).await.map_err(|e| e.to_string());
        pool.close().await;
        read
    };
    match read.await {
        Ok(d) => Source::Found(d),
        Err(error) => Source::Unavailable {
            error: crate::render::clean(&error),
        },
    }
}

async fn queues(args: &StatusArgs, config: &BrokerConfig) -> Source<Queues> {
    if args.no_broker {
        return Source::Skipped;
    }
    let look = async {
        let supervisor = Supervisor::new(config.clone(), "orderbridge-status")?;
        let session = supervisor.try_connect().await?;
        let topology = supervisor.topology();
        let mut queues = Vec::new();
        let mut result = Ok(());
        for q in topology.queues() {
            match queue_stat(config, &session.channel, q).await {
                Ok(s) => queues.push(QueueDepth {
                    queue: q.clone(),
                    kind: if *q == topology.dead_letter_queue {
                        QueueKind::DeadLetters
                    } else if topology
                        .retry_tiers
                        .iter()
                        .chain(&topology.fulfilment_retry_tiers)
                        .any(|t| t.queue == *q)
                    {
                        QueueKind::Retry
                    } else {
                        QueueKind::Work
                    },
                    messages: s.messages,
                    consumers: s.consumers,
                }),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        session.close(config).await;
        result.map(|()| Queues { queues })
    };
    match look.await {
        Ok(q) => Source::Found(q),
        Err(e) => Source::Unavailable {
            error: crate::render::clean(&e.to_string()),
        },
    }
}
