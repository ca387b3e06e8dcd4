//! The system under test, as a user runs it: the real binaries as child processes on free ports,
//! against a database and a broker namespace made for this run, with a Salesforce emulator.
//! [`Stack::shutdown`] stops the processes and removes the database and the namespace, also after
//! a failed run.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser};
use orderbridge_broker::{BrokerConfig, Supervisor};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::procfs;

pub const EMULATOR: &str = "sf-emulator";
pub const API: &str = "order-api";
pub const RELAY: &str = "outbox-relay";
pub const WORKER: &str = "sync-worker";
/// Every binary a run may start.
pub const BINARIES: [&str; 4] = [EMULATOR, API, RELAY, WORKER];

/// The name under which the bench's API client and key are created.
pub const CLIENT_NAME: &str = "bench";

/// `application_name` of the bench's own Postgres connections, so the chaos run's backend
/// terminations can spare them.
pub const BENCH_APPLICATION_NAME: &str = "orderbridge-bench";

/// The emulator's daily API allocation: more than any run uses.
pub const EMULATOR_DAILY_API_LIMIT: u64 = 1_000_000_000;

/// Variables the services read that must not leak in from the caller's environment (a
/// `SF_USERNAME` of a real org, say): the bench sets what it needs, `--env` adds the rest.
const SERVICE_ENV_PREFIXES: [&str; 10] = [
    "DATABASE_URL",
    "DB_",
    "ORDER_API_",
    "RELAY_",
    "WORKER_",
    "SF_",
    "BROKER_",
    "AMQP_URL",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// Settings every subcommand shares: where things are, the emulated Salesforce, the services'
/// environment.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Directory holding order-api, outbox-relay, sync-worker and sf-emulator. Default: this
    /// program's own directory, i.e. the binaries of the same cargo profile (build them with
    /// `cargo build --release --bins`).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Directory for the report, the JSON, the chart and the services' logs.
    /// Default: target/bench/<UTC time>-<command>/ in the workspace.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Postgres server. The bench creates its own database there and drops it at the end; the
    /// database named in the URL is only used to connect for that.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderbridge",
        hide_env_values = true
    )]
    pub database_url: String,
    /// RabbitMQ. The bench uses a namespace of its own and deletes it at the end.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Latency the emulator adds to every Salesforce API call.
    #[arg(long, default_value_t = 150)]
    pub latency_ms: u64,
    /// Random extra latency per call, uniform in 0..=jitter.
    #[arg(long, default_value_t = 30)]
    pub jitter_ms: u64,
    /// The emulator's seed file (product catalogue). Default: config/sf-emulator-seed.json.
    #[arg(long)]
    pub seed_file: Option<PathBuf>,
    /// RUST_LOG of the services (JSON lines in <out>/logs/<service>.log).
    #[arg(long, default_value = "info")]
    pub service_log: String,
    /// Extra environment for every service, applied last, e.g. `--env WORKER_MAX_IN_FLIGHT=8`.
    /// Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Give up waiting for the pipeline after this long.
    #[arg(long, default_value = "10m", value_parser = orderbridge_runtime::parse_interval)]
    pub timeout: Duration,
    /// Keep the database and the broker namespace (for inspection); their names are printed.
    #[arg(long)]
    pub keep: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// The workspace root: where this crate was compiled from, or the current directory when the
/// binary runs elsewhere.
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if compiled.join("Cargo.toml").is_file() {
        compiled.canonicalize().unwrap_or(compiled)
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    }
}

/// `bin_dir`, or this program's directory; every binary must be there.
fn resolve_bin_dir(arg: Option<&Path>) -> Result<PathBuf> {
    let dir = match arg {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate this program")?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("this program has no parent directory"))?,
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: build them first with `cargo build --release --bins` \
             (or point --bin-dir at the directory that has them)",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(dir)
}

/// (server URL with `database` as the database, the same URL with `postgres` instead).
fn database_urls(server: &str, database: &str) -> Result<(String, String)> {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .ok_or_else(|| anyhow!("DATABASE_URL is not a postgres:// URL"))?;
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    let with = |db: &str| match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    };
    Ok((with(database), with("postgres")))
}

/// One running service.
pub struct Service {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
    /// Readiness URL (`/health/ready`, or the emulator's version list).
    ready_url: String,
    child: Child,
}

/// Everything a run started; see the module documentation.
pub struct Stack {
    pub args: StackArgs,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub database: String,
    pub database_url: String,
    admin_url: String,
    pub namespace: String,
    pub http: reqwest::Client,
    pub pool: Option<PgPool>,
    pub emulator_url: Option<String>,
    pub api_url: Option<String>,
    services: Vec<Service>,
    /// Processes sent a signal by [`Self::stop`] and not yet reaped.
    stopping: Vec<Service>,
    /// Instances started so far per binary (names the logs of restarts).
    started: std::collections::HashMap<&'static str, u32>,
}

impl Stack {
    /// Checks the binaries, creates the output directory and an empty database, picks a namespace.
    pub async fn create(args: StackArgs, command: &str) -> Result<Self> {
        let bin_dir = resolve_bin_dir(args.bin_dir.as_deref())?;
        let out = args.out.clone().unwrap_or_else(|| {
            workspace_root().join("target/bench").join(format!(
                "{}-{command}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        });
        fs::create_dir_all(out.join("logs"))
            .with_context(|| format!("cannot create {}", out.display()))?;
        let database = format!("ob_bench_{}", Uuid::new_v4().simple());
        let (database_url, admin_url) = database_urls(&args.database_url, &database)?;
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .context("cannot reach Postgres (DATABASE_URL)")?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&mut admin)
            .await
            .context("cannot create the bench database")?;
        let _ = admin.close().await;
        let namespace = format!("bench-{}", Uuid::now_v7());
        tracing::info!(%database, %namespace, out = %out.display(), bins = %bin_dir.display(), "stack created");
        Ok(Self {
            args,
            out,
            bin_dir,
            database,
            database_url,
            admin_url,
            namespace,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            pool: None,
            emulator_url: None,
            api_url: None,
            services: Vec::new(),
            stopping: Vec::new(),
            started: std::collections::HashMap::new(),
        })
    }

    /// A service setting given with `--env` (the last one wins).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.args
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The cargo profile the binaries come from (the directory's name: `release`, `debug`…).
    pub fn profile(&self) -> String {
        self.bin_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A command for one of the binaries with the run's environment and the caller's
    /// service-related variables removed.
    fn command(&self, binary: &str, extra: &[(&str, String)]) -> Command {
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
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", &self.args.service_log);
        if let Some(url) = &self.emulator_url {
            cmd.env("SF_LOGIN_URL", url);
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

    /// `order-api create-api-key --name bench` (which also migrates the database), then a pool
    /// on the database. Returns the key.
    pub async fn create_api_key(&mut self) -> Result<String> {
        let log = self.out.join("logs/create-api-key.log");
        let output = self
            .command(API, &[])
            .args(["create-api-key", "--name", CLIENT_NAME])
            .stderr(File::create(&log)?)
            .output()
            .await
            .context("cannot run order-api create-api-key")?;
        if !output.status.success() {
            bail!(
                "order-api create-api-key failed ({}):\n{}",
                output.status,
                tail(&log, 20)
            );
        }
        let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if key.is_empty() {
            bail!("order-api create-api-key printed no key");
        }
        let options: PgConnectOptions = self
            .database_url
            .parse()
            .context("DATABASE_URL is not a Postgres URL")?;
        self.pool = Some(
            PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options.application_name(BENCH_APPLICATION_NAME))
                .await
                .context("cannot connect to the bench database")?,
        );
        Ok(key)
    }

    pub fn pool(&self) -> Result<&PgPool> {
        self.pool
            .as_ref()
            .ok_or_else(|| anyhow!("the database is not set up yet"))
    }

    /// The id of the bench's API client.
    pub async fn client_id(&self) -> Result<Uuid> {
        sqlx::query_scalar("SELECT id FROM api_clients WHERE name = $1")
            .bind(CLIENT_NAME)
            .fetch_one(self.pool()?)
            .await
            .context("the bench's API client is missing")
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
                ("SF_EMULATOR_SEED_FILE", seed.display().to_string()),
                (
                    "SF_EMULATOR_DAILY_API_LIMIT",
                    EMULATOR_DAILY_API_LIMIT.to_string(),
                ),
            ],
        )?;
        self.wait_ready(EMULATOR).await?;
        self.emulator_url = Some(base);
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
        let base = format!("http://127.0.0.1:{port}");
        let pid = self.spawn(
            API,
            format!("{base}/health/ready"),
            &[
                ("ORDER_API_ADDR", format!("127.0.0.1:{port}")),
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

    pub fn emulator(&self) -> Result<&str> {
        self.emulator_url
            .as_deref()
            .ok_or_else(|| anyhow!("the emulator is not running"))
    }

    /// Merges `faults` into the emulator's fault settings (`POST /__admin/faults`).
    pub async fn set_faults(&self, faults: Value) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/__admin/faults", self.emulator()?))
            .json(&faults)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("emulator refused faults {faults}: {}", resp.status());
        }
        Ok(())
    }

    /// The emulator's counters (`GET /__admin/stats`).
    pub async fn emulator_stats(&self) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/__admin/stats", self.emulator()?))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Salesforce API calls counted by the emulator so far.
    pub async fn api_calls(&self) -> Result<u64> {
        self.emulator_stats()
            .await?
            .get("api_calls_total")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("emulator stats lack api_calls_total"))
    }

    /// Each running service's Prometheus metrics (relay, worker: the ones with an admin port),
    /// also saved as `metrics-<service>.txt` in the output directory.
    pub async fn scrape_metrics(&self) -> Vec<(String, String)> {
        let mut scraped = Vec::new();
        for svc in &self.services {
            let Some(base) = svc.ready_url.strip_suffix("/health/ready") else {
                continue;
            };
            if svc.name == API {
                continue;
            }
            let text = match self.http.get(format!("{base}/metrics")).send().await {
                Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                _ => continue,
            };
            let _ = fs::write(self.out.join(format!("metrics-{}.txt", svc.name)), &text);
            scraped.push((svc.name.to_owned(), text));
        }
        scraped
    }

    /// (service, pid) of everything running.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.services
            .iter()
            .map(|s| (s.name.to_owned(), s.pid))
            .collect()
    }

    /// Peak resident set (VmHWM) of each service so far, in KiB.
    pub fn peak_rss_kib(&self) -> Vec<(String, Option<u64>)> {
        self.services
            .iter()
            .map(|s| (s.name.to_owned(), procfs::peak_rss_kib(s.pid)))
            .collect()
    }

    /// Stops every service (SIGTERM, then SIGKILL after 15 s), deletes the broker namespace and
    /// drops the database unless `--keep`. Problems are logged, not returned: this runs after
    /// failures too and must get as far as it can.
    pub async fn shutdown(mut self) {
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
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        if self.args.keep {
            tracing::info!(database = %self.database, namespace = %self.namespace, "kept (--keep)");
            return;
        }
        if let Err(e) = self.delete_namespace().await {
            tracing::warn!(namespace = %self.namespace, error = format!("{e:#}"), "cannot delete the broker namespace");
        }
        if let Err(e) = self.drop_database().await {
            tracing::warn!(database = %self.database, error = format!("{e:#}"), "cannot drop the database");
        }
    }

    /// The broker settings the services ran with (an `--env` may change the queue arguments,
    /// which name the retry queues).
    pub fn broker_config(&self) -> Result<BrokerConfig> {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            broker: BrokerConfig,
        }
        let setting = |key: &str, default: &str| {
            self.args
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map_or_else(|| default.to_owned(), |(_, v)| v.clone())
        };
        let argv = [
            "bench".to_owned(),
            "--amqp-url".into(),
            self.args.amqp_url.clone(),
            "--broker-namespace".into(),
            self.namespace.clone(),
            "--broker-retry-tiers".into(),
            setting("BROKER_RETRY_TIERS", "5s,1m,10m"),
            "--broker-delivery-limit".into(),
            setting("BROKER_DELIVERY_LIMIT", "10"),
        ];
        Ok(Wrapper::try_parse_from(argv)?.broker)
    }

    async fn delete_namespace(&self) -> Result<()> {
        let config = self.broker_config()?;
        let supervisor = Supervisor::new(config.clone(), "orderbridge-bench")?;
        let session = supervisor.try_connect().await?;
        let deleted = supervisor
            .topology()
            .delete(&config, &session.channel)
            .await;
        // What `relay`'s raw loop declares; it deletes them itself, unless the run failed.
        let raw = format!("{}.bench-raw", self.namespace);
        let _ = config
            .op(
                "queue.delete",
                session
                    .channel
                    .queue_delete(raw.as_str().into(), Default::default()),
            )
            .await;
        let _ = config
            .op(
                "exchange.delete",
                session
                    .channel
                    .exchange_delete(raw.as_str().into(), Default::default()),
            )
            .await;
        session.close(&config).await;
        Ok(deleted?)
    }

    async fn drop_database(&self) -> Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database
        ))
        .execute(&mut admin)
        .await?;
        let _ = admin.close().await;
        Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn database_url_keeps_server_and_query() {
        let (db, admin) =
            database_urls("postgres://u:p@h:5433/orderbridge?sslmode=disable", "x").unwrap();
        assert_eq!(db, "postgres://u:p@h:5433/x?sslmode=disable");
        assert_eq!(admin, "postgres://u:p@h:5433/postgres?sslmode=disable");
        let (db, _) = database_urls("postgres://h", "x").unwrap();
        assert_eq!(db, "postgres://h/x");
        assert!(database_urls("h:5432", "x").is_err());
    }

    #[test]
    fn env_pairs_parse() {
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            ("A".to_owned(), "b=c".to_owned())
        );
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
