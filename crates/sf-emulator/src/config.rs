//! Emulator settings: every one a flag and an environment variable with a documented default.
//! The credential defaults are the emulator's public dev credentials (they guard nothing; they
//! exist so clients exercise a real login).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// Default OAuth client id (consumer key) the emulator accepts.
pub const DEV_CLIENT_ID: &str = "orderbridge-dev-client-id";
/// Default OAuth client secret (consumer secret).
pub const DEV_CLIENT_SECRET: &str = "orderbridge-dev-client-secret";
/// Default username (also the run-as user of the client-credentials flow).
pub const DEV_USERNAME: &str = "integration@orderbridge.dev";
/// Default password (the password flow expects it followed by the security token).
pub const DEV_PASSWORD: &str = "orderbridge-dev-password";
/// Default security token, appended to the password in the password flow.
pub const DEV_SECURITY_TOKEN: &str = "orderbridgedevtoken";
/// Default refresh token accepted by the refresh-token flow.
pub const DEV_REFRESH_TOKEN: &str = "orderbridge-dev-refresh-token";

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

/// Settings of one emulator instance.
#[derive(Debug, Clone, Args)]
pub struct EmulatorConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SF_EMULATOR_ADDR", default_value = "127.0.0.1:8089")]
    pub addr: SocketAddr,
    /// `instance_url` returned by the token endpoint; default: the scheme and bound address.
    /// Set it when clients reach the emulator under another name (e.g. in Docker).
    #[arg(long, env = "SF_EMULATOR_INSTANCE_URL")]
    pub instance_url: Option<String>,
    /// OAuth client id (consumer key) accepted by every flow.
    #[arg(long, env = "SF_EMULATOR_CLIENT_ID", default_value = DEV_CLIENT_ID)]
    pub client_id: String,
    /// OAuth client secret.
    #[arg(long, env = "SF_EMULATOR_CLIENT_SECRET", default_value = DEV_CLIENT_SECRET, value_parser = secret)]
    pub client_secret: SecretString,
    /// The org's one user: password-flow username, JWT `sub`, client-credentials run-as user.
    #[arg(long, env = "SF_EMULATOR_USERNAME", default_value = DEV_USERNAME)]
    pub username: String,
    /// The user's password.
    #[arg(long, env = "SF_EMULATOR_PASSWORD", default_value = DEV_PASSWORD, value_parser = secret)]
    pub password: SecretString,
    /// The user's security token (appended to the password); empty means none is required.
    #[arg(long, env = "SF_EMULATOR_SECURITY_TOKEN", default_value = DEV_SECURITY_TOKEN, value_parser = secret)]
    pub security_token: SecretString,
    /// Refresh token accepted by the refresh-token flow.
    #[arg(long, env = "SF_EMULATOR_REFRESH_TOKEN", default_value = DEV_REFRESH_TOKEN, value_parser = secret)]
    pub refresh_token: SecretString,
    /// PEM file (public key or X.509 certificate) that verifies JWT-bearer assertions; without
    /// it the JWT flow answers invalid_grant.
    #[arg(long, env = "SF_EMULATOR_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Object schema JSON file; default: the built-in schema (see `default_schema.json`).
    #[arg(long, env = "SF_EMULATOR_SCHEMA_FILE")]
    pub schema_file: Option<PathBuf>,
    /// Seed JSON file (same body as `POST /__admin/seed`), applied at start and on reset.
    /// The `sf-emulator` binary without one starts with the built-in dev catalogue
    /// ([`crate::seed::DEV_CATALOGUE`]) unless `--empty`.
    #[arg(long, env = "SF_EMULATOR_SEED_FILE")]
    pub seed_file: Option<PathBuf>,
    /// A seed given as JSON text instead of a file (the binary's built-in dev catalogue); used
    /// only without `seed_file`.
    #[arg(skip)]
    pub seed_json: Option<&'static str>,
    /// JSON file holding the org's records: loaded at start when it exists, written (atomically)
    /// within a second of each change and at shutdown. Without it, records live in memory only.
    #[arg(long, env = "SF_EMULATOR_DATA_FILE")]
    pub data_file: Option<PathBuf>,
    /// Daily API request allocation reported in `/limits` and `Sforce-Limit-Info`
    /// (15,000 is a Developer Edition org).
    #[arg(long, env = "SF_EMULATOR_DAILY_API_LIMIT", default_value_t = 15_000)]
    pub daily_api_limit: u64,
    /// Idle time after which an access token stops working, as a session timeout does.
    #[arg(long, env = "SF_EMULATOR_SESSION_TIMEOUT", default_value = "2h", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// When set, every `/__admin` request needs `Authorization: Bearer <token>`. Admin writes
    /// need `Content-Type: application/json` either way (no cross-site form posts).
    #[arg(long, env = "SF_EMULATOR_ADMIN_TOKEN", value_parser = secret, hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Serve HTTPS with this PEM certificate chain (needs `--tls-key-file`).
    #[arg(long, env = "SF_EMULATOR_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `--tls-cert-file`.
    #[arg(long, env = "SF_EMULATOR_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Serve HTTPS with a local CA and server certificate generated at start (for localhost,
    /// 127.0.0.1, ::1 and the instance URL's host).
    #[arg(
        long,
        env = "SF_EMULATOR_TLS_SELF_SIGNED",
        default_value_t = false,
        conflicts_with = "tls_cert_file"
    )]
    pub tls_self_signed: bool,
    /// Where to write the generated CA certificate (PEM), for clients to trust
    /// (e.g. `REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`).
    #[arg(long, env = "SF_EMULATOR_TLS_CA_OUT", requires = "tls_self_signed")]
    pub tls_ca_out: Option<PathBuf>,
    /// Address of the Pub/Sub API (gRPC) server (port 0 picks a free port). TLS with the same
    /// certificate when HTTPS is on.
    #[arg(
        long,
        env = "SF_EMULATOR_PUBSUB_ADDR",
        default_value = "127.0.0.1:7443"
    )]
    pub pubsub_addr: SocketAddr,
    /// How often an idle Subscribe stream gets an empty FetchResponse (keepalive) carrying the
    /// latest replay id; Salesforce sends one at least every 270 s.
    #[arg(long, env = "SF_EMULATOR_PUBSUB_KEEPALIVE", default_value = "270s", value_parser = humantime::parse_duration)]
    pub pubsub_keepalive: Duration,
    /// How long published events stay replayable (Salesforce: 72 hours).
    #[arg(long, env = "SF_EMULATOR_EVENT_RETENTION", default_value = "72h", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,
    /// Most events kept per topic; older ones are dropped first (their replay ids then fail
    /// like expired ones), so memory stays bounded however much is published.
    #[arg(long, env = "SF_EMULATOR_EVENT_MAX", default_value_t = 10_000)]
    pub event_max: usize,
    /// Objects whose creates, updates and deletes publish Change Data Capture events
    /// (comma-separated; `/data/<Object>ChangeEvent` and `/data/ChangeEvents`).
    #[arg(
        long,
        env = "SF_EMULATOR_CDC_OBJECTS",
        default_value = "Order",
        value_delimiter = ','
    )]
    pub cdc_objects: Vec<String>,
    /// Flow rules at start: `default` (the built-in `provision-on-activate` rule) or `none`.
    /// A seed file with a `flows` list replaces either (`"flows": []`: no rules).
    #[arg(long, env = "SF_EMULATOR_FLOWS", value_enum, default_value = "default")]
    pub flows: FlowsAtStart,
    /// First retry interval of an unacknowledged outbound message; each retry doubles it.
    #[arg(long, env = "SF_EMULATOR_OM_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub om_retry_base: Duration,
    /// Longest interval between outbound-message retries (Salesforce: up to 2 hours).
    #[arg(long, env = "SF_EMULATOR_OM_RETRY_CAP", default_value = "2h", value_parser = humantime::parse_duration)]
    pub om_retry_cap: Duration,
    /// After this long without an acknowledgement an outbound message goes to the failed list
    /// (Salesforce: 24 hours).
    #[arg(long, env = "SF_EMULATOR_OM_GIVE_UP", default_value = "24h", value_parser = humantime::parse_duration)]
    pub om_give_up: Duration,
    /// How long one outbound-message POST may take before it counts as not delivered
    /// (Salesforce: 60 s).
    #[arg(long, env = "SF_EMULATOR_OM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub om_timeout: Duration,
}

/// Which Flow rules the emulator starts with (`SF_EMULATOR_FLOWS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlowsAtStart {
    /// `provision-on-activate`: Order `Status` → `Activated` publishes `OrderProvisionRequested__e`.
    #[default]
    Default,
    /// No rules (add them with `POST /__admin/flows`).
    None,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8089)),
            instance_url: None,
            client_id: DEV_CLIENT_ID.to_owned(),
            client_secret: SecretString::from(DEV_CLIENT_SECRET),
            username: DEV_USERNAME.to_owned(),
            password: SecretString::from(DEV_PASSWORD),
            security_token: SecretString::from(DEV_SECURITY_TOKEN),
            refresh_token: SecretString::from(DEV_REFRESH_TOKEN),
            jwt_public_key_file: None,
            schema_file: None,
            seed_file: None,
            seed_json: None,
            data_file: None,
            daily_api_limit: 15_000,
            session_timeout: Duration::from_secs(2 * 3600),
            admin_token: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_self_signed: false,
            tls_ca_out: None,
            pubsub_addr: SocketAddr::from(([127, 0, 0, 1], 7443)),
            pubsub_keepalive: Duration::from_secs(270),
            event_retention: Duration::from_secs(72 * 3600),
            event_max: 10_000,
            cdc_objects: vec!["Order".to_owned()],
            flows: FlowsAtStart::Default,
            om_retry_base: Duration::from_secs(1),
            om_retry_cap: Duration::from_secs(2 * 3600),
            om_give_up: Duration::from_secs(24 * 3600),
            om_timeout: Duration::from_secs(60),
        }
    }
}

impl EmulatorConfig {
    /// Defaults, listening on free ports of 127.0.0.1 (REST and Pub/Sub; for tests).
    pub fn ephemeral() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pubsub_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}
