//! The data-directory lock.
//!
//! An advisory `flock` on `DIR/LOCK`: the kernel drops it when the holder
//! dies, so a crashed server (even `kill -9`) never leaves it stuck. The
//! file also holds the holder's pid and role, for error messages.

use crate::StoreError;
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Held for as long as a process uses a data directory.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
}

impl DataDirLock {
    /// Takes the lock on `dir`, creating the directory if needed. `role`
    /// names the holder (e.g. `server`, `restore`).
    pub fn acquire(dir: &Path, role: &str) -> Result<Self, StoreError> {
        if let Some(outer) = enclosing_data_dir(dir) {
            // Its own lock would not be the one a server holds: a restore
            // there would replace a live server's files (B4).
            return Err(StoreError::DataDir {
                path: dir.display().to_string(),
                detail: format!(
                    "it is inside the data directory {} (a generation or part of one, which only Tidemark manages); give --data-dir {}",
                    outer.display(),
                    outer.display()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::DataDir {
            path: dir.display().to_string(),
            detail: format!("{e}; create it or choose another --data-dir"),
        })?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::DataDir {
                path: dir.display().to_string(),
                detail: format!("cannot open {}: {e}; check permissions", path.display()),
            })?;
        match file.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::Locked {
                    place: format!("data directory {}", dir.display()),
                    holder: format!("pid {}", holder.trim()),
                });
            }
            Err(e) => {
                return Err(StoreError::DataDir {
                    path: dir.display().to_string(),
                    detail: format!("cannot lock {}: {e}", path.display()),
                })
            }
        }
        let _ = file.set_len(0);
        let _ = file.seek(SeekFrom::Start(0));
        let _ = write!(file, "{} ({role})", std::process::id());
        let _ = file.sync_all();
        Ok(Self { file })
    }

    /// Whether some live process holds the lock on `dir` right now.
    pub fn holder(dir: &Path) -> Option<String> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        match file.try_lock_exclusive() {
            Ok(true) => {
                let _ = FileExt::unlock(&file);
                None
            }
            _ => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Some(holder.trim().to_owned())
            }
        }
    }
}

/// The data directory `dir` lies inside, if any: the nearest ancestor of
/// its real path (links resolved: `DATA/current` is its generation) that
/// holds both a `LOCK` and a `current` link. A path that does not exist
/// yet is judged by its nearest existing ancestor.
fn enclosing_data_dir(dir: &Path) -> Option<std::path::PathBuf> {
    let (real, exists) = real_path(dir)?;
    // `dir` itself may be a data directory; only its ancestors are asked.
    let from = if exists {
        real.parent()?
    } else {
        real.as_path()
    };
    from.ancestors()
        .find(|a| is_data_dir(a))
        .map(Path::to_path_buf)
}

/// The data directory that `path` is, or lies inside: no place for a
/// backup or a safety copy, which Tidemark would take for its own files
/// (or delete with an old generation).
pub fn data_dir_holding(path: &Path) -> Option<std::path::PathBuf> {
    let (real, _) = real_path(path)?;
    real.ancestors()
        .find(|a| is_data_dir(a))
        .map(Path::to_path_buf)
}

/// Whether `path` is `dir` or lies inside it, links followed (a path not
/// made yet is judged by its nearest existing ancestor).
pub fn lies_within(path: &Path, dir: &Path) -> bool {
    match (real_path(path), dir.canonicalize()) {
        (Some((real, _)), Ok(dir)) => real.starts_with(dir),
        _ => false,
    }
}

/// `path` made absolute with its longest existing part resolved (links
/// followed), and whether all of it exists. Absolute first: a bare
/// relative name (`newdir`) has only `""` above it.
fn real_path(path: &Path) -> Option<(std::path::PathBuf, bool)> {
    let path = &std::path::absolute(path).ok()?;
    let mut existing = path.as_path();
    loop {
        match existing.canonicalize() {
            Ok(real) => return Some((real, existing == path)),
            Err(_) => existing = existing.parent()?,
        }
    }
}

fn is_data_dir(dir: &Path) -> bool {
    dir.join("LOCK").is_file()
        && std::fs::symlink_metadata(dir.join(crate::layout::CURRENT))
            .is_ok_and(|m| m.file_type().is_symlink())
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "server").unwrap();
        assert!(DataDirLock::holder(dir.path()).unwrap().contains("server"));
        match DataDirLock::acquire(dir.path(), "restore") {
            Err(StoreError::Locked { holder, .. }) => {
                assert!(holder.contains(&std::process::id().to_string()))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(DataDirLock::holder(dir.path()).is_none());
        DataDirLock::acquire(dir.path(), "restore").unwrap();
    }

    /// B4: no part of a data directory is taken for a data directory of
    /// its own (a restore there would replace a live server's files);
    /// the data directory itself, and one beside it, still are.
    #[test]
    fn a_folder_inside_a_data_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let held = DataDirLock::acquire(&data, "server").unwrap();
        crate::layout::resolve_for_open(&data, true).unwrap();
        for inside in [
            data.join("current"),
            data.join("gen-000001"),
            data.join("current").join("config"),
            data.join("gen-000009"),
        ] {
            match DataDirLock::acquire(&inside, "restore") {
                Err(StoreError::DataDir { detail, .. }) => {
                    assert!(detail.contains(&data.display().to_string()), "{detail}")
                }
                other => panic!("{}: expected a refusal, got {other:?}", inside.display()),
            }
        }
        assert!(!data.join("gen-000009").exists(), "nothing was created");
        drop(held);
        DataDirLock::acquire(&data, "restore").unwrap();
        DataDirLock::acquire(&tmp.path().join("beside"), "restore").unwrap();
    }
}
