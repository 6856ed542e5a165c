//! The terminal-facing HTTP API of a service server.

use crate::fetch::ReadError;
use crate::policy::Freshness;
use crate::shared::Shared;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::{headers, ApiError, ErrorBody, ErrorCode};

/// The router of every endpoint.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/records/{table}/{key}", get(get_record))
        .route("/v1/records/{table}/", get(empty_key))
        .route("/v1/state", get(state))
        .route(
            "/v1/quiesce",
            axum::routing::post(crate::quiesce::announce).delete(crate::quiesce::cancel),
        )
        .route("/console", get(console))
        .route("/console.js", get(console_script))
        .route("/", get(to_console))
        .route("/console/", get(to_console))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no endpoint at {}; see GET /openapi.json", uri.path()),
                None,
            )
        })
        .layer(axum::middleware::from_fn(tidemark_serve::json_errors))
        .with_state(shared)
}

/// `GET /v1/records/{table}/`: a read with an empty key (a terminal's
/// mistake, not a missing endpoint).
async fn empty_key() -> Response {
    let e = ApiError::from(tidemark_api::schema::InvalidInput::Key(0));
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, e.code, e.message, None)
}

pub(crate) fn error(
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: ApiError::new(code, message),
    })
    .unwrap_or_default();
    let mut resp = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(secs) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    resp
}

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        error(status, self.code, self.message, self.retry_after)
    }
}

/// `GET /v1/records/{table}/{key}` (P2, P9).
async fn get_record(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<(String, String)>, PathRejection>,
    // The request itself, not `HeaderMap`: that extractor copies every header.
    req: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    if crate::quiesce::offline(&shared) {
        return crate::quiesce::offline_error();
    }
    let Ok(Path((table, key))) = path else {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "the path must be /v1/records/{table}/{key} with UTF-8, percent-encoded segments"
                .into(),
            None,
        );
    };
    if !tidemark_api::schema::is_identifier(&table) {
        // Never let a segment like '..' reach the DB server's URL space.
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownTable,
            format!(
                "table '{}' cannot exist: table names are lower-case identifiers",
                table.escape_debug()
            ),
            None,
        );
    }
    if let Err(e) = tidemark_api::schema::validate_key(&key) {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidKey,
            e.to_string(),
            None,
        );
    }
    if tidemark_serve::named_twice(req.headers(), headers::FRESHNESS) {
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "the request has two Tidemark-Freshness headers; send one (latest or stale-ok)".into(),
            None,
        );
    }
    let header = req
        .headers()
        .get(headers::FRESHNESS)
        .map(|v| v.to_str().unwrap_or("(not UTF-8)"));
    let freshness = match Freshness::of(shared.config.policy, header) {
        Ok(f) => f,
        Err(msg) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg, None),
    };
    drop(req);
    if let Some(msg) = shared.skew.lock().clone() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SchemaSkew,
            msg,
            Some(30),
        );
    }
    let resp = match crate::fetch::read(&shared, &table, &key, freshness).await {
        Ok(served) => {
            let status = if served.found {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            let mut resp = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                served.body,
            )
                .into_response();
            quiesce_header(&shared, resp.headers_mut());
            if served.recovering {
                resp.headers_mut()
                    .insert(headers::RECOVERING, HeaderValue::from_static("1"));
            }
            resp
        }
        Err(e) => e.into_response(),
    };
    shared.metrics.read_latency.observe(started.elapsed());
    resp
}

/// Whole seconds until `at`, rounded up as a notice's `seconds_left` is:
/// 0 only once it has passed.
fn secs_left(at: Instant) -> u64 {
    at.saturating_duration_since(Instant::now())
        .as_millis()
        .div_ceil(1000) as u64
}

/// S4: while a quiesce notice is in force, every record read answered
/// (`200`, `404`) says how long until the DB server, or this server (the
/// sooner), goes offline; `/v1/state` says it too (`quiesce_in`).
pub(crate) fn quiesce_header(shared: &Shared, h: &mut axum::http::HeaderMap) {
    if let Some(at) = shared.offline_at() {
        let left = secs_left(at);
        if let Ok(v) = HeaderValue::from_str(&left.to_string()) {
            h.insert(headers::QUIESCE_IN, v);
        }
    }
}

/// Ready while cached records are served as current (the reads' own test,
/// [`Shared::vouched`]), and, after a late lease, once a few timely ones
/// came in a row ([`Shared::ready`]); otherwise 503 saying why.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if crate::quiesce::offline(&shared) {
        crate::quiesce::offline_error()
    } else if shared.ready() {
        Json(json!({"status": "ready"})).into_response()
    } else if shared.connected.load(Ordering::SeqCst) {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            format!(
                "the watch stream to the DB server is open, but {}",
                not_vouched_why(&shared)
            ),
            Some(1),
        )
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "the watch stream to the DB server is not open or not yet synced: cached records are not served as current until it is (latest-only reads ask the DB server, accept-stale marks what it cannot vouch for)".into(),
            Some(1),
        )
    }
}

/// Why a synced stream does not make this server ready, and what follows.
fn not_vouched_why(shared: &Shared) -> String {
    let limit = shared.config.max_push_lag_ms;
    if shared.vouched() {
        return format!("its leases came late a moment ago: ready again after {} timely ones in a row (about a second); reads are served from the cache meanwhile", crate::shared::READY_AFTER_TIMELY);
    }
    let timed = shared.round_trip.lock().timed(&shared.stream_boot.lock());
    if !timed {
        return "no round trip to the DB server (GET /healthz) has answered yet for this stream, to time its leases: cached records are served as current once one has".into();
    }
    let late = shared.metrics.lease_late_ms.get();
    if late > limit as i64 {
        let round_trip = shared.metrics.round_trip_ms.get();
        return format!("its leases arrive late, the last {late} ms after its sending, over max_push_lag_ms ({limit}; last round trip {round_trip} ms): a slow link, or this process starved. Latest-only reads ask the DB server meanwhile; for a DB server far away, raise max_push_lag_ms");
    }
    "its instance has stopped vouching for it (paused, or cut off without saying so), or this process was paused: cached records are not served as current until it vouches again in time or the stream moves to another instance".into()
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<tidemark_api::state::ServiceState> {
    // The notice as it stands now: its time left counts down from when it
    // arrived (the event's own figures are of that moment).
    let at = *shared.quiesce_at.lock();
    let mut quiesce = shared.quiesce.lock().clone();
    if let (Some(q), Some(at)) = (quiesce.as_mut(), at) {
        if let Some(n) = q.notice.as_mut() {
            let left = at.saturating_duration_since(Instant::now());
            *n = tidemark_api::state::QuiesceNotice::with_left(
                n.deadline.clone(),
                left,
                n.message.clone(),
            );
        }
    }
    // Each lock taken and let go on its own (a guard held to the end of
    // the struct below would deadlock `offline_at`, which takes them too).
    let (own_quiesce, own_quiesce_by_name) = shared
        .own_quiesce
        .lock()
        .sooner()
        .map_or((None, false), |(n, by_name)| (Some(n.view()), by_name));
    let quiesce_in = shared.offline_at().map(secs_left);
    let stream_instance = Some(shared.stream_base.lock().clone()).filter(|b| !b.is_empty());
    let last_event_id = shared.last_event_id.lock().clone();
    let snapshot_event_id = shared.snapshot_event_id.lock().clone();
    Json(tidemark_api::state::ServiceState {
        id: shared.config.id.clone(),
        policy: shared.config.policy.as_str().to_owned(),
        db: shared.config.db.clone(),
        connected: shared.connected.load(Ordering::SeqCst),
        db_epoch: shared.db_epoch.load(Ordering::SeqCst),
        cache_entries: shared.cache.len() as u64,
        cache_generation: shared.cache.generation(),
        last_event_id,
        snapshot_event_id,
        schema_version: shared.schema_version.load(Ordering::SeqCst),
        quiesce,
        own_quiesce,
        own_quiesce_by_name,
        quiesce_in,
        stream_instance,
    })
}

/// What the console page and its script are served with: only this
/// server's own script runs, no other site may frame them, and nothing is
/// cached or leaks through a referrer.
const CONSOLE_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

fn console_file(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().extend(CONSOLE_HEADERS.map(|(n, v)| {
        (
            axum::http::HeaderName::from_static(n),
            HeaderValue::from_static(v),
        )
    }));
    resp
}

/// `GET /console`: this server's page for the people near its terminals:
/// the quiesce countdown, its policy, cache and stream (embedded; no CDN).
async fn console() -> Response {
    console_file("text/html; charset=utf-8", include_str!("console.html"))
}

/// `GET /console.js`: the page's script (no inline script: the policy
/// above runs only this server's own).
async fn console_script() -> Response {
    console_file("text/javascript; charset=utf-8", include_str!("console.js"))
}

/// `GET /` and `GET /console/`: the console.
async fn to_console() -> axum::response::Redirect {
    axum::response::Redirect::to("/console")
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.cache_entries.set(shared.cache.len() as i64);
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        shared.metrics.registry.render(),
    )
        .into_response()
}

async fn openapi() -> Json<serde_json::Value> {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "Tidemark service server", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/v1/records/{table}/{key}": {"get": {
                "summary": "Terminal read (P2, P9): from the cache or the DB server, by policy.",
                "parameters": [
                    {"name": "table", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "key", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "Tidemark-Freshness", "in": "header", "required": false, "schema": {"type": "string", "enum": ["latest", "stale-ok"]}}
                ],
                "responses": {"200": {"description": "Record, with source cache|db", "headers": {"Tidemark-Recovering": {"description": "1 when the record may be outdated (served as recovering)", "schema": {"type": "string"}}}},
                              "400": {"description": "A key that cannot exist, a path segment that is not UTF-8, or a Tidemark-Freshness other than latest or stale-ok (Error)"},
                              "404": {"description": "Not found"},
                              "503": {"description": "Current data not available before the deadline (Retry-After)"}}
            }},
            "/v1/state": {"get": {"summary": "Service state: policy, connection, cache; quiesce (the DB server's notice), own_quiesce (this server's: the sooner of one given on its host and one sent by name through the DB server, own_quiesce_by_name saying which), quiesce_in: seconds until the sooner of all goes offline, while a notice is in force; stream_instance: the DB-server instance its stream was last opened at.", "responses": {"200": {"description": "State"}}}},
            "/v1/quiesce": {
                "post": {"summary": "S4, S8: this service server goes offline in `seconds` (reads and readiness then answer 503 quiescing); from its own host only.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["seconds"], "additionalProperties": false,
                        "properties": {"seconds": {"type": "integer", "minimum": 0, "maximum": 86400}, "message": {"type": "string", "maxLength": 1000}}}}}},
                    "responses": {"200": {"description": "The notice: deadline, seconds_left, ms_left, message"}, "400": {"description": "Bad body (Error)"}, "403": {"description": "Not from this server's host (Error)"}}},
                "delete": {"summary": "Cancels this service server's notice.", "responses": {"200": {"description": "{\"cancelled\": true}"}, "403": {"description": "Not from this server's host (Error)"}, "409": {"description": "No notice to cancel (Error)"}}}
            },
            "/console": {"get": {"summary": "This server's live page: the quiesce countdown, policy, cache and stream.", "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/console.js": {"get": {"summary": "The console page's script (the page runs no inline script).", "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
            "/": {"get": {"summary": "Redirects to /console.", "responses": {"303": {"description": "See /console"}}}},
            "/console/": {"get": {"summary": "Redirects to /console.", "responses": {"303": {"description": "See /console"}}}},
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"responses": {"200": {"description": "watch stream open"}, "503": {"description": "not connected, or offline after this server's quiesce notice"}}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        },
        "components": {"schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "string", "enum": codes}, "message": {"type": "string"}}}}}}}
    });
    tidemark_serve::openapi::annotate(&mut doc);
    Json(doc)
}
