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
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::headers;

// Header names made once, not parsed at every request.
const FRESHNESS: HeaderName = HeaderName::from_static(headers::FRESHNESS);
const RECOVERING: HeaderName = HeaderName::from_static(headers::RECOVERING);

/// The response to `req` if it is a read the cache may answer as it is.
pub fn cache_hit(shared: &Arc<Shared>, _peer: SocketAddr, req: &Parts) -> Option<Response<Bytes>> {
    if req.method != Method::GET {
        return None;
    }
    let started = Instant::now();
    let (table, key) = tidemark_serve::hot::plain_record_path(req.uri.path())?;
    if shared.skew.lock().is_some() || crate::quiesce::offline(shared) {
        // A schema skew, or this server offline, refuses every read: the
        // handler says why.
        return None;
    }
    if !tidemark_api::schema::is_identifier(table)
        || tidemark_api::schema::validate_key(key).is_err()
    {
        return None;
    }
    // Two go to the router, which refuses them.
    if tidemark_serve::named_twice(&req.headers, &FRESHNESS) {
        return None;
    }
    let header = match req.headers.get(&FRESHNESS) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let freshness = Freshness::of(shared.config.policy, header).ok()?;
    let served = fetch::from_cache(shared, table, key, freshness)?;
    shared.metrics.hits.inc();
    if served.recovering {
        shared.metrics.stale_served.inc();
    }
    let mut resp = Response::new(served.body);
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
        h.insert(RECOVERING, HeaderValue::from_static("1"));
    }
    shared.metrics.read_latency.observe(started.elapsed());
    Some(resp)
}
