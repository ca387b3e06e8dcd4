//! Settings shared by every binary that talks to Salesforce, as a clap `Args` struct to flatten.
//!
//! The defaults are the local emulator's documented dev credentials, so nothing needs setting to
//! run the whole pipeline locally; pointing at a real org means setting `SF_LOGIN_URL`,
//! `SF_AUTH_FLOW` and that flow's credentials (see the crate README).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

/// Default login URL: the local emulator (`sf-emulator`), not a real org.
pub const DEFAULT_LOGIN_URL: &str = "http://127.0.0.1:8089";
/// Default pinned REST API version (Winter '25).
pub const DEFAULT_API_VERSION: &str = "62.0";

/// Which OAuth 2.0 flow obtains the access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthFlowKind {
    /// JWT bearer: an RS256 assertion signed with `SF_PRIVATE_KEY_FILE`. Recommended for servers.
    Jwt,
    /// Client credentials: consumer key + secret, acting as the app's run-as user.
    #[value(name = "client_credentials")]
    ClientCredentials,
    /// Username + password (+ security token). Being retired by Salesforce; fine for the emulator.
    Password,
    /// A refresh token obtained earlier (for example through the web-server flow).
    #[value(name = "refresh_token")]
    RefreshToken,
}

impl AuthFlowKind {
    /// The name used in `SF_AUTH_FLOW`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ClientCredentials => "client_credentials",
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
        }
    }
}

impl std::fmt::Display for AuthFlowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a call when the org's daily API usage is at or above `SF_MAX_API_USAGE_SHARE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsagePolicy {
    /// Fail the call at once with a rate-limited error; the caller backs off.
    Refuse,
    /// Wait (up to `SF_API_USAGE_RECHECK`) until the usage reading is stale enough to probe
    /// again, then let one call through to learn the current usage.
    Delay,
}

/// Salesforce connection settings. Flatten into a binary's clap parser with `#[command(flatten)]`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Salesforce")]
pub struct SalesforceConfig {
    /// Where OAuth tokens are requested: `https://login.salesforce.com`, `https://test.salesforce.com`,
    /// the org's My Domain (required for client credentials), or the local emulator.
    #[arg(long = "sf-login-url", env = "SF_LOGIN_URL", default_value = DEFAULT_LOGIN_URL, global = true)]
    pub login_url: String,
    /// OAuth flow: jwt, client_credentials, password or refresh_token.
    #[arg(
        long = "sf-auth-flow",
        env = "SF_AUTH_FLOW",
        value_enum,
        default_value = "password",
        global = true
    )]
    pub auth_flow: AuthFlowKind,
    /// Consumer key of the connected app / external client app.
    #[arg(
        long = "sf-client-id",
        env = "SF_CLIENT_ID",
        default_value = "orderbridge-dev-client-id",
        global = true
    )]
    pub client_id: String,
    /// Consumer secret (client_credentials, password, optional for refresh_token).
    #[arg(
        long = "sf-client-secret",
        env = "SF_CLIENT_SECRET",
        default_value = "orderbridge-dev-client-secret",
        value_parser = secret,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub client_secret: SecretString,
    /// Salesforce username (jwt `sub`, password flow).
    #[arg(
        long = "sf-username",
        env = "SF_USERNAME",
        default_value = "integration@orderbridge.dev",
        global = true
    )]
    pub username: String,
    /// Password (password flow).
    #[arg(
        long = "sf-password",
        env = "SF_PASSWORD",
        default_value = "orderbridge-dev-password",
        value_parser = secret,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub password: SecretString,
    /// Security token appended to the password (password flow); empty if the caller's IP is trusted.
    #[arg(
        long = "sf-security-token",
        env = "SF_SECURITY_TOKEN",
        default_value = "orderbridgedevtoken",
        value_parser = secret,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub security_token: SecretString,
    /// PEM RSA private key (PKCS#8 or PKCS#1) whose certificate is uploaded to the app (jwt flow).
    #[arg(
        long = "sf-private-key-file",
        env = "SF_PRIVATE_KEY_FILE",
        global = true
    )]
    pub private_key_file: Option<PathBuf>,
    /// JWT `aud` claim; defaults to SF_LOGIN_URL. Set it to `https://login.salesforce.com` (or
    /// `https://test.salesforce.com`) when SF_LOGIN_URL is a My Domain host.
    #[arg(long = "sf-jwt-audience", env = "SF_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Refresh token (refresh_token flow).
    #[arg(
        long = "sf-refresh-token",
        env = "SF_REFRESH_TOKEN",
        value_parser = secret,
        hide_env_values = true,
        global = true
    )]
    pub refresh_token: Option<SecretString>,
    /// Extra trusted CA certificates (PEM bundle), on top of the system's: for the emulator's
    /// self-signed HTTPS or a TLS-intercepting corporate proxy.
    #[arg(long = "sf-ca-cert-file", env = "SF_CA_CERT_FILE", global = true)]
    pub ca_cert_file: Option<PathBuf>,
    /// Pinned REST API version, without the leading "v".
    #[arg(long = "sf-api-version", env = "SF_API_VERSION", default_value = DEFAULT_API_VERSION, global = true)]
    pub api_version: String,
    /// Limit on every HTTP request to Salesforce (token and data calls), body included.
    #[arg(long = "sf-request-timeout", env = "SF_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,
    /// Records per query page (`Sforce-Query-Options: batchSize=N`, 200-2000); unset: Salesforce's
    /// default of 2000. Smaller pages bound memory per call at the cost of more calls.
    #[arg(long = "sf-query-batch-size", env = "SF_QUERY_BATCH_SIZE", value_parser = clap::value_parser!(u16).range(200..=2000), global = true)]
    pub query_batch_size: Option<u16>,
    /// Name sent as `Sforce-Call-Options: client=<name>`; shows up as the change origin in CDC
    /// events, so the integration can recognise (and ignore) its own writes.
    #[arg(
        long = "sf-client-name",
        env = "SF_CLIENT_NAME",
        default_value = "orderbridge",
        global = true
    )]
    pub client_name: String,
    /// Share (0-1] of the org's daily API allocation this client may use, judged from the last
    /// `Sforce-Limit-Info` header. Above it calls are refused or delayed (SF_API_USAGE_POLICY),
    /// leaving headroom for the org's other integrations. 1 disables the guard.
    #[arg(
        long = "sf-max-api-usage-share",
        env = "SF_MAX_API_USAGE_SHARE",
        default_value_t = 0.9,
        global = true
    )]
    pub max_api_usage_share: f64,
    /// refuse (fail fast, rate-limited error) or delay (wait, then probe) above the share.
    #[arg(
        long = "sf-api-usage-policy",
        env = "SF_API_USAGE_POLICY",
        value_enum,
        default_value = "refuse",
        global = true
    )]
    pub api_usage_policy: UsagePolicy,
    /// How old a usage reading may get before one call is let through to refresh it, and the
    /// longest a call waits under the delay policy.
    #[arg(long = "sf-api-usage-recheck", env = "SF_API_USAGE_RECHECK", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub api_usage_recheck: Duration,
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

impl Default for SalesforceConfig {
    /// The emulator's dev settings, as clap would produce them with nothing set.
    fn default() -> Self {
        Self {
            login_url: DEFAULT_LOGIN_URL.to_owned(),
            auth_flow: AuthFlowKind::Password,
            client_id: "orderbridge-dev-client-id".to_owned(),
            client_secret: SecretString::from("orderbridge-dev-client-secret"),
            username: "integration@orderbridge.dev".to_owned(),
            password: SecretString::from("orderbridge-dev-password"),
            security_token: SecretString::from("orderbridgedevtoken"),
            private_key_file: None,
            jwt_audience: None,
            refresh_token: None,
            ca_cert_file: None,
            api_version: DEFAULT_API_VERSION.to_owned(),
            request_timeout: Duration::from_secs(30),
            query_batch_size: None,
            client_name: "orderbridge".to_owned(),
            max_api_usage_share: 0.9,
            api_usage_policy: UsagePolicy::Refuse,
            api_usage_recheck: Duration::from_secs(300),
        }
    }
}

/// A target's own Salesforce settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TargetSettingsError {
    #[error(
        "no SF_{prefix}_* setting is set (the target names its own Salesforce settings `{prefix}`: set at least its credentials, e.g. SF_{prefix}_USERNAME)"
    )]
    NoneSet { prefix: String },
    #[error("SF_{prefix}_*: {message}")]
    Invalid { prefix: String, message: String },
}

impl SalesforceConfig {
    /// The settings of a target with its own Salesforce settings `SF_<prefix>_*`: each one set
    /// replaces the same `SF_*` setting of `self`; what is not set stays as in `self`. `lookup`
    /// reads a variable (`std::env::var(..).ok()` in the binaries). At least one must be set, so
    /// a misspelt prefix is an error rather than a second copy of the default credentials.
    ///
    /// Every value goes through the same parsing as its `SF_*` twin (clap's value parsers),
    /// so `SF_EMEA_REQUEST_TIMEOUT=soon` fails as `SF_REQUEST_TIMEOUT=soon` would.
    pub fn for_target(
        &self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TargetSettingsError> {
        use clap::{Command, FromArgMatches};

        // The same arguments, reading nothing from the process environment and with no
        // defaults: only what the target sets is present in the matches, and only that
        // replaces a value of `self`.
        let command = Self::augment_args(Command::new("target").no_binary_name(true));
        let mut argv: Vec<String> = Vec::new();
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let Some(name) = env.to_str().and_then(|e| e.strip_prefix("SF_")) else {
                continue;
            };
            if let Some(value) = lookup(&format!("SF_{prefix}_{name}")) {
                argv.push(format!("--{long}={value}"));
            }
        }
        if argv.is_empty() {
            return Err(TargetSettingsError::NoneSet {
                prefix: prefix.to_owned(),
            });
        }
        let invalid = |e: clap::Error| TargetSettingsError::Invalid {
            prefix: prefix.to_owned(),
            message: e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned(),
        };
        let mut matches = command
            .mut_args(|a| {
                a.env(None::<&str>)
                    .default_value(None::<&str>)
                    .global(false)
            })
            .try_get_matches_from(argv)
            .map_err(invalid)?;
        let mut config = self.clone();
        config
            .update_from_arg_matches_mut(&mut matches)
            .map_err(invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod target_tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_targets_settings_replace_only_what_they_set() {
        let base = SalesforceConfig {
            request_timeout: Duration::from_secs(7),
            ..SalesforceConfig::default()
        };
        let t = base
            .for_target(
                "EMEA",
                env(&[
                    ("SF_EMEA_USERNAME", "emea@example.com"),
                    ("SF_EMEA_PASSWORD", "pw"),
                    ("SF_EMEA_LOGIN_URL", "https://emea.my.salesforce.com"),
                    ("SF_EMEA_AUTH_FLOW", "client_credentials"),
                    ("SF_USERNAME", "ignored@example.com"),
                    ("SF_AMER_USERNAME", "amer@example.com"),
                ]),
            )
            .unwrap();
        assert_eq!(t.username, "emea@example.com");
        assert_eq!(t.password.expose_secret(), "pw");
        assert_eq!(t.login_url, "https://emea.my.salesforce.com");
        assert_eq!(t.auth_flow, AuthFlowKind::ClientCredentials);
        // Not set for the target: the base's, not clap's default.
        assert_eq!(t.request_timeout, Duration::from_secs(7));
        assert_eq!(t.client_id, base.client_id);
        assert_eq!(t.api_version, base.api_version);
    }

    #[test]
    fn nothing_set_or_a_bad_value_is_an_error() {
        let base = SalesforceConfig::default();
        let e = base
            .for_target("EMEA", env(&[("SF_USERNAME", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("no SF_EMEA_* setting is set"), "{e}");
        let e = base
            .for_target("EMEA", env(&[("SF_EMEA_REQUEST_TIMEOUT", "soon")]))
            .unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = base
            .for_target("EMEA", env(&[("SF_EMEA_AUTH_FLOW", "kerberos")]))
            .unwrap_err();
        assert!(e.to_string().contains("kerberos"), "{e}");
    }
}
