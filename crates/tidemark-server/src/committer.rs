//! Group commit: one task applies the order batches that are waiting, all
//! in one durable transaction, then hands their changes on in commit order.
//!
//! Concurrent requests therefore share one fsync instead of queueing for one
//! each. Every batch stays all-or-nothing (a savepoint each, in the store).
//! An engine that can overlap groups (PostgreSQL, [`Store::group_depth`])
//! gets the next groups while earlier ones are still committing; it commits
//! them in the order they were begun.
//!
//! Invariants:
//! - The committer is the store's only writer of orders, so `after_commit`
//!   sees changes in commit order, each once, and before any request is
//!   answered (a reader told of a commit can rely on its push being queued).
//!   Groups are settled strictly in the order they were begun; a group that
//!   must run again alone ([`Ended::Again`]) runs in its place, and nothing
//!   new begins until every group begun before has settled.
//! - On shutdown it drains what was already accepted before it stops.

use std::collections::VecDeque;
use std::sync::Arc;
use tidemark_api::Order;
use tidemark_store::{ApplyOutcome, Begun, Change, Ended, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most orders, and requests, committed together.
const MAX_ORDERS: usize = 20_000;
const MAX_JOBS: usize = 512;

/// One request's batch and where its result goes.
struct Job {
    orders: Vec<Order>,
    reply: oneshot::Sender<Result<ApplyOutcome, StoreError>>,
}

/// What happens right after a commit, before its requests are answered:
/// read-cache invalidation and the push fan-out.
pub type AfterCommit = Arc<dyn Fn(&[Change]) + Send + Sync>;

/// What happens after a group failed in a way that leaves its outcome
/// unknown (the engine became unreachable mid-commit): it may have been
/// committed without anyone being told, so caches and streams resync from
/// the store.
pub type AfterUnknown = Arc<dyn Fn() + Send + Sync>;

/// The handle requests submit their batches through.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

/// The committer has stopped (shutdown): the batch was not taken.
#[derive(Debug, thiserror::Error)]
#[error("the server is shutting down; resubmit to the restarted server")]
pub struct Stopped;

/// Why a submitted batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Committer {
    /// A committer and the worker that applies what it is given; run the
    /// worker with [`Worker::run`].
    pub fn new(
        store: Arc<dyn Store>,
        after_commit: AfterCommit,
        after_unknown: AfterUnknown,
    ) -> (Committer, Worker) {
        let (tx, rx) = mpsc::channel(4096);
        (
            Committer { tx },
            Worker {
                store,
                after_commit,
                after_unknown,
                rx,
            },
        )
    }

    /// Applies a batch (atomic, idempotent, durable) in the next group.
    pub async fn submit(&self, orders: Vec<Order>) -> Result<ApplyOutcome, SubmitError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Job { orders, reply })
            .await
            .map_err(|_| Stopped)?;
        Ok(result.await.map_err(|_| Stopped)??)
    }
}

/// The single task that commits.
pub struct Worker {
    store: Arc<dyn Store>,
    after_commit: AfterCommit,
    after_unknown: AfterUnknown,
    rx: mpsc::Receiver<Job>,
}

/// Groups begun and not yet settled, oldest first.
type Running = VecDeque<(Vec<Job>, tokio::task::JoinHandle<Ended>)>;

impl Worker {
    /// Runs until `shutdown`, then commits what is still queued.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let depth = self.store.group_depth().max(1);
        let mut running = Running::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ended = async { (&mut running.front_mut().expect("checked").1).await },
                    if !running.is_empty() =>
                {
                    let (jobs, _) = running.pop_front().expect("checked");
                    if self.settle(jobs, ended).await {
                        self.settle_all(&mut running).await;
                    }
                }
                first = self.rx.recv(), if running.len() < depth => {
                    let Some(first) = first else { break };
                    let jobs = self.gather(first);
                    self.begin(jobs, &mut running).await;
                }
            }
        }
        self.settle_all(&mut running).await;
        self.rx.close();
        while let Some(j) = self.rx.recv().await {
            self.commit(vec![j]).await;
        }
    }

    /// `first` and whatever else is waiting, up to the group limits.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut total = first.orders.len();
        let mut jobs = vec![first];
        while total < MAX_ORDERS && jobs.len() < MAX_JOBS {
            match self.rx.try_recv() {
                Ok(j) => {
                    total += j.orders.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        jobs
    }

    async fn begin(&self, mut jobs: Vec<Job>, running: &mut Running) {
        let batches = take_orders(&mut jobs);
        match self.store.begin_group(batches).await {
            Begun::Running(group) => running.push_back((jobs, tokio::spawn(group))),
            Begun::Alone(batches) => {
                self.settle_all(running).await;
                let results = self.store.apply_group(batches).await;
                self.publish(jobs, results);
            }
        }
    }

    /// Settles every running group, oldest first.
    async fn settle_all(&self, running: &mut Running) {
        while let Some((jobs, group)) = running.pop_front() {
            self.settle(jobs, group.await).await;
        }
    }

    /// Publishes how a group ended, applying it alone first if it must run
    /// again; `true` if it did (every group running after it must then be
    /// settled before anything new begins).
    async fn settle(&self, jobs: Vec<Job>, ended: Result<Ended, tokio::task::JoinError>) -> bool {
        match ended {
            Ok(Ended::Done(results)) => {
                self.publish(jobs, results);
                false
            }
            Ok(Ended::Again(batches)) => {
                let results = self.store.apply_group(batches).await;
                self.publish(jobs, results);
                true
            }
            Err(e) => {
                // The group's task died: whether it committed is unknown.
                tracing::error!(error = %e, "a commit task failed");
                (self.after_unknown)();
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Unavailable(
                        "the commit's outcome is unknown (its task failed); read the records back before you resubmit".into(),
                    )));
                }
                true
            }
        }
    }

    async fn commit(&self, mut jobs: Vec<Job>) {
        let batches = take_orders(&mut jobs);
        let results = self.store.apply_group(batches).await;
        self.publish(jobs, results);
    }

    /// After the commit, before anyone can be told of it.
    fn publish(&self, jobs: Vec<Job>, results: Vec<Result<ApplyOutcome, StoreError>>) {
        if results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Unavailable(_))))
        {
            (self.after_unknown)();
        }
        for (job, result) in jobs.into_iter().zip(results) {
            if let Ok(outcome) = &result {
                (self.after_commit)(&outcome.changes);
            }
            let _ = job.reply.send(result);
        }
    }
}

fn take_orders(jobs: &mut [Job]) -> Vec<Vec<Order>> {
    jobs.iter_mut()
        .map(|j| std::mem::take(&mut j.orders))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use tidemark_api::Op;
    use tidemark_store::SqliteStore;

    fn order(source: &str, seq: u64, key: &str) -> Order {
        Order {
            source: source.into(),
            seq,
            table: "subscriber".into(),
            key: key.into(),
            op: Op::Upsert,
            fields: serde_json::json!({"plan": format!("p{seq}")})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            origin: None,
        }
    }

    fn setup() -> (tempfile::TempDir, Committer, Worker, Arc<Mutex<Vec<u64>>>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), "test").unwrap());
        let (c, w, seen) = committer_on(store);
        (dir, c, w, seen)
    }

    fn committer_on(store: Arc<dyn Store>) -> (Committer, Worker, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (c, w) = Committer::new(
            store,
            Arc::new(move |changes: &[Change]| {
                s.lock().extend(changes.iter().map(|c| c.version.seq));
            }),
            Arc::new(|| {}),
        );
        (c, w, seen)
    }

    /// 16 writers of 20 batches each, one source each, through `committer`:
    /// every acknowledged change is published once, in commit order.
    async fn publish_in_commit_order(
        committer: Committer,
        worker: Worker,
        seen: Arc<Mutex<Vec<u64>>>,
    ) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        let mut handles = Vec::new();
        for s in 0..16 {
            let c = committer.clone();
            handles.push(tokio::spawn(async move {
                let mut versions = Vec::new();
                for seq in 1..=20 {
                    let out = c
                        .submit(vec![order(&format!("src-{s}"), seq, &format!("k{s}"))])
                        .await
                        .unwrap();
                    versions.push(out.results[0].version.unwrap().seq);
                }
                versions
            }));
        }
        let mut acked = Vec::new();
        for h in handles {
            acked.extend(h.await.unwrap());
        }
        let published = seen.lock().clone();
        assert!(
            published.windows(2).all(|w| w[0] < w[1]),
            "published in commit order, each once"
        );
        acked.sort();
        assert_eq!(published, acked, "every acknowledged change was published");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_are_published_once_each_in_commit_order() {
        let (_dir, committer, worker, seen) = setup();
        publish_in_commit_order(committer, worker, seen).await;
    }

    /// The seqs in the change log, in order.
    async fn logged(store: &dyn Store) -> Vec<u64> {
        let changes = store.changes_since(0, 10_000).await.unwrap();
        changes.iter().map(|c| c.version.seq).collect()
    }

    /// The same on PostgreSQL, whose groups overlap (pipelined commits):
    /// the change log holds exactly what was published, in the same order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_groups_are_published_once_each_in_commit_order() {
        let Some(cluster) = tidemark_testkit::postgres::PgCluster::shared("committer") else {
            return;
        };
        let url = cluster.database("committer").unwrap();
        let store = Arc::new(
            tidemark_store::PgStore::connect(&url, "tidemark")
                .await
                .unwrap(),
        );
        assert!(store.group_depth() > 1, "PostgreSQL overlaps groups");
        let (committer, worker, seen) = committer_on(store.clone());
        // A reader of the log while groups commit: what it sees is always a
        // gap-free prefix (a later group never commits before an earlier one).
        let done = CancellationToken::new();
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while !done.is_cancelled() {
                    let seqs = logged(store.as_ref()).await;
                    assert_eq!(
                        seqs,
                        (1..=seqs.len() as u64).collect::<Vec<_>>(),
                        "a gap-free prefix"
                    );
                    reads += 1;
                }
                reads
            })
        };
        publish_in_commit_order(committer, worker, seen.clone()).await;
        done.cancel();
        assert!(reader.await.unwrap() > 0);
        assert_eq!(
            store.meta().await.unwrap().seq,
            16 * 20,
            "the counter ends at the last seq"
        );
        let logged = logged(store.as_ref()).await;
        assert_eq!(logged, *seen.lock(), "the log is what was published");
        assert_eq!(
            logged,
            (1..=16 * 20).collect::<Vec<u64>>(),
            "a gap-free log"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_publishes_nothing_and_others_stand() {
        let (_dir, committer, worker, seen) = setup();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        committer.submit(vec![order("a", 1, "k")]).await.unwrap();
        let mut bad = order("a", 1, "k");
        bad.fields.insert("plan".into(), serde_json::json!("other"));
        let err = committer.submit(vec![bad]).await.unwrap_err();
        assert!(matches!(
            err,
            SubmitError::Store(StoreError::Conflict { .. })
        ));
        assert_eq!(seen.lock().len(), 1);
        shutdown.cancel();
        task.await.unwrap();
        assert!(
            matches!(
                committer.submit(vec![order("a", 2, "k")]).await,
                Err(SubmitError::Stopped(_))
            ),
            "after shutdown nothing is taken"
        );
    }

    #[tokio::test]
    async fn shutdown_drains_what_was_accepted() {
        let (_dir, committer, worker, seen) = setup();
        let shutdown = CancellationToken::new();
        // Queue before the worker runs, then stop it at once.
        let pending: Vec<_> = (1..=5)
            .map(|seq| {
                let c = committer.clone();
                tokio::spawn(async move { c.submit(vec![order("d", seq, "k")]).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        worker.run(shutdown).await;
        for p in pending {
            p.await.unwrap().unwrap();
        }
        assert_eq!(seen.lock().len(), 5);
    }
}
