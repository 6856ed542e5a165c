//! `POST /v1/quiesce` and `DELETE /v1/quiesce` (S4), and the same for a
//! service server by name, `/v1/services/{name}/quiesce` (S8).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::cluster::forward::FORWARDED;
use crate::service_quiesce::{self, Sent};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, Uri};
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

fn not_connected(app: &AppState, name: &str) -> HttpError {
    let here = if app.cluster.is_some() {
        "any live instance of this DB cluster"
    } else {
        "this DB server"
    };
    HttpError::new(
        ErrorCode::ServiceNotConnected,
        format!(
            "service server '{}' has no watch stream open on {here}, so no notice was sent; check its --id and that it is connected ('tidemark status --server SERVICE_URL'), or run 'tidemark quiesce --server SERVICE_URL' on its host",
            name.escape_debug()
        ),
    )
}

/// The same request, sent on to each other live instance of the cluster
/// (marked forwarded, so none sends it further), with the caller's token:
/// a service server's stream is open on one instance. The answers, as
/// (status, body), of those that gave one; `stop` ends the round early.
async fn ask_other_instances(
    app: &AppState,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    mut stop: impl FnMut(u16, &serde_json::Value) -> bool,
) -> Vec<(u16, serde_json::Value)> {
    let Some(cluster) = app.cluster.as_ref() else {
        return Vec::new();
    };
    if headers.contains_key(FORWARDED) {
        return Vec::new();
    }
    // Read now (the heartbeat's list may not hold an instance that just
    // joined yet), or as last read if PostgreSQL does not answer.
    let live = crate::cluster::lease::live_within_ms(cluster);
    let members = match cluster.store.members(live).await {
        Ok(all) => all
            .into_iter()
            .filter(|m| m.heartbeat_age_ms <= live as i64)
            .collect(),
        Err(_) => cluster.members.read().clone(),
    };
    let others: Vec<String> = members
        .into_iter()
        .filter(|m| m.url != cluster.url)
        .map(|m| m.url)
        .collect();
    let mut out = Vec::new();
    for url in others {
        let mut req = cluster
            .http
            .request(
                method.clone(),
                format!("{}{path}", url.trim_end_matches('/')),
            )
            .header(FORWARDED, "1")
            .timeout(std::time::Duration::from_secs(5))
            .body(body.clone());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v.clone());
            }
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let answer = resp.json().await.unwrap_or_default();
                let done = stop(status, &answer);
                out.push((status, answer));
                if done {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %url, "could not ask another instance for a service server's quiesce notice")
            }
        }
    }
    out
}

/// `POST /v1/services/{name}/quiesce`: service server `name` goes offline
/// in `seconds` (S8: by name, remotely). Sent down its watch stream, by
/// the instance of a cluster that has it open.
pub async fn announce_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    let req = QuiesceRequest::parse(&body).map_err(HttpError::from)?;
    let message = req.message.clone().unwrap_or_else(|| {
        "this service server goes offline for maintenance; your terminal moves to another".into()
    });
    match service_quiesce::announce(&app, name, req.seconds, message).await? {
        Sent::To(streams, notice) => {
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
        Sent::NotConnected => {
            let answers =
                ask_other_instances(&app, Method::POST, uri.path(), &headers, body, |s, _| {
                    s == 200
                })
                .await;
            match answers.into_iter().find(|(s, _)| *s == 200) {
                // Recorded in the audit trail by the instance that sent it.
                Some((_, answer)) => Ok(Json(answer)),
                None => Err(not_connected(&app, name)),
            }
        }
    }
}

/// `DELETE /v1/services/{name}/quiesce`: cancels that service server's
/// notice; it is told now (by every instance of a cluster with its stream
/// open), or when its stream next opens.
pub async fn cancel_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    let here = service_quiesce::cancel(&app, name).await?;
    let others = ask_other_instances(
        &app,
        Method::DELETE,
        uri.path(),
        &headers,
        Bytes::new(),
        |_, _| false,
    )
    .await;
    let mut had = here.had;
    let mut streams = here.streams as u64;
    for (status, answer) in &others {
        if *status == 200 {
            had |= answer["had"].as_bool().unwrap_or(false);
            streams += answer["streams"].as_u64().unwrap_or(0);
        }
    }
    if headers.contains_key(FORWARDED) {
        // Another instance asked on its caller's behalf: it answers them.
        return Ok(Json(
            serde_json::json!({"service": name, "had": here.had, "streams": here.streams}),
        ));
    }
    if !had {
        return Err(HttpError::new(
            ErrorCode::NoQuiesce,
            format!(
                "there is no quiesce notice of service server '{}' to cancel, so nothing was done",
                name.escape_debug()
            ),
        ));
    }
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
