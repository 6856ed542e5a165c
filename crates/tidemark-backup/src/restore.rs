//! `tidemark restore` (B3, B4, P4, P5).
//!
//! Order, each step safe to crash after:
//! 1. take the data-directory lock (refused while a server or command runs);
//! 2. check the backup's manifest and checksums;
//! 3. decode the database into a new, unreferenced generation and check it;
//! 4. take a safety backup of the current state;
//! 5. on the staged copy: raise the epoch and enter `recovering`
//!    (`mark_restored`), mark and run cleanup for online backups;
//! 6. copy the configuration files into the staged generation; fsync it;
//! 7. swap `current` to the new generation (one rename);
//! 8. remove the old generation.
//!
//! Until step 7 the old state is in use; from it on, the new one. A crash
//! leaves unreferenced generations that the next lock holder removes.

use crate::error::BackupError;
use crate::manifest::Manifest;
use crate::Progress;
use std::path::{Path, PathBuf};
use tidemark_failpoint as failpoint;
use tidemark_store::{layout, DataDirLock, Engine, StoreError};

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub from: PathBuf,
    pub data_dir: PathBuf,
    /// Where the safety backup goes; `None` skips it.
    pub safety_to: Option<PathBuf>,
    /// Run cleanup on an online backup (the default); without, the server
    /// refuses to start until `tidemark cleanup` has run.
    pub cleanup: bool,
    /// Also run SQLite's integrity check of every page before anything
    /// changes (what `backup verify` runs; seconds per GB). Without it the
    /// data is trusted by its BLAKE3 and checked for structure.
    pub integrity_check: bool,
    /// The restored store's epoch is at least this (0: one above the lost
    /// store's and the backup's). See [`new_epoch`].
    pub min_epoch: u64,
    /// The server's configuration for the safety backup (B3), as
    /// [`crate::create::add_config`] takes it; `None`: the files a restore
    /// left in the data directory.
    pub live_config: Option<serde_json::Value>,
}

/// The epoch a restore gives the store: one above the lost store's (if it
/// could be read) and the backup's, and at least `min_epoch`. With the data
/// directory lost, an epoch handed out since the backup (an earlier
/// restore from it) is unknown here; `ops recover` finds it in the OpS's
/// acknowledgements and names the `min_epoch` to restore with.
pub fn new_epoch(previous: Option<u64>, backup: u64, min_epoch: u64) -> u64 {
    // Saturating: an epoch near the top (only a forged store could hold
    // one) must not wrap to 0, which would order every record first.
    previous
        .unwrap_or(0)
        .max(backup)
        .saturating_add(1)
        .max(min_epoch)
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub previous_epoch: Option<u64>,
    pub new_epoch: u64,
    pub safety: Option<PathBuf>,
    /// Process information removed by cleanup.
    pub cleaned: Vec<String>,
    /// Set when the backup was online and cleanup was not run.
    pub needs_cleanup: bool,
    /// The generation now in use.
    pub generation: PathBuf,
    /// Schema versions the live store had published after the backup,
    /// published again on the restored data (the version only grows).
    pub schema_carried: Vec<u64>,
    /// The live store's tokens, subscriber names and audit log replaced the
    /// backup's (false: there was no live store; the backup's stay).
    pub access_carried: bool,
    /// The restored configuration files, if the backup had any.
    pub config_dir: Option<PathBuf>,
}

/// The default safety-backup location: `<data-dir>.safety/<timestamp>`.
pub fn default_safety_dir(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "tidemark-data".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    data_dir
        .with_file_name(format!("{name}.safety"))
        .join(stamp.to_string())
}

/// Restores `opts.from` into `opts.data_dir`.
pub async fn run(
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreReport, BackupError> {
    // The backup must be there before anything else is touched (even the
    // data directory's creation).
    Manifest::load(&opts.from)?;
    // A folder holding what Tidemark did not put there is refused before
    // anything (even the lock file) is written into it.
    refuse_foreign(&opts.data_dir)?;
    let created = !opts.data_dir.exists();
    let lock = DataDirLock::acquire(&opts.data_dir, "restore")
        .map_err(|e| BackupError::from_lock("restore", e))?;
    let result = restore(opts, progress).await;
    if result.is_err() && created {
        // A failed restore leaves no folder it made behind. Only under its
        // own lock: a restore refused because another holds the lock must
        // not remove that one's folder.
        remove_if_only_lock(&opts.data_dir);
    }
    drop(lock);
    result
}

fn refuse_foreign(data_dir: &Path) -> Result<(), BackupError> {
    let foreign = layout::foreign_entries(data_dir).map_err(BackupError::io(data_dir))?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(BackupError::UnknownDataDir {
        path: data_dir.to_owned(),
        entries: foreign,
    })
}

/// Removes `dir` if all it holds is the lock file.
fn remove_if_only_lock(dir: &Path) {
    let only_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|names| names.len() == 1 && names[0] == "LOCK")
    });
    if only_lock {
        let _ = std::fs::remove_file(dir.join("LOCK"));
        let _ = std::fs::remove_dir(dir);
    }
}

/// The restore itself; the caller holds the data directory's lock.
async fn restore(
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreReport, BackupError> {
    let manifest = crate::verify::checksums(&opts.from, progress)?;
    failpoint::hit("restore.after_verify");
    // Never delete what restore did not create (asked again under the lock).
    refuse_foreign(&opts.data_dir)?;

    // Leftovers of an interrupted restore go first.
    layout::remove_garbage(&opts.data_dir).map_err(BackupError::io(&opts.data_dir))?;
    let (gen_name, gen) =
        layout::stage_gen(&opts.data_dir).map_err(BackupError::io(&opts.data_dir))?;
    let staged = Staged(Some(gen.clone()));
    let snapshot = gen.join("snapshot");
    crate::verify::decode_db(&opts.from, &manifest, &snapshot, progress)?;
    if opts.integrity_check {
        crate::verify::check_integrity(&opts.from, &snapshot)?;
    }
    failpoint::hit("restore.after_stage");

    // The restored store keeps the live store's engine; a new directory
    // gets the default one.
    let live = Engine::of_data_dir(&opts.data_dir);
    let engine = live.as_ref().ok().copied().flatten().unwrap_or_default();
    let (previous_epoch, safety, live_schema, live_access) =
        live_state(live, opts, progress).await?;
    failpoint::hit("restore.after_safety");

    let new_epoch = new_epoch(previous_epoch, manifest.epoch, opts.min_epoch);
    let store = engine.load_snapshot(&snapshot, &gen)?;
    let marked = async {
        let carried = crate::schema_forward::carry_forward(store.as_ref(), &live_schema).await?;
        let access = crate::access_forward::carry(store.as_ref(), &live_access).await?;
        store.mark_restored(new_epoch).await?;
        let mut cleaned = Vec::new();
        if manifest.needs_cleanup {
            store.mark_needs_cleanup().await?;
            if opts.cleanup {
                cleaned = store.cleanup_process_info().await?;
            }
        }
        store.close().await?;
        Ok::<_, BackupError>((cleaned, (carried, access)))
    }
    .await;
    drop(store);
    let (cleaned, (schema_carried, access_carried)) = marked?;
    failpoint::hit("restore.after_mark");

    let config_dir = copy_config(&opts.from, &manifest, &gen)?;
    layout::fsync_tree(&gen).map_err(BackupError::io(&gen))?;
    failpoint::hit("restore.before_swap");

    layout::swap_current(&opts.data_dir, &gen_name).map_err(BackupError::io(&opts.data_dir))?;
    staged.keep();
    // The new state is in use already: a mark left behind only keeps the
    // generation from being taken for garbage, which `current` does too.
    if let Err(e) = layout::unmark_staged(&gen) {
        tracing::warn!(error = %e, generation = %gen.display(), "could not remove the staging mark of the restored generation; it is in use all the same");
    }
    failpoint::hit("restore.after_swap");
    layout::remove_garbage(&opts.data_dir).map_err(BackupError::io(&opts.data_dir))?;
    layout::remove_flat_store(&opts.data_dir);
    Ok(RestoreReport {
        previous_epoch,
        new_epoch,
        safety,
        cleaned,
        needs_cleanup: manifest.needs_cleanup && !opts.cleanup,
        generation: gen,
        schema_carried,
        access_carried,
        config_dir,
        manifest,
    })
}

/// The live store's epoch and schema versions (if readable), and the
/// safety backup of it.
async fn live_state(
    live: Result<Option<Engine>, StoreError>,
    opts: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<
    (
        Option<u64>,
        Option<PathBuf>,
        Vec<tidemark_api::schema_change::SchemaVersionInfo>,
        crate::access_forward::LiveAccess,
    ),
    BackupError,
> {
    // The caller holds the lock: the live store is opened without it.
    let live = match live {
        Ok(Some(engine)) => engine.open_with_lock(&opts.data_dir, None),
        Ok(None) => return Ok(Default::default()),
        Err(e) => Err(e),
    };
    let store = match live {
        Ok(s) => s,
        Err(e) if opts.safety_to.is_some() => {
            return Err(BackupError::LiveUnreadable {
                path: opts.data_dir.clone(),
                detail: e.to_string(),
            })
        }
        Err(_) => return Ok(Default::default()),
    };
    let epoch = store.meta().await.ok().map(|m| m.epoch);
    let schema = crate::schema_forward::live_versions(store.as_ref()).await;
    let access = crate::access_forward::read(store.as_ref()).await;
    let safety = match &opts.safety_to {
        Some(to) => {
            let source = crate::create::data_dir_source(&opts.data_dir);
            let made = crate::create::from_store(
                store.as_ref(),
                Some(&opts.data_dir),
                to,
                source,
                opts.live_config.as_ref(),
                progress,
            )
            .await;
            if let Err(e) = made {
                store.close().await?;
                return Err(e);
            }
            Some(to.clone())
        }
        None => None,
    };
    store.close().await?;
    Ok((epoch, safety, schema, access))
}

fn copy_config(from: &Path, m: &Manifest, gen: &Path) -> Result<Option<PathBuf>, BackupError> {
    copy_config_into(from, m, gen)
}

/// Copies the backup's configuration files into `dir/config/`.
pub(crate) fn copy_config_into(
    from: &Path,
    m: &Manifest,
    gen: &Path,
) -> Result<Option<PathBuf>, BackupError> {
    let mut any = None;
    for f in m.files.iter().filter(|f| f.path.starts_with("config/")) {
        let src = from.join(&f.path);
        let dst = gen.join(&f.path);
        // Only plain files inside the backup: a link (to /etc/…) or a path
        // that climbs out is never followed.
        let plain = std::fs::symlink_metadata(&src)
            .map(|md| md.file_type().is_file())
            .unwrap_or(false);
        let inside = std::path::Path::new(&f.path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || !inside {
            return Err(BackupError::Undecodable {
                path: src,
                detail: "a configuration file of a backup must be a plain file inside it (this is a link, or a path outside the backup); the backup was altered".into(),
            });
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(BackupError::io(parent))?;
        }
        std::fs::copy(&src, &dst).map_err(BackupError::io(&src))?;
        any = Some(gen.join("config"));
    }
    Ok(any)
}

/// Removes the staged generation unless it was swapped in.
struct Staged(Option<PathBuf>);

impl Staged {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // A swap that renamed the link and then failed (its fsync) may have
        // made the staged generation the live one: it is kept then.
        if let Some(p) = self.0.take().filter(|p| !layout::is_current(p)) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_api::RecoveryState;

    #[test]
    fn a_config_file_that_is_a_link_is_never_followed() {
        let from = tempfile::tempdir().unwrap();
        let gen = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("config")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", from.path().join("config/tidemark.toml"))
            .unwrap();
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": "tidemark-backup", "format_version": 1, "kind": "online", "source": "x",
            "created_at": "2026-01-01T00:00:00Z", "epoch": 1, "seq": 0, "schema_version": 1,
            "store_format": 1, "high_water": {}, "needs_cleanup": false,
            "files": [{"path": "config/tidemark.toml", "size": 1, "blake3": ""}]
        }))
        .expect("a manifest");
        let err = copy_config_into(from.path(), &m, gen.path()).unwrap_err();
        assert!(err.to_string().contains("plain file"), "{err}");
        assert!(!gen.path().join("config/tidemark.toml").exists());
    }
    use tidemark_store::testsuite;

    /// Restoring `from` into `data`: cleanup on, no safety backup, no
    /// integrity check; each test sets what it needs.
    fn options(from: &Path, data: &Path) -> RestoreOptions {
        RestoreOptions {
            from: from.to_owned(),
            data_dir: data.to_owned(),
            safety_to: None,
            cleanup: true,
            integrity_check: false,
            min_epoch: 0,
            live_config: None,
        }
    }

    /// Opens the store of `data` with the default engine.
    fn open(data: &Path) -> std::sync::Arc<dyn tidemark_store::Store> {
        Engine::default().open(data, "test").unwrap()
    }

    /// A store under `dir/data` holding `load_some`, and an online backup
    /// of it in `dir/b`.
    async fn loaded_and_backed_up(
        dir: &Path,
    ) -> (PathBuf, std::sync::Arc<dyn tidemark_store::Store>, PathBuf) {
        let data = dir.join("data");
        let store = open(&data);
        testsuite::load_some(store.as_ref()).await;
        let backup = dir.join("b");
        crate::create::from_store(
            store.as_ref(),
            Some(&data),
            &backup,
            "t".into(),
            None,
            &|_| {},
        )
        .await
        .unwrap();
        (data, store, backup)
    }

    #[tokio::test]
    async fn offline_backup_restores_to_its_point_with_a_raised_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = open(&data);
        testsuite::load_some(store.as_ref()).await;
        let at_backup = store.meta().await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let backup = tmp.path().join("b/1");
        let m = crate::create::offline(&data, &backup, None, &|_| {})
            .await
            .unwrap();
        assert_eq!(m.seq, at_backup.seq);
        crate::verify::full(&backup, &|_| {}).unwrap();

        // Later changes, then restore.
        let store = open(&data);
        store.prune_changes(0).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let opts = RestoreOptions {
            safety_to: Some(default_safety_dir(&data)),
            ..options(&backup, &data)
        };
        let report = run(&opts, &|_| {}).await.unwrap();
        assert_eq!(report.new_epoch, at_backup.epoch + 1);
        let safety = report.safety.unwrap();
        crate::verify::full(&safety, &|_| {}).unwrap();
        let store = open(&data);
        let meta = store.meta().await.unwrap();
        assert_eq!(meta.seq, at_backup.seq);
        assert_eq!(meta.epoch, at_backup.epoch + 1);
        assert_eq!(
            meta.log_floor, at_backup.log_floor,
            "the pruned log came back"
        );
        testsuite::check_some(store.as_ref()).await;
        assert!(!store.needs_cleanup().await.unwrap());
        // The seam with recovery (P5): the server starts in `recovering`,
        // with no schedule list yet.
        let recovery = store.recovery_meta().await.unwrap();
        assert_eq!(recovery.state, RecoveryState::Recovering);
        assert!(!recovery.schedule_final && recovery.started_at.is_some());
        store.close().await.unwrap();
        drop(store);
        // Only the new generation is left.
        let gens: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("gen-"))
            .collect();
        assert_eq!(gens, vec!["gen-000002".to_string()]);
    }

    /// A backup that is damaged inside the database but carries checksums
    /// of the damaged bytes (a source corrupted before the backup, or a
    /// forged backup): the deep checks name it, and nothing changes.
    #[tokio::test]
    async fn the_integrity_check_finds_damage_the_checksums_vouch_for() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = open(&data);
        testsuite::load_some(store.as_ref()).await;
        store.close().await.unwrap();
        drop(store);
        let backup = tmp.path().join("b");
        crate::create::offline(&data, &backup, None, &|_| {})
            .await
            .unwrap();

        // Decode, break one b-tree page's type, encode with new checksums.
        let db = backup.join(crate::manifest::DB_FILE);
        let mut raw = zstd::decode_all(std::fs::File::open(&db).unwrap()).unwrap();
        let page = 4096;
        let leaf = (2..raw.len() / page)
            .find(|p| raw[p * page] == 0x0d)
            .expect("a table leaf page besides page 1");
        raw[leaf * page] = 0xff;
        let packed = zstd::encode_all(&raw[..], 1).unwrap();
        std::fs::write(&db, &packed).unwrap();
        let mut m = Manifest::load(&backup).unwrap();
        let entry = m
            .files
            .iter_mut()
            .find(|f| f.path == crate::manifest::DB_FILE)
            .unwrap();
        entry.size = packed.len() as u64;
        entry.blake3 = blake3::hash(&packed).to_hex().to_string();
        entry.raw_blake3 = Some(blake3::hash(&raw).to_hex().to_string());
        std::fs::write(backup.join(crate::manifest::MANIFEST_FILE), m.encode()).unwrap();
        crate::verify::checksums(&backup, &|_| {}).unwrap();

        let err = crate::verify::full(&backup, &|_| {}).unwrap_err();
        assert!(matches!(err, BackupError::Undecodable { .. }), "{err}");
        assert!(err.to_string().contains("integrity check failed"), "{err}");
        let opts = RestoreOptions {
            integrity_check: true,
            min_epoch: 0,
            live_config: None,
            ..options(&backup, &data)
        };
        let err = run(&opts, &|_| {}).await.unwrap_err();
        assert!(err.to_string().contains("integrity check failed"), "{err}");
        let store = open(&data);
        assert_eq!(store.meta().await.unwrap().epoch, 1, "nothing restored");
        testsuite::check_some(store.as_ref()).await;
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_held_lock_or_a_damaged_backup_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, store, backup) = loaded_and_backed_up(tmp.path()).await;
        let opts = options(&backup, &data);
        let err = run(&opts, &|_| {}).await.unwrap_err();
        assert!(matches!(err, BackupError::InUse { .. }), "{err}");
        store.close().await.unwrap();
        drop(store);

        let db = backup.join(crate::manifest::DB_FILE);
        let mut bytes = std::fs::read(&db).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&db, &bytes).unwrap();
        let err = run(&opts, &|_| {}).await.unwrap_err();
        assert!(matches!(err, BackupError::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains("tidemark.db.zst"), "{err}");
        let store = open(&data);
        assert_eq!(store.meta().await.unwrap().epoch, 1);
        testsuite::check_some(store.as_ref()).await;
    }

    #[tokio::test]
    async fn unreadable_live_data_needs_an_explicit_no_safety_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, store, backup) = loaded_and_backed_up(tmp.path()).await;
        store.close().await.unwrap();
        drop(store);
        // The disk died: every file of the live store is garbage.
        const GARBAGE: &[u8] = b"not a database at all, the disk died";
        let live = layout::current_gen(&data).unwrap().unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(&live)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty());
        for f in &files {
            std::fs::write(f, GARBAGE).unwrap();
        }
        let mut opts = RestoreOptions {
            safety_to: Some(tmp.path().join("safety")),
            ..options(&backup, &data)
        };
        let err = run(&opts, &|_| {}).await.unwrap_err();
        assert!(matches!(err, BackupError::LiveUnreadable { .. }), "{err}");
        assert!(err.to_string().contains("--no-safety-backup"), "{err}");
        for f in &files {
            assert_eq!(std::fs::read(f).unwrap(), GARBAGE, "{}", f.display());
        }
        opts.safety_to = None;
        let report = run(&opts, &|_| {}).await.unwrap();
        assert_eq!(report.previous_epoch, None);
        assert_eq!(report.new_epoch, 2);
        let store = open(&data);
        testsuite::check_some(store.as_ref()).await;
    }
}
