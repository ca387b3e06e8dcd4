//! API keys and their lifecycle: create, list, revoke, rotate, authenticate.
//!
//! A key is `obk_<id>_<secret>`: 8 random bytes of public id (hex) and 32 random bytes of
//! secret (base64url). Only the SHA-256 of the whole key is stored, so the plain text exists once,
//! when it is created. Keys are 256-bit random, so a fast hash is enough: there is no dictionary
//! to brute-force. The public id finds the row; the hash is then compared in constant time.
//!
//! ```text
//! create ──► active ──revoke──► revoked
//!              │
//!              └─rotate─► a new active key; this one expires after the grace period
//! ```
//!
//! Used by `order-api` (authentication, `create-api-key`) and `orderbridge keys`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use orderbridge_domain::ClientId;
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const PREFIX: &str = "obk_";

/// The longest client or key name accepted.
pub const MAX_NAME_CHARS: usize = 100;

/// The API client a key authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub id: ClientId,
    pub name: String,
    /// Starts the Salesforce keys of the client's shared records (see [`crate::clients`]).
    pub external_id_prefix: String,
}

/// A key that authenticated: its client, and when the key stops working (so a cache never
/// keeps an expired key alive).
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub client: ApiClient,
    pub key_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A newly created key: the only moment its plain text exists.
pub struct NewKey {
    pub client: ApiClient,
    pub id: String,
    pub key: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What an operator sees of a key (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub client: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Where a key is in its lifecycle at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl KeyInfo {
    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// Why a key operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no API key with id `{0}`")]
    NotFound(String),
    #[error("API key `{0}` is revoked")]
    Revoked(String),
    #[error("API key `{0}` has expired")]
    Expired(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The SHA-256 of a presented key: what a cache may keep instead of the key itself.
pub fn fingerprint(presented: &str) -> [u8; 32] {
    hash(presented)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(what: &str, name: &str) -> Result<(), KeyError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(KeyError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// Creates the client `client_name` if it does not exist yet and gives it a new key, named
/// `key_name`, valid until `expires_at` (never expires when `None`).
pub async fn create(
    pool: &PgPool,
    client_name: &str,
    key_name: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<NewKey, KeyError> {
    check_name("the client name", client_name)?;
    if let Some(n) = key_name {
        check_name("the key name", n)?;
    }
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(KeyError::Invalid("the expiry must be in the future".into()));
    }
    let mut tx = pool.begin().await?;
    let (client_id, external_id_prefix): (Uuid, String) = sqlx::query_as(
        "INSERT INTO api_clients (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id, external_id_prefix",
    )
    .bind(Uuid::now_v7())
    .bind(client_name)
    .fetch_one(&mut *tx)
    .await?;
    let client = ApiClient {
        id: ClientId::from_uuid(client_id),
        name: client_name.to_owned(),
        external_id_prefix,
    };
    let new = insert_key(&mut *tx, client, key_name, expires_at).await?;
    tx.commit().await?;
    Ok(new)
}

async fn insert_key<'e>(
    executor: impl PgExecutor<'e>,
    client: ApiClient,
    name: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<NewKey, KeyError> {
    let id = hex(&rand::random::<[u8; 8]>());
    let key = format!(
        "{PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    sqlx::query(
        "INSERT INTO api_keys (id, client_id, key_hash, name, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(client.id.get())
    .bind(hash(&key).as_slice())
    .bind(name)
    .bind(expires_at)
    .execute(executor)
    .await?;
    Ok(NewKey {
        client,
        id,
        key: SecretString::from(key),
        expires_at,
    })
}

/// Every key, or one client's, newest first.
pub async fn list(pool: &PgPool, client_name: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT k.id, c.name AS client, k.name, k.created_at, k.last_used_at, k.expires_at,
                k.revoked_at
         FROM api_keys k JOIN api_clients c ON c.id = k.client_id
         WHERE $1::text IS NULL OR c.name = $1
         ORDER BY k.created_at DESC, k.id",
    )
    .bind(client_name)
    .fetch_all(pool)
    .await?)
}

async fn get<'e>(executor: impl PgExecutor<'e>, id: &str) -> Result<KeyInfo, KeyError> {
    sqlx::query_as(
        "SELECT k.id, c.name AS client, k.name, k.created_at, k.last_used_at, k.expires_at,
                k.revoked_at
         FROM api_keys k JOIN api_clients c ON c.id = k.client_id
         WHERE k.id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| KeyError::NotFound(id.to_owned()))
}

/// Revokes a key at once (in the database; an API process may keep accepting it for its key
/// cache time). Revoking a revoked key changes nothing and is not an error.
pub async fn revoke(pool: &PgPool, id: &str) -> Result<KeyInfo, KeyError> {
    sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    get(pool, id).await
}

/// Issues a new key for the same client (same name, expiring `new_expires_at`) and lets the old
/// one expire after `grace`, so the callers can switch over without an outage. Returns the new key
/// and the old key as it now is. A revoked or expired key cannot be rotated: create a new one.
pub async fn rotate(
    pool: &PgPool,
    id: &str,
    grace: Duration,
    new_expires_at: Option<DateTime<Utc>>,
) -> Result<(NewKey, KeyInfo), KeyError> {
    let grace = chrono::Duration::from_std(grace)
        .map_err(|_| KeyError::Invalid("the grace period is too long".into()))?;
    let mut tx = pool.begin().await?;
    // Locks the old key, so two rotations of it cannot both succeed.
    let old: Option<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT k.client_id, c.name, c.external_id_prefix, k.name
         FROM api_keys k JOIN api_clients c ON c.id = k.client_id
         WHERE k.id = $1 FOR UPDATE OF k",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((client_id, client_name, external_id_prefix, key_name)) = old else {
        return Err(KeyError::NotFound(id.to_owned()));
    };
    let info = get(&mut *tx, id).await?;
    match info.state(Utc::now()) {
        KeyState::Active => {}
        KeyState::Revoked => return Err(KeyError::Revoked(id.to_owned())),
        KeyState::Expired => return Err(KeyError::Expired(id.to_owned())),
    }
    let client = ApiClient {
        id: ClientId::from_uuid(client_id),
        name: client_name,
        external_id_prefix,
    };
    let new = insert_key(&mut *tx, client, key_name.as_deref(), new_expires_at).await?;
    // An old key that already expires sooner keeps its earlier expiry.
    sqlx::query(
        "UPDATE api_keys SET expires_at = least(coalesce(expires_at, 'infinity'), now() + $2)
         WHERE id = $1",
    )
    .bind(id)
    .bind(grace)
    .execute(&mut *tx)
    .await?;
    let old = get(&mut *tx, id).await?;
    tx.commit().await?;
    Ok((new, old))
}

/// Finds the client a presented key belongs to; `None` for unknown, malformed, revoked and
/// expired keys.
pub async fn authenticate<'e>(
    executor: impl PgExecutor<'e>,
    presented: &str,
) -> Result<Option<Authenticated>, sqlx::Error> {
    let Some(key_id) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
    else {
        return Ok(None);
    };
    #[derive(sqlx::FromRow)]
    struct Row {
        key_hash: Vec<u8>,
        client_id: Uuid,
        client_name: String,
        external_id_prefix: String,
        expires_at: Option<DateTime<Utc>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT k.key_hash, c.id AS client_id, c.name AS client_name, c.external_id_prefix,
                k.expires_at
         FROM api_keys k JOIN api_clients c ON c.id = k.client_id
         WHERE k.id = $1 AND k.revoked_at IS NULL
           AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(key_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.and_then(|row| {
        bool::from(row.key_hash.as_slice().ct_eq(&hash(presented))).then(|| Authenticated {
            client: ApiClient {
                id: ClientId::from_uuid(row.client_id),
                name: row.client_name,
                external_id_prefix: row.external_id_prefix,
            },
            key_id: key_id.to_owned(),
            expires_at: row.expires_at,
        })
    }))
}

/// Records that `key_id` was used now, unless that was already recorded in the last minute
/// (which keeps this from becoming a write per request).
pub async fn touch<'e>(executor: impl PgExecutor<'e>, key_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key_id)
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(expires_at: Option<DateTime<Utc>>, revoked_at: Option<DateTime<Utc>>) -> KeyInfo {
        KeyInfo {
            id: "k".into(),
            client: "c".into(),
            name: None,
            created_at: Utc::now(),
            last_used_at: None,
            expires_at,
            revoked_at,
        }
    }

    #[test]
    fn states() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert_eq!(info(None, None).state(now), KeyState::Active);
        assert_eq!(info(Some(now + hour), None).state(now), KeyState::Active);
        assert_eq!(info(Some(now - hour), None).state(now), KeyState::Expired);
        assert_eq!(info(Some(now), None).state(now), KeyState::Expired);
        assert_eq!(
            info(Some(now + hour), Some(now)).state(now),
            KeyState::Revoked
        );
    }

    #[test]
    fn names_are_bounded() {
        assert!(check_name("x", "portal").is_ok());
        assert!(check_name("x", "").is_err());
        assert!(check_name("x", &"a".repeat(101)).is_err());
        assert!(check_name("x", "a\nb").is_err());
    }
}
