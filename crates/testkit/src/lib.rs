//! Test-only helpers shared by orderbridge's integration tests. Never a dependency of a binary.
//!
//! - [`TestDatabase`]: a fresh, migrated database per test, dropped afterwards. It needs only the
//!   server in `DATABASE_URL` (default: local Postgres), not the database named there, so tests
//!   run on a machine where no orderbridge database exists yet.
//! - [`FreshDatabase`]: a uniquely named database that does not exist yet, for tests that start
//!   our binaries (which create it), dropped afterwards.
//! - [`free_port`], [`ChildGuard`]: run our binaries as a user would, and always clean them up.
//! - [`build_bins`]: our binaries built from the current sources beside a test's own, for tests
//!   that run other packages' binaries (`cargo test` builds only the package under test's).
//! - [`python_tool`]: public tools that test us better than we could (schemathesis,
//!   simple-salesforce), installed on demand into a virtualenv pinned by
//!   `tools/requirements-test.txt`, so `cargo test` stays the only command to run.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `DATABASE_URL` from the environment, or the documented default (the local Postgres).
pub fn server_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/orderbridge".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (server, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{server}/{name}")
}

/// A database that does not exist yet; our binaries create it on start. Dropped (forcibly) when
/// this value is dropped, also when the test panics.
pub struct FreshDatabase {
    pub name: String,
    pub url: String,
}

impl FreshDatabase {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&server_database_url(), &name);
        Self { name, url }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let admin = with_database(&server_database_url(), "postgres");
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs outside any async context; a small runtime of its own does the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&sql).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}

/// A fresh database with the orderbridge schema, and a pool on it.
pub struct TestDatabase {
    pub pool: PgPool,
    fresh: FreshDatabase,
}

impl TestDatabase {
    /// Creates and migrates a new database. Panics (it is for tests) with the reason.
    pub async fn new() -> Self {
        let fresh = FreshDatabase::new("ob_test");
        let admin = with_database(&server_database_url(), "postgres");
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test Postgres server: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{}\"", fresh.name))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&fresh.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
        orderbridge_db::MIGRATOR
            .run(&pool)
            .await
            .unwrap_or_else(|e| panic!("cannot migrate the test database: {e}"));
        Self { pool, fresh }
    }

    /// Connection options for this database, to build other pools (through a proxy, say).
    pub fn connect_options(&self) -> PgConnectOptions {
        (*self.pool.connect_options()).clone()
    }

    /// Pool options to combine with [`TestDatabase::connect_options`].
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new().max_connections(10)
    }

    /// The database URL, for child processes.
    pub fn url(&self) -> &str {
        &self.fresh.url
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A port held by this test but not listened on: connecting to it is refused (as to a service
/// that is down) and no other test can take it before [`ReservedPort::listen`] — unlike
/// [`free_port`], whose port is free again for anyone between the call and the bind.
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl ReservedPort {
    /// Binds 127.0.0.1 on a port the kernel chooses, without listening.
    pub fn new() -> io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let port = socket.local_addr()?.port();
        Ok(Self { socket, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the held port.
    pub fn listen(self) -> io::Result<tokio::net::TcpListener> {
        self.socket.listen(1024)
    }
}

/// Kills and reaps the child when dropped, so a failing test leaves no process behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path to an executable of the pinned Python test tools (`schemathesis`, …), creating or
/// updating the virtualenv `target/py-venv` first when `tools/requirements-test.txt` changed.
/// Concurrent tests wait on a file lock, so the environment is built once.
pub fn python_tool(name: &str) -> io::Result<PathBuf> {
    let root = workspace_root();
    let requirements = root.join("tools/requirements-test.txt");
    let venv = root.join("target/py-venv");
    fs::create_dir_all(root.join("target"))?;
    let lock = File::create(root.join("target/py-venv.lock"))?;
    lock.lock()?;

    // The stamp names the venv's own path too: a virtualenv's scripts point at their
    // interpreter by absolute path, so a target directory moved or copied elsewhere (a CI
    // cache) holds a venv whose tools no longer start, and it is rebuilt from scratch.
    let wanted = format!(
        "{} {}",
        hex(&Sha256::digest(fs::read(&requirements)?)),
        venv.display()
    );
    let stamp = venv.join(".requirements-sha256");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        fs::write(&stamp, &wanted)?;
    }
    lock.unlock()?;
    Ok(venv.join("bin").join(name))
}

/// The npm package `name` at exactly `version`, installed on demand under `target/npm` (as
/// [`python_tool`] installs the Python tools: pinned, once, under a lock so parallel tests do
/// not race), for test data that ships on npm (e.g. a specification's JSON Schemas). Returns
/// the package's directory. Needs `npm`; nothing is fetched when the version is there.
pub fn npm_package(name: &str, version: &str) -> io::Result<PathBuf> {
    let root = workspace_root();
    let prefix = root.join("target/npm");
    fs::create_dir_all(&prefix)?;
    let lock = File::create(root.join("target/npm.lock"))?;
    lock.lock()?;
    let package = prefix.join("node_modules").join(name);
    let installed = |package: &Path| {
        fs::read(package.join("package.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|p| p["version"].as_str().map(str::to_owned))
    };
    if installed(&package).as_deref() != Some(version) {
        run(Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
            ])
            .arg("--prefix")
            .arg(&prefix)
            .arg(format!("{name}@{version}")))
        .map_err(|e| io::Error::other(format!("installing npm {name}@{version}: {e}")))?;
    }
    lock.unlock()?;
    match installed(&package) {
        Some(v) if v == version => Ok(package),
        other => Err(io::Error::other(format!(
            "npm {name}: wanted {version}, found {other:?} under {}",
            prefix.display()
        ))),
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Cargo's settings from the environment that a nested `cargo build` should keep (the user's
/// configuration); every other `CARGO_*` variable is one cargo set for *this test* (package
/// name, version, manifest dir, binary paths…), and passing those on to the nested build makes
/// it see a changed environment and rebuild.
const CARGO_SETTINGS: [&str; 10] = [
    "CARGO_HOME",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
    "CARGO_PROFILE_",
    "CARGO_INCREMENTAL",
];

/// Removes the `CARGO_*` variables cargo set for the running test from `cmd`'s environment.
pub fn strip_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let setting = CARGO_SETTINGS.iter().any(|s| {
            if s.ends_with('_') {
                k.starts_with(s)
            } else {
                k == *s
            }
        });
        if k.starts_with("CARGO") && !setting {
            cmd.env_remove(&key);
        }
    }
}

/// Builds the binaries of `packages` from the current sources into the profile directory that
/// holds `beside` (a binary of the running test's package, e.g. `env!("CARGO_BIN_EXE_…")`), and
/// returns that directory. A no-op build when they are current; run once per test binary.
pub fn build_bins(beside: &Path, packages: &[&str]) -> io::Result<PathBuf> {
    let not_in_target = || {
        io::Error::other(format!(
            "{} is not in a cargo target directory",
            beside.display()
        ))
    };
    let profile_dir = beside.parent().ok_or_else(not_in_target)?.to_path_buf();
    let target_dir = profile_dir.parent().ok_or_else(not_in_target)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    strip_cargo_env(&mut cmd);
    cmd.args(["build", "--bins"])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root());
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Err(not_in_target()),
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "building {packages:?} failed: {status}"
        )));
    }
    Ok(profile_dir)
}
