//! The HTTP front door both servers share (issue 13: resources and TLS).
//!
//! Invariants of [`serve`]:
//! - at most `max_connections` connections are served at once; one more
//!   first closes the connection idle longest ([`slots`]: no request in
//!   flight, no stream), and only if every one is busy is it answered
//!   `503 too_many_connections` and closed (over https it is closed before
//!   the handshake);
//! - a TLS handshake, and each request's headers, must arrive within
//!   `header_timeout`, or the connection is closed (slowloris); a
//!   keep-alive connection idle that long is closed too;
//! - a request body must arrive whole within `body_timeout` of its
//!   headers, or the request is answered `408 request_timeout`, nothing
//!   done, and the connection closed;
//! - every request the router sees carries its peer as
//!   `ConnectInfo<SocketAddr>` (the hot route is given it directly);
//! - over plain HTTP, record reads are parsed and answered without hyper
//!   (`fast.rs`), byte for byte as hyper answers them; a connection's first
//!   other request hands it to hyper for good;
//! - once `shutdown` is cancelled nothing more is accepted, idle
//!   connections close, and `serve` returns when the requests in flight
//!   have finished (the caller bounds that wait by its grace period).

pub mod body;
mod conn;
mod deadline;
mod fast;
mod fd_limit;
pub mod hot;
mod json_errors;
pub mod local;
pub mod openapi;
mod refuse;
mod slots;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_telemetry::{Counter, Gauge, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use json_errors::json_errors;
pub use tokio_rustls::TlsAcceptor;

/// Limits every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time for a TLS handshake, and for each request's headers.
    pub header_timeout: Duration,
    /// Time for a whole request body, from its headers.
    pub body_timeout: Duration,
    /// Whether plain HTTP requests the hot route answers skip hyper
    /// (`fast.rs`); on unless `TIDEMARK_HTTP_FAST_PATH=off`.
    pub fast_path: bool,
}

/// Whether a request names header `name` more than once, where one is
/// meant: which one a proxy in front went by is anyone's guess, so such a
/// request is refused, not read by its first.
pub fn named_twice<K: axum::http::header::AsHeaderName>(
    headers: &axum::http::HeaderMap,
    name: K,
) -> bool {
    headers.get_all(name).iter().nth(1).is_some()
}

/// Whether the environment leaves the fast path on.
pub fn fast_path_from_env() -> bool {
    !matches!(
        std::env::var("TIDEMARK_HTTP_FAST_PATH").as_deref(),
        Ok("off" | "0" | "false")
    )
}

impl Settings {
    /// Checks the values a user gave, naming the setting to fix.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            anyhow::bail!("max_connections must be between 1 and {}", u32::MAX);
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            anyhow::bail!("header_timeout_secs and body_timeout_secs must be at least 1");
        }
        Ok(())
    }
}

/// What the front door counts, exported with the server's metrics.
#[derive(Clone)]
pub struct Stats {
    open: Arc<Gauge>,
    refused: Arc<Counter>,
    evicted: Arc<Counter>,
    timed_out: Arc<Counter>,
    refused_heads: Arc<Counter>,
}

impl Stats {
    /// Registers the front door's metrics as `{prefix}_connections_open`,
    /// `{prefix}_connections_refused_total`, `{prefix}_connections_evicted_total`
    /// `{prefix}_connections_timed_out_total` and
    /// `{prefix}_requests_refused_total`.
    pub fn register(registry: &Registry, prefix: &str) -> Self {
        Self {
            open: registry.gauge(
                &format!("{prefix}_connections_open"),
                "HTTP connections open now",
                "",
            ),
            refused: registry.counter(
                &format!("{prefix}_connections_refused_total"),
                "Connections refused because max_connections were open",
                "",
            ),
            evicted: registry.counter(
                &format!("{prefix}_connections_evicted_total"),
                "Connections served in the room an idle one made (max_connections were open)",
                "",
            ),
            timed_out: registry.counter(
                &format!("{prefix}_connections_timed_out_total"),
                "Connections closed because a handshake, headers or a body came too slowly",
                "",
            ),
            refused_heads: registry.counter(
                &format!("{prefix}_requests_refused_total"),
                "Request heads refused before routing: not HTTP, or too long (400, 414, 431)",
                "",
            ),
        }
    }
}

/// How often a failing `accept` is logged at most.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown`; `make` builds the service of one
/// connection from its peer address.
pub async fn serve<M, T>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    stats: Stats,
    make: M,
    shutdown: CancellationToken,
) where
    M: Fn(SocketAddr) -> hot::HotRoute<T>,
    T: Clone + Send + Sync + 'static,
{
    let max = settings.max_connections.clamp(1, u32::MAX as usize);
    fd_limit::raise_for(max);
    let slots = slots::Slots::new(max);
    // Failed accepts are logged once, then at most once per
    // `ACCEPT_LOG_EVERY` with how many there were (out of descriptors, each
    // waiting connection fails again every 20 ms).
    let failed = tidemark_telemetry::Every::new(ACCEPT_LOG_EVERY);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: neither ends the server.
                    if let Some(failed) = failed.due() {
                        tracing::warn!(error = %e, failed, "accepting a connection failed; retrying (if the error is 'too many open files', raise the open-file limit or lower max_connections)");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = make(peer);
        let (tls, stats, shutdown) = (tls.clone(), stats.clone(), shutdown.clone());
        if let Some(slot) = slots.try_take() {
            tokio::spawn(conn::serve(
                stream, peer, tls, settings, stats, svc, shutdown, slot,
            ));
            continue;
        }
        // Full: the connection idle longest makes room, if there is one.
        let slots = slots.clone();
        tokio::spawn(async move {
            match slots.take_making_room(conn::EVICTION_GRACE * 2).await {
                Some(slot) => {
                    stats.evicted.inc();
                    conn::serve(stream, peer, tls, settings, stats, svc, shutdown, slot).await
                }
                None => {
                    stats.refused.inc();
                    if stats.refused.get() % 1000 == 1 {
                        tracing::warn!(%peer, max_connections = max, refused = stats.refused.get(), "connection refused: max_connections are open and busy (raise max_connections, or reuse connections)");
                    }
                    if tls.is_none() {
                        refuse::too_many(stream).await;
                    }
                }
            }
        });
    }
    // Every slot back means every connection has finished.
    slots.all_free().await;
}
