//! `/v1/schema/...`: the registry, staging, plan, publish, rollback and
//! the service servers' version reports (S1, S2, S9). The logic is in
//! [`crate::schema_publish`].

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::schema_publish::{self as sp, SchemaError};
use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use std::sync::Arc;
use tidemark_api::schema_change::{
    PendingSchema, PublishStatus, SchemaAck, SchemaDocument, SchemaPlan, SchemaVersions,
};
use tidemark_api::ErrorCode;

impl From<SchemaError> for HttpError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Refused(e) => e.into(),
            SchemaError::Store(e) => e.into(),
        }
    }
}

/// Who a version is recorded as published by: the token's name, or
/// `local` for a loopback client in protected mode.
fn who(c: &Caller) -> &str {
    if c.0 == crate::auth::LOOPBACK {
        "local"
    } else {
        &c.0
    }
}

/// `GET /v1/schema/versions`: every published version, oldest first.
pub async fn versions(State(app): State<Arc<AppState>>) -> Result<Json<SchemaVersions>, HttpError> {
    Ok(Json(SchemaVersions {
        current: app.store.schema().version,
        versions: app.store.schema_versions().await?,
    }))
}

/// `GET /v1/schema/pending`.
pub async fn get_pending(
    State(app): State<Arc<AppState>>,
) -> Result<Json<PendingSchema>, HttpError> {
    sp::pending(&app).await?.map(Json).ok_or_else(|| {
        HttpError::new(
            ErrorCode::NoPendingSchema,
            "no schema is staged; stage one with 'tidemark schema stage --server URL FILE'",
        )
    })
}

/// `PUT /v1/schema/pending`: stages a schema document.
pub async fn put_pending(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<PendingSchema>, HttpError> {
    let doc = SchemaDocument::parse(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("{e}; send a schema document: {{\"tables\": {{\"NAME\": {{\"columns\": [{{\"name\": \"…\", \"type\": \"string|integer|boolean|timestamp|json\"}}], \"indexes\": [{{\"columns\": [\"…\"]}}]}}}}}}"),
        )
    })?;
    let p = sp::stage(&app, &doc, who(&caller)).await?;
    app.audit
        .record(
            &caller.0,
            "schema_stage",
            serde_json::json!({"version": p.version, "base_version": p.base_version}),
        )
        .await;
    Ok(Json(p))
}

/// `DELETE /v1/schema/pending`: drops the staged schema.
pub async fn delete_pending(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let had = sp::discard(&app).await?;
    if had {
        app.audit
            .record(&caller.0, "schema_discard", serde_json::Value::Null)
            .await;
    }
    Ok(Json(serde_json::json!({"discarded": had})))
}

/// `GET /v1/schema/plan`.
pub async fn plan(State(app): State<Arc<AppState>>) -> Result<Json<SchemaPlan>, HttpError> {
    Ok(Json(sp::plan(&app).await?))
}

/// `POST /v1/schema/publish`: answers once the new version is in force
/// here; service servers adopt it after (see `GET /v1/schema/publish`).
pub async fn publish(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PublishStatus>, HttpError> {
    let result = sp::publish(&app, who(&caller)).await;
    audit_job(&app, &caller, "schema_publish", &result).await;
    result?;
    Ok(Json(sp::status(&app).await?))
}

/// `POST /v1/schema/rollback`.
pub async fn rollback(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PublishStatus>, HttpError> {
    let result = sp::rollback(&app, who(&caller)).await;
    audit_job(&app, &caller, "schema_rollback", &result).await;
    result?;
    Ok(Json(sp::status(&app).await?))
}

async fn audit_job(
    app: &AppState,
    caller: &Caller,
    action: &str,
    result: &Result<tidemark_api::schema_change::PublishJob, SchemaError>,
) {
    let detail = match result {
        Ok(j) => serde_json::json!({"from": j.from_version, "to": j.to_version}),
        Err(e) => serde_json::json!({"refused": e.to_string()}),
    };
    app.audit.record(&caller.0, action, detail).await;
}

/// `GET /v1/schema/publish`: the last job and who runs which version.
pub async fn status(State(app): State<Arc<AppState>>) -> Result<Json<PublishStatus>, HttpError> {
    Ok(Json(sp::status(&app).await?))
}

/// `POST /v1/schema/ack`: a service server reports the version it runs.
pub async fn ack(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let a: SchemaAck = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("{e}; send {{\"subscriber\": NAME, \"version\": N}}"),
        )
    })?;
    if tidemark_api::schema::validate_name("subscriber", &a.subscriber).is_err() {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "'subscriber' must be 1 to 128 printable characters: the service server's name",
        ));
    }
    super::watch::claim(&app, &caller, &a.subscriber, "reports").await?;
    // Only the instance the stream is open at counts it (and memory holds
    // reports of open streams only).
    let current = app.store.schema().version;
    if !app
        .schema
        .report(&a.subscriber, a.version, a.previous, current)
    {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            format!(
                "no watch stream of subscriber '{}' is open at this DB server; a service server reports its schema version to the instance its watch stream is open at",
                a.subscriber.escape_debug()
            ),
        ));
    }
    Ok(Json(
        serde_json::json!({"version": app.store.schema().version}),
    ))
}
