//! Carrying out the fault schedule against the running stack, and the broker-side helpers
//! (`rabbitmqctl`, the poison publisher) the run needs.
//!
//! Steps run one after the other on the run's own task, which owns the stack: a step that takes
//! a while (`rabbitmqctl` needs about a second) delays the next one a little, which the
//! timeline records (planned and actual times).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use orderbridge_broker::lapin::options::BasicPublishOptions;
use orderbridge_broker::lapin::types::ShortString;
use orderbridge_broker::lapin::{BasicProperties, Confirmation};
use orderbridge_broker::{Supervisor, with_timeout};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::cluster::{self, Cluster};
use super::plan::{FaultKind, Phase, Planned, steps};
use crate::procfs;
use crate::stack::{
    BENCH_APPLICATION_NAME, EMULATOR_DAILY_API_LIMIT, FULFILMENT_WORKER, RELAY, SUBSCRIBER, Stack,
    WORKER,
};
use crate::workload;

/// The `message_id` prefix of the injected poison messages: how the dead-letter check tells
/// them from real orders' events.
pub const POISON_PREFIX: &str = "chaos-poison-";

/// Which broker connections `broker-close` closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseScope {
    /// Only the connections of this run's processes (safe beside other users of the broker).
    Own,
    /// `rabbitmqctl close_all_connections`: everyone's, as issue 6 describes; only on a broker
    /// nobody else is using.
    All,
}

/// What happened at one step.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// The planned fault's id.
    pub id: usize,
    pub fault: &'static str,
    pub phase: &'static str,
    pub planned_s: f64,
    /// Seconds after posting started when the step was done.
    pub at_s: f64,
    pub ok: bool,
    pub note: String,
}

pub struct Executor<'a> {
    pub stack: &'a mut Stack,
    pub plan: &'a [Planned],
    pub close: CloseScope,
    pub events: Vec<Event>,
    /// Message ids of the poison messages published.
    pub poison_sent: Vec<String>,
    /// The broker's AMQP port, or every cluster node's.
    amqp_ports: Vec<u16>,
    vhost: String,
    /// `--rabbitmq-cluster`, and the node each `node-kill` took down (by planned id).
    cluster: Option<Cluster>,
    nodes_down: HashMap<usize, u8>,
}

impl<'a> Executor<'a> {
    pub fn new(
        stack: &'a mut Stack,
        plan: &'a [Planned],
        close: CloseScope,
        cluster: Option<Cluster>,
    ) -> Self {
        let amqp_ports = orderbridge_broker::amqp_urls(&stack.args.amqp_url)
            .map(|url| amqp_port_and_vhost(url).0)
            .collect();
        let (_, vhost) = amqp_port_and_vhost(&stack.args.amqp_url);
        Self {
            stack,
            plan,
            close,
            events: Vec::new(),
            poison_sent: Vec::new(),
            amqp_ports,
            vhost,
            cluster,
            nodes_down: HashMap::new(),
        }
    }

    /// Runs every step at its planned time after `started`. Closing broker connections goes
    /// through `rabbitmqctl` (about a second per call), so it runs beside the other steps
    /// instead of delaying them; its event is recorded when it is done.
    pub async fn run(&mut self, started: Instant) {
        let plan = self.plan;
        let mut background = Vec::new();
        for (at, index, phase) in steps(plan) {
            tokio::time::sleep_until(tokio::time::Instant::from_std(
                started + Duration::from_secs_f64(at),
            ))
            .await;
            let planned = &plan[index];
            let begun_s = started.elapsed().as_secs_f64();
            if planned.kind == Some(FaultKind::BrokerClose) {
                let close = self.close_connections();
                let task = tokio::spawn(async move {
                    let t = Instant::now();
                    let note = close.await?;
                    Ok::<_, anyhow::Error>(format!(
                        "{note} (took {:.1} s)",
                        t.elapsed().as_secs_f64()
                    ))
                });
                background.push((planned, Phase::Begin, at, begun_s, task));
                continue;
            }
            // Restarting a broker node takes ~10 s: beside the other steps too.
            if planned.kind == Some(FaultKind::NodeKill)
                && phase == Phase::End
                && let (Some(cluster), Some(node)) =
                    (self.cluster.clone(), self.nodes_down.remove(&planned.id))
            {
                let task = tokio::spawn(async move { cluster.start_node(node).await });
                background.push((planned, Phase::End, at, begun_s, task));
                continue;
            }
            let result = self.apply(planned, phase).await;
            self.record(planned, phase, at, begun_s, result);
        }
        for (planned, phase, at, begun_s, task) in background {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow!("the step's task failed: {e}")),
            };
            self.record(planned, phase, at, begun_s, result);
        }
        self.events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    }

    fn record(
        &mut self,
        planned: &Planned,
        phase: Phase,
        at: f64,
        at_s: f64,
        result: Result<String>,
    ) {
        let (ok, note) = match result {
            Ok(note) => (true, note),
            Err(e) => (false, format!("{e:#}")),
        };
        if ok {
            tracing::info!(id = planned.id, fault = planned.label(), ?phase, at_s, %note, "chaos step");
        } else {
            tracing::warn!(id = planned.id, fault = planned.label(), ?phase, at_s, %note, "chaos step failed");
        }
        self.events.push(Event {
            id: planned.id,
            fault: planned.label(),
            phase: match phase {
                Phase::Begin => "begin",
                Phase::End => "end",
            },
            planned_s: (at * 1000.0).round() / 1000.0,
            at_s,
            ok,
            note,
        });
    }

    async fn apply(&mut self, p: &Planned, phase: Phase) -> Result<String> {
        let Some(kind) = p.kind else {
            return self.poison(p).await;
        };
        match (kind, phase) {
            (FaultKind::KillRelay, Phase::Begin) => self.kill(RELAY, p).await,
            (FaultKind::KillWorker, Phase::Begin) => self.kill(WORKER, p).await,
            (FaultKind::KillRelay, Phase::End) => Ok(format!(
                "started outbox-relay {}",
                self.stack.spawn_relay()?
            )),
            (FaultKind::KillWorker, Phase::End) => Ok(format!(
                "started sync-worker {}",
                self.stack.spawn_worker()?
            )),
            (FaultKind::TwoRelays, Phase::Begin) => Ok(format!(
                "second outbox-relay {} started",
                self.stack.spawn_relay()?
            )),
            (FaultKind::TwoWorkers, Phase::Begin) => Ok(format!(
                "second sync-worker {} started",
                self.stack.spawn_worker()?
            )),
            (FaultKind::TwoRelays, Phase::End) => self.back_to_one(RELAY, p).await,
            (FaultKind::TwoWorkers, Phase::End) => self.back_to_one(WORKER, p).await,
            (FaultKind::BrokerClose, _) => self.close_connections().await,
            (FaultKind::PgTerminate, _) => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND application_name <> $1) t",
                )
                .bind(BENCH_APPLICATION_NAME)
                .fetch_one(self.stack.pool()?)
                .await?;
                Ok(format!("{n} backends terminated"))
            }
            (FaultKind::SfOutage, Phase::Begin) => {
                self.stack.set_faults(json!({"outage": true})).await?;
                Ok("Salesforce down (503)".into())
            }
            (FaultKind::SfOutage, Phase::End) => {
                self.stack.set_faults(json!({"outage": false})).await?;
                Ok("Salesforce back".into())
            }
            (FaultKind::ExpireSessions, _) => {
                self.stack
                    .set_faults(json!({"expire_sessions": true}))
                    .await?;
                Ok("every access token invalidated".into())
            }
            (FaultKind::RequestLimit, Phase::Begin) => {
                self.stack
                    .set_faults(json!({"daily_limit_remaining": 0}))
                    .await?;
                Ok("daily API budget spent (REQUEST_LIMIT_EXCEEDED)".into())
            }
            (FaultKind::RequestLimit, Phase::End) => {
                self.stack
                    .set_faults(json!({"daily_limit_remaining": EMULATOR_DAILY_API_LIMIT}))
                    .await?;
                Ok("daily API budget restored".into())
            }
            (FaultKind::LockRow, Phase::Begin) => {
                let keys: Vec<String> = p
                    .locked_customers()
                    .into_iter()
                    .map(workload::customer_external_id)
                    .collect();
                let rules: Vec<_> = keys.iter().map(|k| json!({"key": k})).collect();
                self.stack
                    .set_faults(
                        json!({"lock_records": rules, "fail_next": {"UNABLE_TO_LOCK_ROW": 2}}),
                    )
                    .await?;
                Ok(format!(
                    "Accounts {} locked; next 2 calls fail with UNABLE_TO_LOCK_ROW",
                    keys.join(", ")
                ))
            }
            (FaultKind::LockRow, Phase::End) => {
                self.stack.set_faults(json!({"lock_records": []})).await?;
                Ok("Accounts unlocked".into())
            }
            (FaultKind::LatencySpike, Phase::Begin) => {
                let ms = p.spike_ms();
                self.stack
                    .set_faults(json!({"latency_ms": ms, "jitter_ms": ms / 5}))
                    .await?;
                Ok(format!("Salesforce calls take {ms} ms + 0–{} ms", ms / 5))
            }
            (FaultKind::LatencySpike, Phase::End) => {
                let (latency, jitter) = (self.stack.args.latency_ms, self.stack.args.jitter_ms);
                self.stack
                    .set_faults(json!({"latency_ms": latency, "jitter_ms": jitter}))
                    .await?;
                Ok(format!("latency back to {latency} ms + 0–{jitter} ms"))
            }
            (FaultKind::SubscriberKill, Phase::Begin) => self.kill(SUBSCRIBER, p).await,
            (FaultKind::FulfilmentKill, Phase::Begin) => self.kill(FULFILMENT_WORKER, p).await,
            (FaultKind::SubscriberKill, Phase::End) => Ok(format!(
                "started sf-subscriber {}",
                self.stack.spawn_subscriber()?
            )),
            (FaultKind::FulfilmentKill, Phase::End) => Ok(format!(
                "started fulfilment-worker {}",
                self.stack.spawn_fulfilment_worker()?
            )),
            (FaultKind::ReceiverFail, Phase::Begin) => {
                // `times` counts answers: more than any window sees, so the window's end (back
                // to provisioning) is what ends it.
                let (behaviour, note) = match p.receiver_status() {
                    Some(status) => (
                        json!({"mode": "error", "status": status, "times": u32::MAX}),
                        format!("fulfilment receiver answers {status}"),
                    ),
                    None => (
                        json!({"mode": "hang"}),
                        "fulfilment receiver hangs (calls time out)".to_owned(),
                    ),
                };
                self.stack.set_receiver_behaviour(behaviour).await?;
                Ok(note)
            }
            (FaultKind::NodeKill, Phase::Begin) => {
                let cluster = self
                    .cluster
                    .as_ref()
                    .context("node-kill needs --rabbitmq-cluster")?;
                let queue = self.stack.broker_config()?.topology()?.sf_sync_queue;
                let (node, note) = cluster
                    .take_down_leader(&self.vhost, &queue, p.graceful())
                    .await?;
                self.nodes_down.insert(p.id, node);
                Ok(note)
            }
            (FaultKind::NodeKill, Phase::End) => {
                let cluster = self
                    .cluster
                    .as_ref()
                    .context("node-kill needs --rabbitmq-cluster")?;
                match self.nodes_down.remove(&p.id) {
                    Some(node) => cluster.start_node(node).await,
                    None => Ok("no node was taken down".into()),
                }
            }
            (FaultKind::ReceiverFail, Phase::End) => {
                self.stack
                    .set_receiver_behaviour(json!({"mode": "provision"}))
                    .await?;
                Ok("fulfilment receiver provisions again".into())
            }
        }
    }

    /// SIGKILL one running instance of `name` (the replacement starts at the window's end).
    async fn kill(&mut self, name: &str, p: &Planned) -> Result<String> {
        let running = self.stack.instances(name);
        let Some(&pid) = running.get(p.instance(running.len())) else {
            bail!("no {name} running to kill");
        };
        let status = self.stack.stop(pid, "KILL").await?;
        Ok(format!(
            "SIGKILL {name} {pid} ({status}); {} left",
            running.len() - 1
        ))
    }

    /// SIGTERM one of the running instances of `name` if more than one runs.
    async fn back_to_one(&mut self, name: &str, p: &Planned) -> Result<String> {
        let running = self.stack.instances(name);
        if running.len() < 2 {
            return Ok(format!(
                "{} {name} running (a kill meanwhile); none stopped",
                running.len()
            ));
        }
        let pid = running[p.instance(running.len())];
        // A process started a moment ago (a late step may follow its start at once) has not
        // installed its SIGTERM handler yet: what is tested is a clean stop of a running one.
        self.stack.wait_ready_pid(pid).await?;
        let status = self.stack.stop(pid, "TERM").await?;
        Ok(format!("SIGTERM {name} {pid} ({status})"))
    }

    /// Closes the broker connections (see [`CloseScope`]). The run's processes and their
    /// sockets are looked up now; the `rabbitmqctl` calls happen in the returned future.
    fn close_connections(&self) -> impl Future<Output = Result<String>> + Send + 'static {
        let scope = self.close;
        let vhost = self.vhost.clone();
        let mut pids = self.stack.instances(RELAY);
        pids.extend(self.stack.instances(WORKER));
        pids.extend(self.stack.instances(FULFILMENT_WORKER));
        let ports: std::collections::HashSet<u16> = self
            .amqp_ports
            .iter()
            .flat_map(|&port| procfs::tcp_ports_to(&pids, port))
            .collect();
        async move {
            if scope == CloseScope::All {
                rabbitmqctl(&["close_all_connections", "orderbridge chaos run"]).await?;
                return Ok("rabbitmqctl close_all_connections".into());
            }
            if ports.is_empty() {
                // Right after a kill and restart the services may not be connected yet.
                return Ok(format!(
                    "no broker connections of the services (pids {pids:?}) open right now"
                ));
            }
            let listing = rabbitmqctl(&[
                "-q",
                "--no-table-headers",
                "list_connections",
                "-p",
                &vhost,
                "pid",
                "peer_port",
            ])
            .await?;
            let ours: Vec<String> = listing
                .lines()
                .filter_map(|l| {
                    let (conn, port) = l.split_once('\t')?;
                    let port = port.trim().parse::<u16>().ok()?;
                    ports.contains(&port).then(|| conn.trim().to_owned())
                })
                .collect();
            let closes = ours.iter().map(|conn| async move {
                rabbitmqctl(&["close_connection", conn, "orderbridge chaos run"])
                    .await
                    .is_ok()
            });
            // A connection that went away meanwhile is not worth stopping for: counted only.
            let closed = futures_util::future::join_all(closes)
                .await
                .into_iter()
                .filter(|ok| *ok)
                .count();
            Ok(format!(
                "closed {closed} of the services' {} broker connections",
                ports.len()
            ))
        }
    }

    /// Publishes one poison message straight onto the work queue (default exchange), with
    /// confirms. Unreadable in one of three ways: not JSON, an unknown schema version of
    /// `order.submitted`, an unknown event type.
    async fn poison(&mut self, p: &Planned) -> Result<String> {
        let n = self.poison_sent.len() + 1;
        let message_id = format!("{POISON_PREFIX}{n}");
        let now = chrono::Utc::now();
        let (what, body): (&str, Vec<u8>) = match p.pick % 3 {
            0 => (
                "garbage body",
                b"\x00\xffchaos: this is not JSON {".to_vec(),
            ),
            1 => (
                "order.submitted version 99",
                serde_json::to_vec(&json!({
                    "id": Uuid::now_v7(), "type": "order.submitted", "version": 99,
                    "occurred_at": now, "correlation_id": message_id,
                    "data": {"id": Uuid::now_v7(), "note": "a schema from the future"},
                }))?,
            ),
            _ => (
                "unknown event type",
                serde_json::to_vec(&json!({
                    "id": Uuid::now_v7(), "type": "order.teleported", "version": 1,
                    "occurred_at": now, "correlation_id": message_id, "data": {},
                }))?,
            ),
        };
        let config = self.stack.broker_config()?;
        let keyring = config.keyring()?;
        let supervisor = Supervisor::new(config.clone(), "orderbridge-bench-chaos")?;
        let session = supervisor.try_connect().await?;
        let published = async {
            session.enable_confirms(&config).await?;
            let queue = ShortString::try_new(supervisor.topology().sf_sync_queue.as_str())
                .map_err(|_| anyhow!("work queue name too long"))?;
            let confirm = config
                .op(
                    "basic.publish",
                    session.channel.basic_publish(
                        "".into(),
                        queue,
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        // Signed, as the relay signs whatever is in the outbox: poison that the
                        // worker must fail to *read*, not a forgery it refuses unread.
                        keyring.sign(
                            BasicProperties::default()
                                .with_message_id(message_id.as_str().into())
                                .with_content_type("application/json".into())
                                .with_delivery_mode(2),
                            &body,
                        ),
                    ),
                )
                .await?;
            match with_timeout(config.broker_op_timeout, "confirm", confirm).await? {
                Confirmation::Ack(None) => Ok(()),
                other => Err(anyhow!("poison message not confirmed: {other:?}")),
            }
        }
        .await;
        session.close(&config).await;
        published?;
        self.poison_sent.push(message_id.clone());
        Ok(format!("{message_id} ({what}) on the work queue"))
    }
}

/// Runs `rabbitmqctl` with a time limit; its stdout. With `--rabbitmq-cluster` it addresses
/// the first cluster node that runs (one may be down on purpose).
pub async fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let nodes = cluster::ctl_nodes();
    if nodes.is_empty() {
        return rabbitmqctl_on(None, args).await.map_err(|(e, _)| e);
    }
    let mut last = None;
    for node in nodes {
        match rabbitmqctl_on(Some(node), args).await {
            Ok(out) => return Ok(out),
            Err((e, true)) => last = Some(e),
            Err((e, false)) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no cluster node answers rabbitmqctl")))
}

/// One `rabbitmqctl` call; on failure, whether the node did not answer at all.
async fn rabbitmqctl_on(
    node: Option<&str>,
    args: &[&str],
) -> Result<String, (anyhow::Error, bool)> {
    let mut command = tokio::process::Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        command.args(args).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| {
        (
            anyhow!("rabbitmqctl {} took over 60 s", args.join(" ")),
            true,
        )
    })?
    .context("cannot run rabbitmqctl (it must be on PATH, with access to the broker)")
    .map_err(|e| (e, false))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let unreachable = stderr.contains("unable to perform an operation on node")
            || stderr.contains("nodedown");
        return Err((
            anyhow!(
                "rabbitmqctl {} failed ({}): {}",
                args.join(" "),
                output.status,
                stderr.trim()
            ),
            unreachable,
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Messages (ready and unacknowledged) in each of the namespace's queues.
pub async fn queue_depths(amqp_url: &str, namespace: &str) -> Result<HashMap<String, u64>> {
    let (_, vhost) = amqp_port_and_vhost(amqp_url);
    let listing = rabbitmqctl(&[
        "-q",
        "--no-table-headers",
        "list_queues",
        "-p",
        &vhost,
        "name",
        "messages",
    ])
    .await?;
    let prefix = format!("{namespace}.");
    Ok(listing
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once('\t')?;
            let name = name.trim();
            name.starts_with(&prefix)
                .then(|| Some((name.to_owned(), n.trim().parse().ok()?)))
                .flatten()
        })
        .collect())
}

/// The broker's port and virtual host from an AMQP URL (`amqp://u:p@host:5672/%2f`).
fn amqp_port_and_vhost(url: &str) -> (u16, String) {
    // A cluster's node list: the first node's (they share their vhosts).
    let url = orderbridge_broker::amqp_urls(url).next().unwrap_or(url);
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672);
    let vhost = path.replace("%2f", "/").replace("%2F", "/");
    (port, if vhost.is_empty() { "/".into() } else { vhost })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_give_port_and_vhost() {
        assert_eq!(
            amqp_port_and_vhost("amqp://guest:guest@127.0.0.1:5672/%2f"),
            (5672, "/".into())
        );
        assert_eq!(
            amqp_port_and_vhost("amqp://h:5673/prod?heartbeat=5"),
            (5673, "prod".into())
        );
        assert_eq!(amqp_port_and_vhost("amqp://h"), (5672, "/".into()));
        assert_eq!(
            amqp_port_and_vhost("amqp://h:5682/v,amqp://h:5683/v"),
            (5682, "v".into())
        );
    }
}
