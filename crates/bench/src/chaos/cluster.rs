//! `--rabbitmq-cluster`: the run's broker is the 3-node cluster of `scripts/rabbitmq-cluster`
//! (nodes ob1–ob3@localhost on AMQP ports 5682–5684, beside the system broker, which is never
//! touched). The services get the three node URLs in `AMQP_URL` and fail over by themselves;
//! `rabbitmqctl` calls of the run go to the first node that runs; the `node-kill` fault kills or
//! stops the node holding the work queue's quorum leader and starts it again through the script.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The cluster's nodes, once the run uses it: `rabbitmqctl` goes to the first one running.
static CTL_NODES: OnceLock<Vec<String>> = OnceLock::new();

/// Nodes `rabbitmqctl` may address (`-n`), in order; empty without a cluster.
pub fn ctl_nodes() -> &'static [String] {
    CTL_NODES.get().map_or(&[], Vec::as_slice)
}

/// One node of the local cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1, 2 or 3: the script's node number.
    pub number: u8,
    /// `ob1@localhost`.
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    script: PathBuf,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// The script's cluster (`OB_CLUSTER_BASE_PORT` moves its ports, as it does the script's).
    pub fn local() -> Self {
        let base = std::env::var("OB_CLUSTER_BASE_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(5682);
        let nodes = (1u8..=3)
            .map(|number| Node {
                number,
                name: format!("ob{number}@localhost"),
                port: base + u16::from(number) - 1,
            })
            .collect();
        // The bench is a development tool run from this repository.
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq-cluster");
        Self { script, nodes }
    }

    /// `AMQP_URL` for the services: every node, comma-separated.
    pub fn amqp_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the nodes that are not running and joins them (the script is idempotent), and
    /// routes this process's `rabbitmqctl` calls to them.
    pub async fn start(&self) -> Result<()> {
        self.script(&["start"], Duration::from_secs(180)).await?;
        let _ = CTL_NODES.set(self.nodes.iter().map(|n| n.name.clone()).collect());
        Ok(())
    }

    async fn script(&self, args: &[&str], limit: Duration) -> Result<String> {
        let output = tokio::time::timeout(
            limit,
            tokio::process::Command::new(&self.script)
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "scripts/rabbitmq-cluster {} took over {limit:?}",
                args.join(" ")
            )
        })?
        .with_context(|| format!("cannot run {}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "scripts/rabbitmq-cluster {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("{name} is not a node of the local cluster"))
    }

    /// The node holding the quorum leader of `queue`.
    pub async fn leader_of(&self, vhost: &str, queue: &str) -> Result<String> {
        let listing = super::faults::rabbitmqctl(&[
            "-q",
            "--no-table-headers",
            "list_queues",
            "-p",
            vhost,
            "name",
            "leader",
        ])
        .await?;
        listing
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .filter(|leader| !leader.is_empty())
            .ok_or_else(|| anyhow!("no leader listed for {queue}"))
    }

    /// Stops (`graceful`) or kills the node holding `queue`'s leader, then waits until another
    /// node leads the queue. Returns (node, note).
    pub async fn take_down_leader(
        &self,
        vhost: &str,
        queue: &str,
        graceful: bool,
    ) -> Result<(u8, String)> {
        let leader = self.leader_of(vhost, queue).await?;
        let node = self.node(&leader)?.clone();
        let verb = if graceful { "stop-node" } else { "kill-node" };
        let number = node.number.to_string();
        let down = Instant::now();
        self.script(&[verb, &number], Duration::from_secs(60))
            .await?;
        // The queue is back when a surviving node leads it (a kill is noticed by the peers'
        // failure detection; a stop hands leadership over on the way down).
        let limit = Duration::from_secs(30);
        loop {
            match self.leader_of(vhost, queue).await {
                Ok(new) if new != leader => {
                    return Ok((
                        node.number,
                        format!(
                            "{} {leader} (the leader of {queue}); {new} leads it after {} ms",
                            if graceful { "stopped" } else { "killed" },
                            down.elapsed().as_millis()
                        ),
                    ));
                }
                _ if down.elapsed() > limit => {
                    bail!(
                        "{queue} has no leader on a running node {limit:?} after {leader} went down"
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Starts node `number` again; it rejoins the cluster by itself.
    pub async fn start_node(&self, number: u8) -> Result<String> {
        let started = Instant::now();
        self.script(
            &["start-node", &number.to_string()],
            Duration::from_secs(120),
        )
        .await?;
        Ok(format!(
            "ob{number}@localhost started again ({} ms)",
            started.elapsed().as_millis()
        ))
    }
}
