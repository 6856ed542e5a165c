//! Limits on what one caller may hold open (issue 13: resources).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Open streams per caller.
#[derive(Debug, Default, Clone)]
pub struct Streams {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; dropping it frees its place.
#[derive(Debug)]
pub struct StreamPermit {
    open: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Streams {
    /// A place for one more stream of `caller`, or `None` at `max`.
    pub fn take(&self, caller: &str, max: usize) -> Option<StreamPermit> {
        let mut open = self.open.lock();
        let n = open.entry(caller.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamPermit {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_max_and_a_dropped_permit_frees_a_place() {
        let s = Streams::default();
        let a = s.take("t", 2).unwrap();
        let _b = s.take("t", 2).unwrap();
        assert!(s.take("t", 2).is_none());
        assert!(s.take("other", 2).is_some(), "per caller");
        drop(a);
        assert!(s.take("t", 2).is_some());
    }
}
