//! `sync-worker dlq list|show|replay`: inspect and replay the dead-letter queue.
//!
//! Dead letters reach `{ns}.dead-letters` two ways:
//!
//! - the worker gives up on a message (permanent Salesforce error, attempts exhausted,
//!   undecodable, at its last delivery) and publishes it to the dead-letter exchange with our failure headers
//!   ([`crate::headers`]); it came from the Salesforce work queue;
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

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::QueueDeclareOptions;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use orderbridge_broker::{BrokerConfig, BrokerError, Session, Supervisor, Topology, with_timeout};
use serde::Serialize;

use crate::headers;

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
    let supervisor = Supervisor::new(broker.clone(), "orderbridge-dlq")?;
    let session = supervisor.try_connect().await?;
    let ctx = Ctx {
        config: broker,
        topology: supervisor.topology(),
        session: &session,
    };
    let result = match cmd {
        DlqCommand::List { limit, json } => list(&ctx, limit, json, out).await,
        DlqCommand::Show { id } => show(&ctx, &id, out).await,
        DlqCommand::Replay { id: Some(id), .. } => replay(&ctx, Some(&id), out).await,
        DlqCommand::Replay { id: None, .. } => replay(&ctx, None, out).await,
    };
    // Whatever is still unacknowledged (after an error) goes back to the queue with the
    // connection.
    session.close(broker).await;
    result
}

/// Ready messages in the dead-letter queue, for the worker's dead-letter gauge. Messages someone
/// holds unacknowledged (a running `dlq` command) are not counted.
///
/// A passive declare of a queue that does not exist is a channel error (404) that closes
/// `channel`; the topology declares the queue on every connect, so that only happens if someone
/// deleted it since, but pass a channel whose loss the caller handles.
pub async fn count(
    config: &BrokerConfig,
    channel: &Channel,
    topology: &Topology,
) -> Result<u32, DlqError> {
    let queue = config
        .op(
            "queue.declare",
            channel.queue_declare(
                topology.dead_letter_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    Ok(queue.message_count())
}

struct Ctx<'a> {
    config: &'a BrokerConfig,
    topology: &'a Topology,
    session: &'a Session,
}

impl Ctx<'_> {
    fn channel(&self) -> &Channel {
        &self.session.channel
    }

    /// The next ready dead letter, held unacknowledged; `None` when none is ready.
    async fn get(&self) -> Result<Option<DeadLetter>, DlqError> {
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
    async fn give_back(&self, last_tag: Option<u64>) -> Result<(), DlqError> {
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

    async fn ack(&self, tag: u64) -> Result<(), DlqError> {
        self.config
            .op(
                "basic.ack",
                self.channel().basic_ack(tag, BasicAckOptions::default()),
            )
            .await?;
        Ok(())
    }
}

async fn list(
    ctx: &Ctx<'_>,
    limit: usize,
    json: bool,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    let total = count(ctx.config, ctx.channel(), ctx.topology).await?;
    // Bounded by what is there now: `basic.get` answers at once, empty or not, so an empty queue
    // costs one round trip and newcomers do not keep the listing going.
    let want = limit.min(usize::try_from(total).unwrap_or(usize::MAX));
    let mut letters = Vec::with_capacity(want);
    while letters.len() < want {
        match ctx.get().await? {
            Some(letter) => letters.push(letter),
            None => break,
        }
    }
    ctx.give_back(letters.last().map(|l| l.tag)).await?;

    let summaries: Vec<Summary> = letters.iter().map(|l| l.summary(ctx.topology)).collect();
    if json {
        for s in &summaries {
            let line = serde_json::to_string(s).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    if total == 0 {
        writeln!(out, "no dead letters")?;
        return Ok(());
    }
    write_table(out, &summaries)?;
    if summaries.len() < usize::try_from(total).unwrap_or(usize::MAX) {
        writeln!(
            out,
            "{} of {} shown (--limit)",
            summaries.len(),
            dead_letters(total.into())
        )?;
    } else {
        writeln!(out, "{}", dead_letters(total.into()))?;
    }
    Ok(())
}

async fn show(ctx: &Ctx<'_>, id: &str, out: &mut (impl Write + Send)) -> Result<(), DlqError> {
    let total = count(ctx.config, ctx.channel(), ctx.topology).await?;
    // The whole queue is looked at: the same event can be dead-lettered twice (e.g. a replay
    // whose ack was lost), and every copy is shown.
    let mut found = Vec::new();
    let mut last_tag = None;
    for _ in 0..total {
        let Some(letter) = ctx.get().await? else {
            break;
        };
        last_tag = Some(letter.tag);
        if letter.id == id {
            found.push(letter);
        }
    }
    ctx.give_back(last_tag).await?;
    if found.is_empty() {
        return Err(DlqError::NotFound(id.to_owned()));
    }
    for (i, letter) in found.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        out.write_all(letter.render(ctx.topology).as_bytes())?;
    }
    Ok(())
}

/// Replays the dead letter(s) with `id`, or all (`None`) present when it starts.
async fn replay(
    ctx: &Ctx<'_>,
    id: Option<&str>,
    out: &mut (impl Write + Send),
) -> Result<(), DlqError> {
    ctx.session.enable_confirms(ctx.config).await?;
    let total = count(ctx.config, ctx.channel(), ctx.topology).await?;
    let bar = match id {
        None => progress_bar(total.into()),
        Some(_) => ProgressBar::hidden(),
    };
    let mut replayed = 0usize;
    let mut matched = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut last_held = None;
    // At most `total` gets: what the worker dead-letters again while this runs (say, a replayed
    // message failing at once) lands behind and waits for the next replay instead of looping.
    for _ in 0..total {
        let Some(letter) = ctx.get().await? else {
            break;
        };
        if id.is_some_and(|id| letter.id != id) {
            last_held = Some(letter.tag);
            continue;
        }
        matched += 1;
        let origin = letter.origin(ctx.topology);
        match republish(ctx, &letter, &origin).await {
            Ok(()) => {
                ctx.ack(letter.tag).await?;
                replayed += 1;
                tracing::info!(id = %letter.id, queue = %origin, "replayed dead letter");
                if id.is_some() {
                    writeln!(out, "replayed {} to {origin}", letter.id)?;
                }
            }
            Err(Failure::Broker(e)) => {
                // The channel is unusable or the confirm is unknown: stop; the unacked dead
                // letters (this one included) return to the queue with the connection.
                bar.abandon();
                return Err(e.into());
            }
            Err(Failure::NotReplayed(why)) => {
                tracing::warn!(id = %letter.id, queue = %origin, why, "dead letter not replayed");
                failures.push(format!("{} to {origin}: {why}", letter.id));
                last_held = Some(letter.tag);
            }
        }
        bar.inc(1);
    }
    ctx.give_back(last_held).await?;
    bar.finish_and_clear();

    if let Some(id) = id
        && matched == 0
    {
        return Err(DlqError::NotFound(id.to_owned()));
    }
    writeln!(
        out,
        "replayed {}",
        dead_letters(u64::try_from(replayed).unwrap_or(u64::MAX))
    )?;
    for f in &failures {
        writeln!(out, "not replayed: {f}")?;
    }
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(DlqError::ReplayFailed {
            failed: matched - replayed,
            replayed,
            first,
        }),
    }
}

fn dead_letters(n: u64) -> String {
    if n == 1 {
        "1 dead letter".to_owned()
    } else {
        format!("{n} dead letters")
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters replayed, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

enum Failure {
    /// The message could not be placed (unroutable, nacked, bad origin): the dead letter stays.
    NotReplayed(String),
    /// The session failed; nothing more can be done on it.
    Broker(BrokerError),
}

/// Publishes `letter` to `queue` through the default exchange and waits for the confirm.
async fn republish(ctx: &Ctx<'_>, letter: &DeadLetter, queue: &str) -> Result<(), Failure> {
    if queue == ctx.topology.dead_letter_queue {
        return Err(Failure::NotReplayed(
            "its origin is the dead-letter queue itself".into(),
        ));
    }
    let Ok(routing_key) = ShortString::try_new(queue) else {
        return Err(Failure::NotReplayed(
            "origin queue name longer than 255 bytes".into(),
        ));
    };
    let publish = ctx.channel().basic_publish(
        "".into(),
        routing_key,
        // Mandatory: a queue that no longer exists comes back as basic.return (then ack), which
        // must not count as replayed.
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        &letter.body,
        replay_properties(&letter.properties, Utc::now()),
    );
    let confirm = ctx
        .config
        .op("basic.publish", publish)
        .await
        .map_err(Failure::Broker)?;
    // One publish in flight at a time, so a return that lapin attaches to this confirm is ours.
    match with_timeout(ctx.config.broker_op_timeout, "confirm", confirm).await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) => Err(Failure::NotReplayed(
            format!("unroutable ({} {})", r.reply_code, r.reply_text),
        )),
        Ok(Confirmation::Nack(None)) => Err(Failure::NotReplayed("the broker nacked it".into())),
        Ok(Confirmation::NotRequested) => Err(Failure::Broker(BrokerError::InvalidConfig(
            "channel not in confirm mode".into(),
        ))),
        Err(e) => Err(Failure::Broker(e)),
    }
}

/// The properties of a replayed copy: the original ones, with the failure history dropped, the
/// attempt count reset and the replay time recorded.
fn replay_properties(original: &BasicProperties, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = original.headers() {
        for (k, v) in old {
            if !is_failure_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(0));
    headers.insert(
        headers::REPLAYED_AT.into(),
        AMQPValue::LongString(LongString::from(
            now.to_rfc3339_opts(SecondsFormat::Millis, true),
        )),
    );
    // Property by property rather than a clone: user_id is left out. The broker checks it
    // against the publishing user, the replayer is usually someone else, and keeping it would
    // get the publish refused with a channel error.
    let o = original;
    let mut p = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(o.delivery_mode().unwrap_or(2));
    macro_rules! keep {
        ($get:ident, $with:ident) => {
            if let Some(v) = o.$get() {
                p = p.$with(v.clone());
            }
        };
    }
    keep!(content_type, with_content_type);
    keep!(content_encoding, with_content_encoding);
    keep!(priority, with_priority);
    keep!(correlation_id, with_correlation_id);
    keep!(reply_to, with_reply_to);
    keep!(expiration, with_expiration);
    keep!(message_id, with_message_id);
    keep!(timestamp, with_timestamp);
    keep!(kind, with_type);
    keep!(app_id, with_app_id);
    keep!(cluster_id, with_cluster_id);
    p
}

/// Headers a replay drops: our failure record and the broker's dead-lettering history (including
/// the quorum queue's delivery counters, so the copy starts afresh).
fn is_failure_header(name: &str) -> bool {
    [
        headers::ATTEMPTS,
        headers::REASON,
        headers::ERROR_CODE,
        headers::ERROR_MESSAGE,
        headers::FIRST_FAILURE_AT,
        headers::LAST_FAILURE_AT,
        headers::REPLAYED_AT,
        "x-death",
        "x-delivery-count",
        "x-acquired-count",
    ]
    .contains(&name)
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// One message fetched from the dead-letter queue.
struct DeadLetter {
    tag: u64,
    id: String,
    properties: BasicProperties,
    body: Vec<u8>,
}

/// One `x-death` entry, the fields `list` needs.
struct Death {
    queue: Option<String>,
    reason: Option<String>,
    time: Option<DateTime<Utc>>,
}

/// What `list` shows of a dead letter (and `--json` prints).
#[derive(Debug, Serialize)]
struct Summary {
    id: String,
    message_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    /// `worker` (our headers), `broker` (x-death) or `unknown`.
    dead_lettered_by: &'static str,
    /// Where `replay` sends it.
    origin_queue: String,
    reason: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: Option<i64>,
    first_failure_at: Option<String>,
    last_failure_at: Option<String>,
    body_bytes: usize,
}

impl DeadLetter {
    fn new(tag: u64, properties: BasicProperties, body: Vec<u8>) -> Self {
        let id = match properties.message_id() {
            Some(id) if !id.as_str().is_empty() => id.to_string(),
            _ => body_id(&body),
        };
        Self {
            tag,
            id,
            properties,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties.headers().as_ref()?.inner().get(name)
    }

    fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(as_text)
    }

    fn dead_lettered_by_worker(&self) -> bool {
        self.header(headers::REASON).is_some()
    }

    /// The broker's deaths, most recent first (the order RabbitMQ keeps `x-death` in).
    fn deaths(&self) -> Vec<Death> {
        let Some(AMQPValue::FieldArray(entries)) = self.header("x-death") else {
            return Vec::new();
        };
        entries
            .as_slice()
            .iter()
            .filter_map(|e| match e {
                AMQPValue::FieldTable(t) => {
                    let t = t.inner();
                    Some(Death {
                        queue: t.get("queue").and_then(as_text),
                        reason: t.get("reason").and_then(as_text),
                        time: t.get("time").and_then(as_time),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The queue the message died in, which `replay` sends it back to.
    ///
    /// The worker only dead-letters what it consumed from the work queue. For the broker's dead
    /// letters it is the queue of the latest death, the one that brought it here (a message
    /// that went through a retry tier and then hit the delivery limit has the tier as its
    /// *first* death). A retry tier always feeds the work queue, so it is mapped there rather
    /// than making a replay wait out the tier's delay.
    fn origin(&self, topology: &Topology) -> String {
        let died_in = if self.dead_lettered_by_worker() {
            None
        } else {
            self.header_str("x-last-death-queue")
                .or_else(|| self.deaths().into_iter().find_map(|d| d.queue))
                .or_else(|| self.header_str("x-first-death-queue"))
        };
        match died_in {
            Some(q) if !topology.retry_tiers.iter().any(|t| t.queue == q) => q,
            _ => topology.sf_sync_queue.clone(),
        }
    }

    fn summary(&self, topology: &Topology) -> Summary {
        let deaths = self.deaths();
        let by_worker = self.dead_lettered_by_worker();
        let broker_reason = || {
            self.header_str("x-last-death-reason")
                .or_else(|| deaths.iter().find_map(|d| d.reason.clone()))
                .or_else(|| self.header_str("x-first-death-reason"))
        };
        let death_times = deaths.iter().filter_map(|d| d.time);
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        Summary {
            id: self.id.clone(),
            message_id: self.properties.message_id().as_ref().map(|s| s.to_string()),
            event_type: self.properties.kind().as_ref().map(|s| s.to_string()),
            correlation_id: self
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string()),
            dead_lettered_by: if by_worker {
                "worker"
            } else if !deaths.is_empty() {
                "broker"
            } else {
                "unknown"
            },
            origin_queue: self.origin(topology),
            reason: self.header_str(headers::REASON).or_else(broker_reason),
            error_code: self.header_str(headers::ERROR_CODE),
            error_message: self.header_str(headers::ERROR_MESSAGE),
            attempts: self.header(headers::ATTEMPTS).and_then(as_int),
            first_failure_at: self
                .header_str(headers::FIRST_FAILURE_AT)
                .or_else(|| death_times.clone().min().map(fmt)),
            last_failure_at: self
                .header_str(headers::LAST_FAILURE_AT)
                .or_else(|| death_times.max().map(fmt)),
            body_bytes: self.body.len(),
        }
    }

    /// The full `show` rendering.
    fn render(&self, topology: &Topology) -> String {
        let mut s = String::new();
        let p = &self.properties;
        let _ = writeln!(s, "id:           {}", clean(&self.id));
        let _ = writeln!(
            s,
            "origin queue: {} (replay target)",
            clean(&self.origin(topology))
        );
        s.push_str("properties:\n");
        let short = |v: &Option<ShortString>| v.as_ref().map(|v| v.to_string());
        let props: [(&str, Option<String>); 13] = [
            ("message_id", short(p.message_id())),
            ("type", short(p.kind())),
            ("correlation_id", short(p.correlation_id())),
            ("content_type", short(p.content_type())),
            ("content_encoding", short(p.content_encoding())),
            (
                "delivery_mode",
                p.delivery_mode().map(|m| match m {
                    2 => "2 (persistent)".to_owned(),
                    m => format!("{m} (transient)"),
                }),
            ),
            ("priority", p.priority().map(|v| v.to_string())),
            ("timestamp", p.timestamp().map(render_time)),
            ("expiration", short(p.expiration())),
            ("reply_to", short(p.reply_to())),
            ("app_id", short(p.app_id())),
            ("user_id", short(p.user_id())),
            ("cluster_id", short(p.cluster_id())),
        ];
        for (name, value) in props {
            if let Some(v) = value {
                let _ = writeln!(s, "  {name}: {}", clean(&v));
            }
        }
        match p.headers() {
            Some(h) if !h.inner().is_empty() => {
                s.push_str("headers:\n");
                for (k, v) in h {
                    render_entry(&mut s, 1, k.as_str(), v);
                }
            }
            _ => s.push_str("headers: (none)\n"),
        }
        let _ = writeln!(s, "body ({} bytes):", self.body.len());
        s.push_str(&render_body(&self.body));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// `body-` and 12 hex digits of the body's FNV-1a hash: stable across builds and platforms
/// (unlike std's hasher), so an id printed by one version of the tool works in the next.
fn body_id(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("body-{:012x}", h >> 16)
}

fn as_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

fn as_int(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        _ => as_text(v).and_then(|s| s.trim().parse().ok()),
    }
}

fn as_time(v: &AMQPValue) -> Option<DateTime<Utc>> {
    match *v {
        AMQPValue::Timestamp(t) => DateTime::from_timestamp(i64::try_from(t).ok()?, 0),
        _ => None,
    }
}

fn render_time(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .map_or_else(
            || t.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
}

/// Control characters escaped: dead letters carry outside data, which must not drive the
/// terminal (escape sequences) or break the layout (newlines).
fn clean(s: &str) -> String {
    clean_except(s, &[])
}

fn clean_except(s: &str, keep: &[char]) -> String {
    let escape = |c: char| c.is_control() && !keep.contains(&c);
    if !s.chars().any(escape) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if escape(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A header value on one line, or `None` for tables and arrays of tables.
fn scalar(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => {
            let scale = u32::from(d.scale);
            match 10u64.checked_pow(scale) {
                Some(div) if scale > 0 => {
                    let width = usize::from(d.scale);
                    let v = u64::from(d.value);
                    format!("{}.{:0width$}", v / div, v % div)
                }
                _ => d.value.to_string(),
            }
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => clean(&as_text(v)?),
        AMQPValue::ByteArray(b) => match std::str::from_utf8(b.as_slice()) {
            Ok(s) => clean(s),
            Err(_) => format!("<{} bytes> {}", b.len(), b.as_slice().escape_ascii()),
        },
        AMQPValue::Timestamp(t) => render_time(*t),
        AMQPValue::Void => "(void)".to_owned(),
        AMQPValue::FieldTable(_) => return None,
        AMQPValue::FieldArray(a) => {
            let items: Option<Vec<String>> = a.as_slice().iter().map(scalar).collect();
            format!("[{}]", items?.join(", "))
        }
        _ => as_int(v)?.to_string(),
    })
}

fn render_entry(s: &mut String, depth: usize, key: &str, v: &AMQPValue) {
    let pad = "  ".repeat(depth);
    let key = clean(key);
    if let Some(line) = scalar(v) {
        let _ = writeln!(s, "{pad}{key}: {line}");
        return;
    }
    let _ = writeln!(s, "{pad}{key}:");
    match v {
        AMQPValue::FieldTable(t) => {
            for (k, v) in t {
                render_entry(s, depth + 1, k.as_str(), v);
            }
        }
        AMQPValue::FieldArray(a) => {
            for item in a.as_slice() {
                render_item(s, depth + 1, item);
            }
        }
        _ => {}
    }
}

/// One element of an array: `- value`, or `-` followed by a table's entries (x-death).
fn render_item(s: &mut String, depth: usize, v: &AMQPValue) {
    let pad = "  ".repeat(depth);
    match (v, scalar(v)) {
        (_, Some(line)) => {
            let _ = writeln!(s, "{pad}- {line}");
        }
        (AMQPValue::FieldTable(t), None) => {
            let _ = writeln!(s, "{pad}-");
            for (k, v) in t {
                render_entry(s, depth + 1, k.as_str(), v);
            }
        }
        (AMQPValue::FieldArray(a), None) => {
            let _ = writeln!(s, "{pad}-");
            for item in a.as_slice() {
                render_item(s, depth + 1, item);
            }
        }
        _ => {}
    }
}

/// JSON pretty-printed; other text as is (control characters other than newlines and tabs
/// escaped); binary escaped.
fn render_body(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Ok(pretty) = serde_json::to_string_pretty(&v)
    {
        return pretty;
    }
    match std::str::from_utf8(body) {
        Ok(text) => clean_except(text, &['\n', '\t']),
        Err(_) => body.escape_ascii().to_string(),
    }
}

fn write_table(out: &mut impl Write, rows: &[Summary]) -> std::io::Result<()> {
    const HEADINGS: [&str; 8] = [
        "ID",
        "TYPE",
        "ORIGIN",
        "REASON",
        "ERROR CODE",
        "ATTEMPTS",
        "FIRST FAILURE",
        "LAST FAILURE",
    ];
    let dash = || "-".to_owned();
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                clean(&r.id),
                r.event_type.as_deref().map_or_else(dash, clean),
                clean(&r.origin_queue),
                r.reason.as_deref().map_or_else(dash, clean),
                r.error_code.as_deref().map_or_else(dash, clean),
                r.attempts.map_or_else(dash, |a| a.to_string()),
                r.first_failure_at.as_deref().map_or_else(dash, clean),
                r.last_failure_at.as_deref().map_or_else(dash, clean),
            ]
        })
        .collect();
    let mut widths = HEADINGS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(c);
            } else {
                let _ = write!(text, "{c:<w$}  ");
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &HEADINGS)?;
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &refs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn replay_drops_the_failure_history_and_keeps_the_rest() {
        let death = AMQPValue::FieldTable(table(&[("queue", text("ns.sf-sync"))]));
        let original = BasicProperties::default()
            .with_message_id("e1".into())
            .with_type("order.submitted".into())
            .with_correlation_id("c1".into())
            .with_content_type("application/json".into())
            .with_user_id("someone-else".into())
            .with_headers(table(&[
                (headers::ATTEMPTS, AMQPValue::LongLongInt(7)),
                (headers::REASON, text("permanent")),
                (headers::ERROR_CODE, text("X")),
                ("x-death", AMQPValue::FieldArray(vec![death].into())),
                ("x-first-death-queue", text("ns.sf-sync")),
                ("x-last-death-reason", text("rejected")),
                ("x-delivery-count", AMQPValue::LongLongInt(3)),
                ("aggregate_id", text("a1")),
            ]));
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let p = replay_properties(&original, now);
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "e1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.submitted");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c1");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.user_id(), None);
        let h = p.headers().as_ref().unwrap().inner();
        let keys: Vec<&str> = h.keys().map(ShortString::as_str).collect();
        assert_eq!(
            keys,
            ["aggregate_id", headers::ATTEMPTS, headers::REPLAYED_AT]
        );
        assert_eq!(h.get(headers::ATTEMPTS), Some(&AMQPValue::LongLongInt(0)));
        assert_eq!(
            h.get(headers::REPLAYED_AT).and_then(as_text).unwrap(),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn origin_is_the_latest_death_with_retry_tiers_mapped_to_the_work_queue() {
        let t = Topology::new("ns", 5, &[std::time::Duration::from_secs(5)]).unwrap();
        let death = |q: &str| AMQPValue::FieldTable(table(&[("queue", text(q))]));
        let letter = |h: FieldTable| {
            DeadLetter::new(
                1,
                BasicProperties::default().with_headers(h),
                b"{}".to_vec(),
            )
        };
        let deaths = |qs: &[&str]| {
            AMQPValue::FieldArray(qs.iter().map(|q| death(q)).collect::<Vec<_>>().into())
        };
        // Latest first: delivery limit on the work queue after a retry tier.
        let l = letter(table(&[
            (
                "x-death",
                deaths(&["ns.status-events", "ns.sf-sync.retry.5s"]),
            ),
            ("x-first-death-queue", text("ns.sf-sync.retry.5s")),
        ]));
        assert_eq!(l.origin(&t), "ns.status-events");
        let l = letter(table(&[("x-death", deaths(&["ns.sf-sync.retry.5s"]))]));
        assert_eq!(l.origin(&t), "ns.sf-sync");
        // Ours wins over x-death: the worker consumes the work queue.
        let l = letter(table(&[
            (headers::REASON, text("permanent")),
            ("x-death", deaths(&["ns.status-events"])),
        ]));
        assert_eq!(l.origin(&t), "ns.sf-sync");
        assert_eq!(letter(FieldTable::default()).origin(&t), "ns.sf-sync");
    }

    #[test]
    fn ids_fall_back_to_a_stable_body_hash() {
        let l = DeadLetter::new(1, BasicProperties::default(), b"hello".to_vec());
        assert_eq!(l.id, body_id(b"hello"));
        assert_eq!(l.id.len(), "body-".len() + 12);
        assert_ne!(body_id(b"hello"), body_id(b"hellp"));
        let l = DeadLetter::new(
            1,
            BasicProperties::default().with_message_id("m".into()),
            b"hello".to_vec(),
        );
        assert_eq!(l.id, "m");
    }

    #[test]
    fn output_escapes_control_characters() {
        assert_eq!(clean("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        assert_eq!(render_body(b"line1\nline\t2"), "line1\nline\t2");
        assert_eq!(render_body(&[0xff, b'a']), "\\xffa");
        assert_eq!(render_body(br#"{"a":1}"#), "{\n  \"a\": 1\n}");
    }
}
