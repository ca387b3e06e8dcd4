//! Starting, watching and stopping the service binaries as child processes: the environment
//! each one gets, its log file, its readiness, and the signals the chaos run sends. Kept apart
//! from the database and broker set-up (`infra.rs`) because this is the part that owns the
//! children and must reap every one of them, also after a failed run.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use super::{
    API, EMULATOR, EMULATOR_DAILY_API_LIMIT, FULFILMENT_WORKER, RECEIVER, RELAY, SUBSCRIBER, Stack,
    WORKER, workspace_root,
};

/// Variables the services read that must not leak in from the caller's environment (a
/// `SF_USERNAME` of a real org, say): the bench sets what it needs, `--env` adds the rest.
const SERVICE_ENV_PREFIXES: [&str; 13] = [
    "DATABASE_URL",
    "DB_",
    "ORDER_API_",
    "RELAY_",
    "WORKER_",
    "SUBSCRIBER_",
    "SF_",
    "BROKER_",
    "AMQP_URL",
    "LOG_FORMAT",
    "RUST_LOG",
    "FULFILMENT_",
    "RECEIVER_",
];

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
    /// Readiness URL (`/health/ready`, or the emulator's version list).
    pub(super) ready_url: String,
    pub(super) child: Child,
}

impl Stack {
    /// A command for one of the binaries with the run's environment and the caller's
    /// service-related variables removed.
    pub(super) fn command(&self, binary: &str, extra: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(binary));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if SERVICE_ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(&key);
            }
        }
        cmd.env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.args.amqp_url)
            .env("BROKER_NAMESPACE", &self.namespace)
            .env("BROKER_SIGNING_KEY", self.signing_key())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", &self.args.service_log)
            .env("FULFILMENT_SIGNING_SECRET", &self.fulfilment_secret);
        if let Some(url) = &self.emulator_url {
            cmd.env("SF_LOGIN_URL", url);
        }
        if let Some(url) = &self.receiver_url {
            cmd.env("FULFILMENT_URL", format!("{url}/provision"));
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        for (k, v) in &self.args.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Starts `name`; returns its pid. The first instance of a binary logs to `<name>.log`, later
    /// ones (restarts, second instances) to `<name>.<n>.log`.
    fn spawn(
        &mut self,
        name: &'static str,
        ready_url: String,
        env: &[(&str, String)],
    ) -> Result<u32> {
        let started = self.started.entry(name).or_insert(0);
        *started += 1;
        let log = if *started == 1 {
            self.out.join(format!("logs/{name}.log"))
        } else {
            self.out.join(format!("logs/{name}.{started}.log"))
        };
        let file = File::create(&log)?;
        let child = self
            .command(name, env)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        tracing::info!(service = name, pid, log = %log.display(), "started");
        self.services.push(Service {
            name,
            pid,
            log,
            ready_url,
            child,
        });
        Ok(pid)
    }

    /// Starts the emulator with the seed catalogue, a daily API allocation no run exhausts, and
    /// the configured latency; waits until it answers.
    pub async fn start_emulator(&mut self) -> Result<()> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let pubsub_port = free_port()?;
        let seed = self
            .args
            .seed_file
            .clone()
            .unwrap_or_else(|| workspace_root().join("config/sf-emulator-seed.json"));
        if !seed.is_file() {
            bail!("seed file {} not found (--seed-file)", seed.display());
        }
        self.spawn(
            EMULATOR,
            format!("{base}/services/data/"),
            &[
                ("SF_EMULATOR_ADDR", format!("127.0.0.1:{port}")),
                (
                    "SF_EMULATOR_PUBSUB_ADDR",
                    format!("127.0.0.1:{pubsub_port}"),
                ),
                // `inbound` makes thousands of changes; the default in-memory log (10,000
                // events per topic) could drop a backlog before the subscriber reads it.
                ("SF_EMULATOR_EVENT_MAX", "100000".to_owned()),
                ("SF_EMULATOR_SEED_FILE", seed.display().to_string()),
                (
                    "SF_EMULATOR_DAILY_API_LIMIT",
                    EMULATOR_DAILY_API_LIMIT.to_string(),
                ),
            ],
        )?;
        self.wait_ready(EMULATOR).await?;
        self.emulator_url = Some(base);
        self.pubsub_url = Some(format!("http://127.0.0.1:{pubsub_port}"));
        self.set_faults(json!({
            "latency_ms": self.args.latency_ms,
            "jitter_ms": self.args.jitter_ms,
        }))
        .await
    }

    /// Starts order-api. The per-client rate limit is lifted: the bench is one client sending
    /// more than the default 1,000 requests/s, and it measures the pipeline, not the limiter.
    pub fn spawn_api(&mut self) -> Result<u32> {
        let port = free_port()?;
        let admin = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let pid = self.spawn(
            API,
            // The admin port, like every service's: it listens only once the API does.
            format!("http://127.0.0.1:{admin}/health/ready"),
            &[
                ("ORDER_API_ADDR", format!("127.0.0.1:{port}")),
                ("ORDER_API_ADMIN_ADDR", format!("127.0.0.1:{admin}")),
                ("ORDER_API_RATE_LIMIT", "1000000".into()),
                ("ORDER_API_RATE_BURST", "1000000".into()),
            ],
        )?;
        self.api_url = Some(base);
        Ok(pid)
    }

    /// Starts an outbox-relay (several may run: one leads, the others stand by); returns its pid.
    pub fn spawn_relay(&mut self) -> Result<u32> {
        let port = free_port()?;
        self.spawn(
            RELAY,
            format!("http://127.0.0.1:{port}/health/ready"),
            &[("RELAY_ADMIN_ADDR", format!("127.0.0.1:{port}"))],
        )
    }

    /// Starts a sync-worker (several may run: competing consumers); returns its pid.
    pub fn spawn_worker(&mut self) -> Result<u32> {
        if self.emulator_url.is_none() {
            bail!("start the emulator before the worker");
        }
        let port = free_port()?;
        self.spawn(
            WORKER,
            format!("http://127.0.0.1:{port}/health/ready"),
            &[("WORKER_ADMIN_ADDR", format!("127.0.0.1:{port}"))],
        )
    }

    /// Starts an sf-subscriber on the emulator's Pub/Sub API; returns its pid.
    pub fn spawn_subscriber(&mut self) -> Result<u32> {
        let Some(pubsub) = self.pubsub_url.clone() else {
            bail!("start the emulator before the subscriber");
        };
        let port = free_port()?;
        self.spawn(
            SUBSCRIBER,
            format!("http://127.0.0.1:{port}/health/ready"),
            &[
                ("SUBSCRIBER_ADMIN_ADDR", format!("127.0.0.1:{port}")),
                ("SF_PUBSUB_ENDPOINT", pubsub),
            ],
        )
    }

    /// Starts the reference fulfilment receiver answering after `delay`; later services get
    /// its URL as `FULFILMENT_URL`. Returns its pid.
    pub fn spawn_receiver(&mut self, delay: Duration) -> Result<u32> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let pid = self.spawn(
            RECEIVER,
            // It has no health endpoint; its counters answer once it listens.
            format!("{base}/__admin/stats"),
            &[
                ("RECEIVER_ADDR", format!("127.0.0.1:{port}")),
                ("RECEIVER_DELAY", format!("{}ms", delay.as_millis())),
            ],
        )?;
        self.receiver_url = Some(base);
        Ok(pid)
    }

    /// Starts a fulfilment-worker calling the receiver; returns its pid.
    pub fn spawn_fulfilment_worker(&mut self) -> Result<u32> {
        if self.emulator_url.is_none() || self.receiver_url.is_none() {
            bail!("start the emulator and the receiver before the fulfilment worker");
        }
        let port = free_port()?;
        self.spawn(
            FULFILMENT_WORKER,
            format!("http://127.0.0.1:{port}/health/ready"),
            &[("FULFILMENT_ADMIN_ADDR", format!("127.0.0.1:{port}"))],
        )
    }

    /// The whole pipeline, ready: the emulator, an API key, order-api, outbox-relay and
    /// sync-worker. Returns the API key and the API's base URL.
    pub async fn start_pipeline(&mut self) -> Result<(String, String)> {
        self.start_emulator().await?;
        let key = self.create_api_key().await?;
        self.spawn_api()?;
        self.spawn_relay()?;
        self.spawn_worker()?;
        for svc in [API, RELAY, WORKER] {
            self.wait_ready(svc).await?;
        }
        let api = self
            .api_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("order-api has no URL"))?;
        Ok((key, api))
    }

    /// Waits until the latest instance of `name` is ready (see [`Self::wait_ready_pid`]).
    pub async fn wait_ready(&mut self, name: &str) -> Result<()> {
        let pid = self
            .services
            .iter()
            .rev()
            .find(|s| s.name == name)
            .map(|s| s.pid)
            .ok_or_else(|| anyhow!("{name} was not started"))?;
        self.wait_ready_pid(pid).await
    }

    /// Waits until the service's readiness URL answers 200; fails with its log's tail when it
    /// exits or takes longer than a minute.
    pub async fn wait_ready_pid(&mut self, pid: u32) -> Result<()> {
        let http = self.http.clone();
        let svc = self
            .services
            .iter_mut()
            .find(|s| s.pid == pid)
            .ok_or_else(|| anyhow!("process {pid} is not one of the run's"))?;
        let name = svc.name;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = svc.child.try_wait()? {
                bail!("{name} exited ({status}):\n{}", tail(&svc.log, 20));
            }
            let ok = http
                .get(&svc.ready_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready after 60 s ({}):\n{}",
                    svc.ready_url,
                    tail(&svc.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with the log's tail if a service has exited (they should run until shutdown).
    pub fn check_running(&mut self) -> Result<()> {
        for svc in &mut self.services {
            if let Some(status) = svc.child.try_wait()? {
                bail!(
                    "{} exited during the run ({status}):\n{}",
                    svc.name,
                    tail(&svc.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Pids of the running instances of `name`, oldest first.
    pub fn instances(&self, name: &str) -> Vec<u32> {
        self.services
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.pid)
            .collect()
    }

    /// Sends `signal` (`KILL`, `TERM`…) to one of the run's processes and forgets it. After a
    /// SIGKILL it waits for the exit (immediate) and returns the status; any other signal does
    /// not wait (a graceful shutdown may take seconds, and a chaos run's next step should not),
    /// and [`Self::shutdown`] reaps the process later.
    pub async fn stop(&mut self, pid: u32, signal: &str) -> Result<String> {
        let i = self
            .services
            .iter()
            .position(|s| s.pid == pid)
            .ok_or_else(|| anyhow!("process {pid} is not one of the run's"))?;
        let mut svc = self.services.remove(i);
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        if !sent.success() {
            bail!("kill -{signal} {pid} failed ({sent})");
        }
        if signal != "KILL" {
            let note = format!("SIG{signal} sent");
            self.stopping.push(svc);
            return Ok(note);
        }
        match tokio::time::timeout(Duration::from_secs(10), svc.child.wait()).await {
            Ok(status) => Ok(status?.to_string()),
            Err(_) => bail!("{} {pid} still running 10 s after SIGKILL", svc.name),
        }
    }

    /// Waits (up to 20 s each) for the processes [`Self::stop`] signalled without waiting, and
    /// returns (service, pid, exit status, whether it exited 0). A service that does not exit
    /// cleanly on SIGTERM is a shutdown bug.
    pub async fn reap_stopped(&mut self) -> Vec<(String, u32, String, bool)> {
        let mut reaped = Vec::new();
        for mut svc in std::mem::take(&mut self.stopping) {
            let (status, clean) =
                match tokio::time::timeout(Duration::from_secs(20), svc.child.wait()).await {
                    Ok(Ok(status)) => (status.to_string(), status.success()),
                    Ok(Err(e)) => (format!("cannot wait: {e}"), false),
                    Err(_) => {
                        let _ = svc.child.kill().await;
                        (
                            "still running 20 s after the signal; killed".to_owned(),
                            false,
                        )
                    }
                };
            if !clean {
                tracing::warn!(service = svc.name, pid = svc.pid, %status, log = %svc.log.display(), "did not exit cleanly after the signal");
            }
            reaped.push((svc.name.to_owned(), svc.pid, status, clean));
        }
        reaped
    }

    /// Waits for the processes signalled earlier, then stops the others (SIGTERM, then SIGKILL
    /// after 15 s). Problems are logged: this runs after failures too.
    pub(super) async fn stop_all(&mut self) {
        for mut svc in std::mem::take(&mut self.stopping) {
            match tokio::time::timeout(Duration::from_secs(15), svc.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!(service = svc.name, pid = svc.pid, %status, log = %svc.log.display(), "stopped earlier; exited with an error")
                }
                _ => {
                    tracing::warn!(
                        service = svc.name,
                        pid = svc.pid,
                        "stopped earlier but still running; killed"
                    );
                    let _ = svc.child.kill().await;
                }
            }
        }
        while let Some(mut svc) = self.services.pop() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &svc.pid.to_string()])
                .status();
            match tokio::time::timeout(Duration::from_secs(15), svc.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!(service = svc.name, %status, log = %svc.log.display(), "exited with an error")
                }
                _ => {
                    tracing::warn!(
                        service = svc.name,
                        "did not stop within 15 s of SIGTERM; killed"
                    );
                    let _ = svc.child.kill().await;
                }
            }
        }
    }
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!("  (log: {})\n{}", path.display(), all[from..].join("\n"))
}
