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

/// Frees `value` on the dropper thread if it holds at least [`LATER_FROM`]
/// items (`len`) and the thread's queue has room; here otherwise.
pub fn drop_later<T: Send + 'static>(value: T, len: usize) {
    if len < LATER_FROM {
        return;
    }
    static DROPPER: OnceLock<Option<SyncSender<Garbage>>> = OnceLock::new();
    let sender = DROPPER.get_or_init(|| {
        let (tx, rx) = sync_channel::<Garbage>(QUEUED);
        std::thread::Builder::new()
            .name("tm-drop".into())
            .spawn(move || for _ in rx {})
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = sender {
        // Full, or the thread gone: the value comes back and drops here.
        let _ = tx.try_send(Box::new(value));
    }
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
