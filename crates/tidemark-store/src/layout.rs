//! The data-directory layout, and the atomic swap that restore relies on.
//!
//! ```text
//! DATA_DIR/LOCK                  the DataDirLock
//! DATA_DIR/current -> gen-000002 relative symlink: the one generation in use
//! DATA_DIR/gen-000002/tidemark.db (+ -wal, -shm)
//! DATA_DIR/gen-000002/config/    configuration files restored with the data
//! ```
//!
//! Invariant: `current` always names a complete generation. A new generation
//! is staged in full (and fsynced) before `current` is replaced by one
//! `rename`, so a crash at any moment leaves the old generation or the new
//! one in use, never a mix. Generations that `current` does not name are
//! garbage, removed by whoever holds the lock next.
//!
//! A generation being staged holds a `STAGING` mark until `current` names
//! it. A marked generation `current` does not name is an interrupted
//! restore's, garbage even where there is no `current` (the first restore
//! into an empty directory), so a rerun or a server never takes it for
//! data.

use crate::StoreError;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The symlink naming the generation in use.
pub const CURRENT: &str = "current";
const CURRENT_TMP: &str = "current.tmp";
/// The file in a generation that is still being staged.
const STAGING_MARK: &str = "STAGING";
const GEN_PREFIX: &str = "gen-";
/// Prefix of the temporary snapshot files online backups and
/// [`crate::Store::snapshot`] write.
pub const SNAPSHOT_PREFIX: &str = "snapshot-";

/// A new name for a temporary snapshot file in `dir`, of the kind
/// [`remove_garbage`] removes if a crash leaves it behind.
pub fn scratch_snapshot(dir: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        "{SNAPSHOT_PREFIX}{:x}-{n:x}-{nanos:x}.tmp",
        std::process::id()
    ))
}

/// The directory name of generation `n`.
pub fn gen_name(n: u64) -> String {
    format!("{GEN_PREFIX}{n:06}")
}

fn gen_number(name: &str) -> Option<u64> {
    name.strip_prefix(GEN_PREFIX)?.parse().ok()
}

fn data_dir_err(dir: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::DataDir {
        path: dir.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The generation directory `current` names, if the link exists.
pub fn current_gen(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    match fs::read_link(dir.join(CURRENT)) {
        Ok(target) => {
            let name = target.to_string_lossy().to_string();
            if gen_number(&name).is_none() || target.components().count() != 1 {
                return Err(data_dir_err(
                    dir,
                    format!(
                        "'current' points at {name:?}, not a generation; restore from a backup"
                    ),
                ));
            }
            let gen = dir.join(target);
            if !gen.is_dir() {
                return Err(data_dir_err(
                    dir,
                    format!("'current' points at {name}, which is missing; restore from a backup"),
                ));
            }
            Ok(Some(gen))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(data_dir_err(dir, format!("cannot read 'current': {e}"))),
    }
}

/// The directory that holds the database of data directory `dir`, if it has
/// one: the current generation, or `dir` itself for a flat directory (a
/// staged generation, a private copy, or a store from before generations).
pub fn existing_db_dir(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    if let Some(gen) = current_gen(dir)? {
        return Ok(Some(gen));
    }
    if dir.join(crate::sqlite::DB_FILE).exists() {
        return Ok(Some(dir.to_owned()));
    }
    Ok(None)
}

/// Where to open the database of `dir`. With `owned` (the caller holds the
/// data-directory lock) a fresh directory gets its first generation and
/// garbage from interrupted work is removed; without, `dir` is a private
/// copy and the database lives directly in it.
pub fn resolve_for_open(dir: &Path, owned: bool) -> Result<PathBuf, StoreError> {
    let found = existing_db_dir(dir)?;
    if let Some(gen) = &found {
        // A generation that lost its database (or had a data directory
        // made inside it) is damage, not a fresh start: opening it would
        // serve an empty store as current.
        let db = gen.join(crate::sqlite::DB_FILE);
        let traces = ["tidemark.db-wal", "LOCK", CURRENT];
        if !db.exists() && traces.iter().any(|t| gen.join(t).exists()) {
            return Err(data_dir_err(
                dir,
                format!(
                    "the generation in use, {}, has no database but holds what a database or a data directory leaves behind; it is damaged: restore from a backup (tidemark restore --from BACKUP --data-dir {})",
                    gen.display(),
                    dir.display()
                ),
            ));
        }
    }
    if owned {
        remove_garbage(dir).map_err(|e| data_dir_err(dir, format!("cannot tidy up: {e}")))?;
    }
    match found {
        Some(d) => {
            // A generation made before they were private (0700); a flat
            // store's folder, the data directory itself, is left as it is.
            if owned && d != dir {
                if let Err(e) = make_private(&d) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot make the data generation readable by its owner only (chmod 700 it)");
                }
            }
            Ok(d)
        }
        None if owned => {
            // A new store only where nothing else is: a folder of other
            // files (a backup, notes) given by mistake would otherwise be
            // served as an empty store, every key missing.
            let foreign: Vec<String> = foreign_entries(dir)
                .map_err(|e| data_dir_err(dir, e))?
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect();
            if !foreign.is_empty() {
                let shown: Vec<&str> = foreign.iter().take(3).map(String::as_str).collect();
                return Err(data_dir_err(
                    dir,
                    format!(
                        "it holds no Tidemark store but other files ({}{}); a new store is made only in an empty or new directory: check --data-dir, or move those files out",
                        shown.join(", "),
                        if foreign.len() > 3 { ", …" } else { "" }
                    ),
                ));
            }
            let gen = dir.join(gen_name(1));
            fs::create_dir_all(&gen).map_err(|e| data_dir_err(dir, e))?;
            make_private(&gen).map_err(|e| data_dir_err(dir, e))?;
            swap_current(dir, &gen_name(1)).map_err(|e| data_dir_err(dir, e))?;
            Ok(gen)
        }
        None => Ok(dir.to_owned()),
    }
}

/// Creates an empty directory for the next generation and returns its name
/// and path. Nothing refers to it until [`swap_current`].
pub fn stage_gen(dir: &Path) -> io::Result<(String, PathBuf)> {
    let mut next = 1;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = gen_number(&entry.file_name().to_string_lossy()) {
            next = next.max(n + 1);
        }
    }
    let name = gen_name(next);
    let path = dir.join(&name);
    fs::create_dir(&path)?;
    make_private(&path)?;
    fs::File::create(path.join(STAGING_MARK))?.sync_all()?;
    fsync_dir(&path)?;
    fsync_dir(dir)?;
    Ok((name, path))
}

/// Takes the staging mark off generation `gen` (once `current` names it).
pub fn unmark_staged(gen: &Path) -> io::Result<()> {
    match fs::remove_file(gen.join(STAGING_MARK)) {
        Ok(()) => fsync_dir(gen),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `path` is a generation an interrupted restore was staging.
fn is_staging(path: &Path) -> bool {
    path.join(STAGING_MARK).exists()
}

/// The generation `current` names, if that generation is there. A link
/// that dangles (a swap whose fsync failed, damage) names nothing: it must
/// not make the other generations look like garbage.
pub fn live_current(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(CURRENT)).ok()?;
    let name = target.to_string_lossy().to_string();
    (gen_number(&name).is_some() && dir.join(&target).is_dir()).then_some(name)
}

/// Whether `current` names generation `gen` (a path in the data directory).
pub fn is_current(gen: &Path) -> bool {
    let (Some(dir), Some(name)) = (gen.parent(), gen.file_name()) else {
        return false;
    };
    fs::read_link(dir.join(CURRENT)).is_ok_and(|t| t.as_os_str() == name)
}

/// Points `current` at generation `name` atomically: a new link
/// `current.tmp`, renamed over `current`, then the directory fsynced.
pub fn swap_current(dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(CURRENT_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(name, &tmp)?;
    tidemark_failpoint::hit("layout.swap.before_rename");
    fs::rename(&tmp, dir.join(CURRENT))?;
    tidemark_failpoint::hit("layout.swap.after_rename");
    fsync_dir(dir)
}

/// What in `dir` Tidemark did not put there, or cannot account for: any
/// entry other than its lock, `current`, the generation `current` names
/// (and older ones beside it), a flat store and temporary files; and, when
/// `current` is missing, every generation too (nothing says which is live,
/// so none may be taken for garbage). Restore refuses such a directory
/// rather than delete what it did not create.
pub fn foreign_entries(dir: &Path) -> io::Result<Vec<String>> {
    let has_current = live_current(dir).is_some();
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let known = matches!(name.as_str(), "LOCK" | CURRENT | CURRENT_TMP)
            || (name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(".tmp"))
            || name.starts_with(crate::sqlite::DB_FILE)
            || (gen_number(&name).is_some() && (has_current || is_staging(&entry.path())));
        if !known {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes generations `current` does not name, a stray `current.tmp`, and
/// left-over snapshot files. Only the lock holder may call it.
pub fn remove_garbage(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let keep = live_current(dir);
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        // Without a `current` link there is nothing to compare with: keep
        // all but an interrupted restore's.
        let is_gen = gen_number(&name).is_some();
        if is_gen && keep.as_deref() != Some(&name) && (keep.is_some() || is_staging(&path)) {
            fs::remove_dir_all(&path)?;
            removed.push(path);
        } else if name == CURRENT_TMP
            || (name.starts_with(SNAPSHOT_PREFIX) && name.ends_with(".tmp"))
        {
            fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// A store from before generations sits directly in the data directory;
/// once `current` exists it is shadowed, and its files go. Best effort:
/// what cannot be removed stays shadowed.
pub fn remove_flat_store(dir: &Path) {
    let db = crate::sqlite::DB_FILE;
    for name in [db.to_owned(), format!("{db}-wal"), format!("{db}-shm")] {
        let _ = fs::remove_file(dir.join(name));
    }
}

/// Makes `dir` readable by its owner only (0700): a generation holds
/// every record, and the umask (often 022) would let every local user read
/// it.
pub fn make_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// fsyncs a directory, so renames and new entries in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// fsyncs every file in `dir` (recursively), then `dir` itself.
pub fn fsync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            fsync_tree(&entry.path())?;
        } else if ty.is_file() {
            // A SQLite -wal/-shm file may be removed meanwhile, when a
            // store's last connection (its checkpointer's) closes: a file
            // that is gone needs no fsync.
            match fs::File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dir_gets_gen_one_and_a_relative_link() {
        let dir = tempfile::tempdir().unwrap();
        let db = resolve_for_open(dir.path(), true).unwrap();
        assert_eq!(db, dir.path().join("gen-000001"));
        assert_eq!(
            fs::read_link(dir.path().join(CURRENT)).unwrap(),
            PathBuf::from("gen-000001")
        );
        // Its records are its owner's alone, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&db).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (_, staged) = stage_gen(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // One made before (0755) is made private when its owner opens it.
        fs::remove_dir_all(&staged).unwrap();
        fs::File::create(db.join(crate::sqlite::DB_FILE)).unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve_for_open(dir.path(), true).unwrap(), db);
        assert_eq!(
            fs::metadata(&db).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    /// A generation in use whose database is gone, with traces of one (or
    /// of a data directory made inside it), is refused, not opened empty;
    /// an empty one (a first start cut short) is opened.
    #[test]
    fn a_generation_that_lost_its_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gen = resolve_for_open(dir.path(), true).unwrap();
        assert_eq!(resolve_for_open(dir.path(), true).unwrap(), gen);
        for trace in ["tidemark.db-wal", "LOCK"] {
            fs::write(gen.join(trace), b"").unwrap();
            match resolve_for_open(dir.path(), true) {
                Err(StoreError::DataDir { detail, .. }) => {
                    assert!(detail.contains("restore from a backup"), "{detail}")
                }
                other => panic!("{trace}: expected a refusal, got {other:?}"),
            }
            fs::remove_file(gen.join(trace)).unwrap();
        }
        fs::write(gen.join(crate::sqlite::DB_FILE), b"").unwrap();
        fs::write(gen.join("tidemark.db-wal"), b"").unwrap();
        assert_eq!(resolve_for_open(dir.path(), true).unwrap(), gen);
    }

    #[test]
    fn swap_moves_current_and_garbage_goes() {
        let dir = tempfile::tempdir().unwrap();
        resolve_for_open(dir.path(), true).unwrap();
        let (name, path) = stage_gen(dir.path()).unwrap();
        assert_eq!(name, "gen-000002");
        fs::write(path.join("x"), b"new").unwrap();
        // A stale stage that was never swapped in.
        let (stale, _) = stage_gen(dir.path()).unwrap();
        swap_current(dir.path(), &name).unwrap();
        assert_eq!(current_gen(dir.path()).unwrap().unwrap(), path);
        let removed = remove_garbage(dir.path()).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dir.path().join("gen-000001").exists());
        assert!(!dir.path().join(stale).exists());
        assert!(path.join("x").exists());
    }

    #[test]
    fn a_dangling_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("gen-000009", dir.path().join(CURRENT)).unwrap();
        let err = resolve_for_open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// B3, B4: a `current` that names a missing generation (a swap whose
    /// fsync failed, then the staged generation removed) made every other
    /// generation garbage: a restore deleted the live data before it could
    /// take its safety backup. Now they are unaccounted for, and kept.
    #[test]
    fn a_dangling_current_makes_no_generation_garbage() {
        let dir = tempfile::tempdir().unwrap();
        resolve_for_open(dir.path(), true).unwrap();
        let live = dir.path().join("gen-000001");
        fs::write(live.join("x"), b"live").unwrap();
        let (name, staged) = stage_gen(dir.path()).unwrap();
        swap_current(dir.path(), &name).unwrap();
        assert!(is_current(&staged));
        assert!(!is_current(&live));
        fs::remove_dir_all(&staged).unwrap();
        assert_eq!(live_current(dir.path()), None);
        assert_eq!(foreign_entries(dir.path()).unwrap(), vec!["gen-000001"]);
        assert!(remove_garbage(dir.path()).unwrap().is_empty());
        assert!(live.join("x").exists());
    }

    #[test]
    fn a_private_copy_stays_flat() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_for_open(dir.path(), false).unwrap(), dir.path());
        assert!(!dir.path().join(CURRENT).exists());
    }
}
