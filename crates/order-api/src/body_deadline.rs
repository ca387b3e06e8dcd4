//! The whole request body must arrive within `ORDER_API_BODY_TIMEOUT` of the request head.
//!
//! tower-http's `RequestBodyTimeoutLayer` restarts its timer with every frame, so a body
//! trickled a byte at a time never trips it and the request ran into the whole-request timeout
//! (a 503, as if the server were at fault). This deadline is fixed when the head arrives.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The body error when the deadline passed; the body extractor turns it into a 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within the body timeout")]
pub struct BodyTimedOut;

/// Middleware: gives the request body a deadline of `limit` from now.
pub async fn limit_body_time(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let deadline = Instant::now() + limit;
    next.run(req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline,
            sleep: None,
        })
    }))
    .await
}

struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Made on the first poll: bodies nobody reads cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
