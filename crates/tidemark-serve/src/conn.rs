//! One connection: the TLS handshake if any, then HTTP/1.1 under the
//! header deadline, until the peer leaves or the server shuts down.

use crate::hot::HotRoute;
use crate::slots::Slot;
use crate::{deadline, fast, Settings, Stats};
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Holds one of the `max_connections` slots (`slot`) until it ends, and
/// tells it when a request is in flight; ends gracefully when the slot is
/// taken for a newer connection. Plain HTTP starts on the fast path
/// (`fast.rs`), and goes to hyper at the first request that is not a
/// record read.
#[allow(clippy::too_many_arguments)]
pub async fn serve<T>(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    stats: Stats,
    svc: HotRoute<T>,
    shutdown: CancellationToken,
    slot: Slot,
) where
    T: Clone + Send + Sync + 'static,
{
    stats.open.add(1);
    let _open = Open(&stats);
    match tls {
        None if settings.fast_path => {
            let left = fast::serve(
                &mut stream,
                peer,
                &svc,
                settings.header_timeout,
                &stats,
                &slot,
                &shutdown,
            )
            .await;
            if let fast::Left::Handoff(read) = left {
                let io = fast::Prefixed::new(read, stream);
                http(io, peer, settings, &stats, svc, shutdown, &slot).await
            }
        }
        None => http(stream, peer, settings, &stats, svc, shutdown, &slot).await,
        Some(acceptor) => {
            // One deadline for the first byte and the handshake; a
            // connection still silent is evicted or shut down as before.
            let deadline = tokio::time::Instant::now() + settings.header_timeout;
            let plain = tokio::select! {
                p = plain_http_at_tls(&mut stream, deadline) => p,
                _ = slot.conn.evict.cancelled() => return,
                _ = shutdown.cancelled() => return,
            };
            if plain {
                return;
            }
            let handshake = tokio::select! {
                h = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => h,
                // Chosen to make room while still shaking hands.
                _ = slot.conn.evict.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => http(stream, peer, settings, &stats, svc, shutdown, &slot).await,
                // A client without an accepted certificate, or not TLS at all.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    stats.timed_out.inc();
                    tracing::debug!(%peer, "TLS handshake too slow; connection closed");
                }
            }
        }
    }
}

/// A plain-HTTP request sent to an https port (a TLS handshake begins with
/// byte 0x16; a request with a capital letter) is told to use https, as
/// JSON, and closed: a silent close left the caller guessing. True if it
/// was.
async fn plain_http_at_tls(stream: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut first = [0u8; 1];
    let plain = matches!(
        tokio::time::timeout_at(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0].is_ascii_uppercase()
    );
    if plain {
        let resp: Response<bytes::Bytes> = crate::json_errors::closing_error(
            axum::http::StatusCode::BAD_REQUEST,
            tidemark_api::ErrorCode::BadRequest,
            "this port serves https, not plain http; use an https:// URL (with --ca-cert if its certificate is not publicly trusted)".into(),
        );
        let mut out = Vec::new();
        crate::fast::encode_response(&resp, &mut out);
        crate::refuse::answer_and_close(stream, &out, true).await;
    }
    plain
}

/// How long a connection chosen to make room may take to close by itself.
pub(crate) const EVICTION_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts the connection open while it lives.
struct Open<'a>(&'a Stats);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.add(-1);
    }
}

async fn http<I, S>(
    io: I,
    peer: SocketAddr,
    settings: Settings,
    stats: &Stats,
    svc: S,
    shutdown: CancellationToken,
    slot: &Slot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let body_timeout = settings.body_timeout;
    let conn = slot.conn.clone();
    let service = hyper::service::service_fn(move |req| {
        conn.busy();
        let answer = deadline::call(svc.clone(), req, peer, body_timeout);
        let conn = conn.clone();
        async move {
            let resp = answer.await;
            // A body of unknown length is a stream (a watch, a backup).
            let streaming = resp
                .as_ref()
                .is_ok_and(|r| http_body::Body::size_hint(r.body()).exact().is_none());
            conn.answered(streaming);
            resp
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        // The fast path's head limit, after a handoff and over https too
        // (hyper's default is about 400 KB; its refusal is a bare 431).
        .max_buf_size(crate::fast::MAX_HEAD)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.cancelled() => {
            // Finishes the request in flight, then closes.
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
        _ = slot.conn.evict.cancelled() => {
            // Its slot went to a newer connection. Idle, it closes at once;
            // headers still trickling in (slowloris) get a second, then the
            // connection is dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(EVICTION_GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!(%peer, "an idle connection made room for a new one");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            stats.timed_out.inc();
            tracing::debug!(%peer, "request headers too slow; connection closed");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
