//! Quiesce notices for service servers by name (S8: "application servers
//! are quiesced one at a time, locally or by name, remotely"). An admin
//! asks the DB server; the notice travels down the named service server's
//! watch stream as a `service_quiesce` event, and the service server takes
//! it as its own notice (it goes offline when it runs out).
//!
//! Invariants:
//! - A notice is sent only while a stream of that name that takes notices
//!   by name (`tidemark-takes-quiesce`) is open on this instance;
//!   otherwise nothing is stored and the caller is told: an operator is
//!   never told "sent" for a server that will not hear it (an older one
//!   skips the event).
//! - It is kept in the store under `service_quiesce/NAME`, so a stream
//!   that reopens (a reconnect, a DB-server restart, another instance of a
//!   cluster) is told again; a stream that opens with none stored is told
//!   `cancelled` (a cancel it missed while away).
//! - A notice whose deadline has passed is not sent to a stream that opens
//!   later, and is not taken as cancelled either: the server that heard it
//!   stays offline, and one restarted since (the maintenance it announced)
//!   serves. It stays stored until it is cancelled or replaced.
//! - On one instance, the note's write and what its streams are told go
//!   together ([`ORDER`]): a cancel racing a notice cannot leave a stream
//!   holding what the store no longer has.

use crate::hub::Push;
use crate::quiesce::Stored;
use crate::state::AppState;
use chrono::Utc;
use tidemark_api::event::QuiesceEvent;
use tidemark_api::state::QuiesceNotice;
use tidemark_store::StoreError;

/// Held from a note's write to the push that tells its streams.
static ORDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The store note of `name`'s notice.
fn note(name: &str) -> String {
    format!("service_quiesce/{name}")
}

async fn stored(app: &AppState, name: &str) -> Result<Option<Stored>, StoreError> {
    Ok(match app.store.note(&note(name)).await? {
        // A note this version cannot read counts as none (it is replaced by
        // the next notice or cancel).
        Some(text) => serde_json::from_str(&text).ok(),
        None => None,
    })
}

/// What was done for a notice.
#[derive(Debug)]
pub enum Sent {
    /// Sent to this many open streams of the name.
    To(usize, QuiesceNotice),
    /// No stream of the name that takes it is open here: nothing was
    /// stored or sent. `older`: streams of the name are open, of a service
    /// server too old to take a notice by name.
    NotConnected { older: usize },
}

/// What a cancel did.
#[derive(Debug, PartialEq)]
pub struct Cancelled {
    /// A notice was stored (and is no more).
    pub had: bool,
    /// The open streams of the name here, told `cancelled`.
    pub streams: usize,
}

/// Streams of `name` open here: all of them, and those that take notices
/// by name, with the name's id.
fn streams_of(app: &AppState, name: &str) -> (Option<crate::hub::SubscriberId>, usize, usize) {
    match app.hub.known(name) {
        Some(id) => {
            let (open, takers) = app.hub.open_streams(id);
            (Some(id), open, takers)
        }
        None => (None, 0, 0),
    }
}

/// Tells service server `name` that it goes offline in `seconds`.
pub async fn announce(
    app: &AppState,
    name: &str,
    seconds: u64,
    message: String,
) -> Result<Sent, StoreError> {
    let _order = ORDER.lock().await;
    let (id, open, takers) = streams_of(app, name);
    let Some(id) = id.filter(|_| takers > 0) else {
        return Ok(Sent::NotConnected { older: open });
    };
    let s = Stored {
        deadline: Utc::now() + chrono::Duration::seconds(seconds as i64),
        message,
    };
    app.store
        .set_note(&note(name), Some(serde_json::to_string(&s)?))
        .await?;
    let notice = s.view();
    // Debug-quoted: neither may forge log lines.
    tracing::warn!(service = ?name, seconds, notice = ?notice.message, "quiesce notice sent to a service server by name");
    app.hub.publish(Push::ServiceQuiesce(
        id,
        QuiesceEvent {
            notice: Some(notice.clone()),
            cancelled: false,
        },
    ));
    Ok(Sent::To(takers, notice))
}

/// Tells the streams of `name` open here what is stored, as one that opens
/// is told; returns how many. Another instance of a cluster asks this after
/// it stored a notice: a stream that moved here just before was told
/// `cancelled` when it opened.
pub async fn retell(app: &AppState, name: &str) -> Result<usize, StoreError> {
    let _order = ORDER.lock().await;
    let (id, _, takers) = streams_of(app, name);
    if let Some(id) = id.filter(|_| takers > 0) {
        if let Some(ev) = on_open(app, name).await? {
            app.hub.publish(Push::ServiceQuiesce(id, ev));
        }
    }
    Ok(takers)
}

/// Cancels the notice of service server `name`: removes it from the store
/// (a stream that opens later is told), and tells the streams of that name
/// open here, even with none stored (another instance of a cluster may
/// have removed it, and a stream here still holds it).
pub async fn cancel(app: &AppState, name: &str) -> Result<Cancelled, StoreError> {
    let _order = ORDER.lock().await;
    let had = app.store.note(&note(name)).await?.is_some();
    if had {
        app.store.set_note(&note(name), None).await?;
    }
    let (id, _, streams) = streams_of(app, name);
    if let Some(id) = id.filter(|_| streams > 0) {
        app.hub
            .publish(Push::ServiceQuiesce(id, QuiesceEvent::cancellation()));
    }
    if had || streams > 0 {
        tracing::info!(service = ?name, had, streams, "quiesce notice of a service server cancelled");
    }
    Ok(Cancelled { had, streams })
}

/// What a stream of `name` that opens (or caught up after a lag) is told:
/// the notice in force, a cancellation when none is stored, and nothing
/// for one whose deadline has passed (see the invariants).
pub async fn on_open(app: &AppState, name: &str) -> Result<Option<QuiesceEvent>, StoreError> {
    Ok(match stored(app, name).await? {
        Some(s) if s.deadline > Utc::now() => Some(QuiesceEvent {
            notice: Some(s.view()),
            cancelled: false,
        }),
        Some(_) => None,
        None => Some(QuiesceEvent::cancellation()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestServer;

    #[tokio::test]
    async fn a_stream_that_opens_is_told_the_notice_in_force_and_not_one_past_its_deadline() {
        let t = TestServer::open(async |_: &dyn tidemark_store::Store| {}).await;
        let app = &t.app;
        // Not connected: nothing stored.
        let sent = announce(app, "svc-1", 60, "m".into()).await.unwrap();
        assert!(matches!(sent, Sent::NotConnected { older: 0 }), "{sent:?}");
        assert_eq!(
            on_open(app, "svc-1").await.unwrap().map(|e| e.cancelled),
            Some(true)
        );
        let id = app.hub.subscriber("svc-1");
        // A stream of an older service server (it would skip the event):
        // not sent, and said.
        let older = app.hub.stream_opened(id, false);
        let sent = announce(app, "svc-1", 60, "m".into()).await.unwrap();
        assert!(matches!(sent, Sent::NotConnected { older: 1 }), "{sent:?}");
        drop(older);
        let _open = app.hub.stream_opened(id, true);
        let sent = announce(app, "svc-1", 60, "upgrade".into()).await.unwrap();
        assert!(matches!(sent, Sent::To(1, _)), "{sent:?}");
        let told = on_open(app, "svc-1").await.unwrap().unwrap();
        assert!(!told.cancelled);
        assert_eq!(told.notice.unwrap().message, "upgrade");
        // Another name is told it has none.
        assert!(on_open(app, "svc-2").await.unwrap().unwrap().cancelled);
        // Past its deadline: neither sent nor taken as cancelled.
        let past = Stored {
            deadline: Utc::now() - chrono::Duration::seconds(1),
            message: "old".into(),
        };
        app.store
            .set_note(&note("svc-1"), Some(serde_json::to_string(&past).unwrap()))
            .await
            .unwrap();
        assert!(on_open(app, "svc-1").await.unwrap().is_none());
        // Cancelled: stored no more, told as cancelled. A second cancel
        // still tells the open stream, with nothing stored; with none open
        // either, it does nothing.
        let c = |had, streams| Cancelled { had, streams };
        assert_eq!(cancel(app, "svc-1").await.unwrap(), c(true, 1));
        assert!(on_open(app, "svc-1").await.unwrap().unwrap().cancelled);
        assert_eq!(cancel(app, "svc-1").await.unwrap(), c(false, 1));
        drop(_open);
        assert_eq!(cancel(app, "svc-1").await.unwrap(), c(false, 0));
    }

    /// Another instance stored a notice: the streams of the name open here
    /// are told it (one that moved here was told `cancelled` on opening).
    #[tokio::test]
    async fn a_retell_tells_the_streams_open_here_what_is_stored() {
        let t = TestServer::open(async |_: &dyn tidemark_store::Store| {}).await;
        let app = &t.app;
        let id = app.hub.subscriber("svc-1");
        let mut pushes = app.hub.subscribe();
        assert_eq!(retell(app, "svc-1").await.unwrap(), 0, "no stream here");
        let _open = app.hub.stream_opened(id, true);
        let s = Stored {
            deadline: Utc::now() + chrono::Duration::seconds(60),
            message: "moving".into(),
        };
        app.store
            .set_note(&note("svc-1"), Some(serde_json::to_string(&s).unwrap()))
            .await
            .unwrap();
        assert_eq!(retell(app, "svc-1").await.unwrap(), 1);
        match pushes.try_recv() {
            Ok(Push::ServiceQuiesce(to, ev)) => {
                assert_eq!(to, id);
                assert_eq!(ev.notice.map(|n| n.message).as_deref(), Some("moving"));
            }
            other => panic!("expected the stored notice, got {other:?}"),
        }
        assert!(pushes.try_recv().is_err(), "told once");
    }
}
