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
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use futures::future::{ready, Either, Ready};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tidemark_api::auth::AccessRole;
use tidemark_api::headers;

/// One connection's service: the hot route, then the router.
#[derive(Clone)]
pub struct Hot {
    app: Arc<AppState>,
    router: Router,
    peer: SocketAddr,
}

impl Hot {
    pub fn new(app: Arc<AppState>, router: Router) -> Self {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        Self { app, router, peer }
    }

    /// The service of one connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            peer,
            ..self.clone()
        }
    }
}

impl tower::Service<Request> for Hot {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(resp) = warm_read(&self.app, self.peer, &req) {
            return Either::Left(ready(Ok(resp)));
        }
        // The front door has put the peer's ConnectInfo on the request.
        Either::Right(self.router.call(req))
    }
}

/// `table` and `key` of a record path whose segments need no decoding.
fn record_path(path: &str) -> Option<(&str, &str)> {
    let (table, key) = path.strip_prefix("/v1/records/")?.split_once('/')?;
    if key.contains(['/', '%']) || table.contains('%') {
        return None;
    }
    Some((table, key))
}

/// Whether the guard would let this caller read records.
fn may_read(app: &AppState, peer: SocketAddr, req: &Request) -> bool {
    if !app.auth.any() {
        return peer.ip().is_loopback();
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    token
        .and_then(|t| app.auth.role_of(t))
        .is_some_and(|role| role >= AccessRole::Reader)
}

fn warm_read(app: &AppState, peer: SocketAddr, req: &Request) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    let started = Instant::now();
    let (table, key) = record_path(req.uri().path())?;
    if !may_read(app, peer, req) || app.quiesce.offline() {
        return None;
    }
    let subscriber = match req.headers().get(headers::SUBSCRIBER) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let answer = read::cached(app, table, key, subscriber)?;
    app.metrics.reads.inc();
    app.metrics.read_cache_hits.inc();
    let mut resp = Response::new(Body::from(answer.body));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_record_paths_take_the_hot_route() {
        assert_eq!(
            record_path("/v1/records/subscriber/+81312345678"),
            Some(("subscriber", "+81312345678"))
        );
        assert_eq!(record_path("/v1/records/subscriber/a%2Fb"), None);
        assert_eq!(record_path("/v1/records/subscriber/a/b"), None);
        assert_eq!(record_path("/v1/records/subscriber"), None);
        assert_eq!(record_path("/v1/orders"), None);
    }
}
