//! `POST /services/oauth2/token` for the four server-side flows (password, client credentials,
//! refresh token, JWT bearer), and access-token checks for the data API.
//!
//! Failures answer 400 `{"error":"…","error_description":"…"}` as Salesforce does; a wrong
//! username or password gives the deliberately vague `invalid_grant` / `authentication failure`.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::jwt;
use crate::reply::Reply;
use crate::state::{Inner, Session, Shared};

/// Clock skew Salesforce allows on a JWT's `exp`.
const JWT_SKEW_SECS: i64 = 180;

fn oauth_error(error: &str, description: &str) -> Reply {
    Reply::json(
        400,
        json!({"error": error, "error_description": description}),
    )
}

fn eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Handles a token request given its form fields.
pub fn token(shared: &Shared, inner: &mut Inner, form: &HashMap<String, String>) -> Reply {
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    let label = match grant {
        "password" | "client_credentials" | "refresh_token" => grant,
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => "jwt_bearer",
        _ => "unsupported",
    };
    *inner
        .stats
        .token_requests
        .entry(label.to_owned())
        .or_default() += 1;
    let outcome = match grant {
        "password" => password(shared, form),
        "client_credentials" => client_credentials(shared, form),
        "refresh_token" => refresh(shared, form),
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => jwt_bearer(shared, form),
        _ => Err(oauth_error(
            "unsupported_grant_type",
            "grant type not supported",
        )),
    };
    match outcome {
        Ok(()) => issue(shared, inner),
        Err(reply) => {
            inner.stats.token_failures += 1;
            tracing::info!(grant = label, body = ?reply.body, "token request refused");
            reply
        }
    }
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or_default()
}

fn check_client(
    shared: &Shared,
    form: &HashMap<String, String>,
    secret_required: bool,
) -> Result<(), Reply> {
    if !eq(field(form, "client_id"), &shared.config.client_id) {
        return Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    let secret = form.get("client_secret");
    match secret {
        Some(s) if !eq(s, shared.config.client_secret.expose_secret()) => {
            Err(oauth_error("invalid_client", "invalid client credentials"))
        }
        None if secret_required => Err(oauth_error("invalid_client", "invalid client credentials")),
        _ => Ok(()),
    }
}

fn password(shared: &Shared, form: &HashMap<String, String>) -> Result<(), Reply> {
    check_client(shared, form, true)?;
    let expected = format!(
        "{}{}",
        shared.config.password.expose_secret(),
        shared.config.security_token.expose_secret()
    );
    if !eq(field(form, "username"), &shared.config.username)
        || !eq(field(form, "password"), &expected)
    {
        return Err(oauth_error("invalid_grant", "authentication failure"));
    }
    Ok(())
}

fn client_credentials(shared: &Shared, form: &HashMap<String, String>) -> Result<(), Reply> {
    check_client(shared, form, true)
}

fn refresh(shared: &Shared, form: &HashMap<String, String>) -> Result<(), Reply> {
    check_client(shared, form, false)?;
    if !eq(
        field(form, "refresh_token"),
        shared.config.refresh_token.expose_secret(),
    ) {
        return Err(oauth_error("invalid_grant", "expired access/refresh token"));
    }
    Ok(())
}

fn jwt_bearer(shared: &Shared, form: &HashMap<String, String>) -> Result<(), Reply> {
    let Some(key) = &shared.jwt_key else {
        return Err(oauth_error(
            "invalid_grant",
            "JWT bearer flow not configured on this emulator: set SF_EMULATOR_JWT_PUBLIC_KEY_FILE to the certificate or public key matching your private key",
        ));
    };
    let claims = match jwt::verify(key, field(form, "assertion")) {
        Ok(c) => c,
        Err(jwt::AssertionError::Malformed(why)) => {
            return Err(oauth_error(
                "invalid_grant",
                &format!("invalid assertion: {why}"),
            ));
        }
        Err(jwt::AssertionError::BadSignature) => {
            return Err(oauth_error("invalid_grant", "invalid assertion"));
        }
    };
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if !eq(claim("iss"), &shared.config.client_id) {
        return Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    // `localhost` and 127.0.0.1 name the same emulator; the real login hosts are accepted too,
    // so an assertion built for Salesforce works unchanged.
    let norm = |u: &str| {
        u.trim_end_matches('/')
            .to_ascii_lowercase()
            .replace("://localhost", "://127.0.0.1")
    };
    let aud = norm(claim("aud"));
    let audiences = [
        norm(&shared.instance_url),
        "https://login.salesforce.com".to_owned(),
        "https://test.salesforce.com".to_owned(),
    ];
    if !audiences.contains(&aud) {
        return Err(oauth_error("invalid_grant", "audience is invalid"));
    }
    // simple-salesforce sends `exp` as a string of digits, and Salesforce accepts it.
    let exp = claims.get("exp").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .or_else(|| v.as_str().and_then(|s| s.trim().parse::<i64>().ok()))
    });
    let Some(exp) = exp else {
        return Err(oauth_error(
            "invalid_grant",
            "invalid assertion: exp claim missing",
        ));
    };
    if exp + JWT_SKEW_SECS < chrono::Utc::now().timestamp() {
        return Err(oauth_error("invalid_grant", "expired authorization code"));
    }
    if !eq(claim("sub"), &shared.config.username) {
        return Err(oauth_error(
            "invalid_grant",
            "user hasn't approved this consumer",
        ));
    }
    Ok(())
}

/// Issues a new access token: `{org id}!{random}`, like a real session id.
fn issue(shared: &Shared, inner: &mut Inner) -> Reply {
    let mut rng = rand::rng();
    let random: String = (&mut rng)
        .sample_iter(&Alphanumeric)
        .take(96)
        .map(char::from)
        .collect();
    let token = format!("{}!{random}", &shared.org_id[..15]);
    let sig: [u8; 32] = rng.random();
    inner.sessions.insert(
        token.clone(),
        Session {
            last_used: Instant::now(),
        },
    );
    Reply::json(
        200,
        json!({
            "access_token": token,
            "signature": base64::engine::general_purpose::STANDARD.encode(sig),
            "scope": "api",
            "instance_url": shared.instance_url,
            "id": format!("{}/id/{}/{}", shared.instance_url, shared.org_id, shared.user_id),
            "token_type": "Bearer",
            "issued_at": chrono::Utc::now().timestamp_millis().to_string(),
        }),
    )
}

/// Whether `authorization` (the header value) carries a live session; touches it if so.
pub fn check_session(shared: &Shared, inner: &mut Inner, authorization: Option<&str>) -> bool {
    let Some(token) = authorization.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("OAuth "))
            .or_else(|| h.strip_prefix("bearer "))
    }) else {
        return false;
    };
    let timeout = shared.session_timeout();
    match inner.sessions.get_mut(token.trim()) {
        Some(s) if s.last_used.elapsed() < timeout => {
            s.last_used = Instant::now();
            true
        }
        Some(_) => {
            inner.sessions.remove(token.trim());
            false
        }
        None => false,
    }
}
