//! Shared by the bench's integration tests: the service binaries built from the current
//! sources, output directories, the database check.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sqlx::Connection;

pub const BENCH: &str = env!("CARGO_BIN_EXE_orderbridge-bench");

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

/// The profile directory (`target/debug`) with order-api, outbox-relay, sync-worker and
/// sf-emulator built from the current sources (one `cargo build` per test binary; a no-op when
/// they are current).
pub fn service_bins() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = built.as_ref() {
        return dir.clone();
    }
    let profile_dir = Path::new(BENCH).parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    strip_cargo_env(&mut cmd);
    cmd.args(["build", "--bins"])
        .args([
            "-p",
            "order-api",
            "-p",
            "outbox-relay",
            "-p",
            "sync-worker",
            "-p",
            "sf-emulator",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => panic!("unexpected binary location {BENCH}"),
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building the service binaries failed");
    *built = Some(profile_dir.clone());
    profile_dir
}

pub fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ob-bench-{name}-{}", uuid::Uuid::now_v7().simple()))
}

pub async fn database_exists(name: &str) -> bool {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/orderbridge".into());
    let (server, _) = url.rsplit_once('/').unwrap();
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n > 0
}

#[test]
fn cargo_settings_survive_and_cargos_own_variables_do_not() {
    let mut cmd = Command::new("true");
    strip_cargo_env(&mut cmd);
    let removed: Vec<String> = cmd
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    // Cargo sets these for every test binary.
    assert!(
        removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|k| k.starts_with("CARGO_PKG_")),
        "{removed:?}"
    );
    assert!(
        !removed
            .iter()
            .any(|k| k == "CARGO_HOME" || k.starts_with("CARGO_BUILD_"))
    );
}
