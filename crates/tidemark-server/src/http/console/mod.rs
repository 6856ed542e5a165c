//! `GET /console`: the operator's live page (state, recovery progress and a
//! chart, flagged keys, the quiesce countdown; admin actions with a token
//! entered on the page and kept for the session only), its script
//! `GET /console.js`, its event stream `GET /v1/console/events`, and
//! `GET /v1/whoami`, which tells the page what the entered token may do.
//! The page and script are embedded in the binary: no CDN, no build step.
//! They hold no data, so they need no token; they are served with a
//! Content-Security-Policy that runs only this server's own script.

use super::error::HttpError;
use super::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::ServerState;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");

/// What the page and its script are served with: only this server's own
/// script runs (no inline script, nothing from elsewhere), no other site
/// may frame them, and nothing is cached or leaks through a referrer.
pub const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

fn served(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (name, value) in SECURITY_HEADERS {
        resp.headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    resp
}

/// `GET /console`: the page itself.
pub async fn page() -> Response {
    served("text/html; charset=utf-8", PAGE)
}

/// `GET /console.js`: the page's script.
pub async fn script() -> Response {
    served("text/javascript; charset=utf-8", SCRIPT)
}

/// Console feeds one token (or the loopback) may hold open at once.
const MAX_FEEDS_PER_TOKEN: usize = 8;

/// `GET /` and `GET /console/`: where an operator types the server's
/// address, the console.
pub async fn to_console() -> Redirect {
    Redirect::to("/console")
}

/// The page's live feed: first `progress` (the remaining flags sampled
/// since the recovery started, `[[unix ms, remaining], …]`), then `state`
/// (as `GET /v1/state`, plus `now_ms`: the server's clock) once a second,
/// or `error` (`{"error": {…}}`) for a second in which the state could not
/// be read, as server-sent events.
///
/// A token holds at most [`MAX_FEEDS_PER_TOKEN`] feeds (each reads the
/// state once a second, and holds a connection); a feed ends when its
/// token is revoked.
pub async fn events(
    State(app): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<super::guard::Caller>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let Some(permit) = app
        .streams
        .take(&format!("console:{}", caller.0), MAX_FEEDS_PER_TOKEN)
    else {
        return Err(HttpError::new(
            tidemark_api::ErrorCode::TooManyStreams,
            format!(
                "'{}' already holds {MAX_FEEDS_PER_TOKEN} console feeds open; close a console page",
                caller.0.escape_debug()
            ),
        )
        .retry_after(5));
    };
    // The first event at once, then one a second.
    let progress = serde_json::to_string(&app.progress.samples()).unwrap_or_default();
    let first =
        futures::stream::once(async move { Ok(Event::default().event("progress").data(progress)) });
    let feed = (app.clone(), app.auth.changes(), caller.0, permit);
    let stream = futures::stream::unfold((feed, true), |(mut feed, first)| async move {
        if !first {
            tokio::select! {
                _ = feed.0.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = feed.0.auth.until_revoked(&mut feed.1, &feed.2) => return None,
            }
        }
        let read = super::probes::state(State(feed.0.clone())).await;
        let (kind, data) = state_event(read.map(|Json(s)| s), unix_ms());
        Some((Ok(Event::default().event(kind).data(data)), (feed, false)))
    });
    Ok(
        Sse::new(first.chain(stream))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The feed's event for one reading of the state: `state` stamped with the
/// server's clock (the page draws its chart on the server's time line, as
/// the `progress` samples are), or `error` with the error body when the
/// state could not be read (the store unreachable during a failover): not a
/// state, so the page keeps the last good values and says why.
fn state_event(read: Result<ServerState, HttpError>, now_ms: i64) -> (&'static str, String) {
    match read.map(serde_json::to_value) {
        Ok(Ok(mut s)) => {
            s["now_ms"] = now_ms.into();
            ("state", s.to_string())
        }
        Ok(Err(e)) => error_event(HttpError::new(
            tidemark_api::ErrorCode::Internal,
            format!("the state could not be encoded: {e}"),
        )),
        Err(e) => error_event(e),
    }
}

fn error_event(e: HttpError) -> (&'static str, String) {
    let body = tidemark_api::ErrorBody { error: e.error };
    ("error", serde_json::to_string(&body).unwrap_or_default())
}

/// `GET /v1/whoami`: the name and role of the presented token (`null` for
/// none, or one that is unknown or revoked), and whether the server is in
/// protected mode (no token yet), in which a loopback program is trusted
/// as `admin` under the name `loopback`. It needs no role: it says only
/// what the caller presented, so the console shows the actions the token
/// may take without trying one.
pub async fn whoami(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let protected = !app.auth.any();
    let who = if protected {
        super::guard::trusted_local(peer, &uri, &headers).then(|| {
            (
                crate::auth::LOOPBACK.to_owned(),
                tidemark_api::auth::AccessRole::Admin,
            )
        })
    } else {
        super::guard::bearer(&headers).and_then(|t| app.auth.check(t))
    };
    let (name, role) = who.map_or((None, None), |(n, r)| (Some(n), Some(r.as_str())));
    Json(serde_json::json!({"name": name, "role": role, "protected": protected}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn a_state_that_cannot_be_read_is_an_error_event_not_a_blank_state() {
        let e = HttpError::new(
            tidemark_api::ErrorCode::StoreUnavailable,
            "PostgreSQL is unreachable",
        );
        let (kind, data) = state_event(Err(e), 0);
        assert_eq!(kind, "error");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["error"]["code"], "store_unavailable");
        assert_eq!(v["error"]["message"], "PostgreSQL is unreachable");
        assert!(v.get("state").is_none(), "{v}");
    }

    #[test]
    fn a_state_carries_the_servers_clock() {
        let s: ServerState = serde_json::from_value(serde_json::json!({
            "state": "recovering", "role": "primary", "epoch": 2, "seq": 9,
            "schema_version": 1, "boot": "b", "store": "sqlite"
        }))
        .unwrap();
        let (kind, data) = state_event(Ok(s), 1_700_000_000_123);
        assert_eq!(kind, "state");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["state"], "recovering");
        assert_eq!(v["now_ms"], 1_700_000_000_123i64);
    }

    #[test]
    fn the_page_its_script_and_the_way_to_them_need_no_token() {
        for path in ["/", "/console", "/console/", "/console.js", "/v1/whoami"] {
            assert_eq!(
                super::super::guard::required_role(&Method::GET, path),
                None,
                "{path}"
            );
        }
        // The feed is data: a reader's.
        assert_eq!(
            super::super::guard::required_role(&Method::GET, "/v1/console/events"),
            Some(tidemark_api::auth::AccessRole::Reader)
        );
        assert!(
            !PAGE.contains("<script>") && PAGE.contains("<script src=\"/console.js\""),
            "no inline script: the policy would refuse it"
        );
    }
}
