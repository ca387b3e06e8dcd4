//! The `sf-emulator` binary run alone, as a newcomer runs it: it starts with the dev product
//! catalogue (the products the README's walk-through orders) wherever it is started from, and
//! with none when told `--empty`.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orderbridge_testkit::{ChildGuard, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sf-emulator");

/// Starts the binary (from the temp directory, not the repository) and returns the product codes
/// it holds once it answers.
async fn product_codes(args: &[&str]) -> Vec<String> {
    let port = free_port().unwrap();
    let _child = ChildGuard(
        Command::new(BIN)
            .args(args)
            .current_dir(std::env::temp_dir())
            .env_remove("SF_EMULATOR_SEED_FILE")
            .env_remove("SF_EMULATOR_EMPTY")
            .env("SF_EMULATOR_ADDR", format!("127.0.0.1:{port}"))
            .env("SF_EMULATOR_PUBSUB_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/__admin/records/Product2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && r.status().is_success()
        {
            let body: Value = r.json().await.unwrap();
            let mut codes: Vec<String> = body["records"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["ProductCode"].as_str().map(str::to_owned))
                .collect();
            codes.sort();
            return codes;
        }
        assert!(Instant::now() < deadline, "the emulator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn alone_it_has_the_dev_catalogue_and_empty_it_has_none() {
    let codes = product_codes(&[]).await;
    for sku in ["SKU-RED-MUG", "SKU-SPOON", "SKU-TEA", "SKU-001", "SKU-020"] {
        assert!(codes.iter().any(|c| c == sku), "{sku} missing: {codes:?}");
    }
    assert_eq!(codes.len(), 23);
    assert!(product_codes(&["--empty"]).await.is_empty());
}
