//! The Pub/Sub API connection: the channel (plain HTTP/2, or TLS with rustls/ring), the auth metadata every call carries, and what a
//! failed call means for the stream ([`Failure`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;

use orderbridge_pubsub::call::{error_code, insert_auth};
use orderbridge_pubsub::proto::pub_sub_client::PubSubClient;
use orderbridge_pubsub::{REPLAY_ID_VALIDATION_FAILED, error_codes};
use orderbridge_salesforce::SessionToken;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Largest response message accepted: a batch of 100 events of up to 1 MB each (Salesforce's
/// event size limit) fits; anything bigger is refused by the codec instead of buffered.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// TLS settings for an `https://` endpoint: Mozilla's roots (webpki-roots) plus the PEM
/// certificates of `SF_CA_CERT_FILE` (the emulator's self-signed CA, a corporate proxy's), ring
/// as the provider, HTTP/2 by ALPN.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read SF_CA_CERT_FILE {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                format!(
                    "SF_CA_CERT_FILE {} is not a PEM bundle: {e}",
                    path.display()
                )
            })?;
            roots.add(cert).map_err(|e| {
                format!(
                    "SF_CA_CERT_FILE {}: unusable certificate: {e}",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "SF_CA_CERT_FILE {} holds no PEM certificates",
                path.display()
            ));
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a channel to the endpoint: plain HTTP/2 for `http://`, TLS (with `tls`) for `https://`.
pub async fn connect(
    endpoint: &str,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<PubSubClient<Channel>, Failure> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| Failure::Other(format!("SF_PUBSUB_ENDPOINT: {e}")))?
        .connect_timeout(timeout)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // HTTP/2 pings notice a dead peer well before the server's 270 s keepalive would.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let connecting = async {
        match (endpoint.starts_with("https://"), tls) {
            (false, _) => ep.connect().await,
            (true, Some(tls)) => {
                let connector = TlsConnector::from(tls.clone());
                ep.connect_with_connector(tower::service_fn(move |uri: Uri| {
                    tls_stream(connector.clone(), uri)
                }))
                .await
            }
            (true, None) => {
                ep.connect_with_connector(tower::service_fn(|_: Uri| async {
                    Err::<TokioIo<TcpStream>, _>(std::io::Error::other("no TLS configuration"))
                }))
                .await
            }
        }
    };
    let channel = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| Failure::Other(format!("connecting to {endpoint} timed out")))?
        .map_err(|e| Failure::Other(format!("cannot connect to {endpoint}: {}", chain(&e))))?;
    Ok(PubSubClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn tls_stream(
    connector: TlsConnector,
    uri: Uri,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other("the endpoint has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host)
        .map_err(|e| std::io::Error::other(format!("not a TLS server name: {e}")))?;
    let stream = connector.connect(name, tcp).await?;
    Ok(TokioIo::new(stream))
}

/// An error with its causes (tonic's transport errors say little at the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A request with `accesstoken`, `instanceurl` and `tenantid` (the shared
/// `orderbridge_pubsub::call::insert_auth`).
pub fn authed<T>(message: T, token: &SessionToken, org_id: &str) -> Result<Request<T>, Failure> {
    let mut request = Request::new(message);
    insert_auth(
        request.metadata_mut(),
        token.access_token.expose_secret(),
        &token.instance_url,
        org_id,
    )
    .map_err(|e| Failure::Other(format!("{} is not a valid gRPC metadata value", e.key)))?;
    Ok(request)
}

/// What a failed call means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token was refused: refresh it (the login it came from is `generation`) and re-open.
    Auth { generation: u64, detail: String },
    /// The CUSTOM replay id is expired, unknown or corrupt.
    ReplayInvalid(String),
    /// Anything else: re-open after a backoff.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auth { detail, .. } => write!(f, "authentication refused: {detail}"),
            Self::ReplayInvalid(d) => write!(f, "replay id refused: {d}"),
            Self::Other(d) => f.write_str(d),
        }
    }
}

impl Failure {
    /// Classifies a gRPC status by its code and its `error-code` trailer.
    pub fn from_status(status: &Status, generation: u64) -> Self {
        let code = error_code(status).unwrap_or("");
        let detail = format!(
            "{:?}: {}{}",
            status.code(),
            status.message().chars().take(300).collect::<String>(),
            if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        );
        if status.code() == Code::Unauthenticated
            || code == error_codes::AUTH_ERROR
            || code.ends_with(".auth.error")
        {
            return Self::Auth { generation, detail };
        }
        if status.code() == Code::InvalidArgument
            && (code == error_codes::REPLAY_ID_CORRUPTED
                || status.message() == REPLAY_ID_VALIDATION_FAILED)
        {
            return Self::ReplayInvalid(detail);
        }
        Self::Other(detail)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use orderbridge_pubsub::metadata;

    fn with_code(code: Code, msg: &str, error_code: Option<&str>) -> Status {
        let mut s = Status::new(code, msg);
        if let Some(c) = error_code {
            s.metadata_mut()
                .insert(metadata::ERROR_CODE, c.parse().unwrap());
        }
        s
    }

    #[test]
    fn classifies_by_code_and_trailer() {
        assert!(matches!(
            Failure::from_status(&with_code(Code::Unauthenticated, "x", None), 3),
            Failure::Auth { generation: 3, .. }
        ));
        assert!(matches!(
            Failure::from_status(
                &with_code(Code::PermissionDenied, "x", Some(error_codes::AUTH_ERROR)),
                1
            ),
            Failure::Auth { .. }
        ));
        assert!(matches!(
            Failure::from_status(
                &with_code(
                    Code::InvalidArgument,
                    REPLAY_ID_VALIDATION_FAILED,
                    Some(error_codes::REPLAY_ID_CORRUPTED)
                ),
                1
            ),
            Failure::ReplayInvalid(_)
        ));
        assert!(matches!(
            Failure::from_status(&with_code(Code::InvalidArgument, "other", None), 1),
            Failure::Other(_)
        ));
        assert!(matches!(
            Failure::from_status(&with_code(Code::Unavailable, "down", None), 1),
            Failure::Other(_)
        ));
    }
}
