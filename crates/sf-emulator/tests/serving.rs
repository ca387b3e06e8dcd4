//! Serving: HTTPS with given certificate files, start-up errors, persistence to a data file,
//! Sforce-Call-Options accounting.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use sf_emulator::{EmulatorConfig, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-emulator-serving-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn https_with_given_certificate_files() {
    let dir = temp_dir();
    let generated = sf_emulator::tls::generate(&["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &generated.chain_pem).unwrap();
    std::fs::write(&key, &generated.key_pem).unwrap();
    let emu = sf_emulator::spawn(EmulatorConfig {
        tls_cert_file: Some(cert),
        tls_key_file: Some(key),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .unwrap();
    assert!(emu.base_url.starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(generated.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(emu.addr).await.unwrap();
    let mut tls = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    tls.write_all(b"GET /services/data/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"62.0\""));
    emu.shutdown().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bad_start_up_settings_are_reported() {
    let dir = temp_dir();
    let missing = dir.join("missing.pem");
    let err = sf_emulator::spawn(EmulatorConfig {
        tls_cert_file: Some(missing.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StartError::TlsIncomplete), "{err}");
    let err = sf_emulator::spawn(EmulatorConfig {
        tls_cert_file: Some(missing.clone()),
        tls_key_file: Some(missing.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let bad_schema = dir.join("schema.json");
    std::fs::write(&bad_schema, "{\"objects\": 1}").unwrap();
    let err = sf_emulator::spawn(EmulatorConfig {
        schema_file: Some(bad_schema),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("schema"), "{err}");
    let bad_seed = dir.join("seed.json");
    std::fs::write(
        &bad_seed,
        r#"{"products": [{"Name": "x", "prices": {"Nowhere": 1}}]}"#,
    )
    .unwrap();
    let err = sf_emulator::spawn(EmulatorConfig {
        seed_file: Some(bad_seed),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("Nowhere"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn records_persist_in_the_data_file_across_restarts() {
    let dir = temp_dir();
    let data = dir.join("org.json");
    let seed = dir.join("seed.json");
    std::fs::write(
        &seed,
        r#"{"products": [{"Name": "Widget", "ProductCode": "W-1", "prices": {"Standard": 10}}]}"#,
    )
    .unwrap();
    let config = EmulatorConfig {
        data_file: Some(data.clone()),
        seed_file: Some(seed),
        ..EmulatorConfig::ephemeral()
    };
    let org = Org::start_with(config.clone()).await;
    let id = org.account("Kept", "K-1").await;
    org.emu.shutdown().await.unwrap();
    assert!(data.exists());

    let org = Org::start_with(config).await;
    let r = org.get(&format!("/sobjects/Account/{id}")).await;
    assert_eq!((r.status, r.body["Name"].clone()), (200, json!("Kept")));
    // Neither the standard price book nor the seed is applied twice.
    let stats = org.stats().await;
    assert_eq!(stats["records"]["Pricebook2"], 1);
    assert_eq!(stats["records"]["Product2"], 1);
    // New ids do not collide with saved ones.
    let other = org.account("New", "K-2").await;
    assert_ne!(other, id);
    org.emu.shutdown().await.unwrap();
    std::fs::write(&data, "not json").unwrap();
    let err = sf_emulator::spawn(EmulatorConfig {
        data_file: Some(data.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("data file"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn calls_are_counted_per_client_name() {
    let org = Org::start().await;
    for _ in 0..2 {
        let r = org
            .call_with(
                Method::GET,
                &format!("{V}/limits"),
                None,
                &[("Sforce-Call-Options", "client=orderbridge")],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    org.get("/limits").await;
    let stats = org.stats().await;
    assert_eq!(stats["api_calls_by_client"], json!({"orderbridge": 2}));
    assert_eq!(stats["api_calls_total"], 3);
}

#[tokio::test]
async fn oversized_bodies_get_a_json_413() {
    let org = Org::start().await;
    let huge = json!({"Name": "x".repeat(sf_emulator::http::MAX_BODY_BYTES + 1)});
    let r = org.post("/sobjects/Account", huge).await;
    assert_eq!(r.status, 413);
    assert_eq!(error_code(&r.body), "JSON_PARSER_ERROR");
}
