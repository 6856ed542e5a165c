//! A standby's view of the primary's commits: the change log, read by seq.
//!
//! Invariants:
//! - Changes are published from the log in seq order, after the read cache
//!   dropped their keys, through the same hub as the committer's (which
//!   skips what was published already); so no change is lost, reordered or
//!   sent twice across a reconnect or a failover.
//! - LISTEN/NOTIFY only wakes the tail; a poll every few ticks is the
//!   safety net (notifications die with their connection).
//! - A change is pushed marked recovering if its key was flagged when it
//!   committed (the log keeps that), as the primary pushed it; so an
//!   intermediate record of a key still being recovered is never pushed as
//!   current, even when the recovery has ended by the time it is read.
//! - While a recovery runs, every change not clearing a flag is also
//!   marked (a flag may have come after the change); a service server then
//!   asks, and the read answers with the key's flag.

use super::{vouch, Cluster};
use crate::hub::Push;
use crate::state::AppState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::event::{EpochEvent, EpochReason};
use tidemark_api::RecoveryState;
use tidemark_store::postgres::cluster::Notice;
use tidemark_store::{RecoveryMeta, StoreError};

/// How often a standby polls the log without a wake-up.
const POLL: Duration = Duration::from_millis(200);
/// How often a standby re-reads the shared state (recovery, tokens, schema).
const REFRESH: Duration = Duration::from_millis(500);
/// How long a LISTEN connect may take, and the pause before the next.
const LISTEN_PATIENCE: Duration = Duration::from_secs(1);

/// Runs until shutdown.
pub async fn run(app: Arc<AppState>, cluster: Arc<Cluster>) {
    let mut notices = listen(app.clone(), cluster.clone());
    let mut refreshed = Instant::now();
    let mut passes = vouch::Passes::registered_at_start();
    cluster
        .followed
        .lock()
        .get_or_insert_with(|| Followed::now(&app));
    // The first pass at once: a standby is waited for from its start.
    let mut first = true;
    loop {
        let mut shared = false;
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
                _ = cluster.tail_wake.notified() => {}
                Some(s) = notices.recv() => shared = s,
            }
        }
        // Every notice queued meanwhile is this wake's too.
        while let Ok(s) = notices.try_recv() {
            shared |= s;
        }
        shared |= cluster
            .shared_missed
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if cluster.is_primary() {
            if shared {
                // Subscriber bindings a standby wrote (a service server
                // that connected there): known here too before this
                // instance writes the bindings again.
                if let Err(e) = app.auth.reload().await {
                    tracing::debug!(error = %e, "tokens unreadable; retrying at the next notice");
                }
            }
            // The committer publishes, and `Recovery` sends the events of
            // its own transitions: a step down follows on from here.
            *cluster.followed.lock() = Some(Followed::now(&app));
            // What it commits it publishes: a step down starts current.
            let now = cluster.now_ms();
            cluster.caught_up(now);
            cluster.shared_followed(now);
            if passes.begun() {
                vouch::withdraw(&cluster, &mut passes).await;
            }
            continue;
        }
        let began = cluster.now_ms();
        let pass = passes.begin();
        // The primary changed the recovery state or flags: followed at
        // once, not at the next refresh; and again at once after a follow
        // failed (nothing is vouched for meanwhile).
        if shared || passes.must_follow() || refreshed.elapsed() >= REFRESH {
            refreshed = Instant::now();
            // The generation first: what is followed after it includes
            // every shared commit up to it.
            let followed = async {
                let gen = cluster.store.shared_gen().await?;
                follow_shared_state(&app, &cluster).await?;
                Ok::<_, StoreError>(gen)
            }
            .await;
            match followed {
                Ok(gen) => {
                    cluster.shared_followed(began);
                    passes.followed(Some(gen));
                }
                Err(e) => {
                    passes.followed(None);
                    tracing::debug!(error = %e, "shared state unreadable; retrying")
                }
            }
        }
        match catch_up(&app).await {
            Ok(()) => {
                cluster.caught_up(began);
                passes.caught_up(app.hub.watermark());
                vouch::renew(&cluster, &mut passes, pass).await;
            }
            Err(e) => tracing::debug!(error = %e, "change-log tail failed; retrying"),
        }
    }
    // Stopping: waited for no more (the lease loop's leave drops it too,
    // but a renewal of this loop could come after that).
    if passes.begun() {
        vouch::withdraw(&cluster, &mut passes).await;
    }
}

/// Keeps a LISTEN connection beside the tail, reconnecting after a pause,
/// and passes its notices on (`true`: the shared state changed); a
/// standby's vouch renewal wakes the gate instead. The tail
/// never waits on its connect: while it is down, the tail polls.
fn listen(app: Arc<AppState>, cluster: Arc<Cluster>) -> tokio::sync::mpsc::Receiver<bool> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let connected = tokio::time::timeout(
                LISTEN_PATIENCE,
                cluster.store.listen_commits(&cluster.database_url),
            )
            .await;
            match connected {
                Ok(Ok(mut inner)) => loop {
                    tokio::select! {
                        _ = app.shutdown.cancelled() => return,
                        notice = inner.recv() => match notice {
                            // A renewal wakes commits waiting for it, not
                            // the tail (standbys would wake each other).
                            Some(Notice::Vouch) => cluster.gate.wake.notify_one(),
                            Some(n) => {
                                // A full queue drops a wake-up, never a
                                // shared change: it is kept aside.
                                if tx.try_send(n == Notice::Shared).is_err() && n == Notice::Shared {
                                    cluster.shared_missed.store(true, std::sync::atomic::Ordering::SeqCst);
                                    cluster.tail_wake.notify_one();
                                }
                            }
                            None => break,
                        }
                    }
                },
                Ok(Err(e)) => tracing::debug!(error = %e, "LISTEN failed; polling"),
                Err(_) => tracing::debug!("LISTEN timed out; polling"),
            }
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(LISTEN_PATIENCE) => {}
            }
        }
    });
    rx
}

/// Publishes every logged change after the hub's watermark, up to the end
/// of the log.
pub async fn catch_up(app: &AppState) -> Result<(), StoreError> {
    catch_up_following(app, app.cluster.as_ref().map(|c| &c.followed)).await
}

/// [`catch_up`], following the recovery state from `followed` (the
/// cluster's baseline) during a recovery.
async fn catch_up_following(
    app: &AppState,
    followed: Option<&parking_lot::Mutex<Option<Followed>>>,
) -> Result<(), StoreError> {
    loop {
        let after = app.hub.watermark();
        let mut page = app.store.changes_since(after, 1000).await?;
        if page.is_empty() {
            return Ok(());
        }
        if page[0].version.seq > after + 1 {
            skipped_pruned(app, after).await?;
        }
        if let (RecoveryState::Recovering, Some(followed)) = (app.recovery.state(), followed) {
            // Flags committed before a change of this page are visible
            // now: their `flags_added` goes out (and the resume floor
            // rises) before the change does, so no id past the primary's
            // floor is given here before it (a client that took one and
            // missed the push would resume past it anywhere).
            follow_recovery(app, followed).await?;
        }
        let recovering = app.recovery.state() == RecoveryState::Recovering;
        for c in &mut page {
            if let Some(cache) = &app.read_cache {
                cache.invalidate(&c.table, &c.key);
            }
            // `c.flagged` is the flag the change committed with.
            c.flagged |= recovering && !c.cleared_flag;
        }
        app.hub.publish_changes(&page);
        if let Some(last) = page.last() {
            app.metrics.seq.set(last.version.seq as i64);
        }
    }
}

/// The log starts past the watermark (this instance was paused, or cut
/// off, for longer than the change log is kept): if the changes in between
/// were pruned, nobody can publish them. Every cached answer is dropped and
/// every stream told to revalidate (`epoch`, `cannot_resume`), rather than
/// serving and pushing on as if nothing was missed.
async fn skipped_pruned(app: &AppState, after: u64) -> Result<(), StoreError> {
    let meta = app.store.meta().await?;
    if meta.log_floor <= after + 1 {
        return Ok(());
    }
    tracing::warn!(
        watermark = after,
        log_floor = meta.log_floor,
        "changes this instance never published were pruned from the change log; caches revalidate"
    );
    if let Some(cache) = &app.read_cache {
        cache.clear();
    }
    app.hub.publish(Push::Epoch(EpochEvent {
        epoch: meta.epoch,
        reason: EpochReason::CannotResume,
    }));
    Ok(())
}

/// The recovery state as an instance last followed it: the baseline its
/// `epoch` events compare with. Not `app.recovery`, which any status read
/// refreshes from the store (`/v1/state`, `/metrics`, the console), so a
/// change could be absorbed there before it was followed, and its event
/// (`flags_added`) never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    state: RecoveryState,
    blanket: bool,
    flagged_total: u64,
    settled: u64,
}

impl Followed {
    fn of(m: &RecoveryMeta, blanket: bool) -> Self {
        Followed {
            state: m.state,
            blanket,
            flagged_total: m.flagged_total,
            settled: m.settled,
        }
    }

    fn now(app: &AppState) -> Self {
        Followed {
            state: app.recovery.state(),
            blanket: app.recovery.blanket(),
            flagged_total: app.recovery.flagged_total(),
            settled: app.recovery.settled(),
        }
    }
}

/// Follows what the primary changed besides records: the recovery state
/// (and the events its transitions send), tokens, the schema and flags.
async fn follow_shared_state(app: &AppState, cluster: &Cluster) -> Result<(), StoreError> {
    app.store_refresh().await?;
    crate::schema_publish::follow_version(app).await;
    let m = follow_recovery(app, &cluster.followed).await?;
    app.auth.reload().await?;
    if let Some(cache) = &app.read_cache {
        if m.state != RecoveryState::Normal {
            cache.clear();
        }
    }
    Ok(())
}

/// Re-reads the recovery state and sends the `epoch` event of each
/// transition since it was last followed (`followed`); the baseline moves
/// only once the events are out.
pub(crate) async fn follow_recovery(
    app: &AppState,
    followed: &parking_lot::Mutex<Option<Followed>>,
) -> Result<RecoveryMeta, StoreError> {
    // One follow at a time (the tail and a take-over may both run one):
    // two would both send a transition's event, and the slower could set
    // the baseline back.
    static FOLLOWING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = FOLLOWING.lock().await;
    let before = followed.lock().unwrap_or_else(|| Followed::now(app));
    let m = app.recovery.refresh().await?;
    let after = Followed::of(&m, app.recovery.blanket());
    if let Some(reason) = transition(before, after, &m) {
        let meta = app.store.meta().await?;
        if matches!(reason, EpochReason::FlagsAdded | EpochReason::FlagsSettled) {
            // This instance's watermark may trail ids the primary gave
            // out: none from before the primary's position resumes here
            // (a stream may hold a newly flagged, or a settled, key wrong).
            app.hub.raise_resume_floor(meta.seq + 1);
        }
        app.hub.publish(Push::Epoch(EpochEvent {
            epoch: meta.epoch,
            reason,
        }));
    }
    *followed.lock() = Some(after);
    Ok(m)
}

/// The `epoch` event a change of the recovery state from `before` to
/// `after` (`m`) sends, as the primary sent it.
fn transition(before: Followed, after: Followed, m: &RecoveryMeta) -> Option<EpochReason> {
    if after.settled > before.settled {
        // The primary dropped flags whose order was applied to another key
        // (`Recovery::maybe_finish`): no `recovered` event tells of them.
        Some(EpochReason::FlagsSettled)
    } else if before.blanket && !after.blanket && m.state == RecoveryState::Recovering {
        // The schedule list became final on the primary.
        Some(EpochReason::ScheduleComplete)
    } else if !before.blanket
        && !after.blanket
        && m.state == RecoveryState::Recovering
        && after.flagged_total > before.flagged_total
    {
        // Keys flagged after the list was complete (see `Recovery::schedule`).
        Some(EpochReason::FlagsAdded)
    } else if before.state == RecoveryState::Recovering
        && m.state == RecoveryState::Normal
        && m.remaining == 0
        && !m.complete_requested
    {
        // An operator ended the recovery on the primary: flags dropped.
        Some(EpochReason::RecoveryAborted)
    } else {
        None
    }
}

impl AppState {
    /// Re-reads what another instance may have changed in the store.
    async fn store_refresh(&self) -> Result<(), StoreError> {
        match &self.cluster {
            Some(c) => c.store.refresh_shared().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Push;
    use crate::testutil::{upsert, TestServer};

    #[tokio::test]
    async fn a_tail_behind_the_pruned_log_tells_every_stream_to_revalidate() {
        let t = TestServer::open(async |_| {}).await;
        // Another instance commits, and the log is pruned, while this one
        // publishes nothing (paused).
        for seq in 1..=5 {
            t.store
                .apply(vec![upsert("ops", seq, &format!("k{seq}"), "gold")])
                .await
                .unwrap();
        }
        t.store.prune_changes(1).await.unwrap();
        let mut rx = t.app.hub.subscribe();
        catch_up(&t.app).await.unwrap();
        let mut told = false;
        while let Ok(push) = rx.try_recv() {
            told |= matches!(&push, Push::Epoch(e) if e.reason == EpochReason::CannotResume);
        }
        assert!(told, "an epoch event, cannot_resume");
        assert_eq!(t.app.hub.watermark(), 5, "and the rest published");
        // Caught up: no more.
        catch_up(&t.app).await.unwrap();
        assert!(rx.try_recv().is_err());
    }

    /// Key `k` flagged with a through_seq no order reached.
    fn flag(key: &str) -> tidemark_store::FlagEntry {
        tidemark_store::FlagEntry {
            table: "subscriber".into(),
            key: key.into(),
            through_seq: 9,
        }
    }

    /// A restored store whose schedule list is final (key `a` flagged),
    /// with the recovery state followed.
    async fn listed_and_followed() -> (TestServer, parking_lot::Mutex<Option<Followed>>) {
        let t = TestServer::open(async |s: &dyn tidemark_store::Store| {
            s.apply(vec![upsert("o", 1, "a", "x")]).await.unwrap();
            let epoch = s.meta().await.unwrap().epoch;
            s.mark_restored(epoch + 1).await.unwrap();
        })
        .await;
        t.store
            .add_flags("o", vec![flag("a")], true, vec![])
            .await
            .unwrap();
        let followed = parking_lot::Mutex::new(None);
        follow_recovery(&t.app, &followed).await.unwrap();
        (t, followed)
    }

    /// A standby sends `flags_added` for keys the primary flagged after
    /// the schedule list was final, even when a status read (the console,
    /// `/metrics`) refreshed its recovery state first. Before, the follow
    /// compared with that refreshed state, saw nothing new, and its
    /// service servers went on serving those keys as current.
    #[tokio::test]
    async fn a_standby_sends_flags_added_though_a_status_read_saw_the_flags_first() {
        let (t, followed) = listed_and_followed().await;
        let app = &t.app;
        // The primary (another instance) flags one more key for a source
        // the backup did not know; a status read here sees it first.
        t.store
            .add_flags("late", vec![flag("b")], true, vec![])
            .await
            .unwrap();
        app.recovery.status(0).await.unwrap();
        let mut rx = app.hub.subscribe();
        follow_recovery(app, &followed).await.unwrap();
        let told = std::iter::from_fn(|| rx.try_recv().ok())
            .any(|p| matches!(&p, Push::Epoch(e) if e.reason == EpochReason::FlagsAdded));
        assert!(told, "an epoch event, flags_added");
        // Followed: not again.
        follow_recovery(app, &followed).await.unwrap();
        assert!(rx.try_recv().is_err());
    }

    /// P9: a standby's tail publishes a change that came after keys were
    /// flagged late only after their `flags_added` (and the resume floor's
    /// rise): it gave ids past the primary's floor before it, and a client
    /// that took one and missed the push resumed past it at any instance.
    #[tokio::test]
    async fn a_standby_sends_flags_added_before_a_change_committed_after_the_flags() {
        let (t, followed) = listed_and_followed().await;
        let app = &t.app;
        catch_up_following(app, Some(&followed)).await.unwrap();
        let s = app.hub.subscriber("s");
        app.hub.register(s, "subscriber", "c");
        // The primary flags a key late, then commits a change.
        t.store
            .add_flags("late", vec![flag("b")], true, vec![])
            .await
            .unwrap();
        t.store.apply(vec![upsert("p", 1, "c", "y")]).await.unwrap();
        let mut rx = app.hub.subscribe();
        catch_up_following(app, Some(&followed)).await.unwrap();
        let pushes: Vec<Push> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let epoch = pushes
            .iter()
            .position(|p| matches!(p, Push::Epoch(e) if e.reason == EpochReason::FlagsAdded));
        let change = pushes.iter().position(|p| matches!(p, Push::Change(..)));
        assert!(
            epoch.is_some() && epoch < change,
            "flags_added ({epoch:?}) before the change ({change:?})"
        );
        let seq = app.store.meta().await.unwrap().seq;
        assert!(!app.hub.may_resume(s, seq), "no resume from before it");
    }

    /// A standby relays `flags_settled`: the primary dropped a flag whose
    /// order was applied to another key, and no `recovered` event tells
    /// of that key, so streams here must revalidate (and resume from no
    /// id before it).
    #[tokio::test]
    async fn a_standby_relays_flags_settled() {
        let (t, followed) = listed_and_followed().await;
        let app = &t.app;
        // The primary (another instance) applies order 9 of `o` to key
        // `z`, not `a`, and settles `a`'s flag.
        for seq in 2..=9 {
            t.store
                .apply(vec![upsert("o", seq, "z", "y")])
                .await
                .unwrap();
        }
        catch_up_following(app, Some(&followed)).await.unwrap();
        let mut rx = app.hub.subscribe();
        assert_eq!(t.store.settle_flags().await.unwrap(), 1);
        follow_recovery(app, &followed).await.unwrap();
        let told = std::iter::from_fn(|| rx.try_recv().ok())
            .any(|p| matches!(&p, Push::Epoch(e) if e.reason == EpochReason::FlagsSettled));
        assert!(told, "an epoch event, flags_settled");
        let s = app.hub.subscriber("s");
        let seq = app.store.meta().await.unwrap().seq;
        assert!(!app.hub.may_resume(s, seq), "no resume from before it");
        // Followed: not again.
        follow_recovery(app, &followed).await.unwrap();
        assert!(rx.try_recv().is_err());
    }
}
