//! The hot route: a warm point read (`GET /v1/records/{table}/{key}`
//! answered from the read cache) served before the router and its guard.
//!
//! It makes the guard's decision itself (a reader role, or a loopback
//! caller in protected mode) and the handler's checks, then asks
//! [`crate::read::cached`]. Anything it does not answer as it stands (no
//! permission, a quiesced server, a miss, recovery, percent-encoded
//! segments, any other endpoint) goes to the router unchanged, with the
//! caller's address, and is decided there from the start.

use super::AppState;
use crate::read;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::auth::AccessRole;
use tidemark_api::headers;

/// Whether the guard would let this caller read records.
fn may_read(app: &AppState, peer: SocketAddr, req: &Parts) -> bool {
    if !app.auth.any() {
        return super::guard::trusted_local(peer, &req.headers);
    }
    bearer(req)
        .and_then(|t| app.auth.role_of(t))
        .is_some_and(|role| role >= AccessRole::Reader)
}

/// The bearer token a request presents.
fn bearer(req: &Parts) -> Option<&str> {
    super::guard::bearer(&req.headers)
}

/// The hot route's answer (see [`tidemark_serve::hot`]).
pub fn warm_read(app: &Arc<AppState>, peer: SocketAddr, req: &Parts) -> Option<Response<Bytes>> {
    if req.method != Method::GET {
        return None;
    }
    let started = Instant::now();
    let (table, key) = tidemark_serve::hot::plain_record_path(req.uri.path())?;
    if !may_read(app, peer, req) || app.quiesce.offline() {
        return None;
    }
    let subscriber = match req.headers.get(headers::SUBSCRIBER) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    // Interest only under the caller's own name (the router claims a
    // name not bound yet, or refuses another token's).
    if let Some(name) = subscriber {
        if app.auth.any() && !app.auth.bound_to(name, bearer(req)?) {
            return None;
        }
    }
    let answer = read::cached(app, table, key, subscriber)?;
    app.metrics.reads.inc();
    app.metrics.read_cache_hits.inc();
    let mut resp = Response::new(answer.body);
    if !answer.found {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    app.metrics.read_latency.observe(started.elapsed());
    Some(resp)
}
