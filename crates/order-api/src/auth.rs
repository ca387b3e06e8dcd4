//! Authentication: `Authorization: Bearer obk_<id>_<secret>` (keys and their lifecycle live in
//! [`orderbridge_db::keys`]).
//!
//! ```text
//! request ─► peer throttled? 429 ─► bearer key ─► cache hit? ─► client ─► per-client rate limit
//!                                                    │ miss
//!                                                    ▼
//!                                     Postgres lookup ─► unknown/revoked/expired: 401, counted
//!                                                        against the peer (429 past its quota)
//! ```

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use orderbridge_db::keys;
use orderbridge_domain::{ClientId, ClientScope};
use secrecy::ExposeSecret;
use sqlx::PgPool;

use crate::AppState;
use crate::error::ApiError;

/// The API client a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    /// Starts the Salesforce keys of this client's shared records (`orderbridge_domain::tenant`).
    /// Cached with the key: a changed prefix applies within `ORDER_API_KEY_CACHE_TTL`.
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

impl From<keys::ApiClient> for Client {
    fn from(c: keys::ApiClient) -> Self {
        Self {
            id: c.id,
            name: c.name,
            external_id_prefix: c.external_id_prefix,
        }
    }
}

/// A newly created key: the only moment its plain text exists.
pub struct NewApiKey {
    pub client: Client,
    pub key: String,
}

/// Creates the client `name` if it does not exist yet and gives it a new key that does not
/// expire (`order-api create-api-key`; `orderbridge keys create` offers names and expiry).
pub async fn create_api_key(pool: &PgPool, name: &str) -> Result<NewApiKey, keys::KeyError> {
    let new = keys::create(pool, name, None, None).await?;
    Ok(NewApiKey {
        client: new.client.into(),
        key: new.key.expose_secret().to_owned(),
    })
}

/// The peer's address, when the server recorded it (tests driving the router directly do not).
fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn lookup(state: &AppState, presented: &str) -> Result<Option<Client>, ApiError> {
    let fingerprint = keys::fingerprint(presented);
    if let Some(client) = state.key_cache.get(&fingerprint) {
        return Ok(Some(client));
    }
    let Some(found) = keys::authenticate(&state.pool, presented).await? else {
        return Ok(None);
    };
    let client = Client::from(found.client);
    state
        .key_cache
        .insert(fingerprint, client.clone(), found.expires_at);
    // "Last used" is bookkeeping: it must never slow down or fail the request.
    let pool = state.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = keys::touch(&pool, &found.key_id).await {
            tracing::debug!(error = %e, "cannot record the API key's last use");
        }
    });
    Ok(Some(client))
}

/// Extractor: the authenticated client, after the per-client rate limit. Rejects with 401 when
/// the `Authorization: Bearer` key is missing or invalid, 429 when the client is over its rate or
/// its address over its quota of failed authentications.
impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = peer(parts);
        if let Some(peer) = peer {
            state.auth_failures.check(peer)?;
        }
        let client = match bearer(parts) {
            Some(presented) => lookup(state, presented).await?,
            None => None,
        };
        let Some(client) = client else {
            return Err(match peer {
                Some(peer) => state.auth_failures.failed(peer),
                None => ApiError::Unauthorized,
            });
        };
        state.rate_limiter.check_request(client.id)?;
        tracing::Span::current().record("client", client.name.as_str());
        Ok(client)
    }
}
