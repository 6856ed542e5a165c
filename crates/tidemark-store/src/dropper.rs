//! Freeing large values off the path that answers: a batch of thousands of
//! orders, or of the changes it made, takes milliseconds to free (a map of
//! fields per order), which a caller waiting for its answer need not wait.
//!
//! Invariant: only values owning nothing but memory are sent here (no
//! lock, file or connection whose release someone waits for).

use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

/// Below this many items a value is freed where it is: the hand-over
/// costs more than the freeing.
pub const LATER_FROM: usize = 256;

type Garbage = Box<dyn Send>;

/// Frees `value` on the dropper thread if it holds at least [`LATER_FROM`]
/// items (`len`), here otherwise (and here too if that thread is gone).
pub fn drop_later<T: Send + 'static>(value: T, len: usize) {
    if len < LATER_FROM {
        return;
    }
    static DROPPER: OnceLock<Option<Sender<Garbage>>> = OnceLock::new();
    let sender = DROPPER.get_or_init(|| {
        let (tx, rx) = channel::<Garbage>();
        std::thread::Builder::new()
            .name("tm-drop".into())
            .spawn(move || for _ in rx {})
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = sender {
        // A send fails only with the thread gone; then it drops here.
        let _ = tx.send(Box::new(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn small_values_drop_here_and_large_ones_on_the_thread() {
        let dropped = Arc::new(AtomicUsize::new(0));
        drop_later(Counted(dropped.clone()), LATER_FROM - 1);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped at once");
        drop_later(Counted(dropped.clone()), LATER_FROM);
        // Freed by the dropper thread, soon: wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "never dropped");
            std::thread::yield_now();
        }
    }
}
