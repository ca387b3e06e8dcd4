//! The emulator driven by simple-salesforce (Python, from PyPI), a client nobody here wrote:
//! HTTPS with a generated CA, the password, client-credentials and JWT flows, CRUD, upsert,
//! relationship references, queries with paging, Composite, Bulk API 2.0 ingest jobs and their
//! result files, Bulk API 2.0 query jobs paged by locator, errors and session renewal.
//!
//! simple-salesforce comes pinned from `tools/requirements-test.txt`, installed on first use into
//! `target/py-venv` by orderbridge-testkit; `SF_EMULATOR_PYTHON` may point at another Python that
//! has it.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, rand_core::OsRng};
use sf_emulator::EmulatorConfig;

const DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_talks_to_the_emulator() {
    let dir = std::env::temp_dir().join(format!("sf-emulator-py-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let private = dir.join("jwt-private.pem");
    let public = dir.join("jwt-public.pem");
    // A throwaway key pair for the JWT flow, generated here; nothing secret is committed.
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    std::fs::write(
        &private,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        &public,
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();

    let emu = sf_emulator::spawn(EmulatorConfig {
        tls_self_signed: true,
        tls_ca_out: Some(ca.clone()),
        jwt_public_key_file: Some(public),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .unwrap();
    assert!(
        emu.base_url.starts_with("https://127.0.0.1:"),
        "{}",
        emu.base_url
    );

    let python = match std::env::var_os("SF_EMULATOR_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => tokio::task::spawn_blocking(|| orderbridge_testkit::python_tool("python"))
            .await
            .unwrap()
            .expect("cannot install the pinned Python test tools (tools/requirements-test.txt)"),
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/simple_salesforce/test_emulator.py"
    );
    let mut child = Command::new(&python)
        .arg(script)
        .env("SF_EMULATOR_URL", &emu.base_url)
        .env("SF_EMULATOR_CA", &ca)
        // requests lets these override a session's `verify`, so point them at our CA too.
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("CURL_CA_BUNDLE", &ca)
        .env("SF_EMULATOR_JWT_KEY", &private)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    // Wait on a blocking thread so the emulator keeps serving; kill the script at the deadline.
    let status = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("simple-salesforce tests timed out");
    assert!(status.success(), "simple-salesforce tests failed: {status}");
    // Each Python test resets the org; the last one still leaves its traffic and session behind.
    {
        let inner = emu.state.lock();
        assert!(inner.stats.api_calls_total > 0);
        assert!(!inner.sessions.is_empty());
    }
    emu.shutdown().await.unwrap();
}
