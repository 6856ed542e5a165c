//! Writes reach the primary wherever they are sent (S5).
//!
//! A write on a standby is forwarded to the primary with the caller's
//! token. While no primary is online (a failover, a promote in progress)
//! it is held, up to `--failover-wait`, then answered `503 no_primary` with
//! `Retry-After`; so is an order a primary holds without a word that long
//! (frozen with its lease running), whose outcome is then unknown: it is
//! resent, being idempotent. A write the primary's own store refuses as fenced (it
//! lost the lease mid-request) is held and forwarded the same way: nothing
//! was written, so it is not refused and not lost ("kept and delayed until
//! the new background server is online").

use super::Cluster;
use crate::http::error::{HttpError, NotPrimaryMark};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::state::Role;
use tidemark_api::ErrorCode;

/// The lease term of the primary that handled a write.
pub const TERM_HEADER: &str = "tidemark-term";

/// The header a forwarded request carries, so it is never forwarded twice.
pub(crate) const FORWARDED: &str = "tidemark-forwarded";

/// Whether a request changes shared data (and so belongs to the primary).
/// A quiesce notice is per instance (one for a service server goes down
/// its stream, open on the instance it is sent to), interest is per instance, a schema
/// report belongs where its watch stream is, a backup only reads, and the
/// cluster endpoints decide themselves.
fn belongs_to_primary(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return false;
    }
    !(path == "/v1/quiesce"
        || (path.starts_with("/v1/services/") && path.ends_with("/quiesce"))
        || path == "/v1/backup"
        || path == "/v1/watch/interest"
        || path == "/v1/schema/ack"
        || path.starts_with("/v1/cluster/"))
}

/// How long a forwarded request may take: a schema publish or rollback
/// answers once its DDL has run, and PostgreSQL may wait up to 300 s for
/// the table locks and build indexes; everything else answers quickly.
fn forward_timeout(path: &str) -> Duration {
    if path == "/v1/schema/publish" || path == "/v1/schema/rollback" {
        Duration::from_secs(330)
    } else {
        Duration::from_secs(30)
    }
}

/// The middleware (after the guard: the caller is known).
pub async fn forward(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else {
        return next.run(req).await;
    };
    if !belongs_to_primary(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = app.config.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is over {limit} bytes or was cut off; send smaller batches"
                ),
            )
            .into_response()
        }
    };
    let already_forwarded = parts.headers.contains_key(FORWARDED);
    let deadline = Instant::now() + cluster.failover_wait;
    // Past its quiesce deadline a primary hands the lease on within a tick
    // or two: a write meanwhile is held for the next primary (S5: kept and
    // delayed), not refused. With no standby to take the lease, it is
    // refused (`503 quiescing`) after this.
    let handover_hold = Instant::now() + OFFLINE_HANDOVER_HOLD.min(cluster.failover_wait);
    loop {
        let view = cluster.view();
        match (view.role, view.primary) {
            (Role::Primary, _) if app.quiesce.offline() && Instant::now() < handover_hold => {
                cluster.lease_wake.notify_one();
            }
            (Role::Primary, _) => {
                let req = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
                let mut resp = next.clone().run(req).await;
                if resp.extensions().get::<NotPrimaryMark>().is_none() {
                    // Which term committed it (clients and benchmarks can
                    // tell a failover's first commit).
                    if let Ok(v) = axum::http::HeaderValue::from_str(&view.term.to_string()) {
                        resp.headers_mut().insert(TERM_HEADER, v);
                    }
                    return resp;
                }
                // Deposed while it ran: nothing was written; hold it.
                cluster.lease_wake.notify_one();
            }
            (Role::Standby, _) if already_forwarded => {
                // The sender thought we were primary: it holds and retries.
                return no_primary(&cluster, true);
            }
            (Role::Standby, Some(primary)) => {
                let sending = send(&cluster, &primary, &parts, bytes.clone());
                tokio::pin!(sending);
                // At `--failover-wait`, but a primary that just took over
                // is given a moment (`ANSWER_FLOOR`) to answer.
                let sent_at = Instant::now();
                let held_until =
                    tokio::time::Instant::from_std(deadline.max(sent_at + ANSWER_FLOOR));
                tokio::select! {
                    biased;
                    sent = &mut sending => match sent {
                        Ok(resp) => return resp,
                        Err(Undelivered::Unknown(e)) if !resendable(parts.uri.path()) => {
                            // It may have been applied: sent again, a
                            // rollback would run twice, a token be lost.
                            return HttpError::new(
                                ErrorCode::OutcomeUnknown,
                                format!(
                                    "the primary {primary} did not answer this forwarded {} {} ({e}); it may or may not have taken effect: check (tidemark status, GET the resource) before sending it again",
                                    parts.method,
                                    parts.uri.path()
                                ),
                            )
                            .into_response();
                        }
                        Err(Undelivered::NotSent(e) | Undelivered::Unknown(e)) => {
                            tracing::debug!(error = %e, %primary, "forward to the primary failed; holding the write")
                        }
                    },
                    // A primary frozen with its lease still running (a
                    // lease longer than --failover-wait) holds a write no
                    // longer than a failover would: one that may be sent
                    // again is answered so, and resent by its client.
                    () = tokio::time::sleep_until(held_until), if resendable(parts.uri.path()) => {
                        return HttpError::new(
                            ErrorCode::NoPrimary,
                            format!(
                                "the primary {primary} did not answer this {} within {:.1} s (held up to --failover-wait, {} s, in all); it may or may not have applied it: resend it (orders are idempotent by (source, seq))",
                                parts.uri.path(),
                                sent_at.elapsed().as_secs_f64(),
                                cluster.failover_wait.as_secs(),
                            ),
                        )
                        .retry_after(1)
                        .into_response();
                    }
                    // A paused primary holds the request without a word
                    // while another instance takes over: a write that may
                    // be sent twice goes to the new one (orders are
                    // idempotent by (source, seq); the old one, fenced,
                    // commits nothing). Any other is answered at once as
                    // of unknown outcome (the new primary may finish it, as
                    // it does a publish), not after the old one's timeout.
                    () = moved_from(&cluster, &primary) => {
                        let now = cluster.view();
                        let new_primary = if now.role == Role::Primary {
                            cluster.url.clone()
                        } else {
                            now.primary.unwrap_or_else(|| "none yet".into())
                        };
                        if !resendable(parts.uri.path()) {
                            // A handover (promote, quiesce) answers it, or
                            // says it was not taken, within a lease: that
                            // answer stands. Silent past it, the old one
                            // is paused or cut off.
                            match tokio::time::timeout(cluster.lease_ttl, &mut sending).await {
                                Ok(Ok(resp)) => return resp,
                                Ok(Err(Undelivered::NotSent(_))) => continue,
                                Ok(Err(Undelivered::Unknown(_))) | Err(_) => {}
                            }
                            return HttpError::new(
                                ErrorCode::OutcomeUnknown,
                                format!(
                                    "the primary changed (from {primary} to {new_primary}) while this forwarded {} {} was with the old one; it may or may not have taken effect: check (tidemark status, tidemark schema status, GET the resource) before sending it again",
                                    parts.method,
                                    parts.uri.path()
                                ),
                            )
                            .into_response();
                        }
                        tracing::info!(old_primary = %primary, %new_primary, "the primary changed while a write was forwarded to it; sending it on to the new one");
                        continue;
                    }
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return no_primary(&cluster, already_forwarded);
        }
        cluster.changed(Duration::from_millis(50)).await;
    }
}

/// The least time a forwarded order is given to be answered, however
/// little of `--failover-wait` is left when it is sent.
const ANSWER_FLOOR: Duration = Duration::from_secs(1);

/// How long a write reaching a primary past its quiesce deadline waits for
/// the lease to be handed on.
const OFFLINE_HANDOVER_HOLD: Duration = Duration::from_secs(3);

/// Whether a write may be sent again to another primary without being
/// applied twice or answered differently.
fn resendable(path: &str) -> bool {
    matches!(
        path,
        "/v1/orders" | "/v1/recovery/schedule" | "/v1/recovery/complete"
    )
}

/// Returns once `primary` is no longer the primary this instance knows.
async fn moved_from(cluster: &Cluster, primary: &str) {
    loop {
        cluster.changed(Duration::from_millis(200)).await;
        let view = cluster.view();
        if view.role == Role::Primary || view.primary.as_deref() != Some(primary) {
            return;
        }
    }
}

fn no_primary(cluster: &Cluster, forwarded: bool) -> Response {
    let msg = if forwarded {
        "this instance is not the primary any more; the instance that forwarded the write holds it until the new primary is online".to_owned()
    } else {
        format!(
            "no primary DB server came online within {} s (a failover is in progress or PostgreSQL is unreachable); the write was not applied: resend it (orders are idempotent)",
            cluster.failover_wait.as_secs()
        )
    };
    let mut resp = HttpError::new(ErrorCode::NoPrimary, msg)
        .retry_after(1)
        .into_response();
    if forwarded {
        // The forwarding instance holds and retries it.
        resp.extensions_mut().insert(NotPrimaryMark);
    }
    resp
}

/// Whether an error answer says `not_ready`, which applies nothing.
fn not_ready(body: &[u8]) -> bool {
    serde_json::from_slice::<tidemark_api::error::ErrorBody>(body)
        .is_ok_and(|b| b.error.code == ErrorCode::NotReady)
}

/// Why a forwarded write has no answer.
enum Undelivered {
    /// Not applied: no connection, or the primary says it no longer is one.
    NotSent(String),
    /// Sent, but no answer came back: it may have been applied.
    Unknown(String),
}

/// Sends the write to the primary. `Err` if it could not be delivered, or
/// the primary says it no longer is one (so the write was not applied).
async fn send(
    cluster: &Cluster,
    primary: &str,
    parts: &axum::http::request::Parts,
    body: bytes::Bytes,
) -> Result<Response, Undelivered> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", primary.trim_end_matches('/'), path);
    let mut headers = HeaderMap::new();
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(FORWARDED, axum::http::HeaderValue::from_static("1"));
    let resp = cluster
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .timeout(forward_timeout(parts.uri.path()))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                Undelivered::NotSent(e.to_string())
            } else {
                Undelivered::Unknown(e.to_string())
            }
        })?;
    let status = resp.status();
    let not_primary = resp.headers().get(super::NOT_PRIMARY_HEADER).is_some();
    if not_primary {
        return Err(Undelivered::NotSent(format!(
            "{primary} is no longer the primary"
        )));
    }
    let mut out = Response::builder()
        .status(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in resp.headers() {
        if k == axum::http::header::CONTENT_TYPE
            || k == axum::http::header::RETRY_AFTER
            || k.as_str() == TERM_HEADER
        {
            out = out.header(k, v);
        }
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Undelivered::Unknown(e.to_string()))?;
    if status == StatusCode::SERVICE_UNAVAILABLE && not_ready(&bytes) {
        // Restarted and still opening its store (or stopping): it took
        // nothing, so the write is held like one sent during a failover.
        return Err(Undelivered::NotSent(format!("{primary} is not ready")));
    }
    out.body(Body::from(bytes))
        .map_err(|e| Undelivered::Unknown(e.to_string()))
}
