//! One connection: the TLS handshake if any, then HTTP/1.1 under the
//! header deadline, until the peer leaves or the server shuts down.

use crate::{deadline, Settings, Stats};
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Holds one of the `max_connections` slots (`_slot`) until it ends.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    stats: Stats,
    svc: S,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    stats.open.add(1);
    let _open = Open(&stats);
    match tls {
        None => http(stream, peer, settings, &stats, svc, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => http(stream, peer, settings, &stats, svc, shutdown).await,
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
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let body_timeout = settings.body_timeout;
    let service =
        hyper::service::service_fn(move |req| deadline::call(svc.clone(), req, peer, body_timeout));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
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
