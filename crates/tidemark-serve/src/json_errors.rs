//! The one error shape for answers the framework makes itself: a wrong
//! method (405), a body over the limit (413), and any other refusal that
//! is not JSON (an extractor's plain-text 400, a body that broke off) get
//! the JSON error body every other error has (CONTRACT.md, Errors), not
//! axum's plain text.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tidemark_api::error::{ApiError, ErrorBody, ErrorCode};

/// The middleware; answers that are already JSON pass unchanged.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return resp;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take that method; the Allow header lists the ones it takes (see GET /openapi.json)".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is over the server's limit (max_body_bytes); send smaller requests".to_owned(),
        _ => {
            // The framework's own words (short plain text), and what to do.
            let (parts, body) = resp.into_parts();
            let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let text: String = text.trim().chars().take(300).collect();
            let what = if text.is_empty() { status.to_string() } else { text };
            let hint = if status.is_client_error() {
                "check the request against GET /openapi.json"
            } else {
                "retry; if it persists, see the server's log"
            };
            return json(Response::from_parts(parts, Body::empty()), code_of(status), &format!("{what}; {hint}"));
        }
    };
    json(resp, code_of(status), &message)
}

/// The error code for a status the framework answered with.
fn code_of(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::NotReady,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

/// `resp` with the JSON error body instead of its own.
fn json(resp: Response, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: ApiError::new(code, message),
    })
    .unwrap_or_default();
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// An error answer with the JSON body, closing its connection (the front
/// door's own refusals: a body too slow, a head that is not HTTP).
pub(crate) fn closing_error<B: From<Vec<u8>>>(
    status: axum::http::StatusCode,
    code: tidemark_api::ErrorCode,
    message: String,
) -> axum::http::Response<B> {
    use axum::http::{header, HeaderValue};
    let body = tidemark_api::ErrorBody {
        error: tidemark_api::ApiError::new(code, message),
    };
    let mut resp =
        axum::http::Response::new(B::from(serde_json::to_vec(&body).unwrap_or_default()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
