//! `POST /v1/services/report` and `GET /v1/services`: the service servers
//! this instance has heard from (the operator console lists them).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use std::sync::Arc;
use tidemark_api::state::{ServiceInfo, ServiceReport};
use tidemark_api::ErrorCode;

/// A service server reports how it runs; its name is bound to its token,
/// like its watch stream.
pub async fn report(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let r: ServiceReport = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("{e}; send {{\"subscriber\": NAME, \"policy\": \"latest-only\" | \"accept-stale\", \"cache_entries\": N, \"schema_version\": N}}"),
        )
    })?;
    use tidemark_api::state::{MAX_QUIESCE_MESSAGE_CHARS, MAX_QUIESCE_SECONDS};
    let bad_notice = r.quiesce.as_ref().is_some_and(|q| {
        q.message.chars().count() > MAX_QUIESCE_MESSAGE_CHARS
            || q.deadline.len() > 64
            || q.seconds_left > MAX_QUIESCE_SECONDS
            || q.ms_left.is_some_and(|ms| ms > MAX_QUIESCE_SECONDS * 1000)
    });
    // The console names it in a URL path (its quiesce by name).
    if !tidemark_api::schema::is_service_name(&r.subscriber)
        || !matches!(r.policy.as_str(), "latest-only" | "accept-stale")
        || bad_notice
    {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "'subscriber' is the service server's name (1 to 128 printable characters, not . or ..), 'policy' is latest-only or accept-stale, and a 'quiesce' notice has at most 86400 seconds left, a deadline of at most 64 characters and a message of at most 1000",
        ));
    }
    super::watch::claim(&app, &caller, &r.subscriber, "reports").await?;
    app.services.report(r);
    Ok(Json(serde_json::json!({"ok": true})))
}

/// Every service server heard from in the last five minutes.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Vec<ServiceInfo>> {
    Json(app.services.list(|name| app.schema.is_connected(name)))
}
