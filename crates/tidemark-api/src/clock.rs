//! The clock leases and vouches are timed by.

/// Milliseconds of CLOCK_BOOTTIME: monotonic, and counting the time the
/// machine was suspended. `Instant` (CLOCK_MONOTONIC) stops then, so after
/// a resume a lease or vouch that ran out while suspended would still look
/// valid, and cached data be trusted as current.
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_BOOTTIME
    // exists on every Linux this runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    /// It runs on, and never behind the clock that stops during a suspend.
    #[test]
    fn the_boot_clock_runs_and_is_never_behind_the_monotonic_one() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        let a = super::boot_ms();
        assert!(a >= mono, "{a} < {mono}");
        assert!(super::boot_ms() >= a);
    }
}
