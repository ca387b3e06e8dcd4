//! Token endpoint flows, OAuth error shapes, session checks and expiry.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use reqwest::Method;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::{RsaPrivateKey, rand_core::OsRng};
use serde_json::{Value, json};
use sf_emulator::EmulatorConfig;
use sf_emulator::config::{DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_REFRESH_TOKEN, DEV_USERNAME};

fn oauth_error(r: &Resp) -> (&str, &str) {
    (
        r.body["error"].as_str().unwrap_or_default(),
        r.body["error_description"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
async fn password_flow_returns_salesforce_token_shape() {
    let org = Org::start().await;
    let r = org.token_request(&password_form()).await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert!(b["access_token"].as_str().unwrap().starts_with("00D"));
    assert_eq!(b["instance_url"], json!(org.base()));
    assert_eq!(b["token_type"], "Bearer");
    assert!(b["id"].as_str().unwrap().contains("/id/00D"));
    assert!(
        b["issued_at"].as_str().unwrap().parse::<u64>().is_ok(),
        "issued_at is ms as a string"
    );
    assert!(b.get("expires_in").is_none());
    assert!(b.get("refresh_token").is_none());
    assert!(b["signature"].is_string());
}

#[tokio::test]
async fn password_flow_errors() {
    let org = Org::start().await;
    let with = |k: &'static str, v: &str| {
        let mut f = password_form();
        for p in &mut f {
            if p.0 == k {
                p.1 = v.to_owned();
            }
        }
        f
    };
    // Wrong password, and the password without its security token: the same vague answer.
    for form in [
        with("password", "nope"),
        with("password", sf_emulator::config::DEV_PASSWORD),
        with("username", "x@y.z"),
    ] {
        let r = org.token_request(&form).await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            json!({"error": "invalid_grant", "error_description": "authentication failure"})
        );
    }
    let r = org.token_request(&with("client_id", "nope")).await;
    assert_eq!((r.status, oauth_error(&r).0), (400, "invalid_client_id"));
    let r = org.token_request(&with("client_secret", "nope")).await;
    assert_eq!((r.status, oauth_error(&r).0), (400, "invalid_client"));
    let r = org
        .token_request(&with("grant_type", "authorization_code"))
        .await;
    assert_eq!(
        (r.status, oauth_error(&r).0),
        (400, "unsupported_grant_type")
    );
    let stats = org.stats().await;
    assert_eq!(stats["token_failures"], 6);
    assert_eq!(stats["api_calls_total"], 0, "auth is not an API call");
}

#[tokio::test]
async fn client_credentials_and_refresh_token_flows() {
    let org = Org::start().await;
    let cc = |secret: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", DEV_CLIENT_ID.to_owned()),
            ("client_secret", secret.to_owned()),
        ]
    };
    let ok = org.token_request(&cc(DEV_CLIENT_SECRET)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body["access_token"].is_string());
    let bad = org.token_request(&cc("wrong")).await;
    assert_eq!(oauth_error(&bad).0, "invalid_client");

    let rt = |token: &str| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", DEV_CLIENT_ID.to_owned()),
            ("refresh_token", token.to_owned()),
        ]
    };
    let ok = org.token_request(&rt(DEV_REFRESH_TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The new token works for data calls.
    let token = ok.body["access_token"].as_str().unwrap();
    let r = org
        .http
        .get(format!("{}{V}/limits", org.base()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = org.token_request(&rt("stale")).await;
    assert_eq!(
        bad.body,
        json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})
    );
}

#[tokio::test]
async fn jwt_flow_without_a_key_says_it_is_not_configured() {
    let org = Org::start().await;
    let r = org
        .token_request(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            ),
            ("assertion", "a.b.c".into()),
        ])
        .await;
    assert_eq!(r.status, 400);
    let (err, desc) = oauth_error(&r);
    assert_eq!(err, "invalid_grant");
    assert!(desc.contains("SF_EMULATOR_JWT_PUBLIC_KEY_FILE"), "{desc}");
}

fn sign(key: &RsaPrivateKey, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let input = format!("{header}.{body}");
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sf-emulator-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test]
async fn jwt_bearer_flow_verifies_signature_and_claims() {
    // A throwaway key pair generated here: no private key is committed.
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let other = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    for pem in [
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
        key.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap(),
    ] {
        let path = temp_file("jwt.pem", &pem);
        let org = Org::start_with(EmulatorConfig {
            jwt_public_key_file: Some(path.clone()),
            ..EmulatorConfig::ephemeral()
        })
        .await;
        let now = chrono::Utc::now().timestamp();
        let claims = |iss: &str, sub: &str, aud: &str, exp: i64| json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp});
        let grant = |assertion: String| {
            vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                ),
                ("assertion", assertion),
            ]
        };
        let base = org.base().to_owned();
        let ok = org
            .token_request(&grant(sign(
                &key,
                &claims(DEV_CLIENT_ID, DEV_USERNAME, &base, now + 120),
            )))
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(ok.body.get("refresh_token").is_none());
        // localhost names the emulator too, and the real login host is an accepted audience.
        let localhost = base.replace("127.0.0.1", "localhost");
        let ok = org
            .token_request(&grant(sign(
                &key,
                &claims(DEV_CLIENT_ID, DEV_USERNAME, &localhost, now + 120),
            )))
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok = org
            .token_request(&grant(sign(
                &key,
                &claims(
                    DEV_CLIENT_ID,
                    DEV_USERNAME,
                    "https://login.salesforce.com",
                    now + 120,
                ),
            )))
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);

        let cases = [
            (
                sign(
                    &other,
                    &claims(DEV_CLIENT_ID, DEV_USERNAME, &base, now + 120),
                ),
                "invalid_grant",
                "invalid assertion",
            ),
            (
                sign(
                    &key,
                    &claims(
                        DEV_CLIENT_ID,
                        DEV_USERNAME,
                        "https://evil.example",
                        now + 120,
                    ),
                ),
                "invalid_grant",
                "audience is invalid",
            ),
            (
                sign(
                    &key,
                    &claims(DEV_CLIENT_ID, DEV_USERNAME, &base, now - 3600),
                ),
                "invalid_grant",
                "expired authorization code",
            ),
            (
                sign(
                    &key,
                    &claims("someone-else", DEV_USERNAME, &base, now + 120),
                ),
                "invalid_client_id",
                "client identifier invalid",
            ),
            (
                sign(&key, &claims(DEV_CLIENT_ID, "other@user", &base, now + 120)),
                "invalid_grant",
                "user hasn't approved this consumer",
            ),
            (
                "garbage".to_owned(),
                "invalid_grant",
                "invalid assertion: not a compact JWS (header.claims.signature)",
            ),
        ];
        for (assertion, err, desc) in cases {
            let r = org.token_request(&grant(assertion)).await;
            assert_eq!(r.status, 400);
            assert_eq!(oauth_error(&r), (err, desc));
        }
        std::fs::remove_file(path).unwrap();
    }
}

#[tokio::test]
async fn jwt_flow_accepts_a_connected_app_certificate() {
    // The file users upload to a connected app is an X.509 certificate, not a bare key.
    let key = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let pkcs8 = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, LineEnding::LF).unwrap();
    let signer =
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["orderbridge-dev".to_owned()])
        .unwrap()
        .self_signed(&signer)
        .unwrap();
    let path = temp_file("cert.pem", &cert.pem());
    let org = Org::start_with(EmulatorConfig {
        jwt_public_key_file: Some(path.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let claims = json!({"iss": DEV_CLIENT_ID, "sub": DEV_USERNAME, "aud": org.base(), "exp": chrono::Utc::now().timestamp() + 60});
    let r = org
        .token_request(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
            ),
            ("assertion", sign(&key, &claims)),
        ])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn invalid_key_file_refuses_to_start() {
    let path = temp_file(
        "bad.pem",
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    );
    let err = sf_emulator::spawn(EmulatorConfig {
        jwt_public_key_file: Some(path.clone()),
        ..EmulatorConfig::ephemeral()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("JWT public key"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_get_401_invalid_session_id() {
    let org = Org::start().await;
    let expected =
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]);
    for auth in [None, Some("Bearer nope"), Some("Basic abc")] {
        let mut req = org.http.get(format!("{}{V}/limits", org.base()));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = to_resp(req.send().await.unwrap()).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.body, expected);
    }
    assert_eq!(org.get("/limits").await.status, 200);
    // Expire on demand: the same token is refused afterwards, and a new login works.
    org.faults(json!({"expire_sessions": true})).await;
    let r = org.get("/limits").await;
    assert_eq!((r.status, r.body.clone()), (401, expected.clone()));
    let stats = org.stats().await;
    assert_eq!(stats["rejected"]["INVALID_SESSION_ID"], 4);
    assert_eq!(stats["api_calls_total"], 1, "refused calls are not counted");
}

#[tokio::test]
async fn sessions_time_out_when_idle() {
    let org = Org::start_with(EmulatorConfig {
        session_timeout: Duration::from_millis(300),
        ..EmulatorConfig::ephemeral()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = org.call(Method::GET, "/limits", None).await;
        if r.status == 401 {
            assert_eq!(error_code(&r.body), "INVALID_SESSION_ID");
            break;
        }
        assert!(Instant::now() < deadline, "session never expired");
    }
}

#[tokio::test]
async fn revoke_ends_a_session() {
    let org = Org::start().await;
    assert_eq!(org.get("/limits").await.status, 200);
    let revoke = |token: String| {
        org.http
            .post(format!("{}/services/oauth2/revoke", org.base()))
            .form(&[("token", token)])
            .send()
    };
    assert_eq!(revoke(org.token.clone()).await.unwrap().status(), 200);
    assert_eq!(org.get("/limits").await.status, 401);
    let again = to_resp(revoke(org.token.clone()).await.unwrap()).await;
    assert_eq!(
        (again.status, again.body["error"].clone()),
        (400, json!("unsupported_token_type"))
    );
}
