//! A standby's vouch, and the primary's wait for it (S3, P9).
//!
//! A service server watching a standby serves its cache as current while
//! the standby vouches (`lease` events). A standby that freezes cannot
//! take back a vouch already sent, and the primary meanwhile commits what
//! it cannot push. So every vouch is registered in PostgreSQL first, and
//! an instance acknowledges a commit only once every other live
//! registration covers it, or has expired, as lease-based follower reads
//! do.
//!
//! Invariants:
//! - A registration says what the standby's last pass published: the
//!   change log up to `seen_seq` (its hub's watermark), the shared state
//!   up to `shared_gen` (read before that state was). A commit is covered
//!   once each live registration is at or past its seq (records) or the
//!   generation read after it returned (shared state).
//! - A commit is judged only by checks sent after it returned, so a
//!   registration a check did not see became live after the commit, and
//!   every pass it vouches for began after that (next invariant).
//! - A standby vouches no longer than its registration lives, counted from
//!   when it sent the statement (so before the database's expiry), and
//!   only for passes begun after its row was last seen live without a
//!   break. A renewal counts as unbroken if the row was live when it ran
//!   and it answered within [`GRACE`]; the primary counts a row live for
//!   [`GRACE`] past its expiry, so an unbroken renewal was visible before
//!   the primary stopped waiting for the row.
//! - A registration is renewed only after a pass that caught up, so a
//!   standby that cannot keep up stops holding the primary back within
//!   [`TTL`] and [`GRACE`] (and stops vouching).
//! - What a standby has published may still be on its way to a service
//!   server, as a primary's pushes may be when it answers: the window is
//!   the push in flight, not the vouch.

use super::Cluster;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tidemark_store::postgres::cluster::VouchCheck;
use tidemark_store::{PgStore, StoreError};
use tokio::sync::{mpsc, oneshot, Notify};

/// How long a registration lives: with [`GRACE`], the longest a frozen
/// standby holds the primary's acknowledgements back.
pub const TTL: Duration = Duration::from_millis(1_000);
/// How long past its expiry the primary still counts a registration, and
/// the longest a renewal may take to count as unbroken.
pub const GRACE: Duration = Duration::from_millis(200);
/// What a standby takes off its registration's life for clock drift.
const MARGIN_MS: u64 = 150;
/// How often the primary looks again while a commit waits and no renewal
/// woke it (notices are lost with their connection).
const RECHECK: Duration = Duration::from_millis(25);
/// The pause after the primary could not look (PostgreSQL unreachable).
const RETRY: Duration = Duration::from_millis(50);
/// The longest one look may take.
const CHECK_PATIENCE: Duration = Duration::from_secs(1);
/// The longest a commit waits before its request is answered `503`.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// What a standby's passes covered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Passes {
    /// The number of the pass running (or last run).
    pass: u64,
    /// The first pass that may vouch: it began after the row was last seen
    /// live without a break.
    clean_from: u64,
    /// The hub's watermark after the last pass that caught up.
    seen: Option<u64>,
    /// The shared-state generation the last follow began at, if the latest
    /// attempt succeeded.
    gen: Option<u64>,
    /// Registered at start ([`register_at_start`]), before any pass.
    at_start: bool,
}

impl Passes {
    /// A pass begins; its number.
    pub fn begin(&mut self) -> u64 {
        self.pass += 1;
        self.pass
    }

    pub fn caught_up(&mut self, watermark: u64) {
        self.seen = Some(watermark);
    }

    /// The shared state was followed from generation `gen` (`None`: the
    /// follow failed; it is tried again on the next pass).
    pub fn followed(&mut self, gen: Option<u64>) {
        self.gen = gen;
    }

    /// Whether the next pass must follow the shared state (the last
    /// attempt failed).
    pub fn must_follow(&self) -> bool {
        self.gen.is_none()
    }

    /// Whether anything was registered since the last withdraw.
    pub fn begun(&self) -> bool {
        self.pass > 0 || self.at_start
    }

    /// After [`register_at_start`]: its row may be live.
    pub fn registered_at_start() -> Self {
        Passes {
            at_start: true,
            ..Passes::default()
        }
    }
}

/// Registers a starting instance as a standby that has seen nothing yet,
/// before it reads its state: until its first pass renews the row (or it
/// expires), every commit elsewhere waits for it. An instance that becomes
/// the primary withdraws it at the tail's next look. Best effort: without
/// it, the first renewal finds no live row and vouches for nothing, so
/// only the wait for a change made while it starts is lost.
pub async fn register_at_start(cluster: &Cluster) {
    let registered = tokio::time::timeout(
        TTL / 2,
        cluster
            .store
            .vouch_renew(&cluster.id, 0, 0, TTL.as_millis() as u64),
    )
    .await;
    if !matches!(registered, Ok(Ok(_))) {
        tracing::warn!("could not register with the cluster at start; changes made while this instance starts may be answered before it follows them");
    }
}

/// Standby: registers what pass `pass` covered, and vouches by it if the
/// registration went on without a break since before the pass began. Not
/// renewed while it covers nothing (the row then expires).
pub async fn renew(cluster: &Cluster, passes: &mut Passes, pass: u64) {
    let (Some(seen), Some(gen)) = (passes.seen, passes.gen) else {
        return;
    };
    let sent = cluster.now_ms();
    let ttl = TTL.as_millis() as u64;
    let renewed = tokio::time::timeout(
        TTL / 2,
        cluster.store.vouch_renew(&cluster.id, seen, gen, ttl),
    )
    .await;
    let took = cluster.now_ms().saturating_sub(sent);
    let unbroken = match renewed {
        Ok(Ok(live)) => live && took < GRACE.as_millis() as u64,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "vouch renewal failed; retrying");
            false
        }
        Err(_) => {
            tracing::debug!("vouch renewal timed out; retrying");
            false
        }
    };
    if !unbroken {
        // Whatever this pass saw, the primary may not have waited for it.
        passes.clean_from = passes.pass + 1;
    } else if pass >= passes.clean_from {
        cluster
            .vouch_until_ms
            .fetch_max(sent + ttl - MARGIN_MS, Ordering::SeqCst);
    }
}

/// Standby turned primary, or stopping: it vouches no more, and is waited
/// for no more.
pub async fn withdraw(cluster: &Cluster, passes: &mut Passes) {
    *passes = Passes::default();
    cluster.vouch_until_ms.store(0, Ordering::SeqCst);
    if let Err(e) = cluster.store.vouch_drop(&cluster.id).await {
        tracing::debug!(error = %e, "could not withdraw the vouch; it expires by itself");
    }
}

/// What a commit needs covered before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covers {
    /// Records: the change log up to this seq.
    Log(u64),
    /// The recovery state and flags: the shared state up to this
    /// generation.
    Shared(u64),
}

/// The standbys did not confirm within the gate's patience.
#[derive(Debug, thiserror::Error)]
#[error("the change was committed, but not every standby confirmed it within {} ms ({why}); resubmitting it is safe, and is answered once they have", .within.as_millis())]
pub struct Unconfirmed {
    within: Duration,
    why: String,
}

struct Waiter {
    covers: Covers,
    done: oneshot::Sender<()>,
}

/// Where the gate reads the standbys' vouches: PostgreSQL ([`PgVouches`]),
/// or a fake in tests.
pub trait Vouches: Send + Sync {
    /// The live vouches of every other instance.
    fn check(&self) -> impl std::future::Future<Output = Result<VouchCheck, StoreError>> + Send;
    /// Whether the store was closed (the server stopped).
    fn closed(&self) -> bool;
}

/// The vouches in PostgreSQL, as instance `me` sees them.
pub struct PgVouches {
    pub store: PgStore,
    pub me: String,
}

impl Vouches for PgVouches {
    async fn check(&self) -> Result<VouchCheck, StoreError> {
        self.store
            .vouch_check(&self.me, GRACE.as_millis() as u64)
            .await
    }

    fn closed(&self) -> bool {
        self.store.is_closed()
    }
}

/// Where commits wait before they are acknowledged (every instance: one
/// that stepped down after committing still waits).
pub struct Gate {
    /// The longest a commit waits ([`PATIENCE`]).
    patience: Duration,
    tx: mpsc::UnboundedSender<Waiter>,
    rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
    /// A standby renewed its vouch: look again.
    pub wake: Notify,
    /// Why the last look failed, if it did.
    failing: parking_lot::Mutex<Option<String>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::with_patience(PATIENCE)
    }
}

impl Gate {
    fn with_patience(patience: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Gate {
            patience,
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            wake: Notify::new(),
            failing: parking_lot::Mutex::new(None),
        }
    }

    /// Waits until every other instance's live vouch covers `covers`, as
    /// seen by a check sent after this call (or has expired).
    pub async fn confirmed(&self, covers: Covers) -> Result<(), Unconfirmed> {
        let (done, wait) = oneshot::channel();
        let gone = || Unconfirmed {
            within: self.patience,
            why: "the server is shutting down".into(),
        };
        self.tx.send(Waiter { covers, done }).map_err(|_| gone())?;
        match tokio::time::timeout(self.patience, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(Unconfirmed {
                within: self.patience,
                why: self
                    .failing
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "a standby is slow or frozen".into()),
            }),
        }
    }

    /// Runs until the store is closed: one check serves every commit
    /// waiting.
    pub async fn run(&self, vouches: impl Vouches, shutdown: tokio_util::sync::CancellationToken) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        // Waiters; each came before the next check is sent (they are
        // taken from the channel only then).
        let mut waiting: VecDeque<Waiter> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                // Requests finishing while the server drains still wait
                // here: it stops once the store is closed.
                tokio::select! {
                    w = rx.recv() => match w {
                        Some(w) => waiting.push_back(w),
                        None => return,
                    },
                    _ = shutdown.cancelled() => {
                        if vouches.closed() {
                            return;
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            while let Ok(w) = rx.try_recv() {
                waiting.push_back(w);
            }
            let checked = tokio::time::timeout(CHECK_PATIENCE, vouches.check())
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "PostgreSQL did not answer the check within 1 s".into(),
                    ))
                });
            let check = match checked {
                Ok(c) => {
                    *self.failing.lock() = None;
                    c
                }
                Err(e) => {
                    // Told once per run of failures.
                    let first = self
                        .failing
                        .lock()
                        .replace(format!("cannot check the standbys' vouches: {e}"))
                        .is_none();
                    if first {
                        tracing::warn!(error = %e, "cannot check the standbys' vouches; acknowledgements wait");
                    }
                    waiting.retain(|w| !w.done.is_closed());
                    if vouches.closed() && waiting.is_empty() {
                        return;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut still = VecDeque::with_capacity(waiting.len());
            for w in waiting.drain(..) {
                let covered = match w.covers {
                    Covers::Log(seq) => check.seen_seq.is_none_or(|s| s >= seq),
                    Covers::Shared(gen) => check.shared_gen.is_none_or(|g| g >= gen),
                };
                if covered {
                    let _ = w.done.send(());
                } else if !w.done.is_closed() {
                    still.push_back(w);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    /// The vouches as a test sets them; every check waits for a permit.
    struct Fake {
        now: parking_lot::Mutex<Result<VouchCheck, String>>,
        permits: Semaphore,
        closed: AtomicBool,
    }

    #[derive(Clone)]
    struct Shared(Arc<Fake>);

    impl Vouches for Shared {
        async fn check(&self) -> Result<VouchCheck, StoreError> {
            self.0.permits.acquire().await.expect("open").forget();
            self.0.now.lock().clone().map_err(StoreError::Unavailable)
        }

        fn closed(&self) -> bool {
            self.0.closed.load(Ordering::SeqCst)
        }
    }

    fn vouches(seen: Option<u64>, gen: Option<u64>) -> Shared {
        Shared(Arc::new(Fake {
            now: parking_lot::Mutex::new(Ok(VouchCheck {
                seen_seq: seen,
                shared_gen: gen,
            })),
            permits: Semaphore::new(0),
            closed: AtomicBool::new(false),
        }))
    }

    fn started(
        gate: Arc<Gate>,
        v: &Shared,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio_util::sync::CancellationToken,
    ) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (v, s) = (v.clone(), shutdown.clone());
        (tokio::spawn(async move { gate.run(v, s).await }), shutdown)
    }

    fn waiting(
        gate: &Arc<Gate>,
        covers: Covers,
    ) -> tokio::task::JoinHandle<Result<(), Unconfirmed>> {
        let gate = gate.clone();
        tokio::spawn(async move { gate.confirmed(covers).await })
    }

    /// Lets every task run as far as it can.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// A commit is judged only by a check sent after it came: a check
    /// already on its way when it came may predate its commit.
    #[tokio::test(start_paused = true)]
    async fn a_commit_is_judged_only_by_a_check_sent_after_it_came() {
        let gate = Arc::new(Gate::default());
        let v = vouches(Some(10), Some(1));
        let _run = started(gate.clone(), &v);
        let first = waiting(&gate, Covers::Log(5));
        settle().await;
        // The check for `first` is on its way; `second` comes now.
        let second = waiting(&gate, Covers::Log(5));
        settle().await;
        v.0.permits.add_permits(1);
        settle().await;
        assert!(first.is_finished(), "covered by the check sent after it");
        assert!(!second.is_finished(), "not by a check sent before it came");
        v.0.permits.add_permits(1);
        settle().await;
        assert!(second.is_finished());
        assert!(first.await.unwrap().is_ok() && second.await.unwrap().is_ok());
    }

    /// Records wait for every live vouch's seq, flags for its generation;
    /// with no live vouch, nothing waits.
    #[tokio::test(start_paused = true)]
    async fn each_kind_waits_for_its_own_mark() {
        let gate = Arc::new(Gate::default());
        let v = vouches(Some(3), Some(1));
        v.0.permits.add_permits(1_000);
        let _run = started(gate.clone(), &v);
        let order = waiting(&gate, Covers::Log(5));
        let flags = waiting(&gate, Covers::Shared(2));
        let old = waiting(&gate, Covers::Log(3));
        tokio::time::sleep(RECHECK * 2).await;
        assert!(old.is_finished(), "seq 3 is published everywhere");
        assert!(!order.is_finished() && !flags.is_finished());
        *v.0.now.lock() = Ok(VouchCheck {
            seen_seq: Some(5),
            shared_gen: Some(1),
        });
        gate.wake.notify_one();
        settle().await;
        assert!(order.is_finished(), "seq 5 now is");
        assert!(!flags.is_finished(), "generation 2 is not yet");
        // The standby stopped vouching (its row expired): waited for no
        // more.
        *v.0.now.lock() = Ok(VouchCheck {
            seen_seq: None,
            shared_gen: None,
        });
        tokio::time::sleep(RECHECK * 2).await;
        assert!(flags.is_finished(), "the safety-net poll looked again");
        for w in [order, flags, old] {
            assert!(w.await.unwrap().is_ok());
        }
    }

    /// A gate that cannot look answers, after its patience, that the
    /// change was committed but not confirmed, and why.
    #[tokio::test(start_paused = true)]
    async fn a_gate_that_cannot_look_says_why_after_its_patience() {
        let gate = Arc::new(Gate::with_patience(Duration::from_millis(500)));
        let v = vouches(None, None);
        *v.0.now.lock() = Err("connection refused".into());
        v.0.permits.add_permits(1_000);
        let (run, shutdown) = started(gate.clone(), &v);
        let e = gate
            .confirmed(Covers::Log(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("was committed") && e.contains("resubmitting it is safe"),
            "{e}"
        );
        assert!(e.contains("connection refused"), "{e}");
        // It runs until the store is closed, then stops.
        shutdown.cancel();
        settle().await;
        assert!(!run.is_finished(), "requests draining still wait here");
        v.0.closed.store(true, Ordering::SeqCst);
        tokio::time::sleep(RETRY * 2).await;
        assert!(run.is_finished());
    }
}

#[cfg(test)]
mod renew_tests {
    use super::*;

    async fn standby(test: &str) -> Option<Cluster> {
        let pg = tidemark_testkit::postgres::PgCluster::shared(test)?;
        let url = pg.database(test).unwrap();
        let store = PgStore::connect(&url, "tidemark").await.unwrap();
        Some(Cluster::new(
            store,
            "http://b".into(),
            "boot",
            url,
            Duration::from_millis(1000),
            Duration::from_secs(15),
        ))
    }

    fn vouch_until(c: &Cluster) -> u64 {
        c.vouch_until_ms.load(Ordering::SeqCst)
    }

    /// S3, P9: a standby vouches only for passes begun after a renewal
    /// that found its row live: its first registration, and the first
    /// after its row expired (it froze), vouch for nothing, since the
    /// primary may have acknowledged commits without waiting for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_vouches_only_for_passes_begun_after_its_row_was_live() {
        let Some(c) = standby("vouch_renew_after_a_break").await else {
            return;
        };
        let mut passes = Passes::default();
        // Nothing covered yet: nothing registered.
        let p = passes.begin();
        renew(&c, &mut passes, p).await;
        assert_eq!(c.store.vouch_check("a", 0).await.unwrap().seen_seq, None);
        passes.followed(Some(0));
        passes.caught_up(7);
        renew(&c, &mut passes, p).await;
        let check = c.store.vouch_check("a", 0).await.unwrap();
        assert_eq!((check.seen_seq, check.shared_gen), (Some(7), Some(0)));
        assert_eq!(
            vouch_until(&c),
            0,
            "a new row: this pass vouches for nothing"
        );
        let p = passes.begin();
        renew(&c, &mut passes, p).await;
        assert!(vouch_until(&c) > c.now_ms(), "the next pass does");
        // The row expires (the standby froze), then is renewed.
        c.store.vouch_renew(&c.id, 7, 0, 0).await.unwrap();
        c.vouch_until_ms.store(0, Ordering::SeqCst);
        let p = passes.begin();
        renew(&c, &mut passes, p).await;
        assert_eq!(
            vouch_until(&c),
            0,
            "after a break, this pass vouches for nothing"
        );
        let p = passes.begin();
        renew(&c, &mut passes, p).await;
        assert!(vouch_until(&c) > c.now_ms(), "the pass after it does");
        // Withdrawn: not waited for.
        withdraw(&c, &mut passes).await;
        assert_eq!(c.store.vouch_check("a", 0).await.unwrap().seen_seq, None);
        assert_eq!(vouch_until(&c), 0);
    }
}
