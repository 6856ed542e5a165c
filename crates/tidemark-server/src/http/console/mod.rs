//! `GET /console`: the operator's live page (state, recovery progress and a
//! chart, flagged keys, the quiesce countdown; admin actions with a token
//! entered on the page and kept for the session only), and its event
//! stream `GET /v1/console/events`. The page is embedded in the binary: no
//! CDN, no build step.

use super::error::HttpError;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("index.html");

/// The page itself; it holds no data, so it needs no token.
pub async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// The page's live feed: first `progress` (the remaining flags sampled
/// since the recovery started, `[[unix ms, remaining], …]`), then `state`
/// (as `GET /v1/state`) once a second, as server-sent events.
pub async fn events(
    State(app): State<Arc<AppState>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    // The first event at once, then one a second.
    let progress = serde_json::to_string(&app.progress.samples()).unwrap_or_default();
    let first =
        futures::stream::once(async move { Ok(Event::default().event("progress").data(progress)) });
    let stream = futures::stream::unfold((app, true), |(app, first)| async move {
        if !first {
            tokio::select! {
                _ = app.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let data = match super::probes::state(State(app.clone())).await {
            Ok(axum::Json(s)) => serde_json::to_string(&s).unwrap_or_default(),
            Err(e) => serde_json::json!({"error": e.error}).to_string(),
        };
        Some((Ok(Event::default().event("state").data(data)), (app, false)))
    });
    Ok(
        Sse::new(first.chain(stream))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}
