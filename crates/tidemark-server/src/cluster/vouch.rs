//! A standby's vouch, and the primary's wait for it (S3, P9).
//!
//! A service server watching a standby serves its cache as current while
//! the standby vouches (`lease` events). A standby that freezes cannot
//! take back a vouch already sent, and the primary meanwhile commits what
//! it cannot push. So every vouch is registered in PostgreSQL first, and
//! the primary acknowledges a commit only once every live registration is
//! as of a time after it, or has expired, as lease-based follower reads do.
//!
//! Invariants:
//! - Times are PostgreSQL's clock, never an instance's. A registration's
//!   as-of is the clock at the standby's previous registration statement:
//!   every read of the pass after it sees each commit that had returned
//!   before then.
//! - A standby vouches no longer than its registration lives, counted from
//!   when it sent the statement (so before the database's expiry), and
//!   only for passes begun after the row was last live without a break: in
//!   a break, the primary did not wait for it.
//! - A registration is renewed only after a pass that caught up, so a
//!   standby that cannot keep up stops holding the primary back within
//!   [`TTL`] (and stops vouching).

use super::Cluster;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tidemark_store::PgStore;
use tokio::sync::{mpsc, oneshot};

/// How long a registration lives: the longest a frozen standby holds the
/// primary's acknowledgements back.
pub const TTL: Duration = Duration::from_millis(1_000);
/// What a standby takes off its registration's life for clock drift.
const MARGIN_MS: u64 = 150;
/// How often the primary looks again while a commit waits.
const RECHECK: Duration = Duration::from_millis(2);
/// The pause after the primary could not look (PostgreSQL unreachable).
const RETRY: Duration = Duration::from_millis(50);
/// The longest a commit waits before its request is answered `503`.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// What a standby's pass covered, as of PostgreSQL's clock (µs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Passes {
    /// The as-of of the next pass: the clock at the last registration (or
    /// clock read).
    next: Option<i64>,
    /// The as-of of the last pass that caught up with the change log.
    log: Option<i64>,
    /// The as-of of the last pass that followed the shared state, if the
    /// latest attempt succeeded.
    shared: Option<i64>,
}

impl Passes {
    /// A pass begins: what it covers is as of the last registration, or
    /// of a clock read now, before the first.
    pub async fn begin(&mut self, cluster: &Cluster) -> Option<i64> {
        if self.next.is_none() {
            self.next = cluster.store.clock_us().await.ok();
        }
        self.next
    }

    /// Whether anything was registered (or read) since the last withdraw.
    pub fn begun(&self) -> bool {
        self.next.is_some()
    }

    pub fn caught_up(&mut self, as_of: Option<i64>) {
        self.log = as_of.or(self.log);
    }

    pub fn followed(&mut self, as_of: Option<i64>, ok: bool) {
        self.shared = if ok { as_of.or(self.shared) } else { None };
    }
}

/// Standby: registers what the last pass covered, and vouches by it. Not
/// renewed when it covers nothing yet (the row then expires).
pub async fn renew(cluster: &Cluster, passes: &mut Passes) {
    let (Some(log), Some(shared)) = (passes.log, passes.shared) else {
        return;
    };
    let sent = cluster.now_ms();
    let ttl = TTL.as_millis() as u64;
    match tokio::time::timeout(
        TTL / 2,
        cluster.store.vouch_renew(&cluster.id, log, shared, ttl),
    )
    .await
    {
        Ok(Ok(v)) => {
            passes.next = Some(v.now_us);
            if log.min(shared) >= v.active_since_us {
                cluster
                    .vouch_until_ms
                    .fetch_max(sent + ttl - MARGIN_MS, Ordering::SeqCst);
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "vouch renewal failed; retrying"),
        Err(_) => tracing::debug!("vouch renewal timed out; retrying"),
    }
}

/// Standby turned primary: it vouches no more, and is waited for no more.
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
    /// Records (orders): the change log.
    Log,
    /// The recovery state and flags.
    Shared,
}

/// The standbys did not confirm within [`PATIENCE`].
#[derive(Debug, thiserror::Error)]
#[error("the change was committed, but not every standby confirmed it within {} s (PostgreSQL unreachable?); resubmitting it is safe, and is answered once they have", PATIENCE.as_secs())]
pub struct Unconfirmed;

struct Waiter {
    covers: Covers,
    done: oneshot::Sender<()>,
}

/// The primary's side: commits wait here before they are acknowledged.
pub struct Gate {
    tx: mpsc::UnboundedSender<Waiter>,
    rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Waiter>>>,
}

impl Default for Gate {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Gate {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
        }
    }
}

impl Gate {
    /// Waits until every standby's vouch covers what was committed before
    /// the call (or has expired).
    pub async fn confirmed(&self, covers: Covers) -> Result<(), Unconfirmed> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Waiter { covers, done }).is_err() {
            return Err(Unconfirmed);
        }
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Unconfirmed),
        }
    }

    /// Runs until shutdown: one check serves every commit waiting.
    pub async fn run(
        &self,
        store: PgStore,
        me: String,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Some(mut rx) = self.rx.lock().take() else {
            return;
        };
        // Waiters with the clock their check must pass, oldest first.
        let mut waiting: VecDeque<(i64, Waiter)> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    w = rx.recv() => match w {
                        Some(w) => new_waiters(&mut rx, w, &mut waiting),
                        None => return,
                    },
                }
            } else {
                while let Ok(w) = rx.try_recv() {
                    waiting.push_back((i64::MIN, w));
                }
            }
            // Everyone in `waiting` now came before this check was sent.
            let check = match store.vouch_check(&me).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "vouch check failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let mut still = VecDeque::with_capacity(waiting.len());
            for (target, w) in waiting.drain(..) {
                let target = if target == i64::MIN {
                    check.now_us
                } else {
                    target
                };
                let covered = match w.covers {
                    Covers::Log => check.log_as_of_us,
                    Covers::Shared => check.shared_as_of_us,
                };
                match covered {
                    Some(as_of) if as_of < target && !w.done.is_closed() => {
                        still.push_back((target, w))
                    }
                    _ => {
                        let _ = w.done.send(());
                    }
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(RECHECK).await;
            }
        }
    }
}

fn new_waiters(
    rx: &mut mpsc::UnboundedReceiver<Waiter>,
    first: Waiter,
    waiting: &mut VecDeque<(i64, Waiter)>,
) {
    waiting.push_back((i64::MIN, first));
    while let Ok(w) = rx.try_recv() {
        waiting.push_back((i64::MIN, w));
    }
}
