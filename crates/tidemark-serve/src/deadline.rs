//! The body deadline: a request body must arrive whole within
//! `body_timeout` of its headers; otherwise the request is answered
//! `408 request_timeout` whatever the handler made of the cut body.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tidemark_api::error::ErrorCode;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Runs one request through `svc` under the body deadline.
pub async fn call<S>(
    svc: S,
    req: Request<Incoming>,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Response<Body>, Infallible>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    // A request with no body (every read) needs no timer.
    let (body, expired) = if body.is_end_stream() {
        (Body::new(body), None)
    } else {
        let expired = Arc::new(AtomicBool::new(false));
        let body = Deadline {
            inner: body,
            deadline: Instant::now() + timeout,
            sleep: None,
            expired: expired.clone(),
        };
        (Body::new(body), Some(expired))
    };
    let resp = svc.oneshot(Request::from_parts(parts, body)).await?;
    match expired {
        Some(e) if e.load(Ordering::Relaxed) => Ok(too_slow(timeout)),
        _ => Ok(resp),
    }
}

fn too_slow(timeout: Duration) -> Response<Body> {
    crate::json_errors::closing_error(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!(
            "the request body did not arrive within {} s of its headers (body_timeout_secs); nothing was done: send the whole body at once",
            timeout.as_secs()
        ),
    )
}

/// A body that fails once its deadline passes before it has all arrived.
struct Deadline {
    inner: Incoming,
    deadline: Instant,
    /// Armed only when a frame is not ready at once.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug)]
struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for TooSlow {}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(TooSlow))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
