//! HTTPS for the emulator (Salesforce only speaks HTTPS, and some clients, like
//! simple-salesforce, only speak HTTPS to it): a given certificate and key, or a local CA and a
//! server certificate generated at start. rustls with the ring provider; no aws-lc.
//!
//! ```text
//! TcpListener ─accept─► spawn handshake (10 s timeout) ─► channel ─► TlsListener::accept ─► axum
//! ```
//! Handshakes run in their own tasks so one slow or broken client never blocks the others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Pem { path: String, message: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot write the CA certificate to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    // Explicit provider: another crate enabling aws-lc in the same build must not change ours.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads a PEM certificate chain and private key.
pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if chain.is_empty() {
        return Err(pem_err(cert, &"no CERTIFICATE block"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    server_config(chain, key_der)
}

/// A generated local CA and server certificate, in PEM.
pub struct Generated {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// Server certificate followed by the CA certificate.
    pub chain_pem: String,
    /// The server's PKCS#8 private key.
    pub key_pem: String,
}

/// Generates a local CA and a server certificate for `hosts` (names or IP addresses), e.g. to
/// write `--tls-cert-file`/`--tls-key-file` once and reuse them.
pub fn generate(hosts: &[String]) -> Result<Generated, TlsError> {
    let (ca, cert, key) = generate_parts(hosts)?;
    Ok(Generated {
        ca_pem: ca.pem(),
        chain_pem: format!("{}{}", cert.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
    })
}

fn generate_parts(
    hosts: &[String],
) -> Result<
    (
        CertifiedIssuer<'static, KeyPair>,
        rcgen::Certificate,
        KeyPair,
    ),
    TlsError,
> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sf-emulator local CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "sf-emulator");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&leaf_key, &ca)?;
    Ok((ca, cert, leaf_key))
}

/// Generates a local CA and a server certificate for `hosts` (names or IP addresses); returns
/// the server config and the CA certificate PEM, which clients add to their trust store.
pub fn self_signed(hosts: &[String]) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let (ca, cert, leaf_key) = generate_parts(hosts)?;
    let chain = vec![cert.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    Ok((server_config(chain, key)?, ca.pem()))
}

/// A listener yielding TLS streams whose handshakes are done.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; stops when the listener is dropped.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => break,
                    a = tcp.accept() => a,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = acceptor.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send((tls, addr)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%addr, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Self { rx, local })
    }

    /// The handshaken connections, for servers that take a stream of them (the Pub/Sub gRPC
    /// server).
    pub fn into_connections(self) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx
    }
}

/// `config` for HTTP/2 only (gRPC), sharing its certificate.
pub fn for_http2(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut h2 = config.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(h2)
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
