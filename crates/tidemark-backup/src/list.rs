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
        return Err(BackupError::NotFound(root.to_owned()));
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(BackupError::io(root))? {
        let entry = entry.map_err(BackupError::io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
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

/// Keeps the newest `keep` backups under `root` and removes older ones.
/// Only directories with a readable Tidemark manifest are ever removed;
/// anything else under `root` is left alone. Returns what was removed.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut ours: Vec<(String, PathBuf)> = list(root, false)?
        .into_iter()
        .filter_map(|l| l.manifest.map(|m| (m.created_at, l.dir)))
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, dir) in ours.into_iter().take(excess) {
        std::fs::remove_dir_all(&dir).map_err(BackupError::io(&dir))?;
        removed.push(dir);
    }
    Ok(removed)
}
