//! The watch stream of one service server (P3), without HTTP: what it is
//! sent, in which order, and from where it resumes.
//!
//! Invariants:
//! - The stream subscribes to the push queue *before* it reads the store's
//!   position, so every change committed after that position is either
//!   replayed from the change log or received from the queue; events at or
//!   below the cursor are skipped, so none is sent twice.
//! - `synced` is sent once everything missed has been sent; a service
//!   server vouches for its cache only after it (ARCHITECTURE.md).
//! - A replayed change is sent as the key's *current* record and flag.
//! - A stream that does not resume from an id drops its subscriber's
//!   interest, and sends no change published before that (`afresh`).

use crate::hub::{Push, SubscriberId};
use crate::state::AppState;
use std::sync::Arc;
use tidemark_api::event::{
    EpochEvent, EpochReason, EventId, HelloEvent, QuiesceEvent, SchemaEvent, SyncedEvent,
};
use tidemark_api::{RecordAnswer, Version, WatchEvent};
use tidemark_store::{Change, StoreError};
use tokio::sync::{broadcast, mpsc};

/// An event and its id.
pub type IdEvent = (String, WatchEvent);

/// Opens the stream of subscriber `name`, resuming after `last_event_id`
/// if it can. Events arrive on the receiver until it is dropped. `permit`
/// (the caller's place under `max_watch_per_token`) is held as long as the
/// stream's task runs, which is what the limit bounds: the task outlives
/// the HTTP body until it next looks whether its receiver is gone.
pub async fn open(
    app: &Arc<AppState>,
    name: &str,
    last_event_id: Option<&str>,
    permit: Option<crate::limits::StreamPermit>,
) -> Result<mpsc::Receiver<IdEvent>, StoreError> {
    open_taking(app, name, last_event_id, permit, false).await
}

/// [`open`], for a subscriber that says whether it takes quiesce notices by
/// name (`tidemark-takes-quiesce`, S8).
pub async fn open_taking(
    app: &Arc<AppState>,
    name: &str,
    last_event_id: Option<&str>,
    permit: Option<crate::limits::StreamPermit>,
    takes_quiesce: bool,
) -> Result<mpsc::Receiver<IdEvent>, StoreError> {
    let id = app.hub.subscriber(name);
    // Counted open before anything is decided: the idle sweep cannot
    // forget this subscriber between the resume decision and the stream.
    let counted = app.hub.stream_opened(id, takes_quiesce);
    // Subscribed first: a push from here on reaches this stream.
    let queue = app.hub.subscribe();
    let epochs_seen = app.hub.epoch_pushes();
    let forgets_seen = app.hub.forgets_of(id);
    // In a cluster, interest known here is complete only if the subscriber
    // declared it just before this stream (it may have read elsewhere).
    // Taken first, so a failed open leaves none for the next.
    let declared = app.hub.take_declared(id);
    let meta = app.store.meta().await?;
    let last = last_event_id.map(|s| s.parse::<EventId>());
    let (mut cursor, resumed, cannot_resume) = match last {
        Some(Ok(eid))
            if ours(app, &eid, declared)
                && eid.epoch == meta.epoch
                && eid.seq <= meta.seq
                && eid.seq + 1 >= meta.log_floor
                && app.hub.may_resume(id, eid.seq)
                && caught_up(app, eid.seq).await =>
        {
            (eid.seq, true, None)
        }
        Some(Ok(eid)) if rewound(app, &eid, declared, meta.epoch, meta.seq) => {
            tracing::warn!(subscriber = %name, id = %eid, "a stream id shows this store went back behind what its subscriber was told (a data directory put back by hand?): it treats everything it cached as foreign");
            (app.hub.watermark(), false, Some(EpochReason::Rewound))
        }
        Some(_) => (app.hub.watermark(), false, Some(EpochReason::CannotResume)),
        None => (app.hub.watermark(), false, None),
    };
    if cannot_resume.is_some() {
        // Everything the subscriber cached is suspect now and registers
        // again when read: interest starts afresh (see `hub.rs`). Not on a
        // first stream: a client may register keys before it watches.
        cursor = afresh(app, id, cursor);
    } else if !resumed {
        app.hub.opened_without_resuming(id);
    }
    tracing::info!(subscriber = %name, cursor, resumed, cannot_resume = cannot_resume.is_some(), "watch stream opened");
    let (tx, rx) = mpsc::channel(1024);
    let stream = WatchStream {
        app: app.clone(),
        id,
        name: name.to_owned(),
        epoch: meta.epoch,
        cursor,
        epochs_seen,
        forgets_seen,
        tx,
        _permit: permit,
        _counted: counted,
    };
    tokio::spawn(stream.run(queue, resumed, cannot_resume));
    Ok(rx)
}

/// Whether a stream id lets a subscriber resume here, given what it
/// `declared` it holds just before (the newest version among it, if it
/// said): the interest pushes follow must be known here whole.
/// - A cluster's id: with a declaration (it may have read elsewhere).
/// - A single server's own (this boot's): it kept the interest.
/// - One of an earlier boot of the same store history: with a declaration,
///   which brings back the interest that boot took with it, and only if
///   that boot's run in this store reached both the id and the newest
///   version the subscriber holds (`boots.rs`). A store put back by other
///   means than a restore may have gone on from below them, giving their
///   seqs to other changes: a record cached at such a seq (fetched after
///   the last push, so newer than the id) would never be replaced.
///   The change log holds what was missed (checked by the caller), so a
///   restart no longer makes every service server revalidate its cache.
fn ours(app: &AppState, eid: &EventId, declared: Option<Option<Version>>) -> bool {
    if app.cluster.is_some() {
        return eid.boot == app.stream_id && declared.is_some();
    }
    if eid.boot == app.stream_id {
        return true;
    }
    let Some(Some(newest)) = declared else {
        return false;
    };
    let Some(reach) = reach(eid, Some(newest)) else {
        return false;
    };
    earlier_boot(app, eid)
        .is_some_and(|boot| app.boots.ended_at(boot).is_some_and(|end| reach <= end))
}

/// The boot of a single server's stream id of this store's history, if it
/// is an earlier one than this process.
fn earlier_boot<'e>(app: &AppState, eid: &'e EventId) -> Option<&'e str> {
    if app.cluster.is_some() {
        return None;
    }
    eid.history_boot()
        .filter(|(history, boot)| *history == app.history && *boot != app.boot)
        .map(|(_, boot)| boot)
}

/// How far into the store a subscriber's knowledge reaches: its id's seq,
/// or the newest version it holds of the id's epoch if later. `None`: it
/// holds one of a later epoch than its id.
fn reach(eid: &EventId, newest: Option<Version>) -> Option<u64> {
    match newest.map(|v| (v.epoch.cmp(&eid.epoch), v.seq)) {
        None | Some((std::cmp::Ordering::Less, _)) => Some(eid.seq),
        Some((std::cmp::Ordering::Equal, seq)) => Some(eid.seq.max(seq)),
        Some((std::cmp::Ordering::Greater, _)) => None,
    }
}

/// Whether a single server's stream id that cannot resume shows the store
/// went back behind what its subscriber was told: an id of this store's
/// history (the epoch it is in) from a boot listed here whose run in this
/// store did not reach the id or the newest version the subscriber said
/// it holds, or from a boot not listed while every boot since the list
/// began is (a later boot, lost with the copy), or past the store's end.
/// A store that only pruned, restarted or was restored is none of these.
fn rewound(
    app: &AppState,
    eid: &EventId,
    declared: Option<Option<Version>>,
    epoch: u64,
    seq: u64,
) -> bool {
    if eid.epoch != epoch {
        return false;
    }
    let Some(boot) = earlier_boot(app, eid) else {
        return false;
    };
    if eid.seq > seq {
        return true;
    }
    match app.boots.ended_at(boot) {
        Some(end) => reach(eid, declared.flatten()).unwrap_or(eid.seq) > end,
        None => !app.boots.listed(boot) && app.boots.complete(),
    }
}

/// Where a stream that cannot resume starts, from `position` (the store's,
/// read after subscribing): its subscriber's interest is dropped, and the
/// stream skips every change published while it still held keys. Sent,
/// such a change (committed after `position`, before the interest went)
/// would leave its key cached as current, with no later change pushed.
fn afresh(app: &AppState, id: SubscriberId, position: u64) -> u64 {
    position.max(app.hub.start_afresh(id))
}

/// Whether this instance's own view (what it has published) reaches `seq`.
/// A standby trails the primary by a moment; a stream that resumes from an
/// id the primary gave waits for it, so no change at or below the id can
/// still be on its way here (and be skipped as already sent).
async fn caught_up(app: &Arc<AppState>, seq: u64) -> bool {
    let Some(cluster) = &app.cluster else {
        return true;
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        if cluster.is_primary() || app.hub.watermark() >= seq {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        cluster.tail_wake.notify_one();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// How far a replay from the change log may go: on a standby, only up to
/// what it has published (its read cache is coherent up to there; later
/// changes arrive from its tail, in order); on a primary, and after a
/// commit of unknown outcome (`Resync`: such a change was never published),
/// to the end of the log. A primary's ids may so run ahead of its
/// watermark: the floor of a revalidation is raised to the store's
/// position too (`Recovery::schedule`).
fn replay_bound(app: &AppState, to_end: bool) -> u64 {
    match &app.cluster {
        Some(c) if !to_end && !c.is_primary() => app.hub.watermark(),
        _ => u64::MAX,
    }
}

struct WatchStream {
    app: Arc<AppState>,
    id: SubscriberId,
    /// The subscriber's name (its quiesce notice is kept under it).
    name: String,
    epoch: u64,
    /// The last change-log seq this subscriber has been brought up to.
    cursor: u64,
    /// The hub's `Epoch` pushes this stream has had (or that came before it).
    epochs_seen: u64,
    /// Its subscriber's forgettings when it opened.
    forgets_seen: u64,
    tx: mpsc::Sender<IdEvent>,
    _permit: Option<crate::limits::StreamPermit>,
    _counted: crate::hub::OpenStream,
}

impl WatchStream {
    fn event_id(&self) -> String {
        EventId {
            epoch: self.epoch,
            seq: self.cursor,
            boot: self.app.stream_id.clone(),
        }
        .to_string()
    }

    async fn send(&self, ev: WatchEvent) -> bool {
        let ok = self.tx.send((self.event_id(), ev)).await.is_ok();
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
        // The blanket is read before the store (see `read.rs`).
        let blanket = self.app.recovery.blanket();
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
                    flagged: now.flagged || blanket,
                };
                self.send_change(&current).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch replay could not read a record; closing the stream");
                false
            }
        }
    }

    /// Sends every logged change after the cursor that this subscriber holds
    /// (up to [`replay_bound`]). Returns false if the stream is gone.
    async fn replay(&mut self, to_end: bool) -> bool {
        loop {
            // A subscriber that left is not replayed to: with nothing it
            // holds in the log nothing is sent, so a failed send would
            // never tell (a whole log's scan, its CPU and store reads, for
            // nobody).
            if self.tx.is_closed() {
                return false;
            }
            let meta = match self.app.store.meta().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "watch replay could not read the store; closing the stream");
                    return false;
                }
            };
            if self.cursor + 1 < meta.log_floor {
                // The log no longer reaches back: the subscriber must revalidate.
                self.cursor = meta.seq.min(replay_bound(&self.app, to_end));
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
            let bound = replay_bound(&self.app, to_end);
            if page.first().is_none_or(|c| c.version.seq > bound) {
                return true;
            }
            for c in page.into_iter().take_while(|c| c.version.seq <= bound) {
                self.cursor = c.version.seq;
                if self.app.hub.holds(self.id, &c.table, &c.key) && !self.send_current(&c).await {
                    return false;
                }
            }
        }
    }

    /// Catches up after skipped pushes: changes from the change log, then
    /// what the log does not hold, as it stands now: an `epoch` event if
    /// one was skipped (the subscriber revalidates), the schema version and
    /// the quiesce notice (or its cancel). A skipped `Forget` of this
    /// subscriber ends the stream.
    async fn after_lag(&mut self) -> bool {
        if self.app.hub.forgets_of(self.id) > self.forgets_seen {
            return false;
        }
        if !self.replay(false).await {
            return false;
        }
        let epochs = self.app.hub.epoch_pushes();
        if epochs > self.epochs_seen {
            self.epochs_seen = epochs;
            let ev = EpochEvent {
                epoch: self.epoch,
                reason: EpochReason::CannotResume,
            };
            if !self.send(WatchEvent::Epoch(ev)).await {
                return false;
            }
        }
        let version = self.app.store.schema().version;
        if !self.send(WatchEvent::Schema(SchemaEvent { version })).await {
            return false;
        }
        let notice = self.app.quiesce.notice();
        let cancelled = notice.is_none();
        if !self
            .send(WatchEvent::Quiesce(QuiesceEvent { notice, cancelled }))
            .await
        {
            return false;
        }
        self.send_own_notice().await
    }

    /// This subscriber's own quiesce notice by name (S8), as stored: sent
    /// when the stream opens and after a lag (`service_quiesce.rs`).
    async fn send_own_notice(&self) -> bool {
        match crate::service_quiesce::on_open(&self.app, &self.name).await {
            Ok(Some(ev)) => self.send(WatchEvent::ServiceQuiesce(ev)).await,
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the service server's quiesce notice; closing the stream");
                false
            }
        }
    }

    async fn run(
        mut self,
        mut queue: broadcast::Receiver<Push>,
        resumed: bool,
        cannot_resume: Option<EpochReason>,
    ) {
        self.app.metrics.watchers.add(1);
        let hello = HelloEvent {
            epoch: self.epoch,
            seq: self.cursor,
            boot: self.app.boot.clone(),
            resumed,
            declare: self.app.cluster.is_some(),
            // Every server vouches with `lease` events (a single one too:
            // a stream whose pushes stop arriving, a half-open connection,
            // stops vouching within a lease, not after 35 s of silence).
            vouches: true,
            history: self.app.history.clone(),
            schema_version: self.app.store.schema().version,
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
        if alive {
            alive = self.send_own_notice().await;
        }
        if let (true, Some(reason)) = (alive, cannot_resume) {
            alive = self
                .send(WatchEvent::Epoch(EpochEvent {
                    epoch: self.epoch,
                    reason,
                }))
                .await;
        }
        if alive && resumed {
            alive = self.replay(false).await;
        }
        // Forgotten since it opened (over its interest limit, or idle): its
        // interest is gone, so neither the replay nor the pushes to come
        // cover what it cached. It must not say `synced` (its subscriber
        // would vouch for that cache): it ends, and its next stream cannot
        // resume. Later forgettings arrive as `Forget` pushes.
        alive = alive && self.app.hub.forgets_of(self.id) == self.forgets_seen;
        if alive {
            // Everything missed has been sent: the subscriber may vouch for
            // its cache from here on.
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
                    self.epochs_seen += 1;
                    self.epoch = e.epoch;
                    self.send(WatchEvent::Epoch(e)).await
                }
                Ok(Push::Resync) => self.replay(true).await,
                Ok(Push::Quiesce(q)) => self.send(WatchEvent::Quiesce(q)).await,
                Ok(Push::ServiceQuiesce(id, q)) => {
                    id != self.id || self.send(WatchEvent::ServiceQuiesce(q)).await
                }
                Ok(Push::Schema(s)) => self.send(WatchEvent::Schema(s)).await,
                // Its interest was dropped: the subscriber reconnects and
                // cannot resume (`open`).
                Ok(Push::Forget(id)) => id != self.id,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        skipped = n,
                        "watch stream fell behind the push queue (push_queue); catching up from the change log"
                    );
                    self.after_lag().await
                }
                Err(broadcast::error::RecvError::Closed) => false,
            };
        }
        self.app.metrics.watchers.add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{upsert, TestServer};
    use tidemark_store::Store;

    /// The next event but the one every stream gets when it opens while
    /// its subscriber has no quiesce notice by name (`service_quiesce.rs`).
    async fn next(rx: &mut mpsc::Receiver<IdEvent>) -> IdEvent {
        loop {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("an event")
                .expect("stream open");
            match &got.1 {
                WatchEvent::ServiceQuiesce(q) if q.cancelled => continue,
                _ => return got,
            }
        }
    }

    fn plan(ev: &WatchEvent) -> String {
        match ev {
            WatchEvent::Update(a) | WatchEvent::Recovered(a) => a.fields.as_ref().unwrap()["plan"]
                .as_str()
                .unwrap()
                .to_owned(),
            other => panic!("not a record: {other:?}"),
        }
    }

    /// A stream that falls behind the push queue catches up on what the
    /// change log cannot replay: a skipped `epoch` event (here flags_added)
    /// comes as one, then the schema version and the quiesce state as they
    /// stand. Before, it replayed the log only, and those were lost.
    #[tokio::test]
    async fn a_stream_that_falls_behind_is_told_what_the_log_cannot_replay() {
        let config = crate::config::ServerConfig {
            push_queue: 16,
            ..Default::default()
        };
        let t = TestServer::open_with(config, async |_: &dyn Store| {}).await;
        let app = &t.app;
        // A notice by name for `svc` (S8), as `service_quiesce.rs` stores it.
        let deadline = chrono::Utc::now() + chrono::Duration::seconds(600);
        let note = serde_json::json!({"deadline": deadline, "message": "moving"});
        app.store
            .set_note("service_quiesce/svc", Some(note.to_string()))
            .await
            .unwrap();
        let mut rx = open(app, "svc", None, None).await.unwrap();
        // On this (current-thread) runtime the stream's task has not run
        // yet: the queue overflows before it reads, dropping the epoch.
        app.hub.publish(Push::Epoch(EpochEvent {
            epoch: 1,
            reason: EpochReason::FlagsAdded,
        }));
        for version in 0..20 {
            app.hub
                .publish(Push::Schema(tidemark_api::event::SchemaEvent { version }));
        }
        let mut epochs = 0;
        loop {
            match next(&mut rx).await.1 {
                WatchEvent::Epoch(_) => epochs += 1,
                WatchEvent::Schema(s) => assert_eq!(s.version, app.store.schema().version),
                WatchEvent::Quiesce(q) => {
                    assert!(q.cancelled && q.notice.is_none());
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(epochs, 1, "the skipped epoch event is made up for");
        // And its own notice by name, which a skipped push may have carried.
        match next(&mut rx).await.1 {
            WatchEvent::ServiceQuiesce(q) => {
                assert_eq!(q.notice.map(|n| n.message).as_deref(), Some("moving"))
            }
            other => panic!("expected the notice by name, got {other:?}"),
        }
    }

    /// A server whose subscribers may hold 2 keys, with subscriber `svc`'s
    /// first stream open and synced: the stream and its last event id.
    async fn synced_with_interest_limit_2() -> (TestServer, mpsc::Receiver<IdEvent>, String) {
        let config = crate::config::ServerConfig {
            max_interest_per_subscriber: 2,
            ..Default::default()
        };
        let t = TestServer::open_with(config, async |_: &dyn Store| {}).await;
        let mut rx = open(&t.app, "svc", None, None).await.unwrap();
        next(&mut rx).await;
        let (last_id, ev) = next(&mut rx).await;
        assert!(matches!(ev, WatchEvent::Synced(_)));
        (t, rx, last_id)
    }

    /// A subscriber forgotten while its stream opens (here over its
    /// interest limit, between the resume decision and the stream's start;
    /// the idle sweep cannot, the stream is counted first) gets no
    /// `synced`: its cache would be vouched for with its interest gone.
    #[tokio::test]
    async fn a_stream_forgotten_while_it_opens_never_says_synced() {
        let (t, rx, last_id) = synced_with_interest_limit_2().await;
        let app = &t.app;
        drop(rx);
        // The test runs on one thread: the new stream's task has not run
        // when `open` returns, so the forgetting falls between the two.
        let mut rx = open(app, "svc", Some(&last_id), None).await.unwrap();
        let id = app.hub.subscriber("svc");
        for key in ["k1", "k2", "k3"] {
            app.hub.register(id, "subscriber", key);
        }
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if h.resumed));
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("the stream ends")
            {
                None => break,
                Some((_, WatchEvent::Synced(_))) => panic!("synced after being forgotten"),
                Some(_) => {}
            }
        }
        assert!(!app.hub.may_resume(id, app.hub.watermark()));
    }

    /// A subscriber over its interest limit loses its stream, and the next
    /// one cannot resume: the service server revalidates what it cached,
    /// since changes of keys it held were no longer pushed.
    #[tokio::test]
    async fn a_subscriber_over_its_interest_limit_restarts_without_resuming() {
        let (t, mut rx, last_id) = synced_with_interest_limit_2().await;
        let app = &t.app;
        let id = app.hub.subscriber("svc");
        for key in ["k1", "k2", "k3"] {
            app.hub.register(id, "subscriber", key);
        }
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("the stream ends");
        assert!(ended.is_none(), "the stream ends: {ended:?}");
        let mut rx = open(app, "svc", Some(&last_id), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Epoch(_)));
    }

    /// A stream's place under `max_watch_per_token` is held by its task,
    /// which can outlive the HTTP body (a resume replaying the log after its
    /// client left), and freed when the task ends.
    #[tokio::test]
    async fn a_stream_holds_its_place_until_its_task_ends() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let streams = crate::limits::Streams::default();
        let permit = streams.take("caller", 1).unwrap();
        let mut rx = open(&t.app, "svc", None, Some(permit)).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(_)));
        assert!(streams.take("caller", 1).is_none(), "its place is taken");
        drop(rx);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while streams.take("caller", 1).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place was never freed"
            );
            tokio::task::yield_now().await;
        }
    }

    /// A stream that opens is told, before `synced`, whether its
    /// subscriber has a quiesce notice by name in force (S8): here none,
    /// which ends one it may hold from a cancel it missed.
    #[tokio::test]
    async fn a_stream_is_told_its_notice_by_name_before_synced() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let mut rx = open_taking(&t.app, "svc", None, None, true).await.unwrap();
        let mut names = Vec::new();
        loop {
            let (_, ev) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("an event")
                .expect("stream open");
            names.push(ev.name());
            if let WatchEvent::ServiceQuiesce(q) = &ev {
                assert!(q.cancelled && q.notice.is_none(), "{q:?}");
            }
            if matches!(ev, WatchEvent::Synced(_)) {
                break;
            }
        }
        assert_eq!(names, ["hello", "service_quiesce", "synced"]);
    }

    #[tokio::test]
    async fn a_resumed_stream_replays_current_records_then_says_synced() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let app = &t.app;
        let id = app.hub.subscriber("svc");
        app.hub.register(id, "subscriber", "k");
        let mut rx = open(app, "svc", None, None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
        let (last_id, ev) = next(&mut rx).await;
        assert!(matches!(ev, WatchEvent::Synced(_)));
        drop(rx);
        // Missed while away: two changes of a held key, one of another key.
        for (seq, plan) in [(1, "a"), (2, "b")] {
            app.committer
                .submit(vec![upsert("o", seq, "k", plan)])
                .await
                .unwrap();
        }
        app.committer
            .submit(vec![upsert("o", 3, "other", "x")])
            .await
            .unwrap();
        let mut rx = open(app, "svc", Some(&last_id), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if h.resumed));
        // Both logged changes are sent as the current record, never "a".
        let mut replayed = Vec::new();
        loop {
            match next(&mut rx).await.1 {
                WatchEvent::Synced(_) => break,
                ev => replayed.push(plan(&ev)),
            }
        }
        assert_eq!(replayed, vec!["b", "b"]);
        // Then live pushes, of held keys only.
        app.committer
            .submit(vec![upsert("o", 4, "other", "y"), upsert("o", 5, "k", "c")])
            .await
            .unwrap();
        assert_eq!(plan(&next(&mut rx).await.1), "c");
    }

    /// A change committed after a stream that cannot resume read the
    /// store's position, and published before it dropped its subscriber's
    /// interest, is not sent: the interest is gone, so the key's next
    /// change would not be, and the service server would serve the first
    /// as current for good. A CI run once saw an accept-stale server keep
    /// a recovering record that way after its DB server restarted in the
    /// middle of a recovery.
    #[tokio::test]
    async fn a_stream_that_cannot_resume_sends_no_change_published_under_the_interest_it_drops() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let app = &t.app;
        let id = app.hub.subscriber("svc");
        app.hub.register(id, "subscriber", "k");
        // What `open` does, with the commit landing in its window.
        let mut queue = app.hub.subscribe();
        let position = app.store.meta().await.unwrap().seq;
        app.committer
            .submit(vec![upsert("o", 1, "k", "a")])
            .await
            .unwrap();
        let cursor = afresh(app, id, position);
        let Ok(Push::Change(c, holders)) = queue.try_recv() else {
            panic!("the change was published");
        };
        assert!(holders.contains(&id), "published while svc held k");
        assert!(
            c.version.seq <= cursor,
            "the stream starts past it (cursor {cursor})"
        );
        // Later changes of k go to nobody until a read registers again.
        app.committer
            .submit(vec![upsert("o", 2, "k", "b")])
            .await
            .unwrap();
        match queue.try_recv() {
            Ok(Push::Change(c, holders)) => {
                assert!(c.version.seq > cursor && !holders.contains(&id))
            }
            other => assert!(other.is_err(), "{other:?}"),
        }
        assert!(!app.hub.holds(id, "subscriber", "k"));
    }

    /// A service server away while keys were flagged after the schedule
    /// list was final (`flags_added`) cannot resume: the change log holds
    /// no flag, so a replay would not tell it, and it would serve those
    /// keys as current. Before, it resumed.
    #[tokio::test]
    async fn a_stream_away_during_a_revalidation_does_not_resume() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let app = &t.app;
        let mut rx = open(app, "svc", None, None).await.unwrap();
        next(&mut rx).await;
        let (last_id, _) = next(&mut rx).await;
        drop(rx);
        app.hub.publish(Push::Epoch(EpochEvent {
            epoch: 1,
            reason: EpochReason::FlagsAdded,
        }));
        let mut rx = open(app, "svc", Some(&last_id), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Epoch(_)));
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Synced(_)));
        // Its next stream, from an id given after the revalidation, does.
        let last_id = next_id(&mut rx, app).await;
        drop(rx);
        let mut rx = open(app, "svc", Some(&last_id), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if h.resumed));
    }

    /// The id of the next event after a commit of a key `svc` holds.
    async fn next_id(rx: &mut mpsc::Receiver<IdEvent>, app: &Arc<AppState>) -> String {
        let id = app.hub.subscriber("svc");
        app.hub.register(id, "subscriber", "k");
        app.committer
            .submit(vec![upsert("o", 1, "k", "a")])
            .await
            .unwrap();
        next(rx).await.0
    }

    /// A stream of an earlier boot of this store resumes only with a
    /// declaration that says what it holds, and only if that boot's run in
    /// this store reached both its id and the newest version it holds: a
    /// store put back by hand may have given the seqs after it to other
    /// changes (an outside audit: a record fetched at seq 7 after the id's
    /// last push, on a copy put back at seq 6, was served as current for
    /// good once the seq was reused).
    #[tokio::test]
    async fn an_earlier_boot_resumes_only_as_far_as_it_ran_here() {
        use tidemark_api::Version;
        // Boot "b0" ran here from seq 0 to 6; "boot1" began at 6.
        let t = TestServer::open(async |store: &dyn Store| {
            crate::boots::record(store, "b0", 0).await.unwrap();
            let orders: Vec<_> = (1..=6).map(|i| upsert("o", i, "k", "a")).collect();
            store.apply(orders).await.unwrap();
        })
        .await;
        let app = &t.app;
        let svc = app.hub.subscriber("svc");
        let id = |seq: u64| format!("1-{seq}-{}.b0", app.history);
        let resumes = async |seq: u64, declared: Option<Option<Version>>| {
            if let Some(newest) = declared {
                app.hub.declare(svc, newest);
            }
            let mut rx = open(app, "svc", Some(&id(seq)), None).await.unwrap();
            let WatchEvent::Hello(h) = next(&mut rx).await.1 else {
                panic!("a hello first")
            };
            h.resumed
        };
        assert!(resumes(2, Some(Some(Version::new(1, 6)))).await);
        assert!(resumes(6, Some(Some(Version::new(1, 0)))).await);
        assert!(
            resumes(2, Some(Some(Version::new(0, 9)))).await,
            "an older epoch's"
        );
        assert!(
            !resumes(2, Some(Some(Version::new(1, 7)))).await,
            "holds seq 7"
        );
        assert!(
            !resumes(2, Some(Some(Version::new(2, 1)))).await,
            "a later epoch"
        );
        assert!(
            !resumes(7, Some(Some(Version::new(1, 0)))).await,
            "an id past b0's run"
        );
        assert!(
            !resumes(2, Some(None)).await,
            "a declaration that does not say"
        );
        assert!(!resumes(2, None).await, "no declaration");
        // Refused for showing the store went back (`rewound`: the service
        // server then trusts nothing it cached), or for less.
        let refused = async |stream: String, declared: Option<Version>| {
            app.hub.declare(svc, declared);
            let mut rx = open(app, "svc", Some(&stream), None).await.unwrap();
            assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
            match next(&mut rx).await.1 {
                WatchEvent::Epoch(e) => e.reason,
                other => panic!("an epoch, not {other:?}"),
            }
        };
        let rewound = EpochReason::Rewound;
        assert_eq!(
            refused(id(2), Some(Version::new(1, 7))).await,
            rewound,
            "held seq 7"
        );
        assert_eq!(
            refused(id(7), Some(Version::new(1, 0))).await,
            rewound,
            "id past the run"
        );
        let later = format!("1-2-{}.b9", app.history);
        assert_eq!(refused(later, None).await, rewound, "a boot after the copy");
        let cannot = EpochReason::CannotResume;
        assert_eq!(
            refused(id(2), None).await,
            cannot,
            "undeclared, within the run"
        );
        assert_eq!(
            refused("1-2-hother.b0".into(), None).await,
            cannot,
            "another history"
        );
        let other_epoch = format!("2-2-{}.b0", app.history);
        assert_eq!(refused(other_epoch, None).await, cannot, "another epoch");
        // An id of another history, or of a boot not listed here: never.
        app.hub.declare(svc, Some(Version::new(1, 1)));
        let mut rx = open(app, "svc", Some("1-2-hother.b0"), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
        app.hub.declare(svc, Some(Version::new(1, 1)));
        let other = format!("1-2-{}.b9", app.history);
        let mut rx = open(app, "svc", Some(&other), None).await.unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
    }

    #[tokio::test]
    async fn an_id_from_another_boot_cannot_resume() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let mut rx = open(&t.app, "svc", Some("1-0-otherboot"), None)
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Hello(h) if !h.resumed));
        assert!(matches!(
            next(&mut rx).await.1,
            WatchEvent::Epoch(EpochEvent {
                reason: EpochReason::CannotResume,
                ..
            })
        ));
        assert!(matches!(next(&mut rx).await.1, WatchEvent::Synced(_)));
    }
}
