//! `POST /v1/quiesce` and `DELETE /v1/quiesce` (S4).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use tidemark_api::state::QuiesceNotice;
use tidemark_api::ErrorCode;

/// The longest notice accepted: a day.
const MAX_SECONDS: u64 = 86_400;
/// The longest quiesce message.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Unknown properties are refused (a misspelt `message` would announce
/// the default one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Announce {
    seconds: u64,
    #[serde(default)]
    message: Option<String>,
}

/// What a request gets once the notice's deadline has passed.
pub fn offline_error() -> HttpError {
    HttpError::new(
        ErrorCode::Quiescing,
        "this server is offline after a quiesce notice; retry later or use another server (an operator ends the notice with 'tidemark quiesce --server URL --cancel')",
    )
    .retry_after(30)
}

/// Announces that the server goes offline in `seconds`.
pub async fn announce(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<QuiesceNotice>, HttpError> {
    // An object only (serde would take `[5, "text"]` for the struct too).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(HttpError::new(
            ErrorCode::BadJson,
            "send a JSON object: {\"seconds\": N, \"message\": \"…\"}",
        ));
    }
    let req: Announce = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("{e}; send {{\"seconds\": N, \"message\": \"…\"}}"),
        )
    })?;
    if req.seconds > MAX_SECONDS {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!(
                "a quiesce notice can be at most {MAX_SECONDS} seconds ahead, not {}",
                req.seconds
            ),
        ));
    }
    // It goes to every watch stream and into the audit log.
    if let Some(m) = &req.message {
        if m.chars().count() > MAX_MESSAGE_CHARS {
            return Err(HttpError::new(
                ErrorCode::BadRequest,
                format!(
                    "a quiesce message can be at most {MAX_MESSAGE_CHARS} characters, not {}; shorten it",
                    m.chars().count()
                ),
            ));
        }
    }
    let message = req
        .message
        .unwrap_or_else(|| "this server goes offline for maintenance; save your work".into());
    let notice = app
        .quiesce
        .announce(app.store.as_ref(), &app.hub, req.seconds, message)
        .await?;
    app.audit
        .record(
            &caller.0,
            "quiesce",
            serde_json::json!({"seconds": req.seconds, "message": notice.message}),
        )
        .await;
    Ok(Json(notice))
}

/// Cancels the notice in force.
pub async fn cancel(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<serde_json::Value>, HttpError> {
    if app.quiesce.cancel(app.store.as_ref(), &app.hub).await? {
        app.audit
            .record(&caller.0, "quiesce_cancel", serde_json::Value::Null)
            .await;
        Ok(Json(serde_json::json!({"cancelled": true})))
    } else {
        Err(HttpError::new(
            ErrorCode::NoQuiesce,
            "there is no quiesce notice to cancel",
        ))
    }
}
