//! Who holds which key, and the ordered fan-out of committed changes (P3).
//!
//! Invariants:
//! - A reader registers interest *before* it reads the store, and the
//!   publisher looks interest up *after* the commit. So a service server
//!   that read the old value of a key is always sent the new one.
//! - Changes are published in commit order: only the single committer
//!   (`committer.rs`) publishes, right after each commit.
//! - Interest lives in memory. A restarted server cannot know it, so it
//!   refuses to resume streams from an earlier boot (they get `epoch`),
//!   unless the subscriber declared all it holds first (`declare`, used
//!   when a service server moves between the instances of a cluster, and
//!   when a single server restarted: `watch::ours`).
//! - Interest is bounded: a subscriber that comes to hold more than
//!   `max_interest` keys (a terminal reading random keys through its
//!   service server) is *forgotten*: all its interest is dropped, its open
//!   stream ends, and none of its streams resumes until one has opened
//!   afresh (it gets `epoch`, so the service server revalidates
//!   everything it cached).
//! - No stream resumes from an id at or below the watermark of the last
//!   `Epoch` push that makes current answers suspect (flags added, a
//!   pruned gap; for flags added, at or below the store's position then
//!   too): a service server away then missed it, and the change log cannot
//!   replay it. Nor, during a recovery, from an id below the
//!   position this process started at (it cannot know what was pushed
//!   before). Missing the end of the schedule list, or of a recovery, only
//!   leaves answers marked recovering that are current now: a resume may
//!   skip those. A stream that cannot resume the id it was
//!   given drops its subscriber's interest too (everything it cached is
//!   suspect, and registers again when read), so interest tracks what was
//!   cached since.
//! - Interest of a subscriber that has gone away is not kept for ever: one
//!   with no stream open for `forget_idle_subscriber_secs` is forgotten
//!   (as above: its next stream does not resume, so a service server that
//!   comes back revalidates what it cached). Its name stays.
//! - At most `MAX_NAMES` subscriber names are remembered; a read naming
//!   one more registers nothing (and says so in the log). A stream always
//!   gets its name.
//! - The *watermark* is the last seq published. Changes are published at
//!   most once each, in seq order: one at or below the watermark is
//!   dropped, so the committer and the change-log tail of a cluster
//!   instance may both offer a change without it going out twice. Every
//!   change at or below the watermark has been published (or is in the
//!   change log for streams to replay).

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_api::event::{EpochEvent, QuiesceEvent, SchemaEvent};
use tidemark_api::keyslot::{KeySlot, SHARDS};
use tidemark_api::Version;
use tidemark_store::Change;
use tokio::sync::broadcast;

/// A subscriber's number, handed out per process.
pub type SubscriberId = u32;

/// The most subscriber names a read may introduce (service servers are
/// few; names are never forgotten while the process runs).
pub const MAX_NAMES: usize = 10_000;

/// How often reads turned away for [`MAX_NAMES`] are said in the log.
pub const NAMES_FULL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What flows to every watch stream.
#[derive(Debug, Clone)]
pub enum Push {
    /// A committed change and the subscribers that hold its key.
    Change(Arc<Change>, Arc<[SubscriberId]>),
    Epoch(EpochEvent),
    /// A commit's outcome is unknown: every stream replays the change log
    /// from its cursor, so a change committed without a push is sent.
    Resync,
    Quiesce(QuiesceEvent),
    /// A quiesce notice for one service server by name (S8), or its
    /// cancellation: only that subscriber's streams send it.
    ServiceQuiesce(SubscriberId, QuiesceEvent),
    Schema(SchemaEvent),
    /// The subscriber's interest was dropped (over `max_interest`): its
    /// stream ends.
    Forget(SubscriberId),
}

/// The interest registry and the push queue.
pub struct Hub {
    names: RwLock<HashMap<String, SubscriberId>>,
    /// Reads past [`MAX_NAMES`], said once per [`NAMES_FULL_LOG_EVERY`].
    names_full_said: tidemark_telemetry::Every,
    /// Subscribers that declared everything they hold since their last
    /// stream opened here.
    declared: Mutex<HashMap<SubscriberId, Option<Version>>>,
    /// Per subscriber: how often its interest was dropped, and whether no
    /// stream has opened afresh since (then none of its streams resumes).
    forgotten: Mutex<HashMap<SubscriberId, (u64, bool)>>,
    /// `Epoch` pushes so far (a stream that lagged compares).
    epoch_pushes: std::sync::atomic::AtomicU64,
    /// No stream resumes from an id below it (see the invariants).
    resume_floor: std::sync::atomic::AtomicU64,
    /// Keys each subscriber holds, and the most it may.
    held: Mutex<HashMap<SubscriberId, usize>>,
    /// Per subscriber: its open streams, and since when it has had none.
    streams: Mutex<HashMap<SubscriberId, (usize, std::time::Instant)>>,
    /// Per subscriber: its open streams that take quiesce notices by name.
    takers: Mutex<HashMap<SubscriberId, usize>>,
    max_interest: usize,
    /// The last seq published; the lock orders publishers.
    watermark: Mutex<u64>,
    shards: Vec<Mutex<HashMap<Box<str>, Vec<SubscriberId>>>>,
    tx: broadcast::Sender<Push>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.names.read().len())
            .finish()
    }
}

/// A stream counted open (see [`Hub::stream_opened`]).
#[derive(Debug)]
pub struct OpenStream {
    hub: Arc<Hub>,
    subscriber: SubscriberId,
    takes_quiesce: bool,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.hub.stream_closed(self.subscriber, self.takes_quiesce);
    }
}

impl Hub {
    pub fn new(capacity: usize, max_interest: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self {
            names: RwLock::new(HashMap::new()),
            names_full_said: tidemark_telemetry::Every::new(NAMES_FULL_LOG_EVERY),
            declared: Mutex::new(Default::default()),
            forgotten: Mutex::new(HashMap::new()),
            epoch_pushes: Default::default(),
            resume_floor: Default::default(),
            held: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            takers: Mutex::new(HashMap::new()),
            max_interest: max_interest.max(1),
            watermark: Mutex::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            tx,
        }
    }

    /// The id of a subscriber name, assigned on first use.
    pub fn subscriber(&self, name: &str) -> SubscriberId {
        self.intern(name, usize::MAX)
            .expect("no limit: every name gets an id")
    }

    /// How many subscriber names are known.
    pub fn names_known(&self) -> usize {
        self.names.read().len()
    }

    /// The id of `name` if it is known; nothing is assigned.
    pub fn known(&self, name: &str) -> Option<SubscriberId> {
        self.names.read().get(name).copied()
    }

    /// The id of a subscriber name a read gives, assigned on first use
    /// while fewer than [`MAX_NAMES`] are known; `None` past that (said at
    /// most once per [`NAMES_FULL_LOG_EVERY`], with how many were turned
    /// away: each such read would otherwise write a line).
    pub fn subscriber_for_read(&self, name: &str) -> Option<SubscriberId> {
        let id = self.intern(name, MAX_NAMES);
        let reads = id.is_none().then(|| self.names_full_said.due()).flatten();
        if let Some(reads) = reads {
            tracing::warn!(
                subscriber = name,
                reads,
                "too many subscriber names; reads naming new ones register no interest (give service servers stable names)"
            );
        }
        id
    }

    /// The id of `name`, assigned on first use while fewer than `limit`
    /// names are known.
    fn intern(&self, name: &str, limit: usize) -> Option<SubscriberId> {
        if let Some(id) = self.names.read().get(name) {
            return Some(*id);
        }
        let mut names = self.names.write();
        if let Some(id) = names.get(name) {
            return Some(*id);
        }
        if names.len() >= limit {
            return None;
        }
        let next = names.len() as SubscriberId;
        names.insert(name.to_owned(), next);
        Some(next)
    }

    /// Records that `subscriber` holds `table/key`. Call before reading.
    pub fn register(&self, subscriber: SubscriberId, table: &str, key: &str) {
        let added = KeySlot::with(table, key, |name, i| {
            let mut shard = self.shards[i].lock();
            match shard.get_mut(name) {
                Some(ids) if ids.contains(&subscriber) => false,
                Some(ids) => {
                    ids.push(subscriber);
                    true
                }
                None => {
                    shard.insert(name.into(), vec![subscriber]);
                    true
                }
            }
        });
        if added {
            let over = {
                let mut held = self.held.lock();
                let n = held.entry(subscriber).or_insert(0);
                *n += 1;
                *n > self.max_interest
            };
            if over {
                self.forget(subscriber);
            }
        }
    }

    /// Drops all of `subscriber`'s interest; its stream ends and its next
    /// one does not resume.
    fn forget(&self, subscriber: SubscriberId) {
        tracing::warn!(
            subscriber,
            max_interest = self.max_interest,
            "a service server holds more keys than max_interest_per_subscriber: its interest is dropped and its stream restarted (it revalidates what it cached)"
        );
        self.drop_interest(subscriber);
    }

    /// A stream of `subscriber` is opening: counted from before it decides
    /// whether it resumes, so the idle sweep never forgets a subscriber
    /// between that decision and the stream's start. Dropping the guard
    /// counts it closed. `takes_quiesce`: its subscriber takes quiesce
    /// notices by name (S8).
    pub fn stream_opened(
        self: &Arc<Self>,
        subscriber: SubscriberId,
        takes_quiesce: bool,
    ) -> OpenStream {
        let mut streams = self.streams.lock();
        let e = streams
            .entry(subscriber)
            .or_insert((0, std::time::Instant::now()));
        e.0 += 1;
        if takes_quiesce {
            *self.takers.lock().entry(subscriber).or_insert(0) += 1;
        }
        OpenStream {
            hub: self.clone(),
            subscriber,
            takes_quiesce,
        }
    }

    /// How many streams of `subscriber` are open here, and how many of
    /// them take quiesce notices by name.
    pub fn open_streams(&self, subscriber: SubscriberId) -> (usize, usize) {
        let open = self.streams.lock().get(&subscriber).map_or(0, |e| e.0);
        let takers = self.takers.lock().get(&subscriber).copied().unwrap_or(0);
        (open, takers)
    }

    /// A stream of `subscriber` ended.
    fn stream_closed(&self, subscriber: SubscriberId, takes_quiesce: bool) {
        let mut streams = self.streams.lock();
        if let Some(e) = streams.get_mut(&subscriber) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                e.1 = std::time::Instant::now();
            }
        }
        if takes_quiesce {
            if let Some(n) = self.takers.lock().get_mut(&subscriber) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Forgets the subscribers that hold keys and have had no stream open
    /// for `idle` (a subscriber that read but never watched counts from
    /// its first sweep). Returns how many.
    pub fn forget_idle(&self, idle: std::time::Duration) -> usize {
        let holding: Vec<SubscriberId> = self.held.lock().keys().copied().collect();
        let now = std::time::Instant::now();
        // Held to the end: no stream of a subscriber being forgotten opens
        // (and decides to resume) meanwhile.
        let mut streams = self.streams.lock();
        let gone: Vec<SubscriberId> = holding
            .into_iter()
            .filter(|id| {
                let e = streams.entry(*id).or_insert((0, now));
                e.0 == 0 && now.duration_since(e.1) >= idle
            })
            .collect();
        for id in &gone {
            tracing::info!(
                subscriber = *id,
                idle_secs = idle.as_secs(),
                "a subscriber had no watch stream open for forget_idle_subscriber_secs: its interest is dropped (it revalidates its cache when it comes back)"
            );
            self.drop_interest(*id);
        }
        gone.len()
    }

    /// Drops all of `subscriber`'s interest, ends its stream, and keeps its
    /// next one from resuming (takes `forgotten`, the shards, `held` and
    /// the watermark: never under them, only under `streams`).
    fn drop_interest(&self, subscriber: SubscriberId) {
        {
            let mut f = self.forgotten.lock();
            let e = f.entry(subscriber).or_insert((0, false));
            *e = (e.0 + 1, true);
        }
        self.clear_interest(subscriber);
        let _ = self.tx.send(Push::Forget(subscriber));
    }

    /// Drops all of `subscriber`'s interest (its stream did not resume, or
    /// it was forgotten). Returns the watermark read after: every change
    /// published with `subscriber` among its holders is at or below it, and
    /// none above it is (until a read registers again).
    pub fn clear_interest(&self, subscriber: SubscriberId) -> u64 {
        for shard in &self.shards {
            shard.lock().retain(|_, ids| {
                ids.retain(|id| *id != subscriber);
                !ids.is_empty()
            });
        }
        self.held.lock().remove(&subscriber);
        // A publish looks holders up under the watermark lock, after moving
        // the watermark: one that still saw `subscriber` has finished (and
        // moved the watermark) once the lock is ours.
        self.watermark()
    }

    /// Whether a stream of `subscriber` may resume from an event id at
    /// `seq`: it was not forgotten since its last fresh stream, and no
    /// revalidation was pushed after that id.
    pub fn may_resume(&self, subscriber: SubscriberId, seq: u64) -> bool {
        let forgotten = self.forgotten.lock().get(&subscriber).is_some_and(|f| f.1);
        !forgotten && seq >= self.resume_floor.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How often `subscriber` was forgotten (a stream that lagged over its
    /// own `Forget` compares).
    pub fn forgets_of(&self, subscriber: SubscriberId) -> u64 {
        self.forgotten.lock().get(&subscriber).map_or(0, |f| f.0)
    }

    /// A stream of `subscriber` opens without resuming: its later streams
    /// may resume again (a forgetting is behind it).
    pub fn opened_without_resuming(&self, subscriber: SubscriberId) {
        if let Some(f) = self.forgotten.lock().get_mut(&subscriber) {
            f.1 = false;
        }
    }

    /// A stream of `subscriber` opens afresh: its interest is dropped (see
    /// [`Hub::clear_interest`], whose watermark it returns), and its later
    /// streams may resume again.
    pub fn start_afresh(&self, subscriber: SubscriberId) -> u64 {
        self.opened_without_resuming(subscriber);
        self.clear_interest(subscriber)
    }

    /// No stream resumes from an id below it.
    pub fn resume_floor(&self) -> u64 {
        self.resume_floor.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// No stream resumes from an id below `seq` (see the invariants).
    pub fn raise_resume_floor(&self, seq: u64) {
        self.resume_floor
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// `Epoch` pushes so far.
    pub fn epoch_pushes(&self) -> u64 {
        self.epoch_pushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many keys `subscriber` holds here.
    pub fn interest_of(&self, subscriber: SubscriberId) -> usize {
        self.held.lock().get(&subscriber).copied().unwrap_or(0)
    }

    /// The subscribers that hold `table/key`.
    pub fn holders(&self, table: &str, key: &str) -> Vec<SubscriberId> {
        KeySlot::with(table, key, |name, i| {
            self.shards[i].lock().get(name).cloned().unwrap_or_default()
        })
    }

    /// Whether `subscriber` holds `table/key`.
    pub fn holds(&self, subscriber: SubscriberId, table: &str, key: &str) -> bool {
        KeySlot::with(table, key, |name, i| {
            self.shards[i]
                .lock()
                .get(name)
                .is_some_and(|ids| ids.contains(&subscriber))
        })
    }

    /// Queues committed changes, in seq order; those at or below the
    /// watermark were published already and are skipped.
    pub fn publish_changes(&self, changes: &[Change]) -> usize {
        let mut watermark = self.watermark.lock();
        let mut sent = 0;
        for change in changes {
            if change.version.seq <= *watermark {
                continue;
            }
            *watermark = change.version.seq;
            let holders: Arc<[SubscriberId]> = self.holders(&change.table, &change.key).into();
            if holders.is_empty() {
                continue;
            }
            sent += holders.len();
            let _ = self
                .tx
                .send(Push::Change(Arc::new(change.clone()), holders));
        }
        sent
    }

    /// The last seq published.
    pub fn watermark(&self) -> u64 {
        *self.watermark.lock()
    }

    /// Starts the watermark at the store's position (before serving).
    pub fn start_at(&self, seq: u64) {
        let mut w = self.watermark.lock();
        *w = (*w).max(seq);
    }

    /// Records that `subscriber` declared everything it holds, the newest
    /// version among it with it (`None`: an older subscriber, silent).
    pub fn declare(&self, subscriber: SubscriberId, newest: Option<Version>) {
        self.declared.lock().insert(subscriber, newest);
    }

    /// Whether `subscriber` declared what it holds since its last stream
    /// opened, and the newest version it said it holds; forgets the
    /// declaration (the next stream needs a new one).
    pub fn take_declared(&self, subscriber: SubscriberId) -> Option<Option<Version>> {
        self.declared.lock().remove(&subscriber)
    }

    /// Queues a server-wide event.
    pub fn publish(&self, push: Push) {
        // An `Epoch` is queued under the watermark lock: no change is
        // queued between the floor and the push, so every id below the
        // floor was given before the push, and a stream that opens after it
        // cannot resume from before it (one open now receives it).
        let _held = if let Push::Epoch(e) = &push {
            use tidemark_api::event::EpochReason::{RecoveryAborted, ScheduleComplete};
            let watermark = self.watermark.lock();
            if !matches!(e.reason, ScheduleComplete | RecoveryAborted) {
                self.raise_resume_floor(*watermark + 1);
            }
            self.epoch_pushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(watermark)
        } else {
            None
        };
        let _ = self.tx.send(push);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_api::Version;

    fn change(key: &str, seq: u64) -> Change {
        Change {
            table: "subscriber".into(),
            key: key.into(),
            fields: None,
            version: Version::new(1, seq),
            cleared_flag: false,
            flagged: false,
        }
    }

    #[test]
    fn pushes_only_to_holders_in_order() {
        let hub = Hub::new(64, 1000);
        let a = hub.subscriber("svc-a");
        let b = hub.subscriber("svc-b");
        assert_eq!(hub.subscriber("svc-a"), a);
        hub.register(a, "subscriber", "k1");
        hub.register(a, "subscriber", "k1");
        hub.register(b, "subscriber", "k2");
        let mut rx = hub.subscribe();
        hub.publish_changes(&[change("k1", 1), change("nobody", 2), change("k2", 3)]);
        let mut got = Vec::new();
        while let Ok(Push::Change(c, holders)) = rx.try_recv() {
            got.push((c.version.seq, holders.to_vec()));
        }
        assert_eq!(got, vec![(1, vec![a]), (3, vec![b])]);
        assert!(hub.holds(a, "subscriber", "k1") && !hub.holds(b, "subscriber", "k1"));
    }

    /// A subscriber with no stream open for the idle time loses its
    /// interest, and its next stream does not resume; one with a stream
    /// open, or closed too recently, keeps it.
    #[test]
    fn a_subscriber_gone_for_the_idle_time_is_forgotten() {
        let hub = Arc::new(Hub::new(64, 100));
        let (gone, watching, left) = (
            hub.subscriber("gone"),
            hub.subscriber("watching"),
            hub.subscriber("left"),
        );
        for id in [gone, watching, left] {
            hub.register(id, "subscriber", "k");
        }
        let _open = hub.stream_opened(watching, false);
        drop(hub.stream_opened(left, false));
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(hub.forget_idle(hour), 0, "nobody has been gone an hour");
        let mut rx = hub.subscribe();
        assert_eq!(hub.forget_idle(std::time::Duration::ZERO), 2);
        let mut forgotten = Vec::new();
        while let Ok(Push::Forget(id)) = rx.try_recv() {
            forgotten.push(id);
        }
        forgotten.sort();
        assert_eq!(forgotten, vec![gone, left]);
        assert_eq!((hub.interest_of(gone), hub.interest_of(left)), (0, 0));
        assert_eq!(hub.interest_of(watching), 1);
        let at = hub.watermark();
        assert!(!hub.may_resume(gone, at) && !hub.may_resume(left, at));
        assert!(hub.may_resume(watching, at));
    }

    /// Interest is bounded: a subscriber over the limit loses all of it,
    /// its stream is told to end, and its next stream must not resume;
    /// others keep theirs.
    #[test]
    fn a_subscriber_over_its_interest_limit_is_forgotten() {
        let hub = Hub::new(64, 3);
        let a = hub.subscriber("svc-a");
        let b = hub.subscriber("svc-b");
        hub.register(b, "subscriber", "k0");
        let mut rx = hub.subscribe();
        for i in 0..3 {
            hub.register(a, "subscriber", &format!("k{i}"));
        }
        assert_eq!(hub.interest_of(a), 3);
        assert!(rx.try_recv().is_err(), "within the limit");
        hub.register(a, "subscriber", "k3");
        assert!(matches!(rx.try_recv(), Ok(Push::Forget(id)) if id == a));
        assert_eq!(hub.interest_of(a), 0);
        assert!(!hub.holds(a, "subscriber", "k0") && hub.holds(b, "subscriber", "k0"));
        // None of its streams resumes, whatever id it gives, until one
        // opened afresh; others' do.
        let at = hub.watermark();
        assert!(!hub.may_resume(a, at + 7) && hub.may_resume(b, at + 1));
        assert_eq!(hub.forgets_of(a), 1);
        hub.start_afresh(a);
        assert!(hub.may_resume(a, at + 1));
    }

    /// A revalidation (`Epoch`) pushed while a stream was away cannot be
    /// replayed from the change log: no stream resumes from an id before
    /// it. Before, a service server that missed `flags_added` resumed and
    /// served the newly flagged keys as current.
    #[test]
    fn no_stream_resumes_from_before_an_epoch_push() {
        let hub = Hub::new(64, 10);
        let a = hub.subscriber("svc-a");
        hub.publish_changes(&[change("k1", 1), change("k2", 2)]);
        assert!(hub.may_resume(a, 1));
        hub.publish(Push::Epoch(tidemark_api::event::EpochEvent {
            epoch: 1,
            reason: tidemark_api::event::EpochReason::FlagsAdded,
        }));
        assert!(!hub.may_resume(a, 1) && !hub.may_resume(a, 2));
        hub.publish_changes(&[change("k1", 3)]);
        assert!(hub.may_resume(a, 3), "an id given after it resumes");
    }

    /// Reads cannot introduce names without end; streams always get one.
    #[test]
    fn reads_introduce_a_bounded_number_of_names() {
        let hub = Hub::new(64, 10);
        for i in 0..MAX_NAMES {
            assert!(hub.subscriber_for_read(&format!("n{i}")).is_some());
        }
        assert_eq!(hub.subscriber_for_read("one-more"), None);
        assert_eq!(hub.subscriber_for_read("n7"), Some(7));
        assert_eq!(hub.subscriber("a-stream") as usize, MAX_NAMES);
    }
}
