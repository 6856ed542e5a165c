//! Pipelined group commits (issue 10): while one group waits for its
//! commit, the next ones already run their statements on other connections.
//!
//! Invariants:
//! - Seqs and high-water marks are handed out in memory, under the writer
//!   lock, in the order groups begin; a group commits only after the group
//!   begun before it has committed. So groups commit in seq order, and the
//!   change log never shows a seq before every smaller one is there.
//! - A group runs pipelined only on the plain path: normal recovery state,
//!   no flags, no order at or below its source's high-water mark, the
//!   lease term unchanged since the state was learnt. Anything else runs
//!   alone, as before, once every running group has ended.
//! - Groups that share a key run their statements one after the other (the
//!   later waits for the earlier to commit), so no group ever waits for a
//!   row lock held by one begun after it: no deadlock PostgreSQL cannot see.
//! - If a group fails, every group begun on top of it rolls back and is
//!   applied again alone, in order: nothing commits on top of a gap.

use super::catalog::Catalog;
use super::write::{execute_plain, pg, plan_batch};
use super::PgStore;
use crate::store::{ApplyOutcome, Begun, Ended};
use crate::StoreError;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tidemark_api::{Order, Version};

/// Groups running at once, at most.
pub(super) const DEPTH: usize = 4;

/// A group's outcome as later groups wait for it: `true` once committed.
type Outcome = Shared<oneshot::Receiver<bool>>;

/// What the writer lock guards besides the write itself: where the pipeline
/// stands.
#[derive(Default)]
pub(super) struct Chain {
    /// Seq and high-water marks after the last group begun; `None`: not
    /// known, so the next group runs alone and learns them.
    pub(super) state: Option<ChainState>,
    /// The last group begun, which the next one commits after.
    last: Option<Outcome>,
    /// The keys of the groups begun and not yet ended.
    busy: Vec<Arc<Busy>>,
}

/// What the store holds once every group begun so far has committed.
#[derive(Clone)]
pub(super) struct ChainState {
    pub(super) seq: u64,
    /// Source to high-water mark; a source missing here was touched by no
    /// running group, so the committed value is current.
    pub(super) high_water: HashMap<String, u64>,
    /// The lease term it was learnt under (`None`: a single instance).
    pub(super) term: Option<u64>,
}

struct Busy {
    /// A hash of each `(table, key)`: a collision only makes a later
    /// group wait when it need not, never the reverse.
    keys: HashSet<u64>,
    ended: AtomicBool,
}

impl Chain {
    /// Forgets the pipeline: call with every running group ended.
    pub(super) fn reset(&mut self) {
        *self = Chain::default();
    }
}

/// A group planned to run pipelined.
struct Plan {
    catalog: Arc<Catalog>,
    batches: Vec<Vec<Order>>,
    /// Per batch: refused before it ran, or the versions it takes.
    out: Vec<Option<Result<ApplyOutcome, StoreError>>>,
    versions: Vec<Option<Vec<Version>>>,
    /// The sources this group moves, and their marks after it.
    moved: Vec<(String, u64)>,
    seq: u64,
    /// The lease term the group was planned under: it commits only while
    /// the lease is still at it (a term later, another primary may have
    /// changed what the plan rests on).
    term: Option<u64>,
    /// Shares a key with a running group: run the statements only after
    /// the group before has committed.
    wait_first: bool,
    prev: Option<Outcome>,
    done: oneshot::Sender<bool>,
    busy: Arc<Busy>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// How a pipelined group failed.
enum Failure {
    /// Rolled back with nothing applied: apply it again alone.
    Again,
    /// The commit itself failed: its outcome is unknown.
    Commit(StoreError),
}

impl PgStore {
    /// Begins `batches` as one group: pipelined where it can be, else alone.
    pub(super) async fn begin_group_pg(&self, batches: Vec<Vec<Order>>) -> Begun {
        let catalog = self.catalog();
        let mut out = crate::apply::validate_group(&catalog.schema, &batches);
        let mut chain = self.inner.write.lock().await;
        if !Arc::ptr_eq(&self.catalog(), &catalog)
            || self.inner.poisoned.load(Ordering::SeqCst)
            || self.inner.flag_rows.load(Ordering::SeqCst) > 0
            || self.inner.flags_unknown.load(Ordering::SeqCst)
        {
            return Begun::Alone(batches);
        }
        let Some(mut state) = chain.state.clone() else {
            return Begun::Alone(batches);
        };
        if state.term != self.fence_term() {
            // The lease changed hands since: another primary may have
            // written. (Not holding it: alone, to be refused.)
            return Begun::Alone(batches);
        }
        let Ok(permit) = self.inner.running.clone().try_acquire_owned() else {
            return Begun::Alone(batches);
        };
        // Marks of sources no running group touched: committed, so current.
        let unknown: Vec<&str> = {
            let mut seen = HashSet::new();
            batches
                .iter()
                .flatten()
                .map(|o| o.source.as_str())
                .filter(|s| !state.high_water.contains_key(*s) && seen.insert(*s))
                .collect()
        };
        if !unknown.is_empty() {
            let Ok(marks) = self.read_marks(&unknown).await else {
                return Begun::Alone(batches);
            };
            state.high_water.extend(marks);
        }
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        let mut marks: HashMap<String, (u64, bool)> = state
            .high_water
            .iter()
            .map(|(s, hw)| (s.clone(), (*hw, false)))
            .collect();
        let mut seq = state.seq;
        let mut versions = vec![None; batches.len()];
        for (i, orders) in batches.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match plan_batch(orders, epoch, &mut seq, &mut marks) {
                Ok(Some(v)) => versions[i] = Some(v),
                // A duplicate candidate: the careful path, alone.
                Ok(None) => return Begun::Alone(batches),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        chain.busy.retain(|b| !b.ended.load(Ordering::SeqCst));
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let keys: HashSet<u64> = batches
            .iter()
            .zip(&versions)
            .filter(|(_, v)| v.is_some())
            .flat_map(|(b, _)| b.iter().map(|o| hasher.hash_one((&o.table, &o.key))))
            .collect();
        let wait_first = chain
            .busy
            .iter()
            .any(|b| keys.iter().any(|k| b.keys.contains(k)));
        let busy = Arc::new(Busy {
            keys,
            ended: AtomicBool::new(false),
        });
        chain.busy.push(busy.clone());
        let (done, outcome) = oneshot::channel();
        let prev = chain.last.replace(outcome.shared());
        let moved = marks
            .iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(s, (hw, _))| (s.clone(), *hw))
            .collect();
        state.seq = seq;
        state.high_water = marks.into_iter().map(|(s, (hw, _))| (s, hw)).collect();
        let term = state.term;
        chain.state = Some(state);
        let plan = Plan {
            catalog,
            batches,
            out,
            versions,
            moved,
            seq,
            term,
            wait_first,
            prev,
            done,
            busy,
            _permit: permit,
        };
        let store = self.clone();
        Begun::Running(Box::pin(async move { store.run(plan).await }))
    }

    /// The lease term this instance writes under (`None`: unfenced, or
    /// not the holder).
    pub(super) fn fence_term(&self) -> Option<u64> {
        self.inner.fence.read().as_ref().map(|(term, _)| *term)
    }

    async fn read_marks(&self, sources: &[&str]) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT source, high_water FROM tm_sources WHERE source = ANY($1)",
                &[&sources],
            )
            .await
            .map_err(pg)?;
        let mut marks: HashMap<String, u64> =
            sources.iter().map(|s| ((*s).to_owned(), 0)).collect();
        for r in rows {
            marks.insert(r.get(0), r.get::<_, i64>(1) as u64);
        }
        Ok(marks.into_iter().collect())
    }

    /// Runs a planned group to its end and tells the next group how it went.
    async fn run(self, mut plan: Plan) -> Ended {
        let result = self.statements_and_commit(&mut plan).await;
        plan.busy.ended.store(true, Ordering::SeqCst);
        let committed = result.is_ok();
        if committed {
            self.inner.seq.store(plan.seq, Ordering::SeqCst);
        } else {
            // Later groups planned on this one; the next to begin runs alone.
            self.inner.poisoned.store(true, Ordering::SeqCst);
        }
        let _ = plan.done.send(committed);
        match result {
            Ok(()) => Ended::Done(
                plan.out
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into()))))
                    .collect(),
            ),
            Err(Failure::Again) => Ended::Again(plan.batches),
            Err(Failure::Commit(e)) => Ended::Done(crate::apply::group_failed(plan.out, e)),
        }
    }

    async fn statements_and_commit(&self, plan: &mut Plan) -> Result<(), Failure> {
        let again = |_| Failure::Again;
        if plan.wait_first {
            // Before the transaction opens: no lock held while waiting.
            wait_for(&plan.prev).await?;
        }
        let mut client = self.client().await.map_err(again)?;
        let tx = client.transaction().await.map_err(|_| Failure::Again)?;
        // Several instances: only the lease holder of the current term
        // commits (the lease row stays key-share-locked until the commit).
        self.check_fence(&tx, plan.term).await.map_err(again)?;
        for (i, orders) in plan.batches.iter().enumerate() {
            let Some(versions) = plan.versions[i].take() else {
                continue;
            };
            let outcome = execute_plain(&plan.catalog, &tx, orders, versions)
                .await
                .map_err(again)?;
            plan.out[i] = Some(Ok(outcome));
        }
        // Waiting for the group before is idle time in this transaction:
        // past the pool's idle limit (1 s, so that a paused primary cannot
        // stall a failover) PostgreSQL ends it, and the group runs again
        // alone.
        wait_for(&plan.prev).await?;
        let moved: Vec<(&str, u64)> = plan.moved.iter().map(|(s, hw)| (s.as_str(), *hw)).collect();
        self.finish_group(&tx, &moved, plan.seq)
            .await
            .map_err(|_| Failure::Again)?;
        tx.commit().await.map_err(|e| Failure::Commit(pg(e)))
    }
}

/// Waits until the group before has committed; `Again` if it did not.
async fn wait_for(prev: &Option<Outcome>) -> Result<(), Failure> {
    match prev {
        None => Ok(()),
        Some(p) => match p.clone().await {
            Ok(true) => Ok(()),
            _ => Err(Failure::Again),
        },
    }
}
