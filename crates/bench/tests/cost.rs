//! `orderbridge-bench cost` through the real binaries, tiny: a small preload and short phases.
//! It must measure every figure on both sides of the preload (each non-zero), write its files
//! and leave no database behind. Figures are not compared (timing assertions do not belong in
//! tests); only that each was measured.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{BENCH, database_exists, out_dir, service_bins};
use serde_json::Value;

const PRELOAD: u64 = 20_000;

#[tokio::test]
async fn cost_small_preload_measures_every_figure_before_and_after() {
    let out = out_dir("cost");
    let output = Command::new(BENCH)
        .args(["cost", "--preload", &PRELOAD.to_string(), "--chunk", "3000"])
        .args(["--duration", "2s", "--warmup", "300ms", "--rounds", "1"])
        .args(["--connections", "4", "--read-connections", "2"])
        .args([
            "--read-duration",
            "2s",
            "--read-warmup",
            "200ms",
            "--prewarm",
        ])
        .arg("--bin-dir")
        .arg(service_bins())
        .arg("--out")
        .arg(&out)
        .args(["--timeout", "90s"])
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench cost failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("measured"), "no table printed:\n{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();

    let preload = &report["preload"];
    assert_eq!(preload["orders"].as_u64(), Some(PRELOAD), "{preload}");
    assert_eq!(preload["lines"].as_u64(), Some(PRELOAD * 3), "{preload}");
    assert!(preload["written_s"].as_f64().unwrap() > 0.0, "{preload}");
    assert!(preload["orders_per_s"].as_f64().unwrap() > 0.0, "{preload}");
    assert!(
        preload["prewarmed_bytes"].as_i64().unwrap() > 0,
        "{preload}"
    );

    let positive = |v: &Value, what: &str| {
        assert!(v.as_f64().is_some_and(|x| x > 0.0), "{what}: {v}");
    };
    let mut orders = Vec::new();
    for set in ["before", "after"] {
        let s = &report[set];
        for phase in ["api", "direct"] {
            let p = &s["intake"][phase];
            positive(
                &p["orders_per_s"],
                &format!("{set} intake {phase} orders/s"),
            );
            positive(
                &p["latency_ms"]["p99"],
                &format!("{set} intake {phase} p99"),
            );
        }
        positive(&s["intake"]["ratio"], &format!("{set} intake ratio"));
        for read in ["get", "list_newest", "list_synced", "list_created_after"] {
            let r = &s["reads"][read];
            positive(&r["requests_per_s"], &format!("{set} {read} requests/s"));
            positive(&r["latency_ms"]["p50"], &format!("{set} {read} p50"));
            positive(&r["latency_ms"]["p99"], &format!("{set} {read} p99"));
            assert_eq!(r["failed_in_window"].as_u64(), Some(0), "{set} {read}: {r}");
            // Where the time went: every read costs order-api CPU and Postgres pages. (A
            // window of 2 s, as Postgres publishes a busy backend's counters once a second.)
            let profile = &r["profile"];
            positive(
                &profile["cpu_ms_per_request"]["order-api"],
                &format!("{set} {read} order-api CPU per request"),
            );
            positive(
                &profile["pages_hit_per_request"],
                &format!("{set} {read} pages per request"),
            );
        }
        assert_eq!(s["verification"]["ok"], Value::Bool(true), "{set}: {s}");
        for table in ["orders", "order_lines", "order_status_history"] {
            positive(
                &s["sizes"]["tables"][table]["total_bytes"],
                &format!("{set} size of {table}"),
            );
        }
        orders.push(s["orders"].as_i64().unwrap());
    }
    // The preload is in the second set's table, and its orders read back as synced pages.
    assert!(orders[1] >= orders[0] + PRELOAD as i64, "{orders:?}");
    let synced = report["after"]["reads"]["list_synced"]["items_per_page"]
        .as_f64()
        .unwrap();
    assert_eq!(synced, 50.0, "a synced page after the preload is full");
    for k in ["intake_ratio", "reads"] {
        assert!(!report["growth"][k].is_null(), "growth {k}");
    }
    assert!(out.join("report.txt").is_file());
    assert!(
        std::fs::read_to_string(out.join("latency.svg"))
            .unwrap()
            .contains("<polyline")
    );
    let db = report["machine"]["database"].as_str().unwrap();
    assert!(!database_exists(db).await, "database {db} left behind");
    let _ = std::fs::remove_dir_all(&out);
}
