//! Temporary work a process holds on disk (a backup being written, the
//! copy `verify` decodes): locked while held, so that whoever comes next
//! can tell it from work that was abandoned (killed, crashed: nothing else
//! removes it) and remove it.
//!
//! Invariant: a directory is taken for abandoned only if the process its
//! name gives is not running here, nobody holds its lock, and nothing in it
//! changed for the given time (a writer on another host or in another PID
//! namespace is not seen in this `/proc`).

use crate::error::BackupError;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Takes the lock of the temporary directory `dir`: a `flock` on the
/// directory itself, held until the returned file is dropped (it survives
/// a rename of the directory, and leaves nothing in it).
pub(crate) fn lock(dir: &Path) -> Result<std::fs::File, BackupError> {
    let f = std::fs::File::open(dir).map_err(BackupError::io(dir))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(BackupError::io(dir)(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// Whether `dir`, the work of process `pid`, is surely abandoned: the
/// process is not running, its lock is free, and nothing in it changed for
/// `older_than`.
pub(crate) fn abandoned(dir: &Path, pid: u32, older_than: Duration) -> bool {
    if running(pid) || !dir.is_dir() {
        return false;
    }
    let old_enough = newest_change(dir)
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= older_than);
    old_enough && !held(dir)
}

/// Whether process `pid` is running here: a zombie (killed, its parent
/// not yet told) writes nothing more.
pub(crate) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last `)`.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => Path::new("/proc").join(pid.to_string()).exists(),
    }
}

/// The latest modification time in the tree at `dir` (a big file being
/// written changes its own time, not its directory's).
fn newest_change(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let t = if entry.path().is_dir() {
            newest_change(&entry.path())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t.unwrap_or(newest));
    }
    Some(newest)
}

/// Whether another process holds the lock of `dir` (see [`lock`]).
fn held(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}
