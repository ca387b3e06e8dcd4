//! `orderbridge-bench` end to end through the real binaries, tiny and without emulated latency:
//! it must start everything, push the orders through, find each exactly once in Salesforce
//! (intake: in Postgres; relay: on the broker), write its files and leave no database behind.
//! Figures are not checked (timing assertions do not belong in tests).
//!
//! The service binaries of this test's cargo profile are built first with `cargo build --bins`
//! (cargo builds only this package's binary for its tests; see `common::service_bins`); on a
//! fresh target directory that first build takes a few minutes, afterwards it is a no-op.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{BENCH, database_exists, out_dir, service_bins};
use serde_json::Value;

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

#[tokio::test]
async fn slowloris_short_run_through_the_real_binaries() {
    let out = out_dir("slowloris");
    let report = bench(
        &[
            "slowloris",
            "--connections",
            "200",
            "--samples",
            "4",
            "--settle",
            "200ms",
        ],
        &out,
    );
    for phase in ["before", "during", "after"] {
        let p = &report["phases"][phase];
        assert_eq!(p["failures"], serde_json::json!([]), "{phase}: {report}");
        assert!(p["get_ms"]["p99"].as_f64().is_some(), "{phase}: {report}");
        assert!(p["post_ms"]["p99"].as_f64().is_some(), "{phase}: {report}");
    }
    assert!(
        report["attack"]["connects"].as_u64().unwrap() >= 200,
        "{report}"
    );
    assert!(report["rss_mib"]["during_max"].as_f64().unwrap() > 0.0);
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn inbound_short_run_through_the_real_binaries() {
    let out = out_dir("inbound");
    let report = bench(
        &[
            "inbound",
            "--orders",
            "10",
            "--changes",
            "40",
            "--rate",
            "40",
            "--backlog",
            "30",
        ],
        &out,
    );
    let live = &report["live"];
    assert_eq!(live["made"].as_u64(), Some(40), "{report}");
    assert_eq!(live["unseen"].as_u64(), Some(0), "{report}");
    assert_eq!(live["change_to_api_ms"]["n"].as_u64(), Some(40), "{report}");
    assert_eq!(report["backlog"]["applied"].as_u64(), Some(30), "{report}");
    assert_eq!(report["mismatched"], serde_json::json!([]), "{report}");
    assert!(out.join("logs/sf-subscriber.log").is_file());
    assert!(out.join("logs/sf-subscriber.2.log").is_file());
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

/// The whole loop of issue 14 through the real binaries: approvals in the emulator → Flow →
/// platform event → sf-subscriber → fulfilment-worker → fulfilment-receiver → written back to
/// Salesforce and the local order. The bench's own checks (its exit status) cover every order
/// provisioned on both sides exactly once with nothing dead-lettered; the report is asserted too.
#[tokio::test]
async fn fulfilment_loop_through_the_real_binaries() {
    let out = out_dir("fulfilment");
    let report = bench(
        &[
            "fulfilment",
            "--orders",
            "5",
            "--rate",
            "5",
            "--receiver-delay",
            "50ms",
        ],
        &out,
    );
    let live = &report["live"];
    assert_eq!(live["approved"].as_u64(), Some(5), "{report}");
    assert_eq!(live["unseen"].as_u64(), Some(0), "{report}");
    assert_eq!(
        live["approval_to_provisioned_ms"]["n"].as_u64(),
        Some(5),
        "{report}"
    );
    let checks = &report["checks"];
    let empty = serde_json::json!([]);
    assert_eq!(checks["not_provisioned"], empty, "{report}");
    assert_eq!(checks["salesforce_not_provisioned"], empty, "{report}");
    assert_eq!(checks["not_provisioned_once"], empty, "{report}");
    assert_eq!(
        checks["receiver_bad_signatures"].as_u64(),
        Some(0),
        "{report}"
    );
    assert_eq!(checks["dead_letters"].as_u64(), Some(0), "{report}");
    assert_eq!(
        checks["request_states"],
        serde_json::json!([{"state": "provisioned", "count": 5}]),
        "{report}"
    );
    assert!(out.join("logs/fulfilment-worker.log").is_file());
    assert!(out.join("logs/fulfilment-receiver.log").is_file());
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}

/// Salesforce outbound messages into order-api: a few small envelopes (orders repeated within
/// and across them, so the per-order ordering is exercised) and two redeliveries. The bench's
/// own checks (its exit status) cover every envelope acknowledged, every notification stored
/// once, every order's history as its notifications said and redeliveries changing nothing.
#[tokio::test]
async fn outbound_messages_through_the_real_binaries() {
    let out = out_dir("outbound");
    let report = bench(
        &[
            "outbound",
            "--orders",
            "20",
            "--envelopes",
            "6",
            "--per-envelope",
            "10",
            "--connections",
            "3",
            "--duplicates",
            "2",
        ],
        &out,
    );
    let live = &report["live"];
    assert_eq!(live["notifications"].as_u64(), Some(60), "{report}");
    assert_eq!(live["not_acked"].as_u64(), Some(0), "{report}");
    assert_eq!(
        live["envelope_latency_ms"]["n"].as_u64(),
        Some(6),
        "{report}"
    );
    assert!(live["notifications_per_s"].as_f64().unwrap() > 0.0);
    let checks = &report["checks"];
    assert_eq!(checks["rows"].as_i64(), Some(60), "{report}");
    assert_eq!(checks["ids_found"].as_i64(), Some(60), "{report}");
    assert_eq!(checks["history_entries"].as_i64(), Some(60), "{report}");
    assert_eq!(checks["mismatched"], serde_json::json!([]), "{report}");
    let d = &report["duplicates"];
    assert_eq!(d["not_acked"], serde_json::json!([]), "{report}");
    assert_eq!(
        (d["new_rows"].as_i64(), d["new_history"].as_i64()),
        (Some(0), Some(0)),
        "{report}"
    );
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}
