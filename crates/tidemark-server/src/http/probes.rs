//! Probes, metrics, state and the small read-only documents.

use super::error::HttpError;
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tidemark_api::state::MemberInfo;
use tidemark_api::{ErrorCode, Role, ServerState};

/// `GET /healthz`: the process is up. It also names this process's boot
/// (as a watch stream's `hello` does) and reads its clock (`clock_ms`,
/// the one `lease` events' `sent_ms` is on), so a service server can time
/// a round trip and tell a slow link from the clocks' offset.
pub async fn healthz(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "boot": app.boot,
        "clock_ms": tidemark_api::clock::shown_ms(),
    }))
}

/// How long the readiness probe waits for the storage engine.
const READY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the store does not answer, if it does not: asked at most once a
/// second (see `AppState::store_ready`).
async fn store_unreachable(app: &AppState) -> Option<String> {
    let mut last = app.store_ready.lock().await;
    if let Some((at, why)) = last.as_ref() {
        if at.elapsed() < std::time::Duration::from_secs(1) {
            return why.clone();
        }
    }
    let why = match tokio::time::timeout(READY_PATIENCE, app.store.reachable()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the storage engine did not answer within {} s",
            READY_PATIENCE.as_secs()
        )),
    };
    *last = Some((tokio::time::Instant::now(), why.clone()));
    why
}

/// `GET /readyz`: the store is open and answers, and the server is not
/// shutting down.
pub async fn readyz(
    State(app): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, HttpError> {
    if app.quiesce.offline() {
        return Err(super::quiesce::offline_error());
    }
    if app.ready.load(Ordering::SeqCst) {
        // Ready means the store answers: with PostgreSQL down, every read
        // and order would be refused.
        if let Some(why) = store_unreachable(&app).await {
            return Err(HttpError::new(
                ErrorCode::NotReady,
                format!("{why}; the server reconnects by itself once the storage engine is back"),
            )
            .retry_after(1));
        }
        Ok(Json(serde_json::json!({"status": "ready"})))
    } else {
        Err(HttpError::new(
            ErrorCode::NotReady,
            "the server is starting or shutting down; retry shortly",
        )
        .retry_after(1))
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let refresh = {
        let mut at = app.metrics.store_gauges_at.lock();
        let due = at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            *at = Some(std::time::Instant::now());
        }
        due
    };
    let meta = match refresh {
        true => app.store.meta().await.ok(),
        false => None,
    };
    app.metrics
        .subscriber_names
        .set(app.hub.names_known() as i64);
    if let Some(meta) = meta {
        app.metrics.seq.set(meta.seq as i64);
        app.metrics.epoch.set(meta.epoch as i64);
        if let Ok(r) = app.recovery.status(meta.epoch).await {
            app.metrics.recovery_state.set(match r.state {
                tidemark_api::RecoveryState::Normal => 0,
                tidemark_api::RecoveryState::Recovering => 1,
                tidemark_api::RecoveryState::Recovered => 2,
            });
            app.metrics.recovery_flagged.set(r.flagged as i64);
            app.metrics.recovery_remaining.set(r.remaining as i64);
        }
    }
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.registry.render(),
    )
        .into_response()
}

/// `GET /v1/state`.
pub async fn state(State(app): State<Arc<AppState>>) -> Result<Json<ServerState>, HttpError> {
    let meta = app.store.meta().await?;
    let (role, term, primary, advertise, members) = match &app.cluster {
        None => (Role::Primary, None, None, None, Vec::new()),
        Some(c) => {
            let view = c.view();
            let up = c.members.read().clone();
            let down = c.members_down.read().clone();
            let alive = up.iter().map(|m| (m, true));
            let members = alive
                .chain(down.iter().map(|m| (m, false)))
                .map(|(m, alive)| MemberInfo {
                    url: m.url.clone(),
                    // By the lease, as `primary` says, not by what each
                    // member last said of itself: a dead primary's last
                    // heartbeat said "primary" for seconds after the
                    // takeover, and `members` listed two.
                    role: if alive && view.primary.as_deref() == Some(m.url.as_str()) {
                        Role::Primary
                    } else {
                        Role::Standby
                    },
                    term: m.term,
                    last_heartbeat: m.heartbeat.clone(),
                    heartbeat_age_ms: m.heartbeat_age_ms.max(0) as u64,
                    version: m.version.clone(),
                    schema_version: m.schema_version,
                    quiesce: m
                        .quiesce
                        .as_deref()
                        .and_then(|q| serde_json::from_str(q).ok()),
                    alive,
                })
                .collect();
            (
                view.role,
                Some(view.term),
                view.primary,
                Some(c.url.clone()),
                members,
            )
        }
    };
    Ok(Json(ServerState {
        state: app.recovery.state(),
        role,
        epoch: meta.epoch,
        seq: meta.seq,
        schema_version: meta.schema_version,
        quiesce: app.quiesce.notice(),
        boot: app.boot.clone(),
        store: app.store.engine().to_owned(),
        recovery: Some(app.recovery.status(meta.epoch).await?),
        term,
        primary,
        advertise,
        members,
    }))
}

/// `GET /v1/sources`: the applied-order high-water mark of every OpS source,
/// so an OpS knows where to resume.
pub async fn sources(
    State(app): State<Arc<AppState>>,
) -> Result<Json<BTreeMap<String, u64>>, HttpError> {
    Ok(Json(app.store.high_water_marks().await?))
}

/// `GET /v1/schema`: the schema in force, so clients can validate before sending.
pub async fn schema(State(app): State<Arc<AppState>>) -> Json<tidemark_api::Schema> {
    Json((*app.store.schema()).clone())
}
