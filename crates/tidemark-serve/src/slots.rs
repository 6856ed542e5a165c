//! The connection slots, and who gives one up when they run out.
//!
//! Invariants:
//! - at most `max` connections hold a slot at once;
//! - a connection past `max` first closes the connection idle longest
//!   (no request in flight, no streaming answer: an idle keep-alive, or
//!   one whose request headers are still trickling in), so idle or slow
//!   connections cannot hold every slot while others wait; only when
//!   every connection is busy is it refused;
//! - a connection that ever answered with a stream (a watch stream, a
//!   backup) is never chosen: closing it would cut the stream;
//! - no more connections are closing than newcomers wait for room: one
//!   closing slowly (headers trickling in get a second) is not joined by
//!   another at each retry, which could close a newcomer just let in;
//! - a connection that has sent nothing yet is not chosen in its first
//!   second ([`FRESH`]): its request may be on the way. Otherwise a
//!   newcomer still waiting could close another just let in, before its
//!   task read the request (the client saw a reset).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a connection that has sent nothing is not chosen.
const FRESH: Duration = Duration::from_secs(1);

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const STREAMING: u8 = 2;

/// Every slot, and the connections holding them.
pub struct Slots {
    sem: Arc<Semaphore>,
    max: usize,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    /// Newcomers waiting in `take_making_room`.
    waiting: AtomicUsize,
    /// Ticks once each time a connection becomes idle.
    idle_clock: Arc<AtomicU64>,
}

/// What one connection is doing, as its slot's owner sees it.
pub struct ConnState {
    state: AtomicU8,
    /// When it became idle, on `idle_clock`: the least is idle longest.
    /// A tick, not a time, so connections idle within the same
    /// millisecond still have an order.
    idle_since: AtomicU64,
    idle_clock: Arc<AtomicU64>,
    /// When its slot was taken.
    born: tokio::time::Instant,
    /// It has sent something: a byte of a head, or a whole request.
    heard: AtomicBool,
    /// Cancelled to close it (gracefully: a response being written ends).
    pub evict: CancellationToken,
}

impl ConnState {
    /// Bytes came in.
    pub fn heard(&self) {
        // Read first: every request passes here, and the flag is set once.
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::SeqCst);
        }
    }

    /// Idle, and not closing: it may be chosen, now or once it is no
    /// longer fresh.
    fn idle(&self) -> bool {
        self.state.load(Ordering::SeqCst) == IDLE && !self.evict.is_cancelled()
    }

    /// It may be chosen now (see [`FRESH`]).
    fn choosable(&self) -> bool {
        self.idle() && (self.heard.load(Ordering::SeqCst) || self.born.elapsed() >= FRESH)
    }

    /// A request came in.
    pub fn busy(&self) {
        self.heard();
        let _ = self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Its answer is on the way: idle again, or, if the answer is a stream,
    /// never to be chosen.
    pub fn answered(&self, streaming: bool) {
        if streaming {
            self.state.store(STREAMING, Ordering::SeqCst);
            return;
        }
        self.idle_since.store(
            self.idle_clock.fetch_add(1, Ordering::SeqCst),
            Ordering::SeqCst,
        );
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Counts a newcomer waiting for room while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection's slot; freed when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    id: u64,
    slots: Arc<Slots>,
    pub conn: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.conns().remove(&self.id);
    }
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(max)),
            max,
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            idle_clock: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The connections (a panic elsewhere while holding the lock left the
    /// map whole: every change to it is one insert or remove).
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot, if there is one now.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    /// A slot within `patience`, closing the connection idle longest for
    /// it (again, if another newcomer took the room first); `None` at
    /// once if every connection is busy and none is closing.
    pub async fn take_making_room(self: &Arc<Self>, patience: Duration) -> Option<Slot> {
        let until = tokio::time::Instant::now() + patience;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            if let Some(slot) = self.try_take() {
                return Some(slot);
            }
            let closing = self.closing();
            if closing < self.waiting.load(Ordering::SeqCst)
                && !self.evict_one()
                && closing == 0
                && !self.any_fresh()
            {
                return None;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let wait = left.min(Duration::from_millis(200));
            if let Ok(Ok(permit)) =
                tokio::time::timeout(wait, self.sem.clone().acquire_owned()).await
            {
                return Some(self.slot(permit));
            }
        }
    }

    /// How many connections are closing to make room.
    fn closing(&self) -> usize {
        self.conns()
            .values()
            .filter(|c| c.evict.is_cancelled())
            .count()
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState {
            state: AtomicU8::new(IDLE),
            idle_since: AtomicU64::new(self.idle_clock.fetch_add(1, Ordering::SeqCst)),
            idle_clock: self.idle_clock.clone(),
            born: tokio::time::Instant::now(),
            heard: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        self.conns().insert(id, conn.clone());
        Slot {
            _permit: permit,
            id,
            slots: self.clone(),
            conn,
        }
    }

    /// Closes the connection idle longest, not one already closing nor
    /// one still fresh; false if there is none.
    pub fn evict_one(&self) -> bool {
        let conns = self.conns();
        let victim = conns
            .values()
            .filter(|c| c.choosable())
            .min_by_key(|c| c.idle_since.load(Ordering::SeqCst));
        match victim {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether an idle connection is too fresh to choose yet (waiting may
    /// make room: it sends its request, or its grace runs out).
    fn any_fresh(&self) -> bool {
        self.conns().values().any(|c| c.idle() && !c.choosable())
    }

    /// Returns once every slot is free (every connection has ended).
    pub async fn all_free(&self) {
        let _ = self.sem.acquire_many(self.max as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_idle_longest_gives_its_slot_up_and_streams_never_do() {
        let slots = Slots::new(3);
        let old = slots.try_take().unwrap();
        old.conn.heard();
        let stream = slots.try_take().unwrap();
        stream.conn.busy();
        stream.conn.answered(true);
        let young = slots.try_take().unwrap();
        young.conn.heard();
        assert!(slots.try_take().is_none(), "all taken");
        // The oldest idle one goes, not the stream, not the younger (taken
        // within the same millisecond: the order is a tick, not a time).
        assert!(slots.evict_one());
        assert!(old.conn.evict.is_cancelled());
        assert!(!stream.conn.evict.is_cancelled() && !young.conn.evict.is_cancelled());
        drop(old);
        assert!(slots
            .take_making_room(Duration::from_secs(1))
            .await
            .is_some());
        // Busy in a request: not chosen; once answered, it is.
        young.conn.busy();
        assert!(!slots.evict_one(), "only busy and streaming left");
        young.conn.answered(false);
        assert!(slots.evict_one());
        assert!(young.conn.evict.is_cancelled());
    }

    /// A connection chosen to make room may take a while to close (its
    /// headers get a second): the newcomer waiting for it closes no other
    /// at its retries, so the connection let in just before it is kept.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_newcomer_closes_one_connection_however_long_it_waits() {
        let slots = Slots::new(2);
        let old = slots.try_take().unwrap();
        let young = slots.try_take().unwrap();
        old.conn.heard();
        young.conn.heard();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take_making_room(Duration::from_secs(2)).await }
        });
        old.conn.evict.cancelled().await;
        // Past several retries (200 ms apart), `old` still closing.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            !young.conn.evict.is_cancelled(),
            "only one closes per newcomer"
        );
        drop(old);
        let slot = waiter.await.unwrap().expect("the room `old` made");
        assert!(!young.conn.evict.is_cancelled());
        // A second newcomer: `young` is now the one idle longest.
        drop(slot);
        assert!(slots
            .take_making_room(Duration::from_secs(1))
            .await
            .is_some());
        assert!(
            !young.conn.evict.is_cancelled(),
            "a free slot closes nobody"
        );
    }

    /// A connection let in a moment ago that has sent nothing yet is not
    /// closed for a newcomer still waiting: its request may be on the way.
    /// Once it has sent something, or its first second is over, it may be.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_has_sent_nothing_yet_keeps_its_slot_for_a_second() {
        let slots = Slots::new(1);
        let fresh = slots.try_take().unwrap();
        assert!(!slots.evict_one(), "too fresh to choose");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take_making_room(Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!fresh.conn.evict.is_cancelled(), "kept in its first second");
        assert!(!waiter.is_finished(), "the newcomer waits, not refused");
        fresh.conn.evict.cancelled().await;
        drop(fresh);
        assert!(waiter.await.unwrap().is_some(), "the room it made");
        // Heard from: it may be chosen at once.
        let spoke = slots.try_take().unwrap();
        spoke.conn.heard();
        assert!(slots.evict_one());
    }
}
