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
//!   backup) is never chosen: closing it would cut the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const STREAMING: u8 = 2;

/// Every slot, and the connections holding them.
pub struct Slots {
    sem: Arc<Semaphore>,
    max: usize,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    epoch: Instant,
}

/// What one connection is doing, as its slot's owner sees it.
pub struct ConnState {
    state: AtomicU8,
    /// Since when (ms after the slots' epoch) it has been idle.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// Cancelled to close it (gracefully: a response being written ends).
    pub evict: CancellationToken,
}

impl ConnState {
    /// A request came in.
    pub fn busy(&self) {
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
        self.idle_since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst);
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
            epoch: Instant::now(),
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
        loop {
            if let Some(slot) = self.try_take() {
                return Some(slot);
            }
            if !self.evict_one() && !self.closing() {
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

    /// Whether a connection is closing to make room.
    fn closing(&self) -> bool {
        self.conns().values().any(|c| c.evict.is_cancelled())
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState {
            state: AtomicU8::new(IDLE),
            idle_since_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            epoch: self.epoch,
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

    /// Closes the connection idle longest, not one already closing; false
    /// if every connection is busy or streaming.
    pub fn evict_one(&self) -> bool {
        let conns = self.conns();
        let victim = conns
            .values()
            .filter(|c| c.state.load(Ordering::SeqCst) == IDLE && !c.evict.is_cancelled())
            .min_by_key(|c| c.idle_since_ms.load(Ordering::SeqCst));
        match victim {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
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
        let stream = slots.try_take().unwrap();
        stream.conn.busy();
        stream.conn.answered(true);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let young = slots.try_take().unwrap();
        assert!(slots.try_take().is_none(), "all taken");
        // The oldest idle one goes, not the stream, not the younger.
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
}
