//! What the HTTP handlers, the read path and the workers of one service
//! server share.

use crate::cache::Cache;
use crate::config::ServiceConfig;
use crate::fetch::Upstream;
use crate::metrics::ServiceMetrics;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tidemark_api::event::QuiesceEvent;
use tidemark_api::keyslot::KeySlot;
use tidemark_api::DbClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// State shared by the HTTP handlers and the workers.
pub struct Shared {
    pub config: ServiceConfig,
    /// The watch stream's client.
    pub client: DbClient,
    /// Where reads that the cache cannot answer go.
    pub upstream: Arc<dyn Upstream>,
    pub cache: Cache,
    pub metrics: ServiceMetrics,
    /// True while the watch stream is open *and synced* (every missed
    /// change applied). Only then are cached entries served as current and
    /// fetched records cached, because only then are their later changes
    /// sure to arrive.
    pub connected: AtomicBool,
    /// Until when ([`mono_ms`]) the instance watched vouches for its stream
    /// (its last `lease` event, counted from its arrival); `u64::MAX` for a
    /// server that sends none (a single DB server, an older one). Past it
    /// the stream may be a paused or cut-off instance's, and the cache
    /// answers as current no longer.
    pub vouched_until_ms: AtomicU64,
    /// Timely leases in a row since the last late one (from
    /// [`READY_AFTER_TIMELY`] up at the start): `/readyz` says ready again
    /// only after that many, so a link near `max_push_lag_ms` does not
    /// flap it with every lease. Reads follow each lease as it comes.
    pub timely_leases: std::sync::atomic::AtomicU32,
    /// When ([`mono_ms`]) the pause watch last ran (see [`pause_watch`]).
    pub ticked_ms: AtomicU64,
    /// The watched server's clock against ours, from its `lease` events
    /// (reset with each stream).
    pub lease_clock: Mutex<LeaseClock>,
    /// The same, timed by round trips ([`crate::round_trip`]); it judges
    /// the leases of the boot it timed, the lease clock the others.
    pub round_trip: Mutex<crate::round_trip::RoundTrip>,
    /// The server boot the open stream's `hello` named (empty: no stream).
    pub stream_boot: Mutex<String>,
    /// Asks for a round trip now (a stream opened, a lease came late).
    pub time_round_trip: Notify,
    /// Until when ([`mono_ms`]) the last `lease` promised, counted from
    /// its arrival: the stream's liveness (a stream past it by a patience
    /// is dropped), not what the cache may answer (`vouched_until_ms`,
    /// counted from its sending).
    pub lease_alive_until_ms: AtomicU64,
    /// Bumped when a stream syncs and when it goes down: a fetch answer is
    /// cached as current only if the stream synced when it was asked for
    /// is still the one (see [`Asked`]). Another stream, perhaps on
    /// another instance, may not know of the fetch's interest.
    pub stream_serial: AtomicU64,
    /// The instance the watch stream was opened at: an answer from another
    /// registered its interest there, not with the stream.
    pub stream_base: Mutex<String>,
    /// The id of the last watch event applied.
    pub last_event_id: Mutex<Option<String>>,
    /// Reads waiting for a key to become current, by cache slot.
    pub waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// The watch-event id of the last snapshot written.
    pub snapshot_event_id: Mutex<Option<String>>,
    /// Bumped on every cache change, so snapshots skip idle periods.
    pub changes: AtomicU64,
    pub db_epoch: AtomicU64,
    /// The DB server's store history last heard (`HelloEvent::history`;
    /// empty: none yet, or an older server).
    pub history: Mutex<String>,
    pub schema_version: AtomicU64,
    /// The newer version this server ran before the DB server's schema
    /// went back (0: none); reported with every version below it.
    pub schema_went_back_from: AtomicU64,
    /// Set when the DB server's schema cannot be understood (S10): reads
    /// are refused with this message.
    pub skew: Mutex<Option<String>>,
    /// The watcher asks the schema worker to fetch the schema again.
    pub schema_refresh: Notify,
    pub quiesce: Mutex<Option<QuiesceEvent>>,
    /// The DB server said it is one instance of a cluster: before a stream
    /// resumes, declare what the cache holds (`POST /v1/watch/interest`).
    pub declare: AtomicBool,
    /// When the DB server goes offline, per the quiesce notice in force.
    pub quiesce_at: Mutex<Option<std::time::Instant>>,
    /// This service server's own notices (S8): given on its host, and
    /// sent by name through the DB server.
    pub own_quiesce: Mutex<crate::quiesce::OwnNotices>,
    /// Whether `own_quiesce` holds one: a cache hit looks here, and takes
    /// the lock only while a notice is in force.
    pub own_quiesce_set: AtomicBool,
    /// Until when a `stale-ok` read with a cached copy serves it at once,
    /// marked, without asking: the DB server let such a read wait out its
    /// whole wait (hung, frozen, cut off). Cleared by any answer.
    pub db_silent_until: Mutex<Option<tokio::time::Instant>>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// When the sooner of the DB server's and this server's own quiesce
    /// notices runs out, if any is in force.
    pub fn offline_at(&self) -> Option<std::time::Instant> {
        let db = *self.quiesce_at.lock();
        let own = if self
            .own_quiesce_set
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.own_quiesce.lock().sooner().map(|(n, _)| n.at())
        } else {
            None
        };
        db.into_iter().chain(own).min()
    }

    /// Whether the cache may answer as current: the stream is synced and
    /// its instance still vouches for it (see `vouched_until_ms`).
    pub fn vouched(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.connected.load(SeqCst) {
            return false;
        }
        let until = self.vouched_until_ms.load(SeqCst);
        if until == u64::MAX {
            return true;
        }
        // Right after a pause the watch may not have run yet: the changes
        // queued meanwhile are not applied, whatever the last lease said.
        let now = mono_ms();
        now < until && now.saturating_sub(self.ticked_ms.load(SeqCst)) <= PAUSED_MS
    }

    /// What `/readyz` says: vouched for, and, after a late lease, for
    /// [`READY_AFTER_TIMELY`] timely ones in a row (a link near
    /// `max_push_lag_ms` would flap it with every lease otherwise).
    pub fn ready(&self) -> bool {
        self.vouched()
            && self.timely_leases.load(std::sync::atomic::Ordering::SeqCst) >= READY_AFTER_TIMELY
    }

    /// Wakes reads waiting on a key.
    pub fn notify(&self, table: &str, key: &str) {
        let slot = KeySlot::new(table, key).into_string();
        if let Some(n) = self.waiters.lock().get(&slot) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiting read (after an `epoch` event).
    pub fn notify_all(&self) {
        for n in self.waiters.lock().values() {
            n.notify_waiters();
        }
    }
}

/// When a fetch was asked for: the cache generation, and the synced
/// stream's serial (`None`: no stream was synced).
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub generation: u64,
    pub stream: Option<u64>,
}

impl Asked {
    /// Now. `connected` is read before the serial: a serial read while
    /// connected is the synced stream's, or one bumped since (a mismatch
    /// later, never a false match).
    pub fn now(shared: &Shared) -> Asked {
        let stream = shared
            .connected
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| {
                shared
                    .stream_serial
                    .load(std::sync::atomic::Ordering::SeqCst)
            });
        Asked {
            generation: shared.cache.generation(),
            stream,
        }
    }

    /// As asked under no stream: the answer came from another instance
    /// than the stream's (the client moved on during the read).
    pub fn elsewhere(self) -> Asked {
        Asked {
            stream: None,
            ..self
        }
    }

    /// Whether the stream synced when this was asked is still synced (and
    /// vouched for).
    pub fn same_stream(&self, shared: &Shared) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        shared.vouched() && self.stream == Some(shared.stream_serial.load(SeqCst))
    }
}

/// Now, in milliseconds since this process first asked, of a monotonic
/// clock that counts suspended time (so a vouch does not depend on how
/// this host's clock agrees with the DB server's, and one that ran out
/// while the host was suspended is not trusted after the resume).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = tidemark_api::clock::boot_ms();
    now.saturating_sub(*START.get_or_init(|| now))
}

/// A gap this long (ms) between two runs of the pause watch, or between
/// its last run and a read, means this process was stopped (SIGSTOP, a
/// frozen VM) or starved: the cache is not vouched for until a timely
/// lease, which comes after every change queued meanwhile.
pub const PAUSED_MS: u64 = 100;

/// How often the pause watch runs.
const TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// Watches for this process being paused, on a thread of its own (a busy
/// runtime does not delay it): after a gap of over [`PAUSED_MS`], the last
/// lease vouches no more, so a read after a short pause is not answered
/// from the cache as current while the changes sent meanwhile still wait
/// in the socket (an outside audit saw values 10 versions old after a
/// pause of 0.7 s). Ends with the service server (shutdown, or dropped).
pub fn pause_watch(shared: &std::sync::Arc<Shared>) {
    let weak = std::sync::Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name("tm-pause-watch".into())
        .spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            while let Some(shared) = weak.upgrade() {
                if shared.shutdown.is_cancelled() {
                    return;
                }
                let now = mono_ms();
                let gap = now.saturating_sub(shared.ticked_ms.load(SeqCst));
                if gap > PAUSED_MS {
                    // Before the tick: a read that sees the new tick sees
                    // the vouch withdrawn too.
                    let _ = shared.vouched_until_ms.fetch_update(SeqCst, SeqCst, |u| {
                        (u != u64::MAX).then_some(0)
                    });
                    tracing::info!(gap_ms = gap, "this process was paused or starved: cached records are not served as current until the DB server's next timely lease");
                }
                shared.ticked_ms.store(now, SeqCst);
                drop(shared);
                std::thread::sleep(TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the pause watch; reads right after a pause of this process may be served from the cache");
    }
}

/// Timely leases in a row after a late one before `/readyz` says ready
/// again (about a second of the server's 300 ms leases).
pub const READY_AFTER_TIMELY: u32 = 3;

/// How long a `lease` vouches at most from when it was sent: a few of the
/// server's 300 ms leases. A stream whose leases arrive later than that
/// behind their sending is not kept up with (the service server was
/// paused, or is busy), whatever they promise: the changes sent after
/// them are not applied yet.
pub const LEASE_FRESH_MS: u64 = 1_000;

/// Tells how late a `lease` arrives: the smallest (arrival - sent) of the
/// last minute or so is the two clocks' offset plus the least delay; a
/// lease that took longer than that waited somewhere (in the socket,
/// while this process was paused). Two 30 s windows, so a slow drift
/// between the clocks is followed.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// (window start, its least offset) now and before.
    current: Option<(u64, i64)>,
    previous: Option<i64>,
}

const LEASE_WINDOW_MS: u64 = 30_000;

impl LeaseClock {
    /// Notes a lease sent at `sent` (the server's clock) that arrived at
    /// `now` (ours); returns how late it is (ms) behind the least delay.
    pub fn late_ms(&mut self, sent: u64, now: u64) -> u64 {
        let offset = now as i64 - sent as i64;
        match self.current {
            Some((start, least)) if now.saturating_sub(start) < LEASE_WINDOW_MS => {
                self.current = Some((start, least.min(offset)));
            }
            Some((_, least)) => {
                self.previous = Some(least);
                self.current = Some((now, offset));
            }
            None => self.current = Some((now, offset)),
        }
        let least = self
            .current
            .map(|(_, l)| l)
            .into_iter()
            .chain(self.previous)
            .min()
            .unwrap_or(offset);
        offset.saturating_sub(least).max(0) as u64
    }
}
