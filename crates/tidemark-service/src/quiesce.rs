//! This service server's own quiesce notice (S4, S8): application servers
//! are quiesced one at a time, so the terminals move to the others before
//! each goes offline. `POST /v1/quiesce` and `DELETE /v1/quiesce`, as on a
//! DB server.
//!
//! Invariants: a notice is taken from this server's own host only (a
//! service server has no tokens, and any terminal could otherwise take it
//! offline); once its deadline passes, record reads and `/readyz` answer
//! `503 quiescing` with `Retry-After`, and the rest (state, console,
//! metrics, probes of liveness) still answer; it is not kept across a
//! restart, which is the maintenance it announced.

use crate::shared::Shared;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::state::{QuiesceNotice, QuiesceRequest};
use tidemark_api::ErrorCode;

/// A notice in force on this server.
#[derive(Debug, Clone)]
pub struct OwnNotice {
    at: Instant,
    deadline: DateTime<Utc>,
    message: String,
}

impl OwnNotice {
    /// When it goes offline, on this process's clock.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// As `/v1/state` and the announce answer show it, counted down to now.
    pub fn view(&self) -> QuiesceNotice {
        let ms = self
            .at
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        QuiesceNotice {
            deadline: self.deadline.to_rfc3339(),
            seconds_left: ms.div_ceil(1000),
            ms_left: Some(ms),
            message: self.message.clone(),
        }
    }
}

/// True once this server's own notice has run out: it is offline.
pub fn offline(shared: &Shared) -> bool {
    shared.own_quiesce_set.load(Ordering::Acquire)
        && shared
            .own_quiesce
            .lock()
            .as_ref()
            .is_some_and(|n| n.at <= Instant::now())
}

/// What a read gets while offline.
pub fn offline_error() -> Response {
    crate::http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Quiescing,
        "this service server is offline after a quiesce notice; use another service server (an operator on its host ends the notice with 'tidemark quiesce --server URL --cancel')".into(),
        Some(30),
    )
}

/// The refusal of a caller that is not a program on this server's host,
/// if it is not: loopback, under a loopback name, and not a browser page
/// of another site (the DB server's protected-mode test).
fn not_local(peer: SocketAddr, uri: &Uri, h: &HeaderMap) -> Option<Response> {
    if tidemark_serve::local::trusted_local(peer, uri, h) {
        return None;
    }
    let why = tidemark_serve::local::untrusted_local(uri, h)
        .unwrap_or_else(|| format!("this request came from {}", peer.ip()));
    Some(crate::http::error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("a service server takes quiesce notices from programs on its own host only ({why}): run 'tidemark quiesce --server URL' on that host"),
        None,
    ))
}

fn bad(code: ErrorCode, message: String) -> Response {
    crate::http::error(StatusCode::BAD_REQUEST, code, message, None)
}

/// The largest quiesce request body taken (a number and a message).
const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// `POST /v1/quiesce`: this server goes offline in `seconds`.
pub async fn announce(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    use tidemark_serve::body::BodyError;
    // Refused before the body is read: a caller from elsewhere must not
    // hold a connection slot while it sends one slowly.
    if let Some(refused) = not_local(peer, &uri, &headers) {
        return refused;
    }
    // A form or a `text/plain` post (what a page may send without asking)
    // is not taken, whatever it holds.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return bad(
            ErrorCode::BadJson,
            "send the notice as Content-Type: application/json, {\"seconds\": N, \"message\": \"…\"}".into(),
        );
    }
    let too_large = || {
        crate::http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("a quiesce notice is at most {MAX_NOTICE_BYTES} bytes: shorten its message"),
            None,
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_NOTICE_BYTES as u64) {
        return too_large();
    }
    let body = match tidemark_serve::body::read_limited(request.into_body(), MAX_NOTICE_BYTES).await {
        Ok(b) => b,
        // Chunked past the limit (a declared length over it is refused
        // above).
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Unreadable(e)) => {
            return bad(
                ErrorCode::BadRequest,
                format!("cannot read the request body ({e}); send a notice of at most {MAX_NOTICE_BYTES} bytes"),
            )
        }
    };
    let req = match QuiesceRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return bad(e.code, e.message),
    };
    let message = req.message.unwrap_or_else(|| {
        "this service server goes offline for maintenance; your terminal moves to another".into()
    });
    let left = Duration::from_secs(req.seconds);
    let notice = OwnNotice {
        at: Instant::now() + left,
        deadline: Utc::now() + chrono::Duration::seconds(req.seconds as i64),
        message,
    };
    let view = notice.view();
    // Debug-quoted: an operator's message must not forge log lines.
    tracing::warn!(seconds = req.seconds, notice = ?view.message, deadline = %view.deadline, "quiesce notice for this service server");
    {
        // The flag moves under the notice's lock, so a cancel racing this
        // announce cannot leave a notice the reads do not see.
        let mut own = shared.own_quiesce.lock();
        *own = Some(notice);
        shared.own_quiesce_set.store(true, Ordering::Release);
    }
    Json(view).into_response()
}

/// `DELETE /v1/quiesce`: this server stays online.
pub async fn cancel(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = not_local(peer, &uri, &headers) {
        return refused;
    }
    let had = {
        let mut own = shared.own_quiesce.lock();
        shared.own_quiesce_set.store(false, Ordering::Release);
        own.take().is_some()
    };
    if !had {
        return crate::http::error(
            StatusCode::CONFLICT,
            ErrorCode::NoQuiesce,
            "there is no quiesce notice of this service server to cancel, so nothing was done ('tidemark status --server URL' shows any notice in force)".into(),
            None,
        );
    }
    tracing::info!("quiesce notice cancelled: this service server stays online");
    Json(serde_json::json!({"cancelled": true})).into_response()
}
