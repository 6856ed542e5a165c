//! The endpoints of several instances on one PostgreSQL (S3, S5):
//! `POST /v1/cluster/promote` (a planned switchover to this instance),
//! `POST /v1/cluster/handover` (the primary's half of it) and
//! `POST /v1/watch/interest` (a service server that moves here declares
//! what it holds, so its stream resumes without revalidating).

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::state::{Handover, InterestDeclaration, Role};
use tidemark_api::ErrorCode;

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::new(ErrorCode::BadJson, format!("{e}; send {shape}")))
}

fn single_instance() -> HttpError {
    HttpError::new(
        ErrorCode::PromoteRefused,
        "this DB server uses the embedded engine, which runs as one instance: high availability (standbys, promote, failover) needs the PostgreSQL engine (tidemark server --store postgres --database-url URL --advertise URL)",
    )
}

/// The live standbys, for refusals.
async fn live_standbys(cluster: &crate::cluster::Cluster) -> String {
    let primary = cluster.view().primary;
    let within = crate::cluster::lease::live_within_ms(cluster);
    match cluster.store.members(within).await {
        Ok(ms) => {
            let s: Vec<String> = ms
                .into_iter()
                // The lease says who is primary; every other live member
                // is a standby.
                .filter(|m| Some(&m.url) != primary.as_ref())
                .map(|m| m.url)
                .collect();
            if s.is_empty() {
                "none".into()
            } else {
                s.join(", ")
            }
        }
        Err(_) => "unknown (PostgreSQL unreachable)".into(),
    }
}

/// `POST /v1/cluster/promote`: makes this standby the primary. The primary
/// hands the lease over once its commits in flight end; writes arriving
/// meanwhile, at any instance, are held and committed by the new primary.
pub async fn promote(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let Some(cluster) = app.cluster.clone() else {
        return Err(single_instance());
    };
    // `{"url": URL}` promotes that instance (the console asks the instance
    // it runs on); no body promotes this one.
    if !body.is_empty() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Target {
            url: Option<String>,
        }
        let t: Target = parse(&body, "{\"url\": \"http://standby:7070\"} or no body")?;
        if let Some(url) = t.url.filter(|u| u.trim_end_matches('/') != cluster.url) {
            return promote_other(&cluster, &url, &headers).await;
        }
    }
    let before = cluster.view();
    if before.role == Role::Primary {
        return Ok(Json(
            json!({"promoted": true, "already_primary": true, "term": before.term, "primary": cluster.url}),
        ));
    }
    if app.quiesce.notice().is_some() {
        // It would hand the lease on again at its deadline (at once if
        // offline already), after the old primary had given it up; hand-
        // overs go to a standby that is not quiescing.
        let when = if app.quiesce.offline() {
            "is offline after its quiesce notice"
        } else {
            "has a quiesce notice in force"
        };
        return Err(HttpError::new(
            ErrorCode::PromoteRefused,
            format!(
                "{} {when}, so it cannot become the primary; cancel the notice first ('tidemark quiesce --server {} --cancel'), or promote another standby",
                cluster.url, cluster.url
            ),
        ));
    }
    // The primary hands over; a primary that is frozen never answers, but
    // its lease runs out and an instance takes over by itself: then this
    // one is the primary, or the hand-over is asked of the new one.
    let asked = Instant::now();
    loop {
        if cluster.is_primary() {
            break;
        }
        let lease = cluster.store.lease().await?;
        let primary = match (lease.url.clone(), lease.expires_in_ms > 0) {
            (Some(primary), true) if primary != cluster.url => primary,
            _ => break,
        };
        if asked.elapsed() > HANDOVER_PATIENCE {
            return Err(HttpError::new(
                ErrorCode::NoPrimary,
                format!("the primary at {primary} did not hand over within {} s; see its log ('tidemark status' shows who is primary now)", HANDOVER_PATIENCE.as_secs()),
            )
            .retry_after(1));
        }
        let left = HANDOVER_PATIENCE.saturating_sub(asked.elapsed());
        tokio::select! {
            handed = ask_handover(&cluster, &primary, &headers, left) => {
                handed?;
                break;
            }
            () = lease_moves(&cluster, lease.term) => {
                tracing::info!(from = %primary, "the lease moved while a hand-over was asked of a primary that did not answer; promoting anew");
            }
        }
    }
    // Take it (handed over, or free/expired) and wait until we serve as primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.is_primary() {
        if Instant::now() >= deadline {
            return Err(HttpError::new(
                ErrorCode::NoPrimary,
                "the lease was handed over but this instance did not come up as primary within 10 s; see its log ('tidemark status' shows who is primary now)",
            )
            .retry_after(1));
        }
        cluster.lease_wake.notify_one();
        cluster.changed(Duration::from_millis(50)).await;
    }
    let view = cluster.view();
    app.audit
        .record(
            &caller.0,
            "promote",
            json!({"instance": cluster.url, "term": view.term}),
        )
        .await;
    Ok(Json(
        json!({"promoted": true, "already_primary": false, "term": view.term, "primary": cluster.url}),
    ))
}

/// How long a promote waits for the primary's hand-over in all.
const HANDOVER_PATIENCE: Duration = Duration::from_secs(15);

/// Asks the primary at `primary` to hand the lease to this instance.
async fn ask_handover(
    cluster: &crate::cluster::Cluster,
    primary: &str,
    headers: &HeaderMap,
    within: Duration,
) -> Result<(), HttpError> {
    let mut req = cluster
        .http
        .post(format!(
            "{}/v1/cluster/handover",
            primary.trim_end_matches('/')
        ))
        .json(&Handover {
            to: cluster.url.clone(),
        })
        .timeout(within);
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        req = req.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let resp = req.send().await.map_err(|e| {
        HttpError::new(
            ErrorCode::NoPrimary,
            format!("cannot reach the primary at {primary} to hand over ({e}); if it is dead, a standby takes over by itself once its lease expires"),
        )
        .retry_after(1)
    })?;
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Err(relayed(body, || {
        format!("the primary at {primary} answered {status}")
    }))
}

/// The error another instance answered (`body`), passed on as it is; or,
/// if it is not one of ours, `promote_refused` saying `who` answered it.
fn relayed(body: serde_json::Value, who: impl FnOnce() -> String) -> HttpError {
    serde_json::from_value::<tidemark_api::error::ErrorBody>(body.clone())
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            tidemark_api::ApiError::new(ErrorCode::PromoteRefused, format!("{}: {body}", who()))
        })
        .into()
}

/// Returns once this instance's lease loop saw the lease under a later
/// term than `term` (or this instance became the primary).
async fn lease_moves(cluster: &crate::cluster::Cluster, term: u64) {
    loop {
        let view = cluster.view();
        if view.role == Role::Primary || view.term > term {
            return;
        }
        cluster.changed(cluster.tick()).await;
    }
}

/// Asks the live standby at `url` to promote itself.
async fn promote_other(
    cluster: &crate::cluster::Cluster,
    url: &str,
    headers: &HeaderMap,
) -> Result<Json<serde_json::Value>, HttpError> {
    let within = crate::cluster::lease::live_within_ms(cluster);
    let members = cluster.store.members(within).await?;
    let url = url.trim_end_matches('/');
    if !members.iter().any(|m| m.url == url) {
        return Err(HttpError::new(
            ErrorCode::PromoteRefused,
            format!(
                "{url} is not a live standby of this cluster (stopped, unknown, or the primary already); live standbys: {}",
                live_standbys(cluster).await
            ),
        ));
    }
    let mut req = cluster
        .http
        .post(format!("{url}/v1/cluster/promote"))
        .timeout(Duration::from_secs(20));
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        req = req.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let resp = req.send().await.map_err(|e| {
        HttpError::new(
            ErrorCode::PromoteRefused,
            format!("cannot reach {url} to promote it ({e}); check that it runs"),
        )
    })?;
    let ok = resp.status().is_success();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if ok {
        return Ok(Json(body));
    }
    Err(relayed(body, || format!("{url} answered")))
}

/// `POST /v1/cluster/handover`: the primary gives its lease to a live
/// standby. The lease row's lock makes it wait for this instance's commits
/// in flight; after it, none of ours can commit.
pub async fn handover(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let Some(cluster) = app.cluster.clone() else {
        return Err(single_instance());
    };
    let req: Handover = parse(&body, "{\"to\": \"http://standby:7070\"}")?;
    let view = cluster.view();
    if view.role != Role::Primary {
        return Err(HttpError::new(
            ErrorCode::PromoteRefused,
            format!(
                "this instance is not the primary (the primary is {}); promote through the standby: tidemark promote --server STANDBY_URL",
                view.primary.as_deref().unwrap_or("unknown right now")
            ),
        ));
    }
    let within = crate::cluster::lease::live_within_ms(&cluster);
    let members = cluster.store.members(within).await?;
    // The lease, not a member's last heartbeat, says who is primary: any
    // other live member is a standby.
    let Some(target) = members
        .iter()
        .find(|m| m.url == req.to && m.url != cluster.url)
    else {
        return Err(HttpError::new(
            ErrorCode::PromoteRefused,
            format!(
                "{} is not a live standby of this cluster (stopped, unknown, or not started with that --advertise URL); live standbys: {}",
                req.to,
                live_standbys(&cluster).await
            ),
        ));
    };
    // An error, or this request going away, leaves the handover's end to
    // the lease loop's next renewal.
    let moved =
        crate::cluster::lease::hand_over(&cluster, view.term, &target.id, &target.url).await?;
    if !moved {
        return Err(HttpError::new(
            ErrorCode::PromoteRefused,
            "the lease moved while handing it over (a failover happened); check 'tidemark status' and promote again if needed",
        ));
    }
    app.audit
        .record(
            &caller.0,
            "handover",
            json!({"from": cluster.url, "to": target.url, "term": view.term + 1}),
        )
        .await;
    Ok(Json(
        json!({"handed_over": true, "term": view.term + 1, "primary": target.url}),
    ))
}

/// `POST /v1/watch/interest`: registers keys a subscriber holds; the final
/// chunk lets its next stream here resume from `Last-Event-ID`.
pub async fn declare(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let d: InterestDeclaration = parse(
        &body,
        "{\"subscriber\": \"svc-1\", \"keys\": [[\"subscriber\", \"KEY\"]], \"final\": true}",
    )?;
    tidemark_api::schema::validate_name("subscriber", &d.subscriber)
        .map_err(|e| HttpError::new(ErrorCode::BadRequest, e.to_string()))?;
    super::watch::claim(&app, &caller, &d.subscriber, "declares").await?;
    let schema = app.store.schema();
    let id = app.hub.subscriber(&d.subscriber);
    // A mark an earlier declaration left unused does not vouch for this
    // one until its final chunk arrives.
    app.hub.take_declared(id);
    let mut registered = 0u64;
    for (table, key) in &d.keys {
        // A key of a table that is gone, or malformed, cannot change: skip it.
        if schema.table(table).is_ok() && tidemark_api::schema::validate_key(key).is_ok() {
            app.hub.register(id, table, key);
            registered += 1;
        }
    }
    if d.final_chunk {
        app.hub.declare(id, d.newest);
    }
    Ok(Json(
        json!({"registered": registered, "final": d.final_chunk}),
    ))
}
