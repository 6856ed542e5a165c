//! Log lines an outside caller can cause, said at most once per period
//! with how many times it happened meanwhile: a caller repeating a refused
//! request must not flood the log.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A line said at most once per `period`.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    said_at: Option<Instant>,
    /// Times it happened since it was last said, this one included.
    since: u64,
}

impl Every {
    /// Said at most once per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new(State {
                said_at: None,
                since: 0,
            }),
        }
    }

    /// Notes one more time it happened; `Some(n)` when it is to be said
    /// now, `n` the times since it last was (this one included).
    pub fn due(&self) -> Option<u64> {
        let mut st = self.state.lock();
        st.since += 1;
        if st.said_at.is_some_and(|t| t.elapsed() < self.period) {
            return None;
        }
        let n = std::mem::take(&mut st.since);
        st.said_at = Some(Instant::now());
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_once_per_period_with_the_count_since() {
        let every = Every::new(Duration::from_secs(3600));
        assert_eq!(every.due(), Some(1), "the first is said");
        assert_eq!(every.due(), None);
        assert_eq!(every.due(), None);
        let at_once = Every::new(Duration::ZERO);
        assert_eq!(at_once.due(), Some(1));
        assert_eq!(at_once.due(), Some(1));
    }
}
