#![allow(clippy::unwrap_used)]
//! Authentication against a real per-test database: failed authentications throttled per peer
//! before any lookup, the key cache and revocation, expiry, rotation, last use.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use common::{TestApp, TestResponse};
use order_api::ApiConfig;
use orderbridge_db::keys;
use secrecy::ExposeSecret;

/// `GET /v1/orders` from `peer` with `key`, as the server sees it (with the peer's address).
async fn list_from(app: &TestApp, peer: [u8; 4], key: &str) -> TestResponse {
    let mut req = Request::get("/v1/orders")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
    app.send(req).await
}

const ATTACKER: [u8; 4] = [192, 0, 2, 66];
const NEIGHBOUR: [u8; 4] = [192, 0, 2, 7];

#[tokio::test]
async fn failed_authentications_are_throttled_per_peer_without_a_lookup() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let config = ApiConfig {
        auth_failure_rate: NonZeroU32::new(1).unwrap(),
        auth_failure_burst: NonZeroU32::new(5).unwrap(),
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(db.pool.clone(), config);
    let key = app.key("portal").await;
    for i in 0..5 {
        list_from(&app, ATTACKER, &format!("obk_{i:016x}_guess"))
            .await
            .problem(401, "about:blank");
    }
    let throttled = list_from(&app, ATTACKER, "obk_0000000000000000_guess").await;
    let problem = throttled.problem(429, "about:blank");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("failed authentications"),
        "{problem}"
    );
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // While throttled, even a valid key from that address waits: the address is the unit.
    list_from(&app, ATTACKER, &key)
        .await
        .problem(429, "about:blank");
    // Another address is not affected.
    assert_eq!(list_from(&app, NEIGHBOUR, &key).await.status, 200);

    // Throttled requests cost no database work: with the pool closed they are still 429,
    // while an unthrottled peer's lookup now fails (503).
    db.pool.close().await;
    for _ in 0..50 {
        list_from(&app, ATTACKER, "obk_0000000000000000_guess")
            .await
            .problem(429, "about:blank");
    }
    list_from(&app, [192, 0, 2, 8], "obk_0000000000000000_guess")
        .await
        .problem(503, "about:blank");
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_cache_time() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let ttl = Duration::from_millis(500);
    let config = ApiConfig {
        key_cache_ttl: ttl,
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(db.pool.clone(), config);
    let key = app.key("portal").await;
    assert_eq!(app.get(&key, "/v1/orders").await.status, 200);
    let id = keys::list(&db.pool, Some("portal")).await.unwrap()[0]
        .id
        .clone();
    let revoked = keys::revoke(&db.pool, &id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    // Cached: documented to last up to the cache time.
    assert_eq!(app.get(&key, "/v1/orders").await.status, 200);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    app.get(&key, "/v1/orders")
        .await
        .problem(401, "about:blank");
    // Revoking again is harmless.
    assert_eq!(
        keys::revoke(&db.pool, &id).await.unwrap().revoked_at,
        revoked.revoked_at
    );
}

#[tokio::test]
async fn an_expired_key_is_refused_even_when_cached() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone()); // default cache time, 10 s
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(800);
    let new = keys::create(&db.pool, "portal", Some("short-lived"), Some(expires))
        .await
        .unwrap();
    let key = new.key.expose_secret().to_owned();
    assert_eq!(app.get(&key, "/v1/orders").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.get(&key, "/v1/orders")
        .await
        .problem(401, "about:blank");
    let listed = keys::list(&db.pool, None).await.unwrap();
    assert_eq!(listed[0].state(chrono::Utc::now()), keys::KeyState::Expired);
    assert!(
        keys::create(&db.pool, "portal", None, Some(chrono::Utc::now()))
            .await
            .is_err(),
        "a key cannot be created already expired"
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let config = ApiConfig {
        key_cache_ttl: Duration::ZERO,
        ..ApiConfig::default()
    };
    let app = TestApp::with_config(db.pool.clone(), config);
    let old = keys::create(&db.pool, "erp", Some("nightly import"), None)
        .await
        .unwrap();
    let old_key = old.key.expose_secret().to_owned();
    let (new, old_info) = keys::rotate(&db.pool, &old.id, Duration::from_millis(800), None)
        .await
        .unwrap();
    let new_key = new.key.expose_secret().to_owned();
    assert_ne!(new.id, old.id);
    assert_eq!(new.client, old.client, "the same client");
    assert!(old_info.expires_at.is_some());
    // Both work during the grace period, as the same client.
    assert_eq!(app.get(&old_key, "/v1/orders").await.status, 200);
    assert_eq!(app.get(&new_key, "/v1/orders").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.get(&old_key, "/v1/orders")
        .await
        .problem(401, "about:blank");
    assert_eq!(app.get(&new_key, "/v1/orders").await.status, 200);
    // The new key kept the name; the old one cannot be rotated again.
    let listed = keys::list(&db.pool, Some("erp")).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k.name.as_deref() == Some("nightly import"))
    );
    assert!(matches!(
        keys::rotate(&db.pool, &old.id, Duration::from_secs(1), None).await,
        Err(keys::KeyError::Expired(_))
    ));
    assert!(matches!(
        keys::rotate(&db.pool, "nope", Duration::from_secs(1), None).await,
        Err(keys::KeyError::NotFound(_))
    ));
}

#[tokio::test]
async fn last_use_is_recorded() {
    let db = orderbridge_testkit::TestDatabase::new().await;
    let app = TestApp::new(db.pool.clone());
    let key = app.key("portal").await;
    assert!(
        keys::list(&db.pool, None).await.unwrap()[0]
            .last_used_at
            .is_none()
    );
    assert_eq!(app.get(&key, "/v1/orders").await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if keys::list(&db.pool, None).await.unwrap()[0]
            .last_used_at
            .is_some()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "last_used_at not set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
