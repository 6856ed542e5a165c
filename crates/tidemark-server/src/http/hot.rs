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
use axum::http::{header, HeaderName, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::auth::AccessRole;
use tidemark_api::headers;

// Header names made once, not parsed at every request.
const SUBSCRIBER: HeaderName = HeaderName::from_static(headers::SUBSCRIBER);
const HISTORY: HeaderName = HeaderName::from_static(headers::HISTORY);

/// Whether the guard would let this caller read records.
fn may_read(app: &AppState, peer: SocketAddr, req: &Parts) -> bool {
    if !app.auth.any() {
        return super::guard::trusted_local(peer, &req.uri, &req.headers);
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
    // A name that is not one (or two names) goes to the router, which
    // refuses it.
    if tidemark_serve::named_twice(&req.headers, &SUBSCRIBER) {
        return None;
    }
    let subscriber = match req.headers.get(&SUBSCRIBER) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|n| tidemark_api::schema::is_service_name(n))?,
        ),
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
        // Counted as the router counts it (`count_errors`).
        app.metrics.errors.inc();
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(HISTORY, app.history_header.clone());
    app.metrics.read_latency.observe(started.elapsed());
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestServer;

    fn get(path: &str) -> Parts {
        axum::http::Request::get(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    /// A warm 404 is answered here and counted as an error, as the router
    /// counts it (`tidemark_http_errors_total`).
    #[tokio::test]
    async fn a_warm_not_found_is_counted_as_an_error() {
        let t = TestServer::open(async |_| {}).await;
        let app = &t.app;
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let req = get("/v1/records/subscriber/missing");
        assert!(warm_read(app, peer, &req).is_none(), "cold at first");
        read::read(app, "subscriber", "missing", None)
            .await
            .unwrap();
        let before = app.metrics.errors.get();
        let resp = warm_read(app, peer, &req).expect("a warm answer");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(app.metrics.errors.get(), before + 1);
    }
}
