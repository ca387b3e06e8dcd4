//! The client core: one shared session, single-flight re-authentication, usage tracking, and the
//! request/response plumbing every operation goes through.
//!
//! ```text
//!  op ─▶ usage guard ─▶ session (login once, shared) ─▶ HTTP (timeout) ─▶ Sforce-Limit-Info
//!                              ▲                              │
//!                              └── 401 INVALID_SESSION_ID ────┘  re-login once per session
//!                                  (concurrent callers wait on    generation, then replay the
//!                                   the same login)                request once
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::auth::{self, Credentials, Session};
use crate::config::SalesforceConfig;
use crate::error::{Error, parse_error_body};
use crate::limits::{ApiUsage, Limits, UsageGuard, parse_limit_info};

/// The header that tags every call with the client's name.
const CALL_OPTIONS: &str = "sforce-call-options";
const LIMIT_INFO: &str = "sforce-limit-info";
const QUERY_OPTIONS: &str = "sforce-query-options";

/// A Salesforce REST client. Cheap to clone: clones share the HTTP connection pool, the session
/// and the usage reading.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("token_url", &self.inner.token_url.as_str())
            .field("api_version", &self.inner.api_version)
            .field("flow", &self.inner.flow)
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    token_url: Url,
    api_version: String,
    call_options: HeaderValue,
    query_options: Option<HeaderValue>,
    timeout: Duration,
    flow: crate::config::AuthFlowKind,
    /// Held while logging in, so concurrent callers wait for one login instead of each starting
    /// their own. Holds the credentials because a refresh-token login may rotate them.
    login: tokio::sync::Mutex<Credentials>,
    /// The current session; read without waiting on `login` in the common case.
    session: RwLock<Option<Arc<SessionSlot>>>,
    generation: AtomicU64,
    usage: UsageGuard,
}

struct SessionSlot {
    session: Session,
    /// Increases with every login; lets a caller whose request got a 401 tell whether someone
    /// else already replaced the session it used.
    generation: u64,
}

/// What another Salesforce API (the Pub/Sub API) needs to authenticate a call: the access token,
/// the instance URL and the org id. Holds no `Debug` of the token.
#[derive(Clone)]
pub struct SessionToken {
    pub access_token: SecretString,
    /// The instance URL as the token response gave it, without a trailing slash.
    pub instance_url: String,
    /// The org id from the identity URL (`…/id/<org id>/<user id>`); `None` when the token
    /// response carried no identity URL.
    pub org_id: Option<String>,
    /// The login this token came from (see [`Client::refresh_session`]).
    pub generation: u64,
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionToken")
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl SessionToken {
    fn from_slot(slot: &SessionSlot) -> Self {
        Self {
            access_token: slot.session.access_token.clone(),
            instance_url: slot
                .session
                .instance_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            org_id: slot
                .session
                .identity
                .as_deref()
                .and_then(org_id_from_identity),
            generation: slot.generation,
        }
    }
}

/// The org id of an identity URL `https://login.salesforce.com/id/<org id>/<user id>`: the
/// second-to-last path segment after `id`.
pub fn org_id_from_identity(identity: &str) -> Option<String> {
    let path = identity.split(['?', '#']).next().unwrap_or(identity);
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let _user = segments.next()?;
    let org = segments.next()?;
    let marker = segments.next()?;
    (marker == "id" && !org.is_empty() && org.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| org.to_owned())
}

/// One entry of `GET /services/data/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ApiVersion {
    pub version: String,
    #[serde(default)]
    pub label: String,
    pub url: String,
}

/// Where a request goes.
pub(crate) enum Target<'a> {
    /// Segments after `/services/data/vNN.N/`, each percent-encoded.
    Data(&'a [&'a str]),
    /// The same with a trailing slash, as Salesforce documents `POST /sobjects/{type}/`.
    DataSlash(&'a [&'a str]),
    /// An instance-relative path Salesforce handed out (`nextRecordsUrl`).
    Instance(&'a str),
}

/// A raw successful (or 300) answer.
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) method: Method,
    pub(crate) path: String,
    /// Read where an answer says something in a header (Bulk query's `Sforce-Locator`).
    pub(crate) headers: HeaderMap,
}

impl RawResponse {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| self.invalid(format!("cannot read the body: {e}")))
    }

    pub(crate) fn invalid(&self, detail: String) -> Error {
        Error::InvalidResponse {
            method: self.method.to_string(),
            path: self.path.clone(),
            status: self.status,
            detail,
        }
    }
}

impl Client {
    /// Builds a client from the settings. Does not log in yet (see [`Client::login`]); fails on
    /// unusable settings (bad URL, missing or unreadable private key).
    pub fn new(config: &SalesforceConfig) -> Result<Self, Error> {
        let login_url = config.login_url.trim_end_matches('/');
        let token_url = Url::parse(&format!("{login_url}/services/oauth2/token")).map_err(|e| {
            Error::Config(format!(
                "SF_LOGIN_URL {:?} is not a URL: {e}",
                config.login_url
            ))
        })?;
        if !matches!(token_url.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "SF_LOGIN_URL {:?} must be http(s)",
                config.login_url
            )));
        }
        let version = config.api_version.trim_start_matches(['v', 'V']);
        let valid_version = version.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        });
        if !valid_version {
            return Err(Error::Config(format!(
                "SF_API_VERSION {:?} is not like \"62.0\"",
                config.api_version
            )));
        }
        if !(config.max_api_usage_share > 0.0 && config.max_api_usage_share <= 1.0) {
            return Err(Error::Config(format!(
                "SF_MAX_API_USAGE_SHARE {} must be in (0, 1]",
                config.max_api_usage_share
            )));
        }
        let call_options = HeaderValue::from_str(&format!("client={}", config.client_name))
            .map_err(|_| {
                Error::Config(format!(
                    "SF_CLIENT_NAME {:?} is not a valid header value",
                    config.client_name
                ))
            })?;
        let credentials = Credentials::from_config(config, token_url.as_str())?;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_cert_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read SF_CA_CERT_FILE {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!(
                    "SF_CA_CERT_FILE {} holds no PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "SF_CA_CERT_FILE {} holds no PEM certificates",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // Keep connections for reuse across calls; Salesforce closes idle ones after a while.
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!(
                "orderbridge-salesforce/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                token_url,
                api_version: version.to_owned(),
                call_options,
                query_options: config
                    .query_batch_size
                    .and_then(|n| HeaderValue::from_str(&format!("batchSize={n}")).ok()),
                timeout: config.request_timeout,
                flow: config.auth_flow,
                login: tokio::sync::Mutex::new(credentials),
                session: RwLock::new(None),
                generation: AtomicU64::new(0),
                usage: UsageGuard::new(
                    config.max_api_usage_share,
                    config.api_usage_policy,
                    config.api_usage_recheck,
                ),
            }),
        })
    }

    /// Logs in now (if not logged in yet), so a binary can fail fast at start-up on bad
    /// credentials. Returns the instance URL.
    pub async fn login(&self) -> Result<Url, Error> {
        Ok(self.session().await?.session.instance_url.clone())
    }

    /// Revokes the current access token (`POST {login_url}/services/oauth2/revoke`) so it cannot
    /// be used after this process ends; call it on shutdown. A later call logs in again.
    pub async fn logout(&self) -> Result<(), Error> {
        let _login = self.inner.login.lock().await;
        let slot = self
            .inner
            .session
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(slot) = slot else { return Ok(()) };
        // Sibling of the token endpoint, keeping any path prefix of the login URL.
        let url = self
            .inner
            .token_url
            .join("revoke")
            .map_err(|e| Error::Config(format!("cannot derive the revoke URL: {e}")))?;
        let path = url.path().to_owned();
        let response = self
            .inner
            .http
            .post(url)
            .timeout(self.inner.timeout)
            .form(&[("token", slot.session.access_token.expose_secret())])
            .send()
            .await
            .map_err(|e| Error::Transport {
                method: "POST".into(),
                path: path.clone(),
                source: e.without_url(),
            })?;
        let status = response.status().as_u16();
        if status == 200 {
            tracing::info!("Salesforce access token revoked");
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(Error::InvalidResponse {
            method: "POST".into(),
            path,
            status,
            detail: auth::snippet(&body),
        })
    }

    /// The pinned API version, e.g. `62.0`.
    pub fn api_version(&self) -> &str {
        &self.inner.api_version
    }

    /// The instance URL of the current session, if logged in.
    pub fn instance_url(&self) -> Option<Url> {
        self.current().map(|s| s.session.instance_url.clone())
    }

    /// The identity URL (`…/id/<org id>/<user id>`) of the current session, if logged in.
    pub fn identity_url(&self) -> Option<String> {
        self.current().and_then(|s| s.session.identity.clone())
    }

    /// The current session's credentials for a non-REST API (the Pub/Sub API's gRPC metadata
    /// `accesstoken`, `instanceurl`, `tenantid`), logging in first if needed. Keep the returned
    /// [`SessionToken::generation`]: after the other API refuses the token, pass it to
    /// [`Client::refresh_session`].
    pub async fn session_token(&self) -> Result<SessionToken, Error> {
        let slot = self.session().await?;
        Ok(SessionToken::from_slot(&slot))
    }

    /// Logs in again because the token of session `generation` was refused by another API
    /// (gRPC UNAUTHENTICATED). Single-flight like the REST path's re-login: callers that saw the
    /// same stale generation share one login, and one whose session was already replaced gets
    /// the newer one without another login.
    pub async fn refresh_session(&self, generation: u64) -> Result<SessionToken, Error> {
        let slot = self.relogin(Some(generation)).await?;
        Ok(SessionToken::from_slot(&slot))
    }

    /// When the current token was issued (ms since the epoch), if Salesforce said.
    pub fn issued_at_ms(&self) -> Option<u64> {
        self.current().and_then(|s| s.session.issued_at)
    }

    /// The latest API usage reading (from `Sforce-Limit-Info` or `/limits`).
    pub fn usage(&self) -> Option<ApiUsage> {
        self.inner.usage.last()
    }

    /// True when the latest usage reading is below this client's share
    /// (`SF_MAX_API_USAGE_SHARE`), i.e. calls are not being refused by the usage guard.
    pub fn usage_within_share(&self) -> bool {
        self.inner.usage.within_share()
    }

    /// How many logins this client performed (first login and re-logins).
    pub fn logins(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// `GET /limits`; also updates [`Client::usage`] from `DailyApiRequests`.
    ///
    /// This call is not held back by the usage guard: it is how a caller finds out that a spent
    /// budget is back. Going through the guard, it would be refused locally until
    /// `SF_API_USAGE_RECHECK` passed, and a paused worker would stay paused that long after
    /// Salesforce had long since answered again.
    pub async fn limits(&self) -> Result<Limits, Error> {
        let response = self
            .send(
                Method::GET,
                Target::Data(&["limits"]),
                &[],
                None,
                Accept::Json,
            )
            .await?;
        let limits: Limits = response.json()?;
        if let Some(usage) = limits.daily_api_requests() {
            self.inner.usage.observe(usage);
        }
        Ok(limits)
    }

    /// `GET /services/data/`: the API versions the instance offers.
    pub async fn versions(&self) -> Result<Vec<ApiVersion>, Error> {
        self.request(Method::GET, Target::Instance("/services/data/"), &[], None)
            .await?
            .json()
    }

    fn current(&self) -> Option<Arc<SessionSlot>> {
        self.inner
            .session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn session(&self) -> Result<Arc<SessionSlot>, Error> {
        match self.current() {
            Some(slot) => Ok(slot),
            None => self.relogin(None).await,
        }
    }

    /// Logs in unless someone already replaced session `stale` (or, with `None`, already logged
    /// in) while this caller waited for the lock: that is what makes refresh single-flight.
    async fn relogin(&self, stale: Option<u64>) -> Result<Arc<SessionSlot>, Error> {
        let mut credentials = self.inner.login.lock().await;
        if let Some(slot) = self.current()
            && stale.is_none_or(|g| slot.generation != g)
        {
            return Ok(slot);
        }
        let started = Instant::now();
        let session = auth::request_token(
            &self.inner.http,
            &self.inner.token_url,
            &credentials,
            self.inner.timeout,
        )
        .await;
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(flow = %self.inner.flow, error = %e, "Salesforce login failed");
                return Err(e.into());
            }
        };
        if let (Some(new_token), Credentials::RefreshToken { refresh_token, .. }) =
            (&session.refresh_token, &mut *credentials)
        {
            // Some apps rotate refresh tokens; the old one may stop working.
            *refresh_token = new_token.clone();
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            flow = %self.inner.flow,
            instance_url = %session.instance_url,
            generation,
            elapsed = ?started.elapsed(),
            "logged in to Salesforce"
        );
        let slot = Arc::new(SessionSlot {
            session,
            generation,
        });
        *self
            .inner
            .session
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot.clone());
        Ok(slot)
    }

    fn url(&self, base: &Url, target: &Target<'_>) -> Result<Url, Error> {
        match target {
            Target::Data(segments) | Target::DataSlash(segments) => {
                let mut url = base.clone();
                {
                    let mut path = url.path_segments_mut().map_err(|()| {
                        Error::Config(format!("instance_url {base} cannot be a base URL"))
                    })?;
                    path.pop_if_empty().extend([
                        "services",
                        "data",
                        &format!("v{}", self.inner.api_version),
                    ]);
                    for segment in *segments {
                        if segment.is_empty() {
                            return Err(Error::InvalidRequest(
                                "an sObject name, id or external id is empty".into(),
                            ));
                        }
                        path.push(segment);
                    }
                    if matches!(target, Target::DataSlash(_)) {
                        path.push("");
                    }
                }
                Ok(url)
            }
            Target::Instance(path) => {
                // Only follow paths on the same instance, under the REST API.
                if !path.starts_with("/services/data/") {
                    return Err(Error::InvalidResponse {
                        method: "GET".into(),
                        path: (*path).to_owned(),
                        status: 200,
                        detail: "expected an instance path under /services/data/".into(),
                    });
                }
                base.join(path)
                    .map_err(|e| Error::InvalidRequest(format!("bad path {path:?}: {e}")))
            }
        }
    }

    /// Sends one REST request: usage guard, session, one replay after a re-login on 401.
    /// Returns 2xx and 300 answers; anything else becomes [`Error::Api`].
    pub(crate) async fn request(
        &self,
        method: Method,
        target: Target<'_>,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<RawResponse, Error> {
        self.request_body(method, target, query, body.map(Body::Json))
            .await
    }

    /// [`Client::request`] with a body that may already be serialised.
    pub(crate) async fn request_body(
        &self,
        method: Method,
        target: Target<'_>,
        query: &[(&str, &str)],
        body: Option<Body<'_>>,
    ) -> Result<RawResponse, Error> {
        let _permit = self.inner.usage.admit().await?;
        self.send(method, target, query, body, Accept::Json).await
    }

    /// A `GET` whose answer is CSV (Bulk API result files), with the usage guard.
    pub(crate) async fn request_csv(
        &self,
        target: Target<'_>,
        query: &[(&str, &str)],
    ) -> Result<RawResponse, Error> {
        let _permit = self.inner.usage.admit().await?;
        self.send(Method::GET, target, query, None, Accept::Csv)
            .await
    }

    /// [`Client::request`] without the usage guard.
    async fn send(
        &self,
        method: Method,
        target: Target<'_>,
        query: &[(&str, &str)],
        body: Option<Body<'_>>,
        accept: Accept,
    ) -> Result<RawResponse, Error> {
        let mut slot = self.session().await?;
        let mut replayed = false;
        loop {
            let mut url = self.url(&slot.session.instance_url, &target)?;
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            let path = url.path().to_owned();
            let (status, headers, bytes) = self
                .send_once(
                    (&method, url, &path),
                    &slot.session.access_token,
                    body,
                    accept,
                )
                .await?;
            if let Some(usage) = headers
                .get(LIMIT_INFO)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_limit_info)
            {
                self.inner.usage.observe(usage);
            }
            if status == StatusCode::UNAUTHORIZED.as_u16() && !replayed {
                let errors = parse_error_body(status, &bytes);
                let session_error = errors
                    .iter()
                    .any(|e| e.code == "INVALID_SESSION_ID" || e.code.starts_with("HTTP_"));
                if session_error {
                    tracing::info!(generation = slot.generation, %path, "Salesforce session expired; logging in again");
                    slot = self.relogin(Some(slot.generation)).await?;
                    replayed = true;
                    continue;
                }
            }
            if (200..=300).contains(&status) {
                return Ok(RawResponse {
                    status,
                    body: bytes,
                    method,
                    path,
                    headers,
                });
            }
            let errors = parse_error_body(status, &bytes);
            return Err(Error::Api {
                status,
                method: method.to_string(),
                path,
                errors,
            });
        }
    }

    async fn send_once(
        &self,
        (method, url, path): (&Method, Url, &str),
        token: &SecretString,
        body: Option<Body<'_>>,
        accept: Accept,
    ) -> Result<(u16, HeaderMap, Vec<u8>), Error> {
        let started = Instant::now();
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut request = self
            .inner
            .http
            .request(method.clone(), url)
            .timeout(self.inner.timeout)
            .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()))
            .header(
                ACCEPT,
                match accept {
                    Accept::Json => "application/json",
                    Accept::Csv => "text/csv",
                },
            )
            .header(CALL_OPTIONS, self.inner.call_options.clone());
        if let Some(options) = &self.inner.query_options
            && (path.ends_with("/query") || path.contains("/query/"))
        {
            request = request.header(QUERY_OPTIONS, options.clone());
        }
        match body {
            Some(Body::Json(value)) => {
                request = request.header(CONTENT_TYPE, "application/json").json(value);
            }
            Some(Body::Serialized(bytes)) => {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(bytes.to_vec());
            }
            Some(Body::Csv(bytes)) => {
                request = request
                    .header(CONTENT_TYPE, "text/csv")
                    .body(bytes.to_vec());
            }
            None => {}
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::Timeout {
                    method: method.to_string(),
                    path: path.to_owned(),
                    timeout: self.inner.timeout,
                }
            } else if let Some(why) = auth::certificate_problem(&e) {
                Error::Certificate {
                    host: host.clone(),
                    detail: why,
                }
            } else {
                Error::Transport {
                    method: method.to_string(),
                    path: path.to_owned(),
                    source: e.without_url(),
                }
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport)?.to_vec();
        tracing::debug!(%method, path, status, elapsed = ?started.elapsed(), "salesforce call");
        Ok((status, headers, bytes))
    }
}

/// What a request asks the answer to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    Json,
    /// Bulk API result files.
    Csv,
}

/// A request body: a JSON value, or JSON already serialised (a large request is written once,
/// straight from its parts, instead of first being copied into a `Value` tree).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Body<'a> {
    Json(&'a serde_json::Value),
    Serialized(&'a [u8]),
    /// Bulk API job data.
    Csv(&'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::org_id_from_identity;

    #[test]
    fn org_id_comes_from_the_identity_url() {
        assert_eq!(
            org_id_from_identity(
                "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
            )
            .as_deref(),
            Some("00D000000000001AAA")
        );
        assert_eq!(
            org_id_from_identity("http://127.0.0.1:8089/id/00Dx/005y/").as_deref(),
            Some("00Dx")
        );
        assert_eq!(
            org_id_from_identity("https://x/services/oauth2/userinfo"),
            None
        );
        assert_eq!(org_id_from_identity(""), None);
        assert_eq!(org_id_from_identity("https://x/id//005y"), None);
        assert_eq!(org_id_from_identity("https://x/id/00D x/005y"), None);
    }
}
