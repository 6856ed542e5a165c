//! `POST /v1/quiesce` and `DELETE /v1/quiesce` (S4), and the same for a
//! service server by name, `/v1/services/{name}/quiesce` (S8).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::cluster::ask::{self, Answer};
use crate::service_quiesce::{self, Sent};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::Extension;
use axum::Json;
use std::sync::Arc;
use tidemark_api::client::service_quiesce_path;
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
    if !tidemark_api::schema::is_service_name(name) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "name the service server as it watches (its --id: 1 to 128 printable characters, not . or ..), e.g. /v1/services/svc-1/quiesce",
        ));
    }
    Ok(name)
}

/// The clause of a message naming the instances that could not be asked.
fn not_asked(unreached: &[String]) -> String {
    if unreached.is_empty() {
        String::new()
    } else {
        format!(
            " (these instances could not be asked: {})",
            unreached.join(", ")
        )
    }
}

/// How a refusal says a service server is too old for a notice by name
/// (an instance that asked another passes that refusal on).
const TOO_OLD: &str = "too old to take a notice by name";

fn not_connected(app: &AppState, name: &str, older: usize, unreached: &[String]) -> HttpError {
    let name = name.escape_debug();
    let message = if older > 0 {
        format!(
            "service server '{name}' watches this DB server with a version {TOO_OLD} (it would skip it), so none was sent; upgrade it, or run 'tidemark quiesce --server SERVICE_URL' on its host"
        )
    } else {
        let here = if app.cluster.is_some() {
            "any live instance of this DB cluster"
        } else {
            "this DB server"
        };
        let asked = not_asked(unreached);
        format!(
            "service server '{name}' has no watch stream open on {here}{asked}, so no notice was sent; check its --id and that it is connected ('tidemark status --server SERVICE_URL' names the instance it streams from), or run 'tidemark quiesce --server SERVICE_URL' on its host"
        )
    };
    HttpError::new(ErrorCode::ServiceNotConnected, message)
}

/// Asks the other instances to tell their streams of `name` what is
/// stored; how many streams they told.
async fn retell_others(
    cluster: &crate::cluster::Cluster,
    name: &str,
    headers: &HeaderMap,
) -> usize {
    let path = format!("{}?retell=1", service_quiesce_path(name));
    ask::others(
        cluster,
        Method::POST,
        &path,
        headers,
        Bytes::new(),
        |_, _| false,
    )
    .await
    .into_iter()
    .map(|(_, answer)| match answer {
        Answer::Gave(200, v) => v["streams"].as_u64().unwrap_or(0) as usize,
        _ => 0,
    })
    .sum()
}

#[derive(Debug, serde::Deserialize)]
pub struct ServiceQuiesceQuery {
    /// Asked on by the instance that stored a notice: tell the streams
    /// open here what is stored (`service_quiesce::retell`).
    #[serde(default)]
    retell: Option<String>,
}

/// `POST /v1/services/{name}/quiesce`: service server `name` goes offline
/// in `seconds` (S8: by name, remotely). Stored and sent down its watch
/// stream by the instance of a cluster that has it open; the others are
/// then asked to tell theirs too (a stream that moved just before).
pub async fn announce_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<ServiceQuiesceQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    let forwarded = ask::forwarded(&headers);
    if forwarded && query.retell.is_some() {
        let streams = service_quiesce::retell(&app, name).await?;
        return Ok(Json(
            serde_json::json!({"service": name, "streams": streams}),
        ));
    }
    let req = QuiesceRequest::parse(&body).map_err(HttpError::from)?;
    let message = req.message.clone().unwrap_or_else(|| {
        "this service server goes offline for maintenance; your terminal moves to another".into()
    });
    let cluster = app.cluster.as_ref().filter(|_| !forwarded);
    match service_quiesce::announce(&app, name, req.seconds, message).await? {
        Sent::To(mut streams, notice) => {
            app.audit
                .record(
                    &caller.0,
                    "service_quiesce",
                    serde_json::json!({"service": name, "seconds": req.seconds, "message": notice.message}),
                )
                .await;
            if let Some(cluster) = cluster {
                streams += retell_others(cluster, name, &headers).await;
            }
            Ok(Json(
                serde_json::json!({"service": name, "streams": streams, "notice": notice}),
            ))
        }
        Sent::NotConnected { older } => {
            let Some(cluster) = cluster else {
                return Err(not_connected(&app, name, older, &[]));
            };
            let answers = ask::others(
                cluster,
                Method::POST,
                &service_quiesce_path(name),
                &headers,
                body,
                |s, _| s == 200,
            )
            .await;
            let unreached = ask::unreached(&answers);
            let mut too_old = None;
            for (_, answer) in answers {
                match answer {
                    // Recorded in the audit trail by the instance that
                    // sent it, which told no other instance: a stream that
                    // moved here, or elsewhere, meanwhile is told now.
                    Answer::Gave(200, v) => {
                        service_quiesce::retell(&app, name).await?;
                        retell_others(cluster, name, &headers).await;
                        return Ok(Json(v));
                    }
                    // Another instance has a stream of the name, of a
                    // service server too old to take it: its refusal says so.
                    Answer::Gave(409, v)
                        if v["error"]["code"] == "service_not_connected"
                            && v["error"]["message"]
                                .as_str()
                                .is_some_and(|m| m.contains(TOO_OLD)) =>
                    {
                        too_old = v["error"]["message"].as_str().map(str::to_owned);
                    }
                    Answer::Gave(409, v) if v["error"]["code"] == "service_not_connected" => {}
                    // Its own refusal of the caller (a token, the body).
                    Answer::Gave(status, v) => {
                        tracing::warn!(status, answer = %v, "another instance refused a quiesce notice by name");
                    }
                    Answer::Unreached(_) => {}
                }
            }
            match too_old {
                Some(message) if older == 0 => {
                    Err(HttpError::new(ErrorCode::ServiceNotConnected, message))
                }
                _ => Err(not_connected(&app, name, older, &unreached)),
            }
        }
    }
}

/// `DELETE /v1/services/{name}/quiesce`: cancels that service server's
/// notice sent by name; it is told now (by every instance of a cluster
/// with its stream open), or when its stream next opens. An instance asked
/// on by another does not touch the note (the asking instance removed it
/// from the shared store; a notice stored since must stand): it tells its
/// streams of the name what is stored.
pub async fn cancel_service(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let name = service_name(&name)?;
    if ask::forwarded(&headers) {
        let streams = service_quiesce::retell(&app, name).await?;
        return Ok(Json(
            serde_json::json!({"service": name, "had": false, "streams": streams}),
        ));
    }
    let here = service_quiesce::cancel(&app, name).await?;
    if here.had {
        app.audit
            .record(
                &caller.0,
                "service_quiesce_cancel",
                serde_json::json!({"service": name}),
            )
            .await;
    }
    let answers = match app.cluster.as_ref() {
        Some(cluster) => {
            ask::others(
                cluster,
                Method::DELETE,
                &service_quiesce_path(name),
                &headers,
                Bytes::new(),
                |_, _| false,
            )
            .await
        }
        None => Vec::new(),
    };
    // The others never touch the note (see above): what they add is the
    // streams they told.
    let had = here.had;
    let mut streams = here.streams as u64;
    for (_, answer) in &answers {
        if let Answer::Gave(200, v) = answer {
            streams += v["streams"].as_u64().unwrap_or(0);
        }
    }
    let unreached = ask::unreached(&answers);
    if !had && streams == 0 {
        let asked = not_asked(&unreached);
        return Err(HttpError::new(
            ErrorCode::NoQuiesce,
            format!(
                "there is no quiesce notice of service server '{}' sent by name to cancel, and no stream of it to tell{asked}, so nothing was done; a notice given on its host is cancelled there ('tidemark quiesce --server SERVICE_URL --cancel')",
                name.escape_debug()
            ),
        ));
    }
    Ok(Json(serde_json::json!({
        "service": name,
        "cancelled": true,
        "had": had,
        "streams": streams,
        "unreached": unreached,
    })))
}
