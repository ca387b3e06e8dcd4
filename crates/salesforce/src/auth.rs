//! OAuth 2.0 against `{login_url}/services/oauth2/token`: the four flows, the token response, and
//! the hints that make an auth error say what a person should change. (The error types
//! themselves, [`AuthError`] and [`AuthErrorKind`], live in `error`, so that module needs
//! nothing from this one.)
//!
//! ```text
//!  jwt ─────────────── grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>
//!  client_credentials ─ grant_type=client_credentials&client_id&client_secret
//!  password ─────────── grant_type=password&client_id&client_secret&username&password=<pw+token>
//!  refresh_token ────── grant_type=refresh_token&refresh_token&client_id[&client_secret]
//!            │
//!            ▼  200 {"access_token","instance_url",…}  (no expires_in: expiry shows up as a 401)
//!         Session ── instance_url is the base of every later call
//! ```

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{AuthFlowKind, SalesforceConfig};
use crate::error::{AuthError, AuthErrorKind, CERTIFICATE_HINT};

/// Lifetime of a JWT bearer assertion. Salesforce allows about 3 minutes of clock skew; a short
/// lifetime limits what a leaked assertion is worth.
const JWT_LIFETIME: Duration = Duration::from_secs(180);

/// An RS256 signing key. Holds no `Debug` so the key can never be printed.
#[derive(Clone)]
pub(crate) struct SigningKey(EncodingKey);

/// The credentials of one flow.
#[derive(Clone)]
#[allow(clippy::enum_variant_names)] // named after the OAuth flows
pub(crate) enum Credentials {
    Jwt {
        client_id: String,
        username: String,
        audience: String,
        key: SigningKey,
    },
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
    Password {
        client_id: String,
        client_secret: SecretString,
        username: String,
        password_and_token: SecretString,
    },
    RefreshToken {
        client_id: String,
        client_secret: Option<SecretString>,
        refresh_token: SecretString,
    },
}

impl std::fmt::Debug for Credentials {
    // Only what helps a person find the right app and user; never a secret or the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwt {
                client_id,
                username,
                audience,
                ..
            } => f
                .debug_struct("Jwt")
                .field("client_id", client_id)
                .field("username", username)
                .field("audience", audience)
                .finish_non_exhaustive(),
            Self::ClientCredentials { client_id, .. } => f
                .debug_struct("ClientCredentials")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Self::Password {
                client_id,
                username,
                ..
            } => f
                .debug_struct("Password")
                .field("client_id", client_id)
                .field("username", username)
                .finish_non_exhaustive(),
            Self::RefreshToken { client_id, .. } => f
                .debug_struct("RefreshToken")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    pub(crate) fn flow(&self) -> AuthFlowKind {
        match self {
            Self::Jwt { .. } => AuthFlowKind::Jwt,
            Self::ClientCredentials { .. } => AuthFlowKind::ClientCredentials,
            Self::Password { .. } => AuthFlowKind::Password,
            Self::RefreshToken { .. } => AuthFlowKind::RefreshToken,
        }
    }

    /// Builds the selected flow's credentials, reading the private key file for `jwt`.
    pub(crate) fn from_config(
        config: &SalesforceConfig,
        token_url: &str,
    ) -> Result<Self, AuthError> {
        let flow = config.auth_flow;
        let fail = |msg: String| AuthError {
            flow,
            token_url: token_url.to_owned(),
            kind: AuthErrorKind::Config(msg),
            hint: String::new(),
        };
        Ok(match flow {
            AuthFlowKind::Jwt => {
                let path = config.private_key_file.as_deref().ok_or_else(|| {
                    fail("SF_AUTH_FLOW=jwt needs SF_PRIVATE_KEY_FILE: the PEM private key whose certificate is uploaded to the connected app".to_owned())
                })?;
                let key = load_private_key(path).map_err(fail)?;
                let audience = config
                    .jwt_audience
                    .clone()
                    .unwrap_or_else(|| config.login_url.trim_end_matches('/').to_owned());
                Self::Jwt {
                    client_id: config.client_id.clone(),
                    username: config.username.clone(),
                    audience,
                    key,
                }
            }
            AuthFlowKind::ClientCredentials => Self::ClientCredentials {
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
            },
            AuthFlowKind::Password => {
                // Salesforce wants the security token appended to the password, not a field.
                let joined = format!(
                    "{}{}",
                    config.password.expose_secret(),
                    config.security_token.expose_secret()
                );
                Self::Password {
                    client_id: config.client_id.clone(),
                    client_secret: config.client_secret.clone(),
                    username: config.username.clone(),
                    password_and_token: SecretString::from(joined),
                }
            }
            AuthFlowKind::RefreshToken => {
                let refresh_token = config.refresh_token.clone().ok_or_else(|| {
                    fail("SF_AUTH_FLOW=refresh_token needs SF_REFRESH_TOKEN".to_owned())
                })?;
                let secret = config.client_secret.expose_secret();
                Self::RefreshToken {
                    client_id: config.client_id.clone(),
                    client_secret: (!secret.is_empty()).then(|| config.client_secret.clone()),
                    refresh_token,
                }
            }
        })
    }

    /// The form fields of the token request (a fresh JWT assertion each time).
    fn form(&self) -> Result<Vec<(&'static str, String)>, String> {
        Ok(match self {
            Self::Jwt {
                client_id,
                username,
                audience,
                key,
            } => {
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| "the system clock is before 1970".to_owned())?
                    + JWT_LIFETIME;
                let claims = JwtClaims {
                    iss: client_id,
                    sub: username,
                    aud: audience,
                    exp: exp.as_secs(),
                };
                let assertion =
                    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.0)
                        .map_err(|e| format!("cannot sign the JWT assertion: {e}"))?;
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                    ),
                    ("assertion", assertion),
                ]
            }
            Self::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".to_owned()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose_secret().to_owned()),
            ],
            Self::Password {
                client_id,
                client_secret,
                username,
                password_and_token,
            } => vec![
                ("grant_type", "password".to_owned()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose_secret().to_owned()),
                ("username", username.clone()),
                ("password", password_and_token.expose_secret().to_owned()),
            ],
            Self::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", refresh_token.expose_secret().to_owned()),
                    ("client_id", client_id.clone()),
                ];
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.expose_secret().to_owned()));
                }
                form
            }
        })
    }
}

/// The claims of a JWT bearer assertion (public so tests and tools can decode them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwtClaims<S = String> {
    pub iss: S,
    pub sub: S,
    pub aud: S,
    pub exp: u64,
}

fn load_private_key(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read SF_PRIVATE_KEY_FILE {}: {e}", path.display()))?;
    let not_a_key = |e: jsonwebtoken::errors::Error| {
        format!(
            "SF_PRIVATE_KEY_FILE {} is not a PEM RSA private key ({e}); expected \"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\"",
            path.display()
        )
    };
    let key = EncodingKey::from_rsa_pem(&pem).map_err(not_a_key)?;
    // Parsing only checks the PEM armour; signing once proves it is a usable RSA key, so a wrong
    // file (a certificate, a public key) fails at start-up rather than at the first login.
    let probe = JwtClaims {
        iss: "probe",
        sub: "probe",
        aud: "probe",
        exp: 0,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &probe, &key).map_err(not_a_key)?;
    Ok(SigningKey(key))
}

/// A successful token response.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// An access token and where to use it.
pub(crate) struct Session {
    pub(crate) access_token: SecretString,
    pub(crate) instance_url: Url,
    /// Identity URL (`…/id/<org id>/<user id>`).
    pub(crate) identity: Option<String>,
    /// Milliseconds since the epoch, as Salesforce reports it.
    pub(crate) issued_at: Option<u64>,
    /// A rotated refresh token, if the server sent one.
    pub(crate) refresh_token: Option<SecretString>,
}

/// Performs one token request.
pub(crate) async fn request_token(
    http: &reqwest::Client,
    token_url: &Url,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<Session, AuthError> {
    let flow = credentials.flow();
    let err = |kind: AuthErrorKind| {
        let hint = hint(flow, &kind);
        AuthError {
            flow,
            token_url: token_url.to_string(),
            kind,
            hint,
        }
    };
    let form = credentials
        .form()
        .map_err(|m| err(AuthErrorKind::Config(m)))?;
    let response = http
        .post(token_url.clone())
        .form(&form)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| err(transport_kind(e, timeout)))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| err(transport_kind(e, timeout)))?;
    if !(200..300).contains(&status) {
        return Err(err(match serde_json::from_slice::<TokenErrorBody>(&body) {
            Ok(b) => AuthErrorKind::Rejected {
                status,
                error: b.error,
                description: b.error_description,
            },
            Err(_) => AuthErrorKind::InvalidResponse {
                status,
                detail: snippet(&body),
            },
        }));
    }
    let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        err(AuthErrorKind::InvalidResponse {
            status,
            detail: format!("token response not understood: {e}"),
        })
    })?;
    let instance_url = Url::parse(token.instance_url.trim_end_matches('/')).map_err(|e| {
        err(AuthErrorKind::InvalidResponse {
            status,
            detail: format!("instance_url {:?} is not a URL: {e}", token.instance_url),
        })
    })?;
    Ok(Session {
        access_token: SecretString::from(token.access_token),
        instance_url,
        identity: token.id,
        issued_at: token.issued_at.and_then(|s| s.parse().ok()),
        refresh_token: token.refresh_token.map(SecretString::from),
    })
}

fn transport_kind(e: reqwest::Error, timeout: Duration) -> AuthErrorKind {
    if e.is_timeout() {
        AuthErrorKind::Timeout(timeout)
    } else if let Some(why) = certificate_problem(&e) {
        AuthErrorKind::Certificate(why)
    } else {
        AuthErrorKind::Transport(e)
    }
}

/// The server's certificate was refused (unknown issuer, wrong name, expired): a set-up problem
/// that retrying cannot fix, unlike a refused or reset connection.
pub(crate) fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        // rustls errors travel inside (nested) io::Errors, whose `source()` skips the wrapped
        // error: unwrap those by hand.
        let mut candidate: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(c) = candidate {
            if let Some(rustls::Error::InvalidCertificate(why)) = c.downcast_ref::<rustls::Error>()
            {
                return Some(format!("{why:?}"));
            }
            candidate = c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        source = err.source();
    }
    None
}

pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(300)
        .collect()
}

const RECOMMEND: &str = "Salesforce is retiring the username-password flow (enforced from 20 Feb 2027): \
prefer SF_AUTH_FLOW=jwt (connected app with an uploaded certificate and a pre-authorised user) or \
SF_AUTH_FLOW=client_credentials (with a run-as user); see crates/salesforce/README.md";

/// What to tell a person, by flow and error.
fn hint(flow: AuthFlowKind, kind: &AuthErrorKind) -> String {
    let (error, description) = match kind {
        AuthErrorKind::Rejected {
            error, description, ..
        } => (error.as_str(), description.to_ascii_lowercase()),
        AuthErrorKind::Timeout(_) | AuthErrorKind::Transport(_) => {
            return "Check SF_LOGIN_URL (network, proxy, firewall; locally: is sf-emulator running?); the call will be retried".to_owned();
        }
        AuthErrorKind::InvalidResponse { status, .. } if *status >= 500 => {
            return "Salesforce's login service is having trouble; the call will be retried"
                .to_owned();
        }
        AuthErrorKind::InvalidResponse { .. } => {
            return "SF_LOGIN_URL does not look like a Salesforce login endpoint (expected https://login.salesforce.com, https://test.salesforce.com or https://<MyDomain>.my.salesforce.com)".to_owned();
        }
        AuthErrorKind::Certificate(_) => return CERTIFICATE_HINT.to_owned(),
        AuthErrorKind::Config(_) => return String::new(),
    };
    match (error, flow) {
        ("invalid_grant", AuthFlowKind::Password) => format!(
            "The username-password flow was refused. Usual causes: (1) the org blocks this flow: orgs created since Summer '23 \
disable it by default (Setup > OAuth and OpenID Connect Settings > Allow OAuth Username-Password Flows), and External Client Apps \
never support it; (2) the security token is missing or stale: SF_SECURITY_TOKEN must be the user's current token (it changes \
when the password is reset) unless the caller's IP is in a trusted range; (3) login IP restrictions on the user's profile or \
the app (Relax IP restrictions); (4) wrong SF_USERNAME/SF_PASSWORD, or the user is locked out. {RECOMMEND}"
        ),
        ("invalid_grant", AuthFlowKind::Jwt) => {
            let specific = if description.contains("approved") {
                "The user is not pre-authorised for the app: in the app's policies set Permitted Users to \"Admin approved users are pre-authorized\" and add the user's profile or a permission set. "
            } else if description.contains("audience") {
                "The JWT aud claim is wrong: it must be https://login.salesforce.com (production), https://test.salesforce.com (sandbox) or the Experience site URL; set SF_JWT_AUDIENCE when SF_LOGIN_URL is a My Domain host. "
            } else if description.contains("expired") {
                "The assertion is considered expired: check this machine's clock (NTP); Salesforce allows about 3 minutes of skew. "
            } else {
                ""
            };
            format!(
                "{specific}JWT bearer login was refused. Check: SF_CLIENT_ID is the app's consumer key; the certificate uploaded to the app \
(Use digital signatures) matches SF_PRIVATE_KEY_FILE; SF_USERNAME exists in this org (production vs sandbox login URL) and is \
pre-authorised (Admin approved users + profile/permission set); the app has the api and refresh_token/offline_access scopes; a \
new app can take up to 10 minutes to become usable"
            )
        }
        ("invalid_grant", AuthFlowKind::ClientCredentials) => {
            let specific = if description.contains("domain") {
                "Client credentials only work on the org's My Domain: set SF_LOGIN_URL=https://<MyDomain>.my.salesforce.com. "
            } else {
                ""
            };
            format!(
                "{specific}Client-credentials login was refused. Check: the app has Enable Client Credentials Flow ticked and a Run As \
user selected (an active user with API Enabled); SF_CLIENT_ID/SF_CLIENT_SECRET are the app's consumer key and secret; \
SF_LOGIN_URL is the My Domain URL (not login.salesforce.com)"
            )
        }
        ("invalid_grant", AuthFlowKind::RefreshToken) => "The refresh token was refused (expired, revoked, or the app's refresh-token \
policy ended it, or the user's password changed): obtain a new SF_REFRESH_TOKEN, or move to SF_AUTH_FLOW=jwt, which needs no \
stored token"
            .to_owned(),
        ("invalid_client_id", _) => "SF_CLIENT_ID is not a consumer key this org knows: copy it from the app's Manage Consumer Details; \
a newly created app can take up to 10 minutes to become usable, and a sandbox needs SF_LOGIN_URL=https://test.salesforce.com"
            .to_owned(),
        ("invalid_client", _) => "The app rejected the client credentials: check SF_CLIENT_SECRET (the consumer secret) and \
SF_CLIENT_ID, and that this flow is enabled for the app"
            .to_owned(),
        ("unsupported_grant_type", _) => format!(
            "This org or app does not accept SF_AUTH_FLOW={flow}: enable the flow on the app (and, for password, in OAuth and OpenID \
Connect Settings), or pick another flow"
        ),
        ("inactive_user", _) => "The user is deactivated or frozen: activate SF_USERNAME (or the client-credentials run-as user) in Setup > Users".to_owned(),
        ("inactive_org", _) => "The org is inactive or locked; contact its administrator".to_owned(),
        ("rate_limit_exceeded", _) => "Too many logins in a short time: the client backs off; check nothing is logging in on every call".to_owned(),
        ("invalid_request", _) => "The token request was malformed for this flow: check that every SF_* setting of the flow is set and non-empty".to_owned(),
        _ => String::new(),
    }
}
