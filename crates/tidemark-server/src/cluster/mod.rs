//! Several DB-server instances on one PostgreSQL (S3, S5, S8, S10): who is
//! primary, and what a standby does differently.
//!
//! - `lease`: the loop that takes, renews and gives up the lease; the role
//!   follows from it, never from a flag, so an instance restarted at any
//!   moment rejoins in the right role by itself.
//! - `tail`: a standby publishes the primary's changes from the change log
//!   (LISTEN/NOTIFY wakes it; a poll is the safety net).
//! - `forward`: a write sent to a standby goes to the primary, or is held
//!   while no primary is online (`--failover-wait`).
//! - `ask`: a request asked of the other instances on a caller's behalf
//!   (a service server's quiesce notice by name).
//!
//! Invariants:
//! - Only the lease holder of the current term commits: the store checks
//!   the term inside every write transaction (`PgStore::set_fence`).
//! - An instance becomes primary only after it has published every change
//!   committed under earlier terms, so pushes stay in seq order, each once.

pub mod ask;
pub mod forward;
pub mod lease;
pub mod tail;
pub mod vouch;

use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::state::Role;
use tidemark_store::PgStore;
use tokio::sync::{watch, Notify};

/// Set on an answer whose write was not applied because the instance is
/// not the primary: whoever forwarded it holds it and tries again.
pub const NOT_PRIMARY_HEADER: &str = "tidemark-not-primary";

/// What this instance knows of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub role: Role,
    /// The term this instance last saw.
    pub term: u64,
    /// The primary's advertised URL, if one is online.
    pub primary: Option<String>,
}

/// One instance of a cluster.
pub struct Cluster {
    pub store: PgStore,
    /// Unique per process: the advertised URL and the boot.
    pub id: String,
    /// How the other instances and clients reach this one.
    pub url: String,
    pub database_url: String,
    pub lease_ttl: Duration,
    pub failover_wait: Duration,
    view: watch::Sender<View>,
    /// Wakes the lease loop (a promote) and the tail (a commit).
    pub lease_wake: Notify,
    pub tail_wake: Notify,
    /// Forwards writes to the primary.
    pub http: reqwest::Client,
    /// The live members, as last read (for `/v1/state`).
    pub members: RwLock<Vec<tidemark_store::postgres::cluster::Member>>,
    /// Members whose heartbeats stopped within [`lease::DOWN_SHOWN_MS`]
    /// without a clean leave (killed, crashed, cut off): listed as down,
    /// so an operator sees the redundancy lost.
    pub members_down: RwLock<Vec<tidemark_store::postgres::cluster::Member>>,
    /// Until when (ms after `epoch`) the lease is surely still ours: the
    /// moment the last renewal (or take-over) was sent, plus what was left
    /// of the lease, less a margin. Only then may the read cache answer: a
    /// primary cut off from PostgreSQL, whose lease another instance may
    /// already hold, would otherwise go on serving what it cached.
    lease_until_ms: AtomicU64,
    /// When (ms after `epoch`) a lease statement last got an answer from
    /// PostgreSQL (every tick, in either role).
    reached_ms: AtomicU64,
    /// A handover is being committed: the read cache stops answering
    /// before the lease moves, not once the answer says it moved (an
    /// answer lost would leave it serving while the new primary commits).
    /// 0: none; 1: in progress; 2: over, outcome unknown (until the lease
    /// loop renews the lease by a statement sent after it ended).
    handing_over: std::sync::atomic::AtomicU8,
    /// When (ms after `epoch`) a handover of unknown outcome ended.
    handover_ended_ms: AtomicU64,
    /// Standby: when (ms after `epoch`) the last tail pass began whose
    /// catch-up reached the end of the log, and the last whose follow of
    /// the shared state (recovery flags) succeeded. What it streams is
    /// current as of the older one: a commit acknowledged before then was
    /// published.
    caught_up_ms: AtomicU64,
    shared_followed_ms: AtomicU64,
    /// Standby: until when (ms after `epoch`) its registered vouch lets it
    /// vouch (see [`vouch`]).
    pub(crate) vouch_until_ms: AtomicU64,
    /// Where commits wait for the standbys' vouches.
    pub gate: vouch::Gate,
    /// A shared-state notice found the tail's queue full: followed at the
    /// next pass all the same.
    pub(crate) shared_missed: std::sync::atomic::AtomicBool,
    /// The recovery state as this instance last followed it (see
    /// [`tail::Followed`]).
    pub(crate) followed: parking_lot::Mutex<Option<tail::Followed>>,
    /// What the `_ms` times are counted from (see [`boot_clock_ms`]).
    epoch: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("view", &*self.view.borrow())
            .finish()
    }
}

impl Cluster {
    pub fn new(
        store: PgStore,
        url: String,
        boot: &str,
        database_url: String,
        lease_ttl: Duration,
        failover_wait: Duration,
    ) -> Self {
        // Until the lease loop has looked, this instance may not write.
        store.set_fence(None);
        let (view, _) = watch::channel(View {
            role: Role::Standby,
            term: 0,
            primary: None,
        });
        Self {
            store,
            id: format!("{url}#{boot}"),
            url,
            database_url,
            lease_ttl,
            failover_wait,
            view,
            lease_wake: Notify::new(),
            tail_wake: Notify::new(),
            members: RwLock::new(Vec::new()),
            members_down: RwLock::new(Vec::new()),
            lease_until_ms: AtomicU64::new(0),
            reached_ms: AtomicU64::new(0),
            handing_over: Default::default(),
            handover_ended_ms: AtomicU64::new(0),
            caught_up_ms: AtomicU64::new(0),
            shared_followed_ms: AtomicU64::new(0),
            vouch_until_ms: AtomicU64::new(0),
            gate: vouch::Gate::default(),
            shared_missed: Default::default(),
            followed: parking_lot::Mutex::new(None),
            epoch: boot_clock_ms(),
            // Trusts --ca-cert and presents --client-cert, like every client.
            http: tidemark_api::client::tls_builder()
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .build()
                .expect("a default reqwest client always builds"),
        }
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    pub fn is_primary(&self) -> bool {
        self.view.borrow().role == Role::Primary
    }

    /// A handover starts. Until the guard says how it ended, the read
    /// cache is off and streams are vouched for no longer; a guard dropped
    /// without a word (the request went away) counts as an unknown end.
    pub fn handover_started(&self) -> HandoverGuard<'_> {
        self.handing_over.store(1, Ordering::SeqCst);
        HandoverGuard {
            cluster: self,
            ended: false,
        }
    }

    fn handover_ended(&self, known: bool) {
        if known {
            self.handing_over.store(0, Ordering::SeqCst);
        } else {
            self.handover_ended_ms
                .store(self.now_ms(), Ordering::SeqCst);
            self.handing_over.store(2, Ordering::SeqCst);
        }
    }

    /// The lease was renewed by a statement sent at `sent`: if that was
    /// after a handover of unknown outcome ended, the handover did not
    /// happen (the lease is still ours).
    pub(crate) fn renewed_after_handover(&self, sent_ms: u64) {
        if sent_ms > self.handover_ended_ms.load(Ordering::SeqCst) {
            let _ = self
                .handing_over
                .compare_exchange(2, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    pub(crate) fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst) != 0
    }

    /// Whether this instance's read cache may answer: the primary, surely
    /// holding the lease, and not handing it over.
    pub fn may_use_read_cache(&self) -> bool {
        self.is_primary() && self.lease_held() && !self.handing_over()
    }

    /// Whether the lease is surely still ours now (see `lease_until_ms`).
    pub fn lease_held(&self) -> bool {
        self.now_ms() < self.lease_until_ms.load(Ordering::SeqCst)
    }

    /// The lease, as read or renewed by a statement sent at `sent`, has
    /// `left` to run.
    pub(crate) fn lease_held_for(&self, sent_ms: u64, left: Duration) {
        let margin = self.lease_ttl / 10;
        let until = sent_ms + left.saturating_sub(margin).as_millis() as u64;
        self.lease_until_ms.store(until, Ordering::SeqCst);
    }

    /// Now, in ms after `epoch`.
    pub(crate) fn now_ms(&self) -> u64 {
        boot_clock_ms().saturating_sub(self.epoch)
    }

    /// Standby: a tail pass begun at `began_ms` caught up with the log.
    pub(crate) fn caught_up(&self, began_ms: u64) {
        self.caught_up_ms.fetch_max(began_ms, Ordering::SeqCst);
    }

    /// Standby: a tail pass begun at `began_ms` followed the shared state.
    pub(crate) fn shared_followed(&self, began_ms: u64) {
        self.shared_followed_ms
            .fetch_max(began_ms, Ordering::SeqCst);
    }

    /// A lease statement got an answer from PostgreSQL just now.
    pub(crate) fn reached_postgres(&self) {
        self.reached_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Whether what this instance knows may be outdated: it is the primary
    /// but not surely the lease holder any more, or it has not reached
    /// PostgreSQL for over a lease (at least 1 s), so another instance may
    /// hold the lease and commit. It then ends its watch streams and opens
    /// none, so service servers move to an instance that is current
    /// instead of trusting their caches.
    pub fn cut_off(&self) -> bool {
        self.cut_off_at(self.now_ms())
    }

    fn cut_off_at(&self, now: u64) -> bool {
        if self.is_primary() && now >= self.lease_until_ms.load(Ordering::SeqCst) {
            return true;
        }
        now.saturating_sub(self.reached_ms.load(Ordering::SeqCst)) > self.vouch_limit_ms()
    }

    /// A lease, and at least 1 s.
    fn vouch_limit_ms(&self) -> u64 {
        self.lease_ttl.max(Duration::from_secs(1)).as_millis() as u64
    }

    /// For how long (ms from now) what this instance streams is surely
    /// current: until [`Cluster::cut_off`] would turn true if nothing
    /// changed (the lease's end on a primary, a lease after PostgreSQL
    /// last answered on either role), and on a standby no longer than a
    /// lease after its tail was last current (a tail stuck while the lease
    /// loop still reaches PostgreSQL, on a broken LISTEN connection or an
    /// exhausted pool, vouched for changes it never published), nor past
    /// its registered vouch, which the primary waits out before it
    /// acknowledges what this standby has not seen ([`vouch`]). `None` if
    /// it is already cut off.
    pub fn vouched_for_ms(&self) -> Option<u64> {
        self.vouched_at(self.now_ms())
    }

    fn vouched_at(&self, now: u64) -> Option<u64> {
        if self.cut_off_at(now) {
            return None;
        }
        if self.handing_over() {
            // The lease may be moving: vouch for nothing (the stream stays).
            return Some(0);
        }
        let limit = self.vouch_limit_ms();
        let mut until = self.reached_ms.load(Ordering::SeqCst) + limit;
        if self.is_primary() {
            until = until.min(self.lease_until_ms.load(Ordering::SeqCst));
        } else {
            let current = self
                .caught_up_ms
                .load(Ordering::SeqCst)
                .min(self.shared_followed_ms.load(Ordering::SeqCst));
            until = until
                .min(current + limit)
                .min(self.vouch_until_ms.load(Ordering::SeqCst));
        }
        Some(until.saturating_sub(now))
    }

    /// The lease is not ours (any more): nothing of ours commits (the
    /// fence first), and the read cache stops answering.
    pub(crate) fn lease_lost(&self) {
        self.store.set_fence(None);
        self.lease_until_ms.store(0, Ordering::SeqCst);
    }

    pub(crate) fn set_view(&self, v: View) {
        self.view.send_if_modified(|old| {
            let changed = *old != v;
            *old = v;
            changed
        });
    }

    /// Waits until the view changes or `within` passes.
    pub async fn changed(&self, within: Duration) {
        let mut rx = self.view.subscribe();
        let _ = tokio::time::timeout(within, rx.changed()).await;
    }

    /// How often the lease loop looks: a fraction of the lease, so a
    /// primary renews several times per term and a standby notices an
    /// expiry soon after it happens.
    pub fn tick(&self) -> Duration {
        (self.lease_ttl / 6).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }
}

/// A handover in progress (see [`Cluster::handover_started`]).
pub struct HandoverGuard<'a> {
    cluster: &'a Cluster,
    ended: bool,
}

impl HandoverGuard<'_> {
    /// It ended: `known` if its outcome is (the lease moved, or surely did
    /// not), else the lease loop's next renewal decides.
    pub fn ended(mut self, known: bool) {
        self.ended = true;
        self.cluster.handover_ended(known);
    }
}

impl Drop for HandoverGuard<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.cluster.handover_ended(false);
        }
    }
}

/// The clock the lease is timed by: it counts suspended time too (see
/// [`tidemark_api::clock::boot_ms`]).
pub fn boot_clock_ms() -> u64 {
    tidemark_api::clock::boot_ms()
}

/// The cluster of `app`, if its store is shared.
pub fn of(app: &crate::state::AppState) -> Option<&Arc<Cluster>> {
    app.cluster.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S3, P9: a standby whose lease loop reaches PostgreSQL but whose tail
    /// is stuck (a broken LISTEN connection, an exhausted pool) vouches for
    /// no longer than a lease after its tail was last current; it vouched
    /// on, and its service servers served cached records the primary had
    /// changed since.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_vouches_only_as_far_as_its_tail_is_current() {
        let Some(pg) = tidemark_testkit::postgres::PgCluster::shared("cluster_vouch") else {
            return;
        };
        let url = pg.database("cluster_vouch").unwrap();
        let store = PgStore::connect(&url, "tidemark").await.unwrap();
        let c = Cluster::new(
            store,
            "http://a".into(),
            "boot",
            url,
            Duration::from_millis(1000),
            Duration::from_secs(15),
        );
        assert!(!c.is_primary());
        let at = |ms: u64, a: &AtomicU64| a.store(ms, Ordering::SeqCst);
        // PostgreSQL answered the lease loop just now, at 60 s.
        at(60_000, &c.reached_ms);
        at(59_900, &c.caught_up_ms);
        at(59_800, &c.shared_followed_ms);
        at(60_850, &c.vouch_until_ms);
        assert_eq!(c.vouched_at(60_000), Some(800), "the older of the two");
        // Its registration in PostgreSQL runs out first: no further.
        at(60_500, &c.vouch_until_ms);
        assert_eq!(c.vouched_at(60_000), Some(500));
        at(60_850, &c.vouch_until_ms);
        // The tail stuck since 50 s: nothing vouched for, the stream stays.
        at(50_000, &c.caught_up_ms);
        assert_eq!(c.vouched_at(60_000), Some(0));
        at(59_900, &c.caught_up_ms);
        at(50_000, &c.shared_followed_ms);
        assert_eq!(c.vouched_at(60_000), Some(0));
        // Cut off from PostgreSQL altogether: the stream ends.
        at(59_900, &c.shared_followed_ms);
        assert_eq!(c.vouched_at(61_200), None);
    }
}
