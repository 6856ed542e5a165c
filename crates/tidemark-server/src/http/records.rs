//! `GET /v1/records/{table}/{key}` (P1, P3, P8): the HTTP face of [`crate::read`].

use super::error::HttpError;
use super::AppState;
use crate::read::ReadError;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::{headers, ErrorCode};

/// `GET /v1/records/{table}/`: a read with an empty key, refused as the
/// bad key it is (it was a 404 for a missing endpoint).
pub async fn empty_key() -> HttpError {
    tidemark_api::ApiError::from(tidemark_api::schema::InvalidInput::Key(0)).into()
}

/// Reads one record. With `Tidemark-Subscriber: NAME`, records that NAME
/// holds the key, before reading, so it is sent every later change.
pub async fn get_record(
    State(app): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    // The request itself, not `HeaderMap`: that extractor copies every header.
    req: axum::extract::Request,
) -> Result<Response, HttpError> {
    let started = Instant::now();
    let Path((table, key)) = path.map_err(|e| {
        HttpError::new(
            ErrorCode::BadRequest,
            format!("{e}; percent-encode the table and key as UTF-8 path segments"),
        )
    })?;
    if app.quiesce.offline() {
        return Err(super::quiesce::offline_error());
    }
    // A name that cannot be one is refused, not ignored: the caller would
    // think it holds the key and never hear of its changes (P3).
    if tidemark_serve::named_twice(req.headers(), headers::SUBSCRIBER) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "the request has two Tidemark-Subscriber headers; send one, the service server's --id",
        ));
    }
    let subscriber = match req.headers().get(headers::SUBSCRIBER) {
        None => None,
        Some(v) => {
            let name = v
                .to_str()
                .ok()
                .filter(|n| tidemark_api::schema::is_service_name(n))
                .ok_or_else(|| {
                    HttpError::new(
                        ErrorCode::BadRequest,
                        "the Tidemark-Subscriber header is not a subscriber name (1 to 128 bytes of UTF-8, no control characters, not . or .., as /v1/watch?subscriber= takes); send the service server's --id",
                    )
                })?;
            Some(name.to_owned())
        }
    };
    if let (Some(name), Some(caller)) =
        (&subscriber, req.extensions().get::<super::guard::Caller>())
    {
        // Interest only under the caller's own name: registering under
        // another service server's (up to its limit) would make it forget
        // everything it holds.
        super::watch::claim(&app, caller, name, "reads").await?;
    }
    drop(req);
    let answer = crate::read::read(&app, &table, &key, subscriber.as_deref())
        .await
        .map_err(|e| match e {
            ReadError::Input(e) => HttpError::from(e),
            ReadError::Store(e) => HttpError::from(e),
        })?;
    app.metrics.reads.inc();
    if answer.from_cache {
        app.metrics.read_cache_hits.inc();
    }
    let status = if answer.found {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let mut resp = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer.body,
    )
        .into_response();
    resp.headers_mut()
        .insert(headers::HISTORY, app.history_header.clone());
    if answer.recovering {
        app.metrics.reads_recovering.inc();
        resp.headers_mut()
            .insert(headers::RECOVERING, HeaderValue::from_static("1"));
        // A hint for clients that poll: a push says sooner when it is current.
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    app.metrics.read_latency.observe(started.elapsed());
    Ok(resp)
}
