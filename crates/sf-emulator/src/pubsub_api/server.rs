//! Serving the Pub/Sub API: the gRPC server on its own listener (plain HTTP/2, or TLS with the
//! emulator's HTTPS certificate and ALPN `h2`), ended with the emulator.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use orderbridge_pubsub::proto::pub_sub_server::PubSubServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::server::Connected;

use super::service::PubSubService;
use crate::state::AppState;
use crate::tls;

/// Largest gRPC message accepted (a PublishRequest of 200 events stays well below).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// HTTP/2 streams (calls) at once on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Serves until `shutdown` resolves; open Subscribe streams are ended first so the server can
/// stop (they would otherwise keep it waiting for ever).
pub async fn serve(
    listener: TcpListener,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let hub_state = Arc::clone(&state);
    let shutdown = async move {
        shutdown.await;
        hub_state.pubsub.drop_streams();
    };
    let service =
        PubSubServer::new(PubSubService::new(state)).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Peers that vanish without closing (a killed client) are noticed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(service);
    match tls_config {
        None => {
            let incoming = TcpListenerStream::new(listener).map(|s| s.inspect(no_delay));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(config) => {
            let Ok(tls_listener) = tls::TlsListener::new(listener, tls::for_http2(&config)) else {
                tracing::error!("the Pub/Sub listener has no local address; not serving");
                return Ok(());
            };
            let incoming =
                ReceiverStream::new(tls_listener.into_connections()).map(|(stream, _)| {
                    no_delay(stream.get_ref().0);
                    Ok::<_, io::Error>(TlsIo(stream))
                });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Turns Nagle's algorithm off. A server fed its own connections (rather than binding them
/// itself) must do this: with Nagle on, a FetchResponse written after the client's request
/// waits for the client's delayed ACK (~40 ms), which capped a subscriber draining a backlog at
/// about one batch per 45 ms. Salesforce's endpoint shows no such pause. A connection where it
/// cannot be set (already reset) is served as it is: that costs speed, not correctness.
fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a Pub/Sub connection");
    }
}

/// A handshaken TLS connection, as tonic's server takes it.
struct TlsIo(TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
