//! `POST /v1/quiesce` and `DELETE /v1/quiesce` (S4).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::service_quiesce::{self, Sent};
use axum::body::Bytes;
use axum::extract::{Path, State};
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

/// The service server a by-name notice is for: the path's name, checked as
/// a watch stream's name is.
fn service_name(name: &str) -> Result<&str, HttpError> {
    tidemark_api::schema::validate_name("subscriber", name).map_err(|_| {
        HttpError::new(
            ErrorCode::BadRequest,
            "name the service server as it watches (its --id: 1 to 128 printable characters), e.g. /v1/services/svc-1/quiesce",
        )
    })?;
    Ok(name)
}

fn not_connected(name: &str) -> HttpError {
    HttpError::new(
        ErrorCode::ServiceNotConnected,
        format!(
            "service server '{}' has no watch stream open on this DB server, so no notice was sent; check its --id, and send the notice to the DB-server instance it streams from ('tidemark status --server SERVICE_URL' names both), or run 'tidemark quiesce --server SERVICE_URL' on its host",
            name.escape_debug()
        ),
    )
}

/// `POST /v1/services/{name}/quiesce`: service server `name` goes offline
/// in `seconds` (S8: by name, remotely). Sent down its watch stream.
pub async fn announce_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    let req = QuiesceRequest::parse(&body).map_err(HttpError::from)?;
    let message = req.message.unwrap_or_else(|| {
        "this service server goes offline for maintenance; your terminal moves to another".into()
    });
    match service_quiesce::announce(&app, name, req.seconds, message).await? {
        Sent::To(streams, Some(notice)) => {
            app.audit
                .record(
                    &caller.0,
                    "service_quiesce",
                    serde_json::json!({"service": name, "seconds": req.seconds, "message": notice.message}),
                )
                .await;
            Ok(Json(
                serde_json::json!({"service": name, "streams": streams, "notice": notice}),
            ))
        }
        _ => Err(not_connected(name)),
    }
}

/// `DELETE /v1/services/{name}/quiesce`: cancels that service server's
/// notice; it is told now, or when its stream next opens.
pub async fn cancel_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    match service_quiesce::cancel(&app, name).await? {
        Sent::To(streams, _) => {
            app.audit
                .record(
                    &caller.0,
                    "service_quiesce_cancel",
                    serde_json::json!({"service": name}),
                )
                .await;
            Ok(Json(
                serde_json::json!({"service": name, "cancelled": true, "streams": streams}),
            ))
        }
        Sent::NothingToCancel | Sent::NotConnected => Err(HttpError::new(
            ErrorCode::NoQuiesce,
            format!(
                "there is no quiesce notice of service server '{}' to cancel, so nothing was done",
                name.escape_debug()
            ),
        )),
    }
}
