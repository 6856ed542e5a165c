//! The one error shape of the API: `{"error": {"code", "message"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tidemark_api::{ApiError, ErrorBody, ErrorCode};
use tidemark_store::StoreError;

/// An error answer, with `Retry-After` for 503s.
#[derive(Debug)]
pub struct HttpError {
    pub error: ApiError,
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ApiError::new(code, message),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Invalid { error, .. } => {
                let code = ApiError::from(*error).code;
                HttpError::new(code, message)
            }
            StoreError::Input(error) => ApiError::from(*error).into(),
            StoreError::ScheduleEntry { error, .. } => {
                HttpError::new(ApiError::from(*error).code, message)
            }
            StoreError::Conflict { .. } => HttpError::new(ErrorCode::OrderConflict, message),
            StoreError::OutOfOrder { .. } => HttpError::new(ErrorCode::OrderOutOfOrder, message),
            StoreError::Gap { .. } => HttpError::new(ErrorCode::OrderGap, message),
            StoreError::TooFarAhead { .. } => HttpError::new(ErrorCode::InvalidOrder, message),
            StoreError::BadSchedule(_) => HttpError::new(ErrorCode::BadRequest, message),
            StoreError::NotRecovering => HttpError::new(ErrorCode::NotRecovering, message),
            StoreError::SchemaRefused(_) => HttpError::new(ErrorCode::RollbackRefused, message),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %message, "store unreachable");
                HttpError::new(
                    ErrorCode::StoreUnavailable,
                    format!("{message}; retry in a moment (orders are idempotent: resend the same batch)"),
                )
                .retry_after(1)
            }
            StoreError::NotPrimary => HttpError::new(
                ErrorCode::NoPrimary,
                format!("{message}; no primary is online yet (a failover): retry in a moment"),
            )
            .retry_after(1),
            StoreError::Full(_) => {
                tracing::error!(error = %message, "the store's disk is full: writes are refused until space is freed");
                HttpError::new(ErrorCode::StorageFull, message)
            }
            StoreError::DataDir { .. }
            | StoreError::Database { .. }
            | StoreError::Locked { .. }
            | StoreError::Format(_)
            | StoreError::Refused(_)
            | StoreError::Engine(_) => {
                tracing::error!(error = %message, "store failure");
                HttpError::new(
                    ErrorCode::StoreFailure,
                    format!("{message}; the request had no effect, retry it"),
                )
                .retry_after(1)
            }
        }
    }
}

/// Marks an answer whose write was not applied because this instance is not
/// the primary (see `cluster::forward`).
#[derive(Debug, Clone, Copy)]
pub struct NotPrimaryMark;

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let not_primary = self.error.code == ErrorCode::NoPrimary;
        let unauthenticated = self.error.code == ErrorCode::Unauthenticated;
        let status = StatusCode::from_u16(self.error.code.status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&ErrorBody { error: self.error }).unwrap_or_default();
        let mut resp = (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        if unauthenticated {
            // RFC 6750: a 401 names the scheme it wants.
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tidemark\""),
            );
        }
        if not_primary {
            resp.extensions_mut().insert(NotPrimaryMark);
            resp.headers_mut().insert(
                crate::cluster::NOT_PRIMARY_HEADER,
                HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

/// A request whose `Content-Length` is over `limit` is refused before its
/// body is read: reading up to the limit first held the connection (and
/// that much memory) for nothing, and a client still writing the rest
/// when the refusal came found the connection closed under it.
pub async fn refuse_declared_oversize(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            let mut resp = HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is {n} bytes, over this server's limit of {limit} (max_body_bytes); send smaller batches"
                ),
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
            resp
        }
        _ => next.run(req).await,
    }
}

/// Fallback for unknown routes.
pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        format!(
            "no endpoint at {}; see GET /openapi.json for the API",
            uri.path()
        ),
    )
}
