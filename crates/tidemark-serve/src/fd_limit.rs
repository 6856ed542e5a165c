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
    fn get() -> libc::rlimit {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        lim
    }

    fn set(lim: &libc::rlimit) {
        // SAFETY: setrlimit from a struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) };
    }

    /// A soft limit below what the connections need is raised (as far as
    /// the hard limit allows).
    #[test]
    fn a_low_soft_limit_is_raised_for_the_connections() {
        let before = get();
        if before.rlim_max < 1024 {
            println!(
                "skipped: the hard open-file limit here is {}",
                before.rlim_max
            );
            return;
        }
        set(&libc::rlimit {
            rlim_cur: 300,
            rlim_max: before.rlim_max,
        });
        super::raise_for(512);
        let after = get();
        set(&libc::rlimit {
            rlim_cur: before.rlim_cur.max(after.rlim_cur),
            rlim_max: before.rlim_max,
        });
        assert_eq!(after.rlim_cur, 512 + super::SPARE);
    }
}
