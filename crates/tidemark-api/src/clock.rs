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

/// The boot clock as a server shows it to others (`lease` events'
/// `sent_ms`, `/healthz`'s `clock_ms`): moved by an amount drawn once per
/// process, so it tells differences, all a reader needs, and not how long
/// the host has been up.
pub fn shown_ms() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SHIFT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // Below 2^40 ms (35 years): no sum overflows.
    let shift = *SHIFT.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            >> 24
    });
    boot_ms() + shift
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

    /// The shown clock runs as the boot clock does, from elsewhere.
    #[test]
    fn the_shown_clock_keeps_the_boot_clocks_differences() {
        let (b1, s1) = (super::boot_ms(), super::shown_ms());
        let (s2, b2) = (super::shown_ms(), super::boot_ms());
        assert!(s2 >= s1);
        assert!(s2 - s1 <= b2 - b1 + 1, "{s1} {s2} {b1} {b2}");
        let boot = super::boot_ms();
        let shift = super::shown_ms() - boot;
        assert!(shift < 1 << 40, "{shift}");
    }
}
