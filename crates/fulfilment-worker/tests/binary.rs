//! The real `fulfilment-worker` binary: configured from its command line, it provisions a
//! request end to end, shows it on `/metrics` and `/health/ready`, and exits 0 on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, eventually};
use orderbridge_domain::fulfilment::RequestState;
use orderbridge_testkit::{ChildGuard, free_port};

#[tokio::test]
async fn the_binary_provisions_reports_metrics_and_stops_on_sigterm() {
    let mut h = Harness::new().await;
    h.start_relay();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let mut args = h.worker_args();
    args.extend(["--admin-addr".to_owned(), admin.clone()]);
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_fulfilment-worker"))
            .args(&args[1..])
            .env("RUST_LOG", "warn")
            .env_remove("FULFILMENT_SIGNING_SECRET")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://{admin}{path}");
        async move {
            match http.get(url).send().await {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            }
        }
    };
    eventually("the worker ready", || async {
        matches!(get("/health/ready").await, Some((200, _)))
    })
    .await;

    let (order_id, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-binary-1").await;
    let request = h.wait_written_back(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert_eq!(h.status(order_id).await, "provisioned");
    assert_eq!(h.activation(&sf_id).await.0.as_deref(), Some("Provisioned"));
    let (status, metrics) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fulfilment_worker_requests_total{outcome=\"provisioned\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fulfilment_worker_write_backs_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fulfilment_worker_call_seconds_count 1"),
        "{metrics}"
    );

    // SIGTERM: a clean stop.
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(h.receiver.calls().len(), 1);
    h.cleanup().await;
}

/// SIGTERM while a call is in progress: the worker finishes it (outcome recorded, result written
/// back, message acked) before it exits.
#[tokio::test]
async fn sigterm_during_a_call_finishes_it_before_exiting() {
    let mut h = Harness::new().await;
    h.receiver.answer_after(Duration::from_secs(2));
    h.start_relay();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let mut args = h.worker_args();
    args.extend(["--admin-addr".to_owned(), admin]);
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_fulfilment-worker"))
            .args(&args[1..])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (_, sf_id) = h.synced_order().await;
    let id = h.request(&sf_id, "idem-sigterm-1").await;
    // The receiver has the request (it answers 2 s later): stop the worker now.
    eventually("the call under way", || async {
        !h.receiver.calls().is_empty()
    })
    .await;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    // Finished, not abandoned: decided and written back by the process that was stopped.
    let request = h.load(id).await;
    assert_eq!(request.state, RequestState::Provisioned);
    assert!(request.written_back_at.is_some());
    assert_eq!(h.activation(&sf_id).await.0.as_deref(), Some("Provisioned"));
    assert_eq!(h.receiver.calls().len(), 1);
    h.cleanup().await;
}
