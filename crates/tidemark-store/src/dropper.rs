//! Freeing large values off the path that answers: a batch of thousands of
//! orders, or of the changes it made, takes milliseconds to free (a map of
//! fields per order), which a caller waiting for its answer need not wait:
//! handed to a thread of its own before the answer, and freed meanwhile.
//!
//! Invariant: only values owning nothing but memory are sent here (no
//! lock, file or connection whose release someone waits for).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

/// Below this many items a value is freed where it is: the hand-over
/// costs more than the freeing.
pub const LATER_FROM: usize = 256;

/// Values waiting for the dropper thread, at most: past that (the thread
/// starved of CPU), they are freed where they are, so garbage never piles
/// up.
const QUEUED: usize = 16;

type Garbage = Box<dyn Send>;

/// A thread that frees what it is handed, behind a queue of `queued`.
struct Dropper(Option<SyncSender<Garbage>>);

impl Dropper {
    /// Starts the thread; without one (the system refused it) every value
    /// is freed where it is.
    fn start(queued: usize) -> Self {
        let (tx, rx) = sync_channel::<Garbage>(queued);
        let spawned = std::thread::Builder::new()
            .name("tm-drop".into())
            .spawn(move || for _ in rx {});
        Self(spawned.ok().map(|_| tx))
    }

    /// Hands `value` over if its queue has room; frees it here otherwise.
    fn take<T: Send + 'static>(&self, value: T) {
        if let Some(tx) = &self.0 {
            // Full, or the thread gone: the value comes back and drops here.
            let _ = tx.try_send(Box::new(value));
        }
    }
}

/// Frees `value` on the dropper thread if it holds at least [`LATER_FROM`]
/// items (`len`) and the thread's queue has room; here otherwise.
pub fn drop_later<T: Send + 'static>(value: T, len: usize) {
    if len < LATER_FROM {
        return;
    }
    static DROPPER: OnceLock<Dropper> = OnceLock::new();
    DROPPER.get_or_init(|| Dropper::start(QUEUED)).take(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops on the dropper thread apart from the others.
    struct Counted {
        here: Arc<AtomicUsize>,
        there: Arc<AtomicUsize>,
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            let on_dropper = std::thread::current().name() == Some("tm-drop");
            let n = if on_dropper { &self.there } else { &self.here };
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A value that waits on its drop until let go.
    struct Held(Arc<std::sync::Barrier>);
    impl Drop for Held {
        fn drop(&mut self) {
            if std::thread::current().name() == Some("tm-drop") {
                self.0.wait();
            }
        }
    }

    /// With its thread stuck (starved of CPU), a dropper queues at most
    /// QUEUED values; the rest are freed where they are, at once.
    #[test]
    fn a_stuck_dropper_thread_queues_a_bounded_number_of_values() {
        let dropper = Dropper::start(QUEUED);
        let stuck = Arc::new(std::sync::Barrier::new(2));
        dropper.take(Held(stuck.clone()));
        let (here, there) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counted = || Counted {
            here: here.clone(),
            there: there.clone(),
        };
        // The thread may not have taken the stuck value off the queue
        // yet: one place less, at most.
        for _ in 0..QUEUED + 10 {
            dropper.take(counted());
        }
        let freed_here = here.load(Ordering::SeqCst);
        stuck.wait();
        assert!(
            (10..=11).contains(&freed_here),
            "{freed_here} of {} freed here, the queue holding {QUEUED}",
            QUEUED + 10
        );
        drop(dropper);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while there.load(Ordering::SeqCst) + freed_here < QUEUED + 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queued ones never freed"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn small_values_drop_here_and_large_ones_on_the_thread() {
        let (here, there) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counted = || Counted {
            here: here.clone(),
            there: there.clone(),
        };
        drop_later(counted(), LATER_FROM - 1);
        assert_eq!(here.load(Ordering::SeqCst), 1, "dropped at once, here");
        drop_later(counted(), LATER_FROM);
        // Freed by the dropper thread, soon: wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while there.load(Ordering::SeqCst) < 1 {
            assert!(std::time::Instant::now() < deadline, "never dropped there");
            std::thread::yield_now();
        }
        assert_eq!(here.load(Ordering::SeqCst), 1);
    }
}
