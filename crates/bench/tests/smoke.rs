//! `orderbridge-bench` end to end through the real binaries, tiny and without emulated latency:
//! it must start everything, push the orders through, find each exactly once in Salesforce
//! (intake: in Postgres; relay: on the broker), write its files and leave no database behind.
//! Figures are not checked (timing assertions do not belong in tests).
//!
//! The service binaries of this test's cargo profile are built first with `cargo build --bins`
//! (cargo builds only this package's binary for its tests); on a fresh target directory that
//! first build takes a few minutes, afterwards it is a no-op.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use sqlx::Connection;

const BENCH: &str = env!("CARGO_BIN_EXE_orderbridge-bench");

/// The profile directory (`target/debug`) with order-api, outbox-relay, sync-worker and
/// sf-emulator built from the current sources.
fn service_bins() -> PathBuf {
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
    // The test runs with the variables cargo sets for this package (CARGO_PKG_*,
    // CARGO_MANIFEST_DIR, CARGO_CRATE_NAME…); passed on, they would make the inner build see
    // another environment than a plain `cargo build` and rebuild. Only cargo's own settings
    // (home, build jobs, target, profiles, network, registries, terminal) go through.
    const KEEP: [&str; 10] = [
        "CARGO_HOME",
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_NET_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_HTTP_",
        "CARGO_TERM_",
        "CARGO_INCREMENTAL",
    ];
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && !KEEP.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
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

fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ob-bench-{name}-{}", uuid::Uuid::now_v7().simple()))
}

/// Runs the bench; returns its report.json.
fn bench(args: &[&str], out: &Path) -> Value {
    let output = Command::new(BENCH)
        .args(args)
        .arg("--bin-dir")
        .arg(service_bins())
        .arg("--out")
        .arg(out)
        .args(["--latency-ms", "0", "--jitter-ms", "0", "--timeout", "90s"])
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("measured"), "no table printed:\n{stdout}");
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

async fn database_exists(name: &str) -> bool {
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

fn assert_verified(report: &Value, orders: u64) {
    let v = &report["verification"];
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    assert_eq!(v["orders"].as_u64(), Some(orders), "{v}");
    assert_eq!(v["lines"].as_u64(), Some(orders * 3), "{v}");
}

#[tokio::test]
async fn e2e_small_run_through_the_real_binaries() {
    let out = out_dir("e2e");
    let report = bench(&["e2e", "--orders", "50", "--rate", "0"], &out);
    assert_eq!(report["orders"]["accepted"].as_u64(), Some(50), "{report}");
    assert_eq!(
        report["orders"]["seen_synced"].as_u64(),
        Some(50),
        "{report}"
    );
    assert_verified(&report, 50);
    assert!(
        report["latency_ms"]["post_to_synced_observed"]["p99"]
            .as_f64()
            .is_some()
    );
    assert!(report["salesforce"]["api_calls"].as_u64().unwrap() > 0);
    for svc in ["order-api", "outbox-relay", "sync-worker", "sf-emulator"] {
        assert!(report["peak_rss_mib"][svc].as_f64().unwrap() > 0.0, "{svc}");
        assert!(out.join(format!("logs/{svc}.log")).is_file(), "{svc} log");
    }
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert!(out.join("report.txt").is_file());
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn drain_small_backlog_through_the_real_binaries() {
    let out = out_dir("drain");
    let report = bench(&["drain", "--orders", "300", "--chunk", "120"], &out);
    assert_eq!(report["orders"]["synced"].as_u64(), Some(300), "{report}");
    assert_verified(&report, 300);
    assert!(report["throughput"]["orders_per_s"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.join("progress.svg")).unwrap();
    assert!(svg.contains("<polyline"));
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn intake_short_run_through_the_real_binaries() {
    let out = out_dir("intake");
    let report = bench(
        &[
            "intake",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--connections",
            "4",
        ],
        &out,
    );
    for phase in ["api", "direct"] {
        assert!(
            report[phase]["accepted_in_window"].as_u64().unwrap() > 0,
            "{phase}: {report}"
        );
        assert!(report[phase]["latency_ms"]["p99"].as_f64().is_some());
    }
    let v = &report["verification"];
    assert_eq!(v["ok"], Value::Bool(true), "{v}");
    assert_eq!(
        v["accepted"].as_u64(),
        report["api"]["accepted_total"].as_u64(),
        "{v}"
    );
    assert!(report["ratio"].as_f64().unwrap() > 0.0);
    assert!(report["peak_rss_mib"]["order-api"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.contains("<polyline"));
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn relay_short_run_through_the_real_binaries() {
    let out = out_dir("relay");
    let report = bench(
        &[
            "relay",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--connections",
            "4",
            "--backlog",
            "500",
            "--raw-messages",
            "1000",
            "--raw-batch",
            "200",
        ],
        &out,
    );
    assert_eq!(
        report["received"]["not_received"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report["received"]["duplicates"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(report["unpublished_at_end"].as_i64(), Some(0), "{report}");
    assert_eq!(report["raw"]["received"].as_u64(), Some(1000), "{report}");
    assert!(report["saturation"]["events_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        report["fixed_rate"]["commit_to_received_ms"]["p99"]
            .as_f64()
            .is_some()
    );
    let svg = std::fs::read_to_string(out.join("lag.svg")).unwrap();
    assert!(svg.contains("<polyline"));
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}
