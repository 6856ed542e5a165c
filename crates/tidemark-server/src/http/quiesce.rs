//! `POST /v1/quiesce` and `DELETE /v1/quiesce` (S4).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Extension;
use axum::Json;
use std::sync::Arc;
use tidemark_api::state::{QuiesceNotice, QuiesceRequest};
use tidemark_api::ErrorCode;

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
    let req = QuiesceRequest::parse(&body).map_err(HttpError::from)?;
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
            "there is no quiesce notice to cancel, so nothing was done ('tidemark status --server URL' shows any notice in force)",
        ))
    }
}
