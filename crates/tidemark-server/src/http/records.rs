//! `GET /v1/records/{table}/{key}` (P1, P3, P8).

use super::error::HttpError;
use super::AppState;
use crate::read_cache::Cached;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::{headers, ErrorCode, RecordAnswer, RecoveryState};

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
    let schema = app.store.schema();
    schema.table(&table).map_err(tidemark_api::ApiError::from)?;
    tidemark_api::schema::validate_key(&key).map_err(tidemark_api::ApiError::from)?;
    if let Some(name) = req
        .headers()
        .get(headers::SUBSCRIBER)
        .and_then(|v| v.to_str().ok())
    {
        if !name.is_empty() && name.len() <= 128 {
            let id = app.hub.subscriber(name);
            app.hub.register(id, &table, &key);
        }
    }
    drop(req);
    // The cache serves only while no recovery is in progress.
    let cache = app
        .read_cache
        .as_ref()
        .filter(|_| app.recovery.state() == RecoveryState::Normal);
    let ticket = match cache.map(|c| c.get(&table, &key)) {
        Some(Ok(hit)) => {
            app.metrics.reads.inc();
            app.metrics.read_cache_hits.inc();
            let status = if hit.found {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            let resp = (
                status,
                [(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                hit.body,
            )
                .into_response();
            app.metrics.read_latency.observe(started.elapsed());
            return Ok(resp);
        }
        Some(Err(ticket)) => Some(ticket),
        None => None,
    };
    let lookup = app.store.get(&table, &key).await?;
    let recovering = lookup.flagged || app.recovery.blanket();
    let (status, answer) = match lookup.record {
        Some(record) => (
            StatusCode::OK,
            RecordAnswer::found(&table, &key, record, recovering),
        ),
        None => (
            StatusCode::NOT_FOUND,
            RecordAnswer::missing(&table, &key, lookup.tombstone, recovering),
        ),
    };
    app.metrics.reads.inc();
    let body = Bytes::from(
        serde_json::to_vec(&answer)
            .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()))?,
    );
    if let (Some(cache), Some(ticket)) = (cache, ticket) {
        if !recovering {
            cache.fill(
                ticket,
                &table,
                &key,
                Cached {
                    found: status == StatusCode::OK,
                    body: body.clone(),
                },
            );
        }
    }
    let mut resp = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if recovering {
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
