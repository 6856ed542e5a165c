//! Remaining flags over time, sampled every 2 s while a recovery runs, so
//! the console can draw the whole recovery since the restore, even when
//! it is opened half-way. Memory only; a new recovery starts a new series.
//! At most [`MAX`] samples: when full, every other one is dropped (the
//! series thins evenly instead of losing its start).

use parking_lot::Mutex;
use tidemark_api::RecoveryState;

const MAX: usize = 1024;

#[derive(Debug, Default)]
pub struct Progress {
    /// `[unix ms, remaining]`, oldest first.
    samples: Mutex<Vec<(i64, u64)>>,
    was_recovering: Mutex<bool>,
}

impl Progress {
    /// Adds a sample at `now_ms` in `state`.
    pub fn sample(&self, state: RecoveryState, remaining: u64, now_ms: i64) {
        let recovering = state == RecoveryState::Recovering;
        let mut was = self.was_recovering.lock();
        let mut s = self.samples.lock();
        if recovering && !*was {
            s.clear();
        }
        *was = recovering;
        if !recovering && s.last().is_some_and(|(_, r)| *r == 0) {
            // Ended: the series keeps its last point until the next one.
            return;
        }
        if !recovering && s.is_empty() {
            return;
        }
        s.push((now_ms, remaining));
        if s.len() > MAX {
            let kept: Vec<_> = s.iter().copied().step_by(2).collect();
            *s = kept;
        }
    }

    pub fn samples(&self) -> Vec<(i64, u64)> {
        self.samples.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecoveryState::*;

    #[test]
    fn a_recovery_is_one_series_thinned_evenly_and_a_new_one_starts_afresh() {
        let p = Progress::default();
        p.sample(Normal, 0, 0);
        assert!(p.samples().is_empty(), "nothing before a recovery");
        for i in 0..3000 {
            p.sample(Recovering, 3000 - i, i as i64);
        }
        let s = p.samples();
        assert!(s.len() <= MAX);
        assert_eq!(s[0], (0, 3000), "the start is kept");
        p.sample(Recovered, 0, 5000);
        p.sample(Normal, 0, 6000);
        assert_eq!(p.samples().last(), Some(&(5000, 0)));
        p.sample(Recovering, 7, 9000);
        assert_eq!(p.samples(), [(9000, 7)]);
    }
}
