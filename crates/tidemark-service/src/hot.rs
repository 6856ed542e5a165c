//! The hot route: a cache hit of `GET /v1/records/{table}/{key}` answered
//! before the router.
//!
//! A hit needs no routing table, no extractor and no future: it is a path
//! split, the same checks the handler makes, one cache lookup and a
//! response whose headers are static. Everything else (a miss, a suspect
//! or flagged entry a read may not take, percent-encoded segments, bad
//! input, any other endpoint) goes to the router unchanged, whose handler
//! decides again from the start, so the two paths cannot disagree on
//! anything but speed. The serving rule is [`fetch::from_cache`], the one
//! the handler uses.

use crate::fetch;
use crate::policy::Freshness;
use crate::shared::Shared;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use futures::future::{ready, Either, Ready};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tidemark_api::headers;

/// The service server's HTTP service: the hot route, then the router.
#[derive(Clone)]
pub struct Hot {
    shared: Arc<Shared>,
    router: Router,
}

impl Hot {
    pub fn new(shared: Arc<Shared>, router: Router) -> Self {
        Self { shared, router }
    }
}

impl tower::Service<Request> for Hot {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match cache_hit(&self.shared, &req) {
            Some(resp) => Either::Left(ready(Ok(resp))),
            None => Either::Right(self.router.call(req)),
        }
    }
}

/// `table` and `key` of a record path whose segments need no decoding.
fn record_path(path: &str) -> Option<(&str, &str)> {
    let (table, key) = path.strip_prefix("/v1/records/")?.split_once('/')?;
    // Decoding and every odd shape are the router's.
    if key.contains(['/', '%']) || table.contains('%') {
        return None;
    }
    Some((table, key))
}

/// The response to `req` if it is a read the cache may answer as it is.
fn cache_hit(shared: &Shared, req: &Request) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    let started = Instant::now();
    let (table, key) = record_path(req.uri().path())?;
    if shared.skew.lock().is_some() {
        // A schema skew refuses every read: the handler says why.
        return None;
    }
    if !tidemark_api::schema::is_identifier(table)
        || tidemark_api::schema::validate_key(key).is_err()
    {
        return None;
    }
    let header = match req.headers().get(headers::FRESHNESS) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let freshness = Freshness::of(shared.config.policy, header).ok()?;
    let served = fetch::from_cache(shared, table, key, freshness)?;
    shared.metrics.hits.inc();
    if served.recovering {
        shared.metrics.stale_served.inc();
    }
    let mut resp = Response::new(Body::from(served.body));
    if !served.found {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    crate::http::quiesce_header(shared, h);
    if served.recovering {
        h.insert(headers::RECOVERING, HeaderValue::from_static("1"));
    }
    shared.metrics.read_latency.observe(started.elapsed());
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
        assert_eq!(record_path("/v1/state"), None);
    }
}
