//! `POST/GET /v1/tokens`, `DELETE /v1/tokens/{name}`, `GET /v1/audit`.

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::auth::{RevokeError, TokenError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use std::sync::Arc;
use tidemark_api::auth::{AuditEntry, TokenCreated, TokenInfo, TokenRequest};
use tidemark_api::ErrorCode;

/// `POST /v1/tokens`: a new token, shown once.
pub async fn create(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<TokenCreated>, HttpError> {
    let req: TokenRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("the body is not a token request ({e}); send {{\"name\": \"…\", \"role\": \"reader\" | \"ops\" | \"admin\"}}"),
        )
    })?;
    // Only callers without a token before any admin token exists are
    // `loopback` (no token may be so named).
    let created = if caller.0 == crate::auth::LOOPBACK {
        app.auth.create_bootstrap(&req.name, req.role).await
    } else {
        app.auth.create(&req.name, req.role).await
    }
    .map_err(|e| match e {
        TokenError::Exists(_) => HttpError::new(ErrorCode::TokenExists, e.to_string()),
        TokenError::BadName => HttpError::new(ErrorCode::BadRequest, e.to_string()),
        TokenError::AdminExists => HttpError::new(ErrorCode::Unauthenticated, e.to_string()),
        TokenError::Store(s) => s.into(),
    })?;
    app.audit
        .record(
            &caller.0,
            "token_create",
            serde_json::json!({"name": created.name, "role": created.role}),
        )
        .await;
    // Every standby knows it once this is answered (the first token ends
    // protected mode there too).
    followed_by_standbys(&app).await;
    Ok(Json(created))
}

/// A cluster: waits until every standby followed the tokens as written now
/// (S3). Nothing to wait for on a single server. The change is made
/// either way: a token's secret is shown only in this answer, so it is
/// answered even if the standbys did not confirm (a standby that misses it
/// stops vouching, and follows it within a second of coming back).
async fn followed_by_standbys(app: &AppState) {
    if let Err(e) = super::confirm::shared_confirmed(app).await {
        tracing::warn!(why = %e.error.message, "a token change was answered before every standby confirmed it");
    }
}

/// `GET /v1/tokens`: names and roles, never secrets.
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Vec<TokenInfo>> {
    Json(app.auth.list())
}

/// `DELETE /v1/tokens/{name}`.
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, HttpError> {
    app.auth.revoke(&name).await.map_err(|e| match e {
        RevokeError::Unknown(_) => HttpError::new(ErrorCode::NotFound, e.to_string()),
        RevokeError::LastAdmin(_) => HttpError::new(ErrorCode::LastAdmin, e.to_string()),
        RevokeError::Store(s) => s.into(),
    })?;
    app.audit
        .record(&caller.0, "token_revoke", serde_json::json!({"name": name}))
        .await;
    // No standby takes it any more once this is answered.
    followed_by_standbys(&app).await;
    Ok(Json(serde_json::json!({"revoked": name})))
}

/// `GET /v1/audit`: every admin action kept, oldest first.
pub async fn audit(State(app): State<Arc<AppState>>) -> Result<Json<Vec<AuditEntry>>, HttpError> {
    Ok(Json(app.audit.list().await?))
}
