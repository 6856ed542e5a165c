//! The recovery state machine of the DB server (P5–P10).
//!
//! `normal` → `recovering` (set by restore, patent step 2) → `recovered` once the OpS
//! has said it is complete and no flag remains (patent step 10) → `normal` after a hold
//! period. The state lives in the store, so it survives restarts; this
//! module keeps a copy for the read path.
//!
//! Invariant: from the restore until the final chunk of the schedule list,
//! the server cannot know which records are outdated, so every read and
//! every push is marked recovering (the *blanket*).

use crate::hub::{Hub, Push};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, so tests can pause and advance it.
use tidemark_api::event::{EpochEvent, EpochReason};
use tidemark_api::state::ScheduleEntry;
use tidemark_api::{RecoveryState, RecoveryStatus};
use tidemark_store::{FlagEntry, FlagsAdded, RecoveryMeta, Store, StoreError};
use tokio::time::Instant;

/// The recovery state of one server.
pub struct Recovery {
    store: Arc<dyn Store>,
    meta: RwLock<RecoveryMeta>,
    blanket: AtomicBool,
    /// When clearing started and how many flags were left then (for the ETA).
    clearing_since: RwLock<Option<(Instant, chrono::DateTime<chrono::Utc>, u64)>>,
    recovered_at: RwLock<Option<Instant>>,
    /// Serialises state transitions.
    transition: tokio::sync::Mutex<()>,
    /// Flags were added after the list was final and their `flags_added`
    /// is not out yet (a step after the commit failed): the chunk's retry
    /// sends it, though its flags are no longer new then.
    owed_flags_added: AtomicBool,
    /// [`Recovery::maybe_finish`] dropped flags whose order had been
    /// applied to another key, and their `flags_settled` is not out yet.
    owed_flags_settled: AtomicBool,
    /// When flags were last settled: a scan of them all, at most once a
    /// second but at the completion itself.
    settled_at: parking_lot::Mutex<Option<Instant>>,
}

/// With a completion requested and at most this many flags left, they are
/// checked against their sources' high-water marks (a scan of them all).
const SETTLE_AT_MOST: u64 = 100_000;

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("meta", &*self.meta.read())
            .finish()
    }
}

fn blanket(m: &RecoveryMeta) -> bool {
    m.state == RecoveryState::Recovering && !m.schedule_final
}

impl Recovery {
    pub async fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let meta = store.recovery_meta().await?;
        let recovered_at = (meta.state == RecoveryState::Recovered).then(Instant::now);
        Ok(Self {
            blanket: AtomicBool::new(blanket(&meta)),
            meta: RwLock::new(meta),
            store,
            clearing_since: RwLock::new(None),
            owed_flags_added: AtomicBool::new(false),
            owed_flags_settled: AtomicBool::new(false),
            settled_at: parking_lot::Mutex::new(None),
            recovered_at: RwLock::new(recovered_at),
            transition: tokio::sync::Mutex::new(()),
        })
    }

    /// True while every answer must carry the recovering identifier.
    pub fn blanket(&self) -> bool {
        self.blanket.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> RecoveryState {
        self.meta.read().state
    }

    /// Recovering, with the OpS's completion requested (as last read).
    pub fn completion_requested(&self) -> bool {
        let m = self.meta.read();
        m.state == RecoveryState::Recovering && m.complete_requested
    }

    /// The state as last read.
    pub fn meta(&self) -> RecoveryMeta {
        self.meta.read().clone()
    }

    /// Keys flagged in this recovery so far (it only grows).
    pub fn flagged_total(&self) -> u64 {
        self.meta.read().flagged_total
    }

    /// Times flags were settled in the store's life (it only grows).
    pub fn settled(&self) -> u64 {
        self.meta.read().settled
    }

    fn set(&self, meta: RecoveryMeta) {
        self.blanket.store(blanket(&meta), Ordering::SeqCst);
        *self.meta.write() = meta;
    }

    /// Re-reads the state from the store (a standby follows the primary's).
    pub async fn refresh(&self) -> Result<RecoveryMeta, StoreError> {
        let m = self.store.recovery_meta().await?;
        self.set(m.clone());
        Ok(m)
    }

    /// `GET /v1/recovery`.
    pub async fn status(&self, epoch: u64) -> Result<RecoveryStatus, StoreError> {
        let m = self.refresh().await?;
        let cleared = m.flagged_total.saturating_sub(m.remaining);
        let estimated_end = match *self.clearing_since.read() {
            Some((t0, _, left0)) if m.state == RecoveryState::Recovering && left0 > m.remaining => {
                let rate = (left0 - m.remaining) as f64 / t0.elapsed().as_secs_f64().max(0.001);
                let secs = m.remaining as f64 / rate;
                Some(
                    (chrono::Utc::now() + chrono::Duration::milliseconds((secs * 1000.0) as i64))
                        .to_rfc3339(),
                )
            }
            _ => None,
        };
        Ok(RecoveryStatus {
            state: m.state,
            epoch,
            flagged: m.flagged_total,
            cleared,
            started_at: m.started_at,
            remaining: m.remaining,
            schedule_final: m.schedule_final,
            complete_requested: m.complete_requested,
            estimated_end,
            // Only a recovery in progress waits (an aborted one listed the
            // sources it had waited for).
            waiting_for_sources: if m.state == RecoveryState::Recovering {
                m.waiting_for_sources
            } else {
                Vec::new()
            },
            waived_sources: m.waived_sources,
        })
    }

    /// Sources the restored data does not know whose lists another run
    /// sends: the schedule waits for them too (so the blanket stays).
    pub async fn expect(&self, sources: &[String]) -> Result<(), StoreError> {
        let _t = self.transition.lock().await;
        self.store.expect_sources(sources).await?;
        tracing::info!(sources = ?sources, "recovery schedule: waiting for sources the backup did not know, as the OpS asked");
        self.refresh().await?;
        Ok(())
    }

    /// A chunk of the schedule list (P6, P7).
    pub async fn schedule(
        &self,
        hub: &Hub,
        source: &str,
        entries: Vec<ScheduleEntry>,
        final_chunk: bool,
        without: Vec<String>,
    ) -> Result<FlagsAdded, StoreError> {
        let _t = self.transition.lock().await;
        let was_blanket = self.blanket();
        let entries = entries
            .into_iter()
            .map(|e| FlagEntry {
                table: e.table,
                key: e.key,
                through_seq: e.through_seq,
            })
            .collect();
        if final_chunk && !without.is_empty() {
            tracing::warn!(source, without = ?without, "recovery schedule: sources WAIVED by the operator; their keys changed since the backup cannot be recovered and will be served as current");
        }
        let added = match self
            .store
            .add_flags(source, entries, final_chunk, without)
            .await
        {
            Ok(added) => added,
            Err(e) => {
                if !was_blanket && matches!(e, StoreError::Engine(_) | StoreError::Unavailable(_)) {
                    // Its commit's outcome is unknown: if it added flags,
                    // a retry finds none new (and the OpS may give up), so
                    // the event goes out now (if it added none, it only
                    // costs a revalidation), and again with the next chunk
                    // (a commit that failed may become visible only later).
                    if let Ok(meta) = self.store.meta().await {
                        hub.raise_resume_floor(meta.seq + 1);
                        hub.publish(Push::Epoch(EpochEvent {
                            epoch: meta.epoch,
                            reason: EpochReason::FlagsAdded,
                        }));
                    }
                    self.owed_flags_added.store(true, Ordering::SeqCst);
                }
                return Err(e);
            }
        };
        if !was_blanket && added.flagged > 0 {
            self.owed_flags_added.store(true, Ordering::SeqCst);
        }
        let m = self.refresh().await?;
        if final_chunk && !m.waiting_for_sources.is_empty() {
            tracing::info!(source, waiting = ?m.waiting_for_sources, "final schedule chunk of one source; still waiting for the others the backup knows");
        }
        if was_blanket && !self.blanket() {
            // Flags added under the blanket need no event of their own.
            self.owed_flags_added.store(false, Ordering::SeqCst);
            tracing::info!(flagged = m.flagged_total, "recovery schedule list complete: only flagged records are answered as recovering now");
            let epoch = self.store.meta().await?.epoch;
            hub.publish(Push::Epoch(EpochEvent {
                epoch,
                reason: EpochReason::ScheduleComplete,
            }));
            crate::resume_floor::keep(self.store.as_ref(), hub, epoch, &m).await;
        } else if !was_blanket && self.owed_flags_added.load(Ordering::SeqCst) {
            // A source the backup did not know sent its list after the
            // others lifted the blanket: service servers may hold these
            // keys as current, so every cached answer is revalidated.
            tracing::warn!(source, flagged = added.flagged, "keys flagged after the schedule list was complete (a source the backup did not know); service servers revalidate what they cached. Give every journal to one 'ops recover' run to avoid this");
            let meta = self.store.meta().await?;
            // A resumed stream's ids may run ahead of the watermark (its
            // replay reads the log to its end): none resumes from before.
            hub.raise_resume_floor(meta.seq + 1);
            hub.publish(Push::Epoch(EpochEvent {
                epoch: meta.epoch,
                reason: EpochReason::FlagsAdded,
            }));
            self.owed_flags_added.store(false, Ordering::SeqCst);
            crate::resume_floor::keep(self.store.as_ref(), hub, meta.epoch, &m).await;
        }
        drop(_t);
        // Only a chunk after `complete` can finish the recovery (a waiver
        // dropping the last flags); others skip the transition lock, which
        // the next chunk holds while it writes.
        if m.complete_requested && m.remaining == 0 {
            self.maybe_finish().await?;
        }
        Ok(added)
    }

    /// The OpS has sent everything (`POST /v1/recovery/complete`).
    pub async fn complete(&self) -> Result<RecoveryMeta, CompleteError> {
        let m = self.refresh().await?;
        match m.state {
            RecoveryState::Normal => return Err(CompleteError::Store(StoreError::NotRecovering)),
            RecoveryState::Recovered => return Ok(m),
            RecoveryState::Recovering => {}
        }
        if !m.schedule_final {
            return Err(CompleteError::ScheduleIncomplete(m.waiting_for_sources));
        }
        {
            let _t = self.transition.lock().await;
            // Read again under the lock: a recovery that finished or was
            // aborted meanwhile is not put back to recovering.
            let m = self.refresh().await?;
            match m.state {
                RecoveryState::Normal => {
                    return Err(CompleteError::Store(StoreError::NotRecovering))
                }
                RecoveryState::Recovered => return Ok(m),
                RecoveryState::Recovering => {}
            }
            let m = self
                .store
                .set_recovery_state(RecoveryState::Recovering, true)
                .await?;
            self.set(m);
        }
        self.finish_check(true).await?;
        Ok(self.meta.read().clone())
    }

    /// Called after a batch that cleared flags.
    pub async fn after_clear(&self) -> Result<(), StoreError> {
        {
            let mut since = self.clearing_since.write();
            if since.is_none() {
                let m = self.meta.read();
                *since = Some((Instant::now(), chrono::Utc::now(), m.remaining + 1));
            }
        }
        self.maybe_finish().await
    }

    /// Moves to `recovered` once complete was requested and no flag remains.
    ///
    /// A flag clears with its key's order `(source, through_seq)`. One
    /// whose schedule entry named another key than that order changed would
    /// stay for good, though its order has been applied (CONTRACT.md: a key
    /// stays flagged until that order has been applied): once completion is
    /// requested and few flags are left, those are dropped, and the
    /// `flags_settled` event tells caches to revalidate
    /// ([`Recovery::announce_settled`]).
    pub async fn maybe_finish(&self) -> Result<(), StoreError> {
        self.finish_check(false).await
    }

    /// [`Recovery::maybe_finish`]; `now` settles flags even within a second
    /// of the last time (the completion itself).
    async fn finish_check(&self, now: bool) -> Result<(), StoreError> {
        let _t = self.transition.lock().await;
        let mut m = self.refresh().await?;
        let due = {
            let mut at = self.settled_at.lock();
            let due = now || at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if due
            && m.state == RecoveryState::Recovering
            && m.schedule_final
            && m.complete_requested
            && (1..=SETTLE_AT_MOST).contains(&m.remaining)
        {
            let settled = self.store.settle_flags().await?;
            if settled > 0 {
                self.owed_flags_settled.store(true, Ordering::SeqCst);
                tracing::warn!(
                    settled,
                    "dropped flags whose order (source, through_seq) was applied to another key: the schedule list named the wrong key for them"
                );
                m = self.refresh().await?;
            }
        }
        if m.state == RecoveryState::Recovering
            && m.schedule_final
            && m.complete_requested
            && m.remaining == 0
        {
            let m = self
                .store
                .set_recovery_state(RecoveryState::Recovered, true)
                .await?;
            tracing::info!(
                flagged = m.flagged_total,
                "recovery complete: every flagged record holds the latest data"
            );
            self.set(m);
            *self.recovered_at.write() = Some(Instant::now());
        }
        Ok(())
    }

    /// Sends the `epoch` event owed for flags [`Recovery::maybe_finish`]
    /// dropped, if any.
    pub async fn announce_settled(&self, hub: &Hub) {
        if !self.owed_flags_settled.swap(false, Ordering::SeqCst) {
            return;
        }
        match self.store.meta().await {
            Ok(meta) => {
                // A stream resuming from before it is told too (it may
                // hold a settled key as recovering).
                hub.raise_resume_floor(meta.seq + 1);
                hub.publish(Push::Epoch(EpochEvent {
                    epoch: meta.epoch,
                    reason: EpochReason::FlagsSettled,
                }));
            }
            Err(e) => {
                self.owed_flags_settled.store(true, Ordering::SeqCst);
                tracing::warn!(error = %e, "could not send the flags_settled event; it is sent at the next check");
            }
        }
    }

    /// Ends a recovery the OpS will never complete: drops every flag.
    pub async fn abort(&self, hub: &Hub, reason: &str) -> Result<u64, StoreError> {
        let _t = self.transition.lock().await;
        if self.meta.read().state != RecoveryState::Recovering {
            return Err(StoreError::NotRecovering);
        }
        let dropped = self.store.clear_flags().await?;
        self.owed_flags_added.store(false, Ordering::SeqCst);
        let m = self
            .store
            .set_recovery_state(RecoveryState::Normal, false)
            .await?;
        tracing::warn!(dropped, reason, "recovery ABORTED by an operator: flagged records are now answered as current although their difference data may be missing");
        self.set(m);
        hub.publish(Push::Epoch(EpochEvent {
            epoch: self.store.meta().await?.epoch,
            reason: EpochReason::RecoveryAborted,
        }));
        Ok(dropped)
    }

    /// `recovered` becomes `normal` after `hold`. The hold starts when the
    /// recovery completed here, or when this instance first settles it (a
    /// standby that followed the state and was promoted since: it never
    /// saw the transition, and without a start it stayed `recovered`).
    pub async fn settle(&self, hold: Duration) -> Result<(), StoreError> {
        if self.state() != RecoveryState::Recovered {
            return Ok(());
        }
        let since = *self.recovered_at.write().get_or_insert_with(Instant::now);
        if since.elapsed() >= hold {
            let _t = self.transition.lock().await;
            if self.state() != RecoveryState::Recovered {
                return Ok(()); // moved on meanwhile (a new restore)
            }
            let m = self
                .store
                .set_recovery_state(RecoveryState::Normal, false)
                .await?;
            self.set(m);
            *self.recovered_at.write() = None;
            tracing::info!("recovery state back to normal");
        }
        Ok(())
    }
}

/// Why `recovery/complete` was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The final chunk of the schedule list has not arrived from every
    /// source the restored data knows.
    #[error("the recovery schedule list is not complete: still waiting for the final chunk of {}; run 'tidemark ops recover' with their journals, or name a source whose journal is lost with --without-source", waiting_list(.0))]
    ScheduleIncomplete(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn waiting_list(sources: &[String]) -> String {
    if sources.is_empty() {
        "the list (send a chunk with \"final\": true)".to_owned()
    } else {
        format!("source(s) {}", sources.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{upsert, TestServer};
    use tidemark_store::Store;

    fn entry(key: &str, through_seq: u64) -> ScheduleEntry {
        ScheduleEntry {
            table: "subscriber".into(),
            key: key.into(),
            through_seq,
        }
    }

    /// Orders of two sources, then a restore from before the last two.
    async fn restored_two_sources(s: &dyn Store) {
        s.apply(vec![
            upsert("ops-1", 1, "a", "1"),
            upsert("ops-2", 1, "b", "1"),
        ])
        .await
        .unwrap();
        let epoch = s.meta().await.unwrap().epoch;
        s.mark_restored(epoch + 1).await.unwrap();
    }

    #[tokio::test]
    async fn the_blanket_lifts_only_when_every_known_source_is_in() {
        let t = TestServer::open(restored_two_sources).await;
        let r = &t.app.recovery;
        let mut pushes = t.app.hub.subscribe();
        assert!(r.blanket());
        r.schedule(&t.app.hub, "ops-1", vec![entry("a", 2)], true, vec![])
            .await
            .unwrap();
        assert!(
            r.blanket(),
            "ops-2 is known to the backup and has not sent its list"
        );
        match r.complete().await {
            Err(CompleteError::ScheduleIncomplete(w)) => assert_eq!(w, vec!["ops-2"]),
            other => panic!("complete before every list must be refused: {other:?}"),
        }
        r.schedule(&t.app.hub, "ops-2", vec![], true, vec![])
            .await
            .unwrap();
        assert!(!r.blanket());
        match pushes.try_recv() {
            Ok(Push::Epoch(e)) => assert_eq!(e.reason, EpochReason::ScheduleComplete),
            other => panic!("waiting service servers must be told: {other:?}"),
        }
        // A source the backup did not know flags keys after that: what
        // service servers cached as current since must be revalidated.
        r.schedule(&t.app.hub, "late", vec![entry("c", 4)], true, vec![])
            .await
            .unwrap();
        match pushes.try_recv() {
            Ok(Push::Epoch(e)) => assert_eq!(e.reason, EpochReason::FlagsAdded),
            other => panic!("service servers must be told of late flags: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recovered_once_flags_clear_then_normal_after_the_hold() {
        let t = TestServer::open(restored_two_sources).await;
        let r = &t.app.recovery;
        r.schedule(
            &t.app.hub,
            "ops-1",
            vec![entry("a", 2)],
            true,
            vec!["ops-2".into()],
        )
        .await
        .unwrap();
        r.complete().await.unwrap();
        assert_eq!(r.state(), RecoveryState::Recovering, "a flag remains");
        let out = t
            .app
            .committer
            .submit(vec![upsert("ops-1", 2, "a", "2")])
            .await
            .unwrap();
        assert!(out.changes[0].cleared_flag);
        r.after_clear().await.unwrap();
        assert_eq!(r.state(), RecoveryState::Recovered);
        // As on an instance that followed the state and was promoted since:
        // its hold starts when it first settles.
        *r.recovered_at.write() = None;
        let hold = Duration::from_secs(30);
        r.settle(hold).await.unwrap();
        assert_eq!(r.state(), RecoveryState::Recovered, "held");
        tokio::time::advance(hold).await;
        r.settle(hold).await.unwrap();
        assert_eq!(r.state(), RecoveryState::Normal);
        assert_eq!(
            t.store.recovery_meta().await.unwrap().state,
            RecoveryState::Normal
        );
    }

    #[tokio::test]
    async fn abort_drops_every_flag_and_tells_the_service_servers() {
        let t = TestServer::open(restored_two_sources).await;
        let r = &t.app.recovery;
        r.schedule(
            &t.app.hub,
            "ops-1",
            vec![entry("a", 2)],
            true,
            vec!["ops-2".into()],
        )
        .await
        .unwrap();
        let mut pushes = t.app.hub.subscribe();
        assert_eq!(r.abort(&t.app.hub, "test").await.unwrap(), 1);
        assert_eq!(r.state(), RecoveryState::Normal);
        assert!(matches!(
            pushes.try_recv(),
            Ok(Push::Epoch(EpochEvent {
                reason: EpochReason::RecoveryAborted,
                ..
            }))
        ));
        assert!(matches!(
            r.abort(&t.app.hub, "again").await,
            Err(StoreError::NotRecovering)
        ));
    }
}
