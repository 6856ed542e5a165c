//! This service server's own quiesce notice (S4, S8): application servers
//! are quiesced one at a time, so the terminals move to the others before
//! each goes offline. `POST /v1/quiesce` and `DELETE /v1/quiesce`, as on a
//! DB server.
//!
//! Or by name, remotely (S8): an admin of the DB server sends it there,
//! and it arrives down the watch stream as `service_quiesce` ([`from_db`]).
//!
//! Invariants: a notice is taken over HTTP from this server's own host
//! only (a service server has no tokens, and any terminal could otherwise
//! take it offline), or from its DB server by name; once its deadline
//! passes, record reads and `/readyz` answer `503 quiescing` with
//! `Retry-After`, and the rest (state, console, metrics, probes of
//! liveness) still answer; it is not kept across a restart, which is the
//! maintenance it announced (the DB server tells one sent by name again
//! while its countdown runs); each is cancelled where it was given (the
//! DB server's cancel ends only the one it sent, a cancel on this host
//! only the one given here), and the sooner of the two is in force.

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
use tidemark_api::event::QuiesceEvent;
use tidemark_api::state::{QuiesceNotice, QuiesceRequest};
use tidemark_api::ErrorCode;

/// A notice in force on this server.
#[derive(Debug, Clone)]
pub struct OwnNotice {
    at: Instant,
    deadline: DateTime<Utc>,
    message: String,
}

/// This server's notices: one given on its host, one sent by name through
/// its DB server (S8). Each is cancelled where it was given; the sooner
/// is the one in force.
#[derive(Debug, Clone, Default)]
pub struct OwnNotices {
    pub local: Option<OwnNotice>,
    pub by_name: Option<OwnNotice>,
}

impl OwnNotices {
    /// The notice in force: the sooner of the two, and whether it is the
    /// one sent by name.
    pub fn sooner(&self) -> Option<(&OwnNotice, bool)> {
        let local = self.local.as_ref().map(|n| (n, false));
        let by_name = self.by_name.as_ref().map(|n| (n, true));
        local.into_iter().chain(by_name).min_by_key(|(n, _)| n.at)
    }

    fn any(&self) -> bool {
        self.local.is_some() || self.by_name.is_some()
    }
}

impl OwnNotice {
    /// When it goes offline, on this process's clock.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// One that goes offline `left` from now.
    fn new(left: Duration, message: String) -> Self {
        Self {
            at: Instant::now() + left,
            deadline: Utc::now() + chrono::Duration::milliseconds(left.as_millis() as i64),
            message,
        }
    }

    /// As `/v1/state` and the announce answer show it, counted down to now.
    pub fn view(&self) -> QuiesceNotice {
        QuiesceNotice::with_left(
            self.deadline.to_rfc3339(),
            self.at.saturating_duration_since(Instant::now()),
            self.message.clone(),
        )
    }
}

/// True once this server's own notice has run out: it is offline.
pub fn offline(shared: &Shared) -> bool {
    shared.own_quiesce_set.load(Ordering::Acquire)
        && shared
            .own_quiesce
            .lock()
            .sooner()
            .is_some_and(|(n, _)| n.at <= Instant::now())
}

/// What a read gets while offline.
pub fn offline_error() -> Response {
    crate::http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Quiescing,
        "this service server is offline after a quiesce notice; use another service server (an operator ends the notice with 'tidemark quiesce --server URL --cancel' on its host, or one sent by name with 'tidemark quiesce --server DB_URL --service NAME --cancel')".into(),
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
    let notice = OwnNotice::new(left, message);
    let view = notice.view();
    // Debug-quoted: an operator's message must not forge log lines.
    tracing::warn!(seconds = req.seconds, notice = ?view.message, deadline = %view.deadline, "quiesce notice for this service server");
    {
        // The flag moves under the notice's lock, so a cancel racing this
        // announce cannot leave a notice the reads do not see.
        let mut own = shared.own_quiesce.lock();
        own.local = Some(notice);
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
    let (had, by_name) = {
        let mut own = shared.own_quiesce.lock();
        let had = own.local.take().is_some();
        shared.own_quiesce_set.store(own.any(), Ordering::Release);
        (had, own.by_name.is_some())
    };
    if !had && by_name {
        return crate::http::error(
            StatusCode::CONFLICT,
            ErrorCode::QuiesceSentByName,
            format!(
                "the notice in force was sent by name through the DB server, so nothing was done here; cancel it there: 'tidemark quiesce --server DB_URL --service {:?} --cancel'",
                shared.config.id
            ),
            None,
        );
    }
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

/// A notice for this server by name from its DB server (a `service_quiesce`
/// event, S8), or its cancellation. A cancellation ends only a notice the
/// DB server sent: one given on this host stands.
pub fn from_db(shared: &Shared, event: &QuiesceEvent) {
    match (&event.notice, event.cancelled) {
        (Some(n), false) => {
            // The time left (not the deadline: the clocks of the two hosts
            // may differ).
            let notice = OwnNotice::new(n.left(), n.message.clone());
            tracing::warn!(seconds = n.seconds_left, notice = ?n.message, "quiesce notice for this service server, sent by name through the DB server");
            let mut own = shared.own_quiesce.lock();
            own.by_name = Some(notice);
            shared.own_quiesce_set.store(true, Ordering::Release);
        }
        _ => {
            let mut own = shared.own_quiesce.lock();
            if own.by_name.take().is_some() {
                shared.own_quiesce_set.store(own.any(), Ordering::Release);
                tracing::info!(
                    "the DB server cancelled the quiesce notice it sent this service server"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use crate::service::Service;
    use tokio_util::sync::CancellationToken;

    fn by_name(message: Option<&str>) -> QuiesceEvent {
        QuiesceEvent {
            notice: message.map(|m| QuiesceNotice {
                deadline: "2026-12-06T12:00:00Z".into(),
                seconds_left: 60,
                ms_left: Some(59_500),
                message: m.into(),
            }),
            cancelled: message.is_none(),
        }
    }

    /// S8: a notice sent by name holds from the milliseconds left (not
    /// the other host's deadline); the DB server's cancel ends it, and
    /// only it: a notice given on this host stands.
    #[test]
    fn a_cancel_by_name_ends_only_a_notice_sent_by_name() {
        let config = ServiceConfig {
            id: "svc".into(),
            ..ServiceConfig::default()
        };
        let svc = Service::new(config, CancellationToken::new()).unwrap();
        let s = &svc.shared;
        from_db(s, &by_name(Some("moving you")));
        let (held, sent_by_name) = s
            .own_quiesce
            .lock()
            .sooner()
            .map(|(n, b)| (n.clone(), b))
            .expect("a notice");
        assert!(sent_by_name);
        assert_eq!(held.view().message, "moving you");
        let left = held.at().saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(58) && left <= Duration::from_millis(59_500));
        assert!(s.own_quiesce_set.load(Ordering::Acquire));
        from_db(s, &by_name(None));
        assert!(s.own_quiesce.lock().sooner().is_none());
        assert!(!s.own_quiesce_set.load(Ordering::Acquire));

        // Given on this host, sooner than one sent by name after it: it
        // stays in force, and a cancel by name leaves it.
        s.own_quiesce.lock().local = Some(OwnNotice {
            at: Instant::now() + Duration::from_secs(30),
            deadline: Utc::now(),
            message: "local".into(),
        });
        s.own_quiesce_set.store(true, Ordering::Release);
        from_db(s, &by_name(Some("later")));
        let in_force = |s: &Shared| {
            s.own_quiesce
                .lock()
                .sooner()
                .map(|(n, b)| (n.view().message, b))
        };
        assert_eq!(in_force(s), Some(("local".into(), false)));
        from_db(s, &by_name(None));
        assert_eq!(in_force(s), Some(("local".into(), false)));
        assert!(s.own_quiesce_set.load(Ordering::Acquire));
    }
}
