//! A hot route: a cache hit of `GET /v1/records/{table}/{key}` answered
//! before the router, by the same rule its handler applies. Anything the
//! hot route does not answer as it stands goes to the router unchanged
//! (with the peer's `ConnectInfo`, which the front door put on it) and is
//! decided there from the start, so the two paths can differ only in speed.
//!
//! The hot route sees only a request's head, and answers whole (a body in
//! memory): the front door's plain-HTTP fast path (`fast.rs`) can then ask
//! it before hyper parses anything.

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use bytes::Bytes;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

/// What a server answers before its router, from the request's head:
/// `None` sends the request on.
pub type Hit<S> = fn(&S, SocketAddr, &Parts) -> Option<Response<Bytes>>;

/// One connection's service: `hit`, then the router.
pub struct HotRoute<S> {
    state: S,
    router: Router,
    peer: SocketAddr,
    hit: Hit<S>,
}

impl<S: Clone> Clone for HotRoute<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            router: self.router.clone(),
            peer: self.peer,
            hit: self.hit,
        }
    }
}

impl<S: Clone> HotRoute<S> {
    pub fn new(state: S, router: Router, hit: Hit<S>) -> Self {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            state,
            router,
            peer,
            hit,
        }
    }

    /// The service of one connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            peer,
            ..self.clone()
        }
    }

    /// The hot route's whole answer to a request with this head, if any.
    pub fn answer(&self, head: &Parts) -> Option<Response<Bytes>> {
        (self.hit)(&self.state, self.peer, head)
    }

    /// The router's answer to `req` (which the hot route did not answer).
    pub fn route(&self, req: Request) -> RouteFuture<Infallible> {
        tower::Service::call(&mut self.router.clone(), req)
    }
}

/// A response the hot route gave, or the router's future.
pub enum HotFuture {
    Hit(Ready<Result<Response, Infallible>>),
    Routed(RouteFuture<Infallible>),
}

impl std::future::Future for HotFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin.
        match self.get_mut() {
            HotFuture::Hit(r) => std::pin::Pin::new(r).poll(cx),
            HotFuture::Routed(f) => std::pin::Pin::new(f).poll(cx),
        }
    }
}

impl<S: Clone> tower::Service<Request> for HotRoute<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = HotFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (head, body) = req.into_parts();
        match self.answer(&head) {
            Some(resp) => HotFuture::Hit(ready(Ok(resp.map(Body::from)))),
            None => HotFuture::Routed(self.router.call(Request::from_parts(head, body))),
        }
    }
}

/// The path prefix of a record read, `GET /v1/records/{table}/{key}`.
pub const RECORDS: &str = "/v1/records/";

/// `table` and `key` of `GET /v1/records/{table}/{key}` when its segments
/// need no decoding; `None` for anything else, which the router decodes
/// (or refuses) as it always does.
pub fn plain_record_path(path: &str) -> Option<(&str, &str)> {
    let (table, key) = path.strip_prefix(RECORDS)?.split_once('/')?;
    if key.contains(['/', '%']) || table.contains('%') {
        return None;
    }
    Some((table, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_record_paths_take_a_hot_route() {
        assert_eq!(
            plain_record_path("/v1/records/subscriber/+81312345678"),
            Some(("subscriber", "+81312345678"))
        );
        assert_eq!(plain_record_path("/v1/records/subscriber/a%2Fb"), None);
        assert_eq!(plain_record_path("/v1/records/sub%73criber/k"), None);
        assert_eq!(plain_record_path("/v1/records/subscriber/a/b"), None);
        assert_eq!(plain_record_path("/v1/records/subscriber"), None);
        assert_eq!(plain_record_path("/v1/orders"), None);
        assert_eq!(plain_record_path("/v1/state"), None);
    }
}
