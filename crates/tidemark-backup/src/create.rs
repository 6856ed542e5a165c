//! Writing a backup: into a hidden temporary directory beside the target,
//! every file fsynced, the manifest last, then one rename. A backup that
//! fails half-way (full disk, crash) leaves no directory that `list` would
//! show as good.

use crate::error::BackupError;
use crate::hashio::CompressSink;
use crate::manifest::{
    FileEntry, Kind, Manifest, CONFIG_EFFECTIVE, CONFIG_FILE, DB_FILE, MANIFEST_FILE,
};
use crate::{scratch, Progress};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tidemark_failpoint as failpoint;
use tidemark_store::layout::{fsync_dir, fsync_tree};
use tidemark_store::{DataDirLock, Engine, Store, StoreError};

/// A backup being written. Dropped without [`BackupWriter::commit`], it
/// removes its temporary directory.
pub struct BackupWriter {
    target: PathBuf,
    tmp: PathBuf,
    files: Vec<FileEntry>,
    committed: bool,
    /// Held while the backup is written (see [`scratch::lock`]).
    _writing: std::fs::File,
}

/// The hidden temporary directory for `target`; `list` skips such names.
pub fn tmp_dir_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "backup".into());
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// How old an unlocked temporary directory must be before `prune` takes
/// it for abandoned: a writer on another host, or in another PID
/// namespace, is not seen in this `/proc`, and over some network file
/// systems its lock may not be either.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temporary directories under `root` of backups that are
/// surely abandoned (killed, crashed: nothing else removes them), those of
/// backups named `only` if given: no process with its pid here, its lock
/// free, and untouched for `older_than`. Returns what it removed.
pub fn remove_abandoned(
    root: &Path,
    only: Option<&str>,
    older_than: std::time::Duration,
) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((backup, pid)) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(b, p)| Some((b, p.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let path = entry.path();
        if only.is_some_and(|o| o != backup) || !scratch::abandoned(&path, pid, older_than) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

impl BackupWriter {
    /// Starts a backup that will appear at `target`, which must not exist
    /// (or be an empty directory).
    pub fn begin(target: &Path) -> Result<Self, BackupError> {
        // A bare name (`--to b1`) has the empty path as its parent, which
        // no directory call takes: it is `./b1`.
        let relative;
        let target = if target.parent().is_some_and(|p| p.as_os_str().is_empty()) {
            relative = Path::new(".").join(target);
            relative.as_path()
        } else {
            target
        };
        if target.exists() {
            let empty = std::fs::read_dir(target)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(BackupError::DestinationExists(target.to_owned()));
            }
            std::fs::remove_dir(target).map_err(BackupError::io(target))?;
        }
        let tmp = tmp_dir_for(target);
        if let Some(parent) = tmp.parent() {
            std::fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
            // An earlier attempt at the same backup that was killed, and
            // (surely abandoned, as `prune` judges) those of others: a
            // restore's safety backup has a new name each time.
            let name = target.file_name().map(|n| n.to_string_lossy().to_string());
            remove_abandoned(
                parent,
                Some(name.as_deref().unwrap_or("backup")),
                std::time::Duration::ZERO,
            );
            remove_abandoned(parent, None, ABANDONED_AFTER);
        }
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(BackupError::io(&tmp))?;
        }
        std::fs::create_dir_all(tmp.join("config")).map_err(BackupError::io(&tmp))?;
        // Every record and the server's config are in it: its owner's alone
        // (the rename to the target keeps the mode).
        tidemark_store::layout::make_private(&tmp).map_err(BackupError::io(&tmp))?;
        let writing = scratch::lock(&tmp)?;
        Ok(Self {
            target: target.to_owned(),
            tmp,
            files: Vec::new(),
            committed: false,
            _writing: writing,
        })
    }

    /// The temporary directory (for scratch files that are not part of the backup).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A compressing sink for the database snapshot; finish it with
    /// [`BackupWriter::finish_db`].
    pub fn db_sink(&self) -> Result<CompressSink, BackupError> {
        CompressSink::create(&self.tmp.join(DB_FILE))
    }

    pub fn finish_db(&mut self, sink: CompressSink) -> Result<(), BackupError> {
        let w = sink.finish()?;
        self.files.push(FileEntry {
            path: DB_FILE.into(),
            size: w.size,
            blake3: w.blake3,
            compression: Some("zstd".into()),
            raw_size: Some(w.raw_size),
            raw_blake3: Some(w.raw_blake3),
        });
        Ok(())
    }

    /// Compresses a snapshot stream in as the database.
    pub fn add_db(
        &mut self,
        mut snapshot: impl Read,
        progress: Progress,
    ) -> Result<(), BackupError> {
        let mut sink = self.db_sink()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = snapshot.read(&mut buf).map_err(|e| {
                StoreError::Engine(format!("reading the snapshot failed: {e}; retry"))
            })?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])
                .map_err(BackupError::io(&self.tmp.join(DB_FILE)))?;
            done += n as u64;
            progress(done);
            failpoint::hit("backup.create.write");
        }
        self.finish_db(sink)
    }

    /// Adds a small uncompressed file (configuration).
    pub fn add_plain(&mut self, rel: &str, bytes: &[u8]) -> Result<(), BackupError> {
        let path = self.tmp.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
        }
        let mut f = std::fs::File::create(&path).map_err(BackupError::io(&path))?;
        f.write_all(bytes).map_err(BackupError::io(&path))?;
        f.sync_all().map_err(BackupError::io(&path))?;
        self.files.push(FileEntry {
            path: rel.into(),
            size: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
            compression: None,
            raw_size: None,
            raw_blake3: None,
        });
        Ok(())
    }

    /// Writes the manifest last, fsyncs everything, and renames the
    /// backup into place.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<Manifest, BackupError> {
        manifest.files = self.files.clone();
        // Scratch files (a raw snapshot) are not part of the backup.
        for entry in std::fs::read_dir(&self.tmp).map_err(BackupError::io(&self.tmp))? {
            let entry = entry.map_err(BackupError::io(&self.tmp))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                std::fs::remove_file(entry.path()).map_err(BackupError::io(&entry.path()))?;
            }
        }
        let path = self.tmp.join(MANIFEST_FILE);
        failpoint::hit("backup.create.before_manifest");
        let mut f = std::fs::File::create(&path).map_err(BackupError::io(&path))?;
        f.write_all(&manifest.encode())
            .map_err(BackupError::io(&path))?;
        f.sync_all().map_err(BackupError::io(&path))?;
        fsync_tree(&self.tmp).map_err(BackupError::io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.target).map_err(BackupError::io(&self.target))?;
        self.committed = true;
        if let Some(parent) = self.target.parent() {
            fsync_dir(parent).map_err(BackupError::io(parent))?;
        }
        Ok(manifest)
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Adds the server's configuration as `GET /v1/backup/config` gives it
/// (`{"effective", "file": {"path", "content"} | null}`) (B1).
pub fn add_config(
    writer: &mut BackupWriter,
    manifest: &mut Manifest,
    config: &serde_json::Value,
) -> Result<(), BackupError> {
    let effective = serde_json::to_vec_pretty(&config["effective"]).unwrap_or_default();
    writer.add_plain(CONFIG_EFFECTIVE, &effective)?;
    if let (Some(path), Some(content)) = (
        config["file"]["path"].as_str(),
        config["file"]["content"].as_str(),
    ) {
        writer.add_plain(CONFIG_FILE, content.as_bytes())?;
        manifest.config_source = Some(path.to_owned());
    }
    Ok(())
}

/// Backs up an open store (offline backups, safety backups): one snapshot,
/// compressed into `target`, with the server's configuration `config` (see
/// [`add_config`]), or without it the configuration files a restore left in
/// the data directory `data_dir` (`current/config/*`), if any.
pub async fn from_store(
    store: &dyn Store,
    data_dir: Option<&Path>,
    target: &Path,
    source: String,
    config: Option<&serde_json::Value>,
    progress: Progress<'_>,
) -> Result<Manifest, BackupError> {
    let mut writer = BackupWriter::begin(target)?;
    let snapshot = store.snapshot(writer.tmp_dir()).await?;
    writer.add_db(snapshot.reader, progress)?;
    let info = snapshot.info;
    let mut manifest = Manifest::new(Kind::Offline, source, &info);
    if let Some(config) = config {
        add_config(&mut writer, &mut manifest, config)?;
    } else if let Some(config) = match data_dir {
        Some(d) => tidemark_store::layout::existing_db_dir(d)?.map(|d| d.join("config")),
        None => None,
    } {
        for rel in [CONFIG_EFFECTIVE, CONFIG_FILE] {
            let name = rel.trim_start_matches("config/");
            match std::fs::read(config.join(name)) {
                Ok(bytes) => writer.add_plain(rel, &bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackupError::io(&config.join(name))(e)),
            }
        }
    }
    writer.commit(manifest)
}

/// What backups of data directory `dir` record as their source: the same
/// for every backup of it (offline, safety).
pub fn data_dir_source(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .display()
        .to_string()
}

/// `backup create --offline`: the data directory of a stopped server
/// (refused while anything holds its lock) (B2), with its configuration
/// `config` if given (see [`add_config`]).
pub async fn offline(
    data_dir: &Path,
    target: &Path,
    config: Option<&serde_json::Value>,
    progress: Progress<'_>,
) -> Result<Manifest, BackupError> {
    let Some(engine) = Engine::of_data_dir(data_dir)? else {
        return Err(BackupError::NoStore(data_dir.to_owned()));
    };
    let lock = DataDirLock::acquire(data_dir, "backup")
        .map_err(|e| BackupError::from_lock("offline backup", e))?;
    let store = engine.open_with_lock(data_dir, Some(lock))?;
    let source = data_dir_source(data_dir);
    let result = from_store(
        store.as_ref(),
        Some(data_dir),
        target,
        source,
        config,
        progress,
    )
    .await;
    store.close().await?;
    result
}

/// `backup create --offline --store postgres`: the PostgreSQL schema of a
/// stopped cluster (B2), refused while any DB server uses it (the restore
/// lock, taken exclusively), with its configuration `config` if given.
pub async fn offline_pg(
    database_url: &str,
    schema: &str,
    target: &Path,
    config: Option<&serde_json::Value>,
    progress: Progress<'_>,
) -> Result<Manifest, BackupError> {
    use tidemark_store::postgres::target::RestoreTarget;
    let locked = RestoreTarget::lock(database_url, schema)
        .await
        .map_err(|e| BackupError::from_lock("offline backup", e))?;
    let Some(store) = locked.open_live().await? else {
        return Err(BackupError::NoStore(PathBuf::from(locked.describe())));
    };
    let source = locked.source_name();
    let result = from_store(store.as_ref(), None, target, source, config, progress).await;
    store.close().await?;
    drop(locked);
    result
}

#[cfg(test)]
mod abandoned_tests {
    /// A backup killed a moment ago is a zombie until its parent reaps it:
    /// it writes nothing more, so a rerun removes its leftover (before, the
    /// rerun saw its pid and kept it). Another backup's leftover, old
    /// enough, goes too (a restore's safety backup is named anew each time).
    #[test]
    fn a_zombie_s_leftover_and_old_ones_of_other_backups_are_removed_by_the_next_backup() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Readiness: the child has exited and is not reaped yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::scratch::running(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ended"
            );
            std::thread::yield_now();
        }
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "still a zombie"
        );
        let zombie = r.join(format!(".b.tmp-{pid}"));
        std::fs::create_dir_all(zombie.join("config")).unwrap();
        let old = r.join(".safety-1.tmp-999999999");
        std::fs::create_dir_all(old.join("config")).unwrap();
        let long_ago = std::time::SystemTime::now() - super::ABANDONED_AFTER * 2;
        for d in [old.join("config"), old.clone()] {
            std::fs::File::open(&d)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        let recent = r.join(".safety-2.tmp-999999999");
        std::fs::create_dir_all(&recent).unwrap();
        let _w = super::BackupWriter::begin(&r.join("b")).unwrap();
        assert!(!zombie.exists(), "the zombie's leftover went");
        assert!(!old.exists(), "an old leftover of another backup went");
        assert!(
            recent.exists(),
            "a recent one of another backup is left to prune"
        );
        child.wait().unwrap();
    }

    /// A backup killed half-way leaves its hidden temporary directory: the
    /// next attempt at the same backup removes it, and prune removes any
    /// surely abandoned (no such process, unlocked, old enough); one a
    /// running writer holds locked stays.
    #[test]
    fn temporary_directories_of_dead_backups_are_removed() {
        use std::time::Duration;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // No process has a pid this high (Linux's limit is 2^22).
        let dead = |name: &str| {
            let d = r.join(format!(".{name}.tmp-999999999"));
            std::fs::create_dir_all(d.join("config")).unwrap();
            d
        };
        let (b, other) = (dead("b"), dead("other"));
        let w = super::BackupWriter::begin(&r.join("b")).unwrap();
        assert!(!b.exists(), "the same backup's leftover went");
        assert!(other.exists(), "another backup's is left to prune");
        // Not old enough for prune's patience: kept.
        let pruned = crate::list::prune(r, 1, None, None, false).unwrap();
        assert!(pruned.abandoned.is_empty() && other.exists());
        assert_eq!(
            super::remove_abandoned(r, None, Duration::ZERO),
            vec![other.clone()]
        );
        // A writer whose pid this /proc does not show (another container)
        // but who holds its lock: kept.
        let foreign = r.join(".c.tmp-999999998");
        std::fs::create_dir_all(&foreign).unwrap();
        let _lock = crate::scratch::lock(&foreign).unwrap();
        assert!(super::remove_abandoned(r, None, Duration::ZERO).is_empty());
        assert!(foreign.exists() && w.tmp_dir().exists());
    }
}
