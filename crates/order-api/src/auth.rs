//! API keys: `obk_<id>_<secret>`, random, shown once, stored only as a SHA-256 hash.
//!
//! The public `id` part finds the row; the hash of the whole key is then compared in constant
//! time, so response timing tells an attacker nothing about how close a guess was.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orderbridge_domain::{ClientId, ClientScope};
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

const PREFIX: &str = "obk_";

/// The API client a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    /// Starts the Salesforce keys of this client's shared records (`orderbridge_domain::tenant`).
    pub external_id_prefix: String,
}

impl Client {
    /// What this client's events carry about it.
    pub fn scope(&self) -> ClientScope {
        ClientScope {
            id: self.id,
            external_id_prefix: self.external_id_prefix.clone(),
        }
    }
}

/// A newly created key: the only moment its plain text exists.
pub struct NewApiKey {
    pub client: Client,
    pub key: String,
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Creates the client `name` if it does not exist yet and gives it a new key.
pub async fn create_api_key(pool: &PgPool, name: &str) -> Result<NewApiKey, sqlx::Error> {
    let key_id = hex(&rand::random::<[u8; 8]>());
    let key = format!(
        "{PREFIX}{key_id}_{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let mut tx = pool.begin().await?;
    let (client_id, external_id_prefix): (Uuid, String) = sqlx::query_as(
        "INSERT INTO api_clients (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id, external_id_prefix",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO api_keys (id, client_id, key_hash) VALUES ($1, $2, $3)")
        .bind(&key_id)
        .bind(client_id)
        .bind(hash(&key).as_slice())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(NewApiKey {
        client: Client {
            id: ClientId::from_uuid(client_id),
            name: name.to_owned(),
            external_id_prefix,
        },
        key,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the client a presented key belongs to; `None` for unknown, malformed or revoked keys.
pub async fn authenticate<'e>(
    executor: impl PgExecutor<'e>,
    presented: &str,
) -> Result<Option<Client>, sqlx::Error> {
    let Some(key_id) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
    else {
        return Ok(None);
    };
    let row: Option<(Vec<u8>, Uuid, String, String)> = sqlx::query_as(
        "SELECT k.key_hash, c.id, c.name, c.external_id_prefix
         FROM api_keys k JOIN api_clients c ON c.id = k.client_id
         WHERE k.id = $1 AND k.revoked_at IS NULL",
    )
    .bind(key_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.and_then(|(stored, id, name, external_id_prefix)| {
        bool::from(stored.as_slice().ct_eq(&hash(presented))).then_some(Client {
            id: ClientId::from_uuid(id),
            name,
            external_id_prefix,
        })
    }))
}

/// Extractor: the authenticated client, after the per-client rate limit. Rejects with 401 when
/// the `Authorization: Bearer` key is missing or invalid, 429 when the client is over its rate.
impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or(ApiError::Unauthorized)?;
        let client = authenticate(&state.pool, presented)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        state.rate_limiter.check(client.id)?;
        tracing::Span::current().record("client", client.name.as_str());
        Ok(client)
    }
}
