//! Shared by the bench's integration tests: the service binaries built from the current
//! sources, output directories, the database check.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use orderbridge_testkit::strip_cargo_env;
use sqlx::Connection;

pub const BENCH: &str = env!("CARGO_BIN_EXE_orderbridge-bench");

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
    let dir = orderbridge_testkit::build_bins(
        Path::new(BENCH),
        &[
            "order-api",
            "outbox-relay",
            "sync-worker",
            "sf-emulator",
            "sf-subscriber",
            "fulfilment-worker",
            "fulfilment-receiver",
        ],
    )
    .unwrap();
    *built = Some(dir.clone());
    dir
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
