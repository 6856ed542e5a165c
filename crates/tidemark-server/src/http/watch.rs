//! `GET /v1/watch?subscriber=NAME`: the push stream of one service server
//! (P3), as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! Invariant: the stream subscribes to the push queue *before* it reads the
//! store's position, so every change committed after that position is
//! either replayed from the change log or received from the queue; events
//! at or below the cursor are skipped, so none is sent twice.

use super::error::HttpError;
use super::AppState;
use crate::hub::{Push, SubscriberId};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::event::{
    EpochEvent, EpochReason, EventId, HelloEvent, QuiesceEvent, SyncedEvent,
};
use tidemark_api::{headers, ErrorCode, RecordAnswer, WatchEvent};
use tidemark_store::Change;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

#[derive(Debug, Deserialize)]
pub struct WatchQuery {
    subscriber: Option<String>,
}

/// Opens a watch stream.
pub async fn watch(
    State(app): State<Arc<AppState>>,
    query: Result<Query<WatchQuery>, QueryRejection>,
    req_headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let name = query
        .ok()
        .and_then(|Query(q)| q.subscriber)
        .filter(|n| !n.is_empty() && n.len() <= 128)
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::BadRequest,
                "the query parameter 'subscriber' (1 to 128 bytes) is required: name the service server, e.g. /v1/watch?subscriber=svc-1",
            )
        })?;
    let id = app.hub.subscriber(&name);
    let queue = app.hub.subscribe();
    let meta = app.store.meta().await?;
    let last = req_headers
        .get(headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.parse::<EventId>());
    let (cursor, resumed, cannot_resume) = match last {
        Some(Ok(eid))
            if eid.boot == app.boot
                && eid.epoch == meta.epoch
                && eid.seq <= meta.seq
                && eid.seq + 1 >= meta.log_floor =>
        {
            (eid.seq, true, false)
        }
        Some(_) => (meta.seq, false, true),
        None => (meta.seq, false, false),
    };
    tracing::info!(subscriber = %name, cursor, resumed, cannot_resume, "watch stream opened");
    let (tx, rx) = mpsc::channel(1024);
    let stream = WatchStream {
        app: app.clone(),
        id,
        epoch: meta.epoch,
        cursor,
        tx,
    };
    tokio::spawn(stream.run(queue, resumed, cannot_resume));
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct WatchStream {
    app: Arc<AppState>,
    id: SubscriberId,
    epoch: u64,
    /// The last change-log seq this subscriber has been brought up to.
    cursor: u64,
    tx: mpsc::Sender<Event>,
}

impl WatchStream {
    fn event_id(&self) -> String {
        EventId {
            epoch: self.epoch,
            seq: self.cursor,
            boot: self.app.boot.clone(),
        }
        .to_string()
    }

    async fn send(&self, ev: WatchEvent) -> bool {
        let event = Event::default()
            .id(self.event_id())
            .event(ev.name())
            .data(ev.data());
        let ok = self.tx.send(event).await.is_ok();
        if ok {
            self.app.metrics.pushes.inc();
        }
        ok
    }

    async fn send_change(&self, c: &Change) -> bool {
        let recovering = c.flagged || self.app.recovery.blanket();
        let answer = match &c.fields {
            Some(f) => RecordAnswer {
                table: c.table.clone(),
                key: c.key.clone(),
                found: true,
                fields: Some(f.clone()),
                version: Some(c.version),
                recovering,
                source: None,
            },
            None => RecordAnswer::missing(&c.table, &c.key, Some(c.version), recovering),
        };
        self.send(if c.cleared_flag {
            WatchEvent::Recovered(answer)
        } else {
            WatchEvent::Update(answer)
        })
        .await
    }

    /// Replays a logged change as the key's *current* record and flag. The
    /// log has no flag state, and an old change of a key that is still being
    /// recovered must not be taken as current; the current record never is
    /// outdated, and sending it twice is harmless (caches order by version).
    async fn send_current(&self, c: &Change) -> bool {
        match self.app.store.get(&c.table, &c.key).await {
            Ok(now) => {
                let current = Change {
                    table: c.table.clone(),
                    key: c.key.clone(),
                    version: now
                        .record
                        .as_ref()
                        .map(|r| r.version)
                        .or(now.tombstone)
                        .unwrap_or(c.version),
                    fields: now.record.map(|r| r.fields),
                    cleared_flag: c.cleared_flag && !now.flagged,
                    flagged: now.flagged,
                };
                self.send_change(&current).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch replay could not read a record; closing the stream");
                false
            }
        }
    }

    /// Sends every logged change after the cursor that this subscriber holds.
    /// Returns false if the stream is gone.
    async fn replay(&mut self) -> bool {
        loop {
            let meta = match self.app.store.meta().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "watch replay could not read the store; closing the stream");
                    return false;
                }
            };
            if self.cursor + 1 < meta.log_floor {
                // The log no longer reaches back: the subscriber must revalidate.
                self.cursor = meta.seq;
                return self
                    .send(WatchEvent::Epoch(EpochEvent {
                        epoch: self.epoch,
                        reason: EpochReason::CannotResume,
                    }))
                    .await;
            }
            let page = match self.app.store.changes_since(self.cursor, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "watch replay failed; closing the stream");
                    return false;
                }
            };
            if page.is_empty() {
                return true;
            }
            for c in page {
                self.cursor = c.version.seq;
                if self.app.hub.holds(self.id, &c.table, &c.key) && !self.send_current(&c).await {
                    return false;
                }
            }
        }
    }

    async fn run(
        mut self,
        mut queue: broadcast::Receiver<Push>,
        resumed: bool,
        cannot_resume: bool,
    ) {
        self.app.metrics.watchers.add(1);
        let hello = HelloEvent {
            epoch: self.epoch,
            seq: self.cursor,
            boot: self.app.boot.clone(),
            resumed,
        };
        let mut alive = self.send(WatchEvent::Hello(hello)).await;
        if let (true, Some(notice)) = (alive, self.app.quiesce.notice()) {
            alive = self
                .send(WatchEvent::Quiesce(QuiesceEvent {
                    notice: Some(notice),
                    cancelled: false,
                }))
                .await;
        }
        if alive && cannot_resume {
            alive = self
                .send(WatchEvent::Epoch(EpochEvent {
                    epoch: self.epoch,
                    reason: EpochReason::CannotResume,
                }))
                .await;
        }
        if alive && resumed {
            alive = self.replay().await;
        }
        if alive {
            // Everything missed has been sent: the subscriber may vouch for
            // its cache from here on (see ARCHITECTURE.md, "What a service
            // server may serve").
            alive = self
                .send(WatchEvent::Synced(SyncedEvent { seq: self.cursor }))
                .await;
        }
        while alive {
            let push = tokio::select! {
                _ = self.app.shutdown.cancelled() => break,
                _ = self.tx.closed() => break,
                p = queue.recv() => p,
            };
            alive = match push {
                Ok(Push::Change(c, holders)) => {
                    if c.version.seq <= self.cursor {
                        continue;
                    }
                    self.cursor = c.version.seq;
                    !holders.contains(&self.id) || self.send_change(&c).await
                }
                Ok(Push::Epoch(e)) => {
                    self.epoch = e.epoch;
                    self.send(WatchEvent::Epoch(e)).await
                }
                Ok(Push::Quiesce(q)) => self.send(WatchEvent::Quiesce(q)).await,
                Ok(Push::Schema(s)) => self.send(WatchEvent::Schema(s)).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(
                        skipped = n,
                        "watch stream lagged; replaying from the change log"
                    );
                    self.replay().await
                }
                Err(broadcast::error::RecvError::Closed) => false,
            };
        }
        self.app.metrics.watchers.add(-1);
    }
}
