//! The open-file limit against `max_connections`: each connection is a
//! file descriptor, and past the limit `accept` fails (EMFILE) instead of
//! the connection limit answering `503 too_many_connections`.

/// Descriptors kept for everything but connections (the store, its WAL,
/// logs, the DB-server client, backups being streamed).
const SPARE: u64 = 256;

/// Raises the soft open-file limit toward the hard one as far as
/// `max_connections` needs, and warns if even the hard limit is too low.
pub fn raise_for(max_connections: usize) {
    let wanted = max_connections as u64 + SPARE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    let now = if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        raised.rlim_cur
    } else {
        lim.rlim_cur
    };
    if now < wanted {
        tracing::warn!(
            open_file_limit = now,
            max_connections,
            "the open-file limit is below max_connections plus {SPARE}: connections past it fail to be accepted instead of being answered 503; raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    /// The soft limit is raised as far as the connection limit needs (and
    /// the hard limit allows).
    #[test]
    fn the_soft_limit_is_raised_for_the_connections() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise_for`.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let want = (lim.rlim_max.min(1 << 16) as usize).saturating_sub(super::SPARE as usize);
        super::raise_for(want);
        let mut after = lim;
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut after) };
        assert!(after.rlim_cur >= (want as u64 + super::SPARE).min(lim.rlim_max));
    }
}
