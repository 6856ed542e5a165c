//! The backups under a folder, and retention.

use crate::error::BackupError;
use crate::manifest::Manifest;
use std::path::{Path, PathBuf};

/// One directory under the root, and what checking it found.
#[derive(Debug)]
pub struct Listed {
    pub dir: PathBuf,
    /// The manifest, if it loads (even when a file fails its checksum).
    pub manifest: Option<Manifest>,
    /// `None` if the backup verifies.
    pub problem: Option<String>,
}

/// Every directory under `root` except hidden ones (backups in progress),
/// oldest first; each checked by checksum, or deeply with `deep`.
pub fn list(root: &Path, deep: bool) -> Result<Vec<Listed>, BackupError> {
    if !root.is_dir() {
        return Err(BackupError::RootNotFound(root.to_owned()));
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(BackupError::io(root))? {
        let entry = entry.map_err(BackupError::io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        // A data directory beside the backups (its lock, no manifest) is
        // not a damaged backup.
        if !dir.join(crate::manifest::MANIFEST_FILE).exists() && dir.join("LOCK").is_file() {
            continue;
        }
        let manifest = Manifest::load(&dir).ok();
        let check = if deep {
            crate::verify::full(&dir, &|_| {}).map(|_| ())
        } else {
            crate::verify::checksums(&dir, &|_| {}).map(|_| ())
        };
        out.push(Listed {
            dir,
            manifest,
            problem: check.err().map(|e| e.to_string()),
        });
    }
    out.sort_by(|a, b| {
        let key = |l: &Listed| l.manifest.as_ref().map(|m| m.created_at.clone());
        key(a).cmp(&key(b)).then(a.dir.cmp(&b.dir))
    });
    Ok(out)
}

/// What [`prune`] did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: Vec<PathBuf>,
    /// Temporary directories of backups whose process is gone.
    pub abandoned: Vec<PathBuf>,
    /// Backups that fail their checksums: never counted as kept, never
    /// removed (the operator looks at them).
    pub failing: Vec<(PathBuf, String)>,
}

/// Removes the temporary directories of backups whose process is gone,
/// then keeps the newest `keep` (at least one) backups of each source under
/// `root` that verify, and removes older ones that verify by their
/// checksums; with `only_source`, looks at that source's backups alone.
/// With `deep`, a backup counts as kept only if it passes the full check
/// too (a backup of a damaged store passes its checksums, which are of
/// what was read); `protect` (the one just written, checked by the caller)
/// counts as kept and is never removed. A backup that fails is neither
/// counted nor removed, so a run can never leave fewer good backups of a
/// source than it found, nor none. Anything else under `root` (another
/// server's backups too) is left alone.
pub fn prune(
    root: &Path,
    keep: usize,
    protect: Option<&Path>,
    only_source: Option<&str>,
    deep: bool,
) -> Result<Pruned, BackupError> {
    // Only a prune of every server's backups looks at temporary
    // directories, which name no server.
    let abandoned = match only_source {
        None => crate::create::remove_abandoned(root, None, crate::create::ABANDONED_AFTER),
        Some(_) => Vec::new(),
    };
    let mut out = Pruned {
        abandoned,
        ..Default::default()
    };
    // By source and store history: two stores served under one URL or
    // path (one after the other, or on several hosts) keep their own.
    type Group = (String, Option<String>);
    let mut good: std::collections::BTreeMap<Group, Vec<(String, PathBuf)>> = Default::default();
    for l in list(root, false)? {
        let Some(m) = l.manifest else { continue };
        if only_source.is_some_and(|s| s != m.source) {
            continue;
        }
        match l.problem {
            Some(p) => out.failing.push((l.dir, p)),
            None => good
                .entry((m.source, m.history))
                .or_default()
                .push((m.created_at, l.dir)),
        }
    }
    let protected = |dir: &Path| {
        protect.is_some_and(|p| {
            let canon = |d: &Path| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_owned());
            canon(p) == canon(dir)
        })
    };
    for (_, mut of_source) in good {
        // Newest first: the first `keep` that pass are kept, the rest go.
        of_source.sort_by(|a, b| b.cmp(a));
        let mut kept = 0;
        for (_, dir) in of_source {
            if protected(&dir) {
                kept += 1;
                continue;
            }
            if kept < keep.max(1) {
                match deep.then(|| crate::verify::full(&dir, &|_| {})) {
                    Some(Err(e)) => out.failing.push((dir, e.to_string())),
                    _ => kept += 1,
                }
                continue;
            }
            std::fs::remove_dir_all(&dir).map_err(BackupError::io(&dir))?;
            out.removed.push(dir);
        }
    }
    out.removed.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup as far as prune sees it: a manifest created at `at`, and
    /// its one file, intact or not.
    fn backup(root: &Path, name: &str, at: &str, intact: bool) -> PathBuf {
        backup_of(root, name, "t", at, intact)
    }

    fn backup_of(root: &Path, name: &str, source: &str, at: &str, intact: bool) -> PathBuf {
        backup_in(root, name, source, None, at, intact)
    }

    /// The same, taken in store history `history`.
    fn backup_in(
        root: &Path,
        name: &str,
        source: &str,
        history: Option<&str>,
        at: &str,
        intact: bool,
    ) -> PathBuf {
        let dir = root.join(name);
        let mut w = crate::create::BackupWriter::begin(&dir).unwrap();
        w.add_db(&b"not a real snapshot"[..], &|_| {}).unwrap();
        w.add_plain("config/x", b"x").unwrap();
        let info = tidemark_store::SnapshotInfo {
            store_format: 1,
            epoch: 1,
            seq: 1,
            schema_version: 1,
            high_water: Default::default(),
            process: None,
            bytes: 1,
            history: history.map(str::to_owned),
        };
        let mut m =
            crate::manifest::Manifest::new(crate::manifest::Kind::Offline, source.into(), &info);
        m.created_at = at.into();
        w.commit(m).unwrap();
        if !intact {
            std::fs::write(dir.join("config/x"), b"y").unwrap();
        }
        dir
    }

    /// A data directory beside the backups is not listed as a damaged
    /// backup; a folder without a manifest and without a lock still is.
    #[test]
    fn a_data_directory_beside_the_backups_is_not_listed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        backup(r, "a", "2026-01-01T00:00:00Z", true);
        let data = r.join("data");
        let _lock = tidemark_store::DataDirLock::acquire(&data, "server").unwrap();
        tidemark_store::layout::resolve_for_open(&data, true).unwrap();
        std::fs::create_dir(r.join("broken")).unwrap();
        let mut names: Vec<String> = list(r, false)
            .unwrap()
            .iter()
            .map(|l| l.dir.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "broken"]);
    }

    #[test]
    fn prune_keeps_good_backups_and_never_the_one_just_written() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let old = backup(r, "a", "2026-01-01T00:00:00Z", true);
        let mid = backup(r, "b", "2026-01-02T00:00:00Z", true);
        let bad = backup(r, "c", "2026-01-03T00:00:00Z", false);
        let future = backup(r, "d", "2030-01-01T00:00:00Z", true);
        // Written now, with a clock behind the copied-in "future" one.
        let now = backup(r, "e", "2026-01-04T00:00:00Z", true);
        let p = prune(r, 1, Some(&now), None, false).unwrap();
        assert_eq!(p.removed, vec![old.clone(), mid.clone()]);
        assert_eq!(p.failing.len(), 1);
        assert!(bad.exists() && future.exists() && now.exists());
        assert!(!old.exists() && !mid.exists());
    }

    /// Servers sharing a backup folder: one's retention never removes the
    /// other's backups (it removed every older one, whoever took it).
    #[test]
    fn prune_counts_and_removes_each_sources_backups_apart() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let a1 = backup_of(r, "a1", "http://a", "2026-01-01T00:00:00Z", true);
        let b1 = backup_of(r, "b1", "http://b", "2026-01-02T00:00:00Z", true);
        let b2 = backup_of(r, "b2", "http://b", "2026-01-03T00:00:00Z", true);
        let a2 = backup_of(r, "a2", "http://a", "2026-01-04T00:00:00Z", true);
        let p = prune(r, 1, Some(&a2), Some("http://a"), false).unwrap();
        assert_eq!(p.removed, vec![a1.clone()]);
        assert!(b1.exists() && b2.exists() && a2.exists());
        let p = prune(r, 1, None, None, false).unwrap();
        assert_eq!(p.removed, vec![b1.clone()]);
        assert!(b2.exists() && a2.exists());
    }

    /// Two stores served one after the other under one URL (or on several
    /// hosts at the default one): one's retention never removes the other's
    /// only backup (an outside audit saw `--keep 1` do it).
    #[test]
    fn prune_keeps_each_store_historys_backups_apart() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let src = "http://127.0.0.1:7070";
        let a = backup_in(r, "a", src, Some("h-a"), "2026-01-01T00:00:00Z", true);
        let b1 = backup_in(r, "b1", src, Some("h-b"), "2026-01-02T00:00:00Z", true);
        let b2 = backup_in(r, "b2", src, Some("h-b"), "2026-01-03T00:00:00Z", true);
        let p = prune(r, 1, Some(&b2), Some(src), false).unwrap();
        assert_eq!(p.removed, vec![b1.clone()]);
        assert!(a.exists() && b2.exists(), "store A's only backup stays");
        let p = prune(r, 1, None, None, false).unwrap();
        assert!(p.removed.is_empty(), "{:?}", p.removed);
    }
}
