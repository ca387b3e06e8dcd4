//! What one connection is doing, as its timeouts and the connection cap need to know: reading
//! a request head, serving a request, or idle between requests.
//!
//! hyper cannot tell us this: its own header timer also runs while a keep-alive connection
//! waits for its next request (so the idle timeout could never exceed the header timeout), and
//! its graceful shutdown keeps a connection whose head is half received. So two observers feed
//! an [`Activity`]: [`ObservedIo`] sees bytes arrive, [`Observed`] sees hyper hand a complete
//! request to the application and hyper finish with the response's body.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

/// The connection timeouts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// The shared state of one connection.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
    /// A phase began whose deadline may be earlier than the one the watchdog waits for.
    changed: Notify,
    /// Set by the connection cap when it picks this connection to close.
    evict: Notify,
    evicting: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Requests handed to the application whose response is not complete yet.
    in_flight: u32,
    /// Bytes of a request head have arrived (or the connection is new) and no request has
    /// started since: the header timeout runs.
    reading_head: bool,
    /// When the current phase began.
    since: Instant,
}

/// What the connection's watchdog should do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// Close the connection, for this reason.
    Expired(&'static str),
    /// Look again at this instant.
    Until(Instant),
}

impl Activity {
    /// A new connection: its first request head is due within the header timeout.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                in_flight: 0,
                reading_head: true,
                since: Instant::now(),
            }),
            changed: Notify::new(),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, consistent after every statement: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_received(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && !s.reading_head {
            s.reading_head = true;
            s.since = Instant::now();
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.reading_head = false;
        InFlight(self.clone())
    }

    /// A request is in progress: the only state in which shutdown waits for the connection.
    pub fn is_busy(&self) -> bool {
        self.state().in_flight > 0
    }

    /// Whether the connection is past its header or idle deadline at `now`.
    pub fn check(&self, timeouts: Timeouts, now: Instant) -> Check {
        let s = self.state();
        if s.in_flight > 0 {
            // Requests are bounded by the application's own timeouts; look again later.
            return Check::Until(now + timeouts.header.min(timeouts.idle));
        }
        let (deadline, reason) = if s.reading_head {
            (s.since + timeouts.header, "header timeout")
        } else {
            (s.since + timeouts.idle, "idle timeout")
        };
        if deadline <= now {
            Check::Expired(reason)
        } else {
            Check::Until(deadline)
        }
    }

    /// Since when the connection has had no request in progress; `None` while busy or already
    /// picked for eviction.
    pub fn quiet_since(&self) -> Option<Instant> {
        let s = self.state();
        (s.in_flight == 0 && !self.evicting.load(Ordering::Relaxed)).then_some(s.since)
    }

    /// Asks the connection to close if it is still quiet when it wakes.
    pub fn evict(&self) {
        self.evicting.store(true, Ordering::Relaxed);
        self.evict.notify_one();
    }

    /// Resolves when the connection became idle or started a head, so the watchdog looks again.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves when [`Activity::evict`] was called.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// The connection turned busy before it could be evicted: it may be picked again later.
    pub fn eviction_declined(&self) {
        self.evicting.store(false, Ordering::Relaxed);
    }
}

/// A request in progress; dropping it (hyper is done with the response body, or the request was
/// abandoned) starts the idle phase.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.since = Instant::now();
            self.0.changed.notify_one();
        }
    }
}

/// The socket, reporting every read that brings bytes.
pub(super) struct ObservedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ObservedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ObservedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_received();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ObservedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The application as hyper calls it, marking each request in progress and giving it the
/// peer's address (`ConnectInfo<SocketAddr>`, as `axum::serve` would).
#[derive(Clone)]
pub(super) struct Observed {
    pub app: Router,
    pub activity: Arc<Activity>,
    pub peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Observed {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.app.clone().oneshot(req.map(Body::new));
        Box::pin(async move {
            // The request stays in progress until its body is written (a large document to a
            // slow reader is still being served), so the guard travels with the body.
            let response = response.await?;
            Ok(response.map(|inner| {
                Body::new(Serving {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request in progress until hyper drops it.
struct Serving {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Serving {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn phases_pick_the_deadline() {
        let a = Arc::new(Activity::new());
        let start = Instant::now();
        // New: the head is due within the header timeout.
        assert_eq!(a.check(T, start), Check::Until(start + T.header));
        assert_eq!(
            a.check(T, start + T.header),
            Check::Expired("header timeout")
        );

        // Serving: no deadline of its own, only a later look.
        let request = a.request_started();
        assert!(a.is_busy());
        assert!(matches!(a.check(T, start + T.idle * 10), Check::Until(_)));
        assert_eq!(a.quiet_since(), None);

        // Done: idle from the response on.
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(request);
        let idle = Instant::now();
        assert_eq!(a.check(T, idle), Check::Until(idle + T.idle));
        assert_eq!(a.quiet_since(), Some(idle));

        // The next head's first bytes: the header timeout again, from them.
        tokio::time::advance(Duration::from_secs(2)).await;
        a.bytes_received();
        let head = Instant::now();
        assert_eq!(a.check(T, head), Check::Until(head + T.header));
        // More bytes of the same head do not extend it.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.bytes_received();
        assert_eq!(
            a.check(T, head + T.header),
            Check::Expired("header timeout")
        );
    }

    #[tokio::test]
    async fn an_evicted_connection_is_not_picked_twice() {
        let a = Activity::new();
        assert!(a.quiet_since().is_some());
        a.evict();
        assert_eq!(a.quiet_since(), None);
        a.evicted().await; // the wake-up was kept for the connection's task
        a.eviction_declined();
        assert!(a.quiet_since().is_some());
    }
}
