//! `GET /v1/watch?subscriber=NAME`: the push stream of one service server
//! (P3), as Server-Sent Events, resumable with `Last-Event-ID`. The stream
//! itself is [`crate::watch`].

use super::error::HttpError;
use super::AppState;
use crate::auth::BindError;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::event::LeaseEvent;
use tidemark_api::{headers, ErrorCode, WatchEvent};
use tokio_stream::StreamExt;

#[derive(Debug, Deserialize)]
pub struct WatchQuery {
    subscriber: Option<String>,
}

/// Opens a watch stream.
pub async fn watch(
    State(app): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<super::guard::Caller>,
    query: Result<Query<WatchQuery>, QueryRejection>,
    req_headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let name = query
        .ok()
        .and_then(|Query(q)| q.subscriber)
        .filter(|n| tidemark_api::schema::is_service_name(n))
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::BadRequest,
                "the query parameter 'subscriber' (1 to 128 printable characters, not . or ..) is required: name the service server, e.g. /v1/watch?subscriber=svc-1",
            )
        })?;
    // A stream refused below must not leave a declaration of interest for
    // a later one that the subscriber did not declare for (it may have read
    // elsewhere since): that one would resume with incomplete interest.
    // A name never known here has none, and is not made known: a refused
    // request must not grow the names without end. Another token's name
    // keeps its declaration: its owner's next stream may resume.
    let refused = |e: HttpError| {
        if let Some(id) = app.hub.known(&name) {
            if !app.auth.held_by_another(&name, &caller.0) {
                app.hub.take_declared(id);
            }
        }
        e
    };
    if app.cluster.as_ref().is_some_and(|c| c.cut_off()) {
        return Err(refused(cut_off_error()));
    }
    let max = app.config.max_watch_per_token;
    let Some(permit) = app.streams.take(&caller.0, max) else {
        return Err(refused(HttpError::new(
            ErrorCode::TooManyStreams,
            format!(
                "'{}' already holds {max} watch streams open (the per-token limit, max_watch_per_token); close one, or give each service server its own token",
                caller.0.escape_debug()
            ),
        )
        .retry_after(5)));
    };
    // Claimed only once the stream may open: a refused one binds nothing.
    claim(&app, &caller, &name, "watches")
        .await
        .map_err(refused)?;
    let last = req_headers
        .get(headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok());
    let takes_quiesce = req_headers
        .get(headers::TAKES_QUIESCE)
        .is_some_and(|v| v.as_bytes() == b"1");
    let rx = crate::watch::open_taking(&app, &name, last, Some(permit), takes_quiesce).await?;
    // Counts the stream as connected (schema publication) until it ends.
    let reporting = req_headers
        .get(headers::REPORTS_SCHEMA)
        .is_some_and(|v| v.as_bytes() == b"1");
    let connection = crate::schema_publish::SchemaPublication::connect(&app, &name, reporting);
    // The stream ends when the instance is cut off from PostgreSQL: its
    // subscriber reconnects, is refused here, and moves to another
    // instance rather than trusting a cache nothing updates any more. It
    // also ends when its caller's token is revoked (or, in protected mode,
    // the first token is created).
    let cluster = app.cluster.clone();
    // The first after a period: `hello` comes first, and `synced` is
    // followed by a lease of its own.
    let check = Some(tokio::time::interval_at(
        tokio::time::Instant::now() + CUT_OFF_CHECK,
        CUT_OFF_CHECK,
    ));
    let state = OpenStream {
        rx,
        check,
        app: app.clone(),
        changes: app.auth.changes(),
        caller: caller.0.clone(),
        lease_now: false,
        last_lease: tokio::time::Instant::now(),
        last_id: None,
    };
    let events = futures::stream::unfold(state, move |mut st| {
        let cluster = cluster.clone();
        async move {
            if std::mem::take(&mut st.lease_now) {
                // Right after `synced`: the service server vouches for its
                // cache from here, not a tick later.
                st.last_lease = tokio::time::Instant::now();
                let id = st.last_id.clone();
                return lease(cluster.as_deref()).map(|ev| ((id, ev), st));
            }
            if behind_too_long(st.rx.len(), st.last_lease.elapsed()) {
                // Changes keep coming faster than they go out, so the tick
                // never wins: a lease that vouches for nothing keeps the
                // stream alive (its service server would drop it after 3 s
                // without one) and vouches for no cache the queue has not
                // reached.
                st.last_lease = tokio::time::Instant::now();
                let id = st.last_id.clone();
                return lease(cluster.as_deref()).map(|ev| ((id, vouching_nothing(ev)), st));
            }
            let tick = async {
                match st.check.as_mut() {
                    Some(c) => c.tick().await,
                    None => std::future::pending().await,
                }
            };
            // Queued changes go before a lease (a revocation before both):
            // a lease sent ahead of them would vouch for a cache they have
            // not reached yet.
            tokio::select! {
                biased;
                () = st.app.auth.until_revoked(&mut st.changes, &st.caller) => {
                    tracing::info!(caller = %st.caller.escape_debug(), "the caller's token was revoked: ending its watch stream");
                    None
                }
                next = st.rx.recv() => {
                    let (id, ev) = next?;
                    st.lease_now = matches!(ev, WatchEvent::Synced(_));
                    st.last_id = Some(id.clone());
                    Some(((Some(id), ev), st))
                }
                _ = tick => {
                    st.last_lease = tokio::time::Instant::now();
                    let id = st.last_id.clone();
                    lease(cluster.as_deref()).map(|ev| ((id, ev), st))
                }
            }
        }
    })
    .map(move |(id, ev): (Option<String>, WatchEvent)| {
        // Held as long as the stream is.
        let _held = &connection;
        let event = Event::default().event(ev.name()).data(ev.data());
        Ok(match id {
            Some(id) => event.id(id),
            None => event,
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Claims subscriber `name` for the caller's token (with tokens only; in
/// protected mode the loopback holds every name), or refuses: another
/// token's name, or one more than the token may hold. `doing` says what
/// the service server was doing ("watches", "reads", …).
pub async fn claim(
    app: &AppState,
    caller: &super::guard::Caller,
    name: &str,
    doing: &str,
) -> Result<(), HttpError> {
    if !app.auth.any() {
        return Ok(());
    }
    match app.auth.bind_subscriber(name, &caller.0).await {
        Ok(()) => Ok(()),
        Err(BindError::Taken(owner)) => {
            // The owner is named in the log only (a caller learns no other
            // token's name), once per 10 s: a caller repeating it cannot
            // flood the log.
            static SAID: tidemark_telemetry::Every =
                tidemark_telemetry::Every::new(std::time::Duration::from_secs(10));
            if let Some(times) = SAID.due() {
                tracing::info!(subscriber = ?name, owner = ?owner, caller = ?caller.0, times, "subscriber name refused: another token holds it");
            }
            Err(HttpError::new(
                ErrorCode::Forbidden,
                format!(
                    "subscriber '{}' belongs to another token (the server log names it); a service server {doing} with its own token and name",
                    name.escape_debug()
                ),
            ))
        }
        Err(e @ BindError::TooMany(_)) => Err(HttpError::new(
            ErrorCode::TooManySubscribers,
            format!(
                "subscriber '{}' is refused: {e} (max_subscribers_per_token); give each service server a stable name, or its own token",
                name.escape_debug()
            ),
        )),
    }
}

/// An open stream's state between its events.
struct OpenStream {
    rx: tokio::sync::mpsc::Receiver<(String, WatchEvent)>,
    /// When to check for a cut-off and send a `lease`.
    check: Option<tokio::time::Interval>,
    app: Arc<AppState>,
    /// The tokens changed: is the caller still one?
    changes: tokio::sync::watch::Receiver<u64>,
    caller: String,
    /// Send a `lease` before the next event.
    lease_now: bool,
    /// When the last `lease` went out.
    last_lease: tokio::time::Instant,
    /// The id of the last event sent, which a `lease` repeats (CONTRACT.md:
    /// every event has an id; a `lease` moves no resume position).
    last_id: Option<String>,
}

/// The `lease` event of an instance that is not cut off; `None` (the
/// stream ends, so its service server moves to another instance) if it is.
/// A single server, which nothing else writes beside, vouches for a fixed
/// while: its pushes are all there is, as long as they arrive.
fn lease(cluster: Option<&crate::cluster::Cluster>) -> Option<WatchEvent> {
    let Some(valid_for_ms) = (match cluster {
        Some(c) => c.vouched_for_ms(),
        None => Some(SINGLE_VOUCH_MS),
    }) else {
        tracing::warn!("cut off from PostgreSQL: ending a watch stream so its service server moves to another instance");
        return None;
    };
    // Not a change to resume from: the stream gives it the last event's id.
    Some(WatchEvent::Lease(LeaseEvent {
        valid_for_ms,
        sent_ms: Some(tidemark_api::clock::shown_ms()),
    }))
}

/// Whether a stream whose queue holds `queued` changes, and whose last
/// lease went out `since` ago, must send one that vouches for nothing.
fn behind_too_long(queued: usize, since: Duration) -> bool {
    queued > 0 && since >= CUT_OFF_CHECK * 2
}

/// `ev` (a lease) vouching for nothing.
fn vouching_nothing(ev: WatchEvent) -> WatchEvent {
    match ev {
        WatchEvent::Lease(l) => WatchEvent::Lease(LeaseEvent {
            valid_for_ms: 0,
            ..l
        }),
        other => other,
    }
}

/// How often an open stream checks that its instance still reaches
/// PostgreSQL and, if so, sends a `lease` event: well within a lease, so
/// a service server's vouch runs on while the instance runs.
const CUT_OFF_CHECK: Duration = Duration::from_millis(300);

/// How long a single server's `lease` says it vouches for: many checks,
/// and far less than the 35 s of silence that ends a stream (a service
/// server takes at most 1 s of it, counted from the sending: see its
/// `LEASE_FRESH_MS`).
const SINGLE_VOUCH_MS: u64 = 5_000;

fn cut_off_error() -> HttpError {
    HttpError::new(
        ErrorCode::NotReady,
        "this instance has not reached PostgreSQL for over a lease (or no longer surely holds it), so what it would stream may be outdated; watch another instance of the cluster (a service server given every instance with --db moves by itself)",
    )
    .retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that keeps falling behind still sends leases (its service
    /// server would drop it after 3 s without one), but only ones that
    /// vouch for nothing, and only while changes wait.
    #[test]
    fn a_stream_behind_sends_leases_that_vouch_for_nothing() {
        assert!(
            !behind_too_long(0, Duration::from_secs(10)),
            "nothing waits: the tick's lease"
        );
        assert!(
            !behind_too_long(5, CUT_OFF_CHECK),
            "a lease went out lately"
        );
        assert!(behind_too_long(5, CUT_OFF_CHECK * 2));
        let ev = vouching_nothing(WatchEvent::Lease(LeaseEvent {
            valid_for_ms: 900,
            sent_ms: Some(7),
        }));
        assert_eq!(
            ev,
            WatchEvent::Lease(LeaseEvent {
                valid_for_ms: 0,
                sent_ms: Some(7),
            })
        );
    }
}
