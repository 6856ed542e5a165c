//! What backup, verify, restore and cleanup refuse, and why.

use std::path::{Path, PathBuf};
use tidemark_store::StoreError;

/// Every variant names the file or directory concerned and says what to
/// do. A refusal leaves the live data unchanged.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup directory does not exist.
    #[error("backup {0} does not exist; check the path")]
    NotFound(PathBuf),
    /// The path given as a backup is a file, not a folder.
    #[error("{0} is a file, not a backup: give the folder that 'backup create --to' made")]
    NotAFolder(PathBuf),
    /// The folder said to hold backups does not exist.
    #[error("{0} does not exist; give the folder that holds the backups (each backup a folder in it), e.g. the parent of a 'backup create --to' path")]
    RootNotFound(PathBuf),
    /// No manifest: not a backup, or one that never completed.
    #[error("{0} has no manifest.json: it is not a Tidemark backup, or an interrupted one; choose another backup")]
    NoManifest(PathBuf),
    /// The manifest belongs to something else.
    #[error("{0} is not a Tidemark backup manifest (foreign format); choose a backup made by 'tidemark backup create'")]
    Foreign(PathBuf),
    /// A backup format this build does not read.
    #[error("{path} has backup format version {found}; this build reads version {supported}; use a matching tidemark version")]
    WrongVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The manifest is damaged (truncated, altered or unreadable).
    #[error("{path} is damaged: {detail}; the backup cannot be trusted, choose another one")]
    ManifestDamaged { path: PathBuf, detail: String },
    /// A file the manifest lists is missing.
    #[error("{0} is missing from the backup; the backup cannot be used, choose another one")]
    FileMissing(PathBuf),
    /// A file has the wrong size (typically truncated).
    #[error("{path} has {found} bytes, the manifest says {expected} (truncated or altered); choose another backup")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// A file's checksum does not match.
    #[error("{path} fails its BLAKE3 checksum (corrupted); choose another backup")]
    ChecksumMismatch { path: PathBuf },
    /// The data does not decode, or does not match the manifest.
    #[error("{path} does not decode: {detail}; choose another backup")]
    Undecodable { path: PathBuf, detail: String },
    /// The destination already holds something.
    #[error("{0} already exists and is not empty; name a new or empty directory (backup create --to, restore --safety-dir)")]
    DestinationExists(PathBuf),
    /// Offline backup or cleanup of a directory without a store.
    #[error("{0} holds no Tidemark store; check --data-dir")]
    NoStore(PathBuf),
    /// A server or command holds the data directory.
    #[error("{what} refused: {place} is in use by another process ({holder}); stop it first")]
    InUse {
        what: &'static str,
        /// "data directory DIR", "PostgreSQL schema 'NAME'".
        place: String,
        holder: String,
    },
    /// The target directory holds things restore did not create and cannot
    /// account for; it refuses rather than delete them.
    #[error("restore refused: {path} holds {} that Tidemark cannot account for{}; nothing was changed. If it is Tidemark data whose 'current' link was lost, relink it (ln -s gen-NNNNNN {path}/current) so restore can back it up first; otherwise move it away or restore into an empty directory", entries.join(", "), if entries.iter().any(|e| e.starts_with("gen-")) { " (generations with no 'current' link naming the live one)" } else { "" })]
    UnknownDataDir { path: PathBuf, entries: Vec<String> },
    /// The current data cannot be read, so no safety backup can be taken.
    #[error("the current data in {path} cannot be read ({detail}), so no safety backup can be taken and nothing was changed; if its disk is full, free space and run the restore again; only if the data is damaged beyond reading, rerun with --no-safety-backup to restore anyway (the current data is then lost)")]
    LiveUnreadable { path: PathBuf, detail: String },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackupError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Maps a lock refusal to [`BackupError::InUse`] for `what`.
    pub(crate) fn from_lock(what: &'static str, e: StoreError) -> BackupError {
        match e {
            StoreError::Locked { place, holder } => BackupError::InUse {
                what,
                place,
                holder,
            },
            other => BackupError::Store(other),
        }
    }
}
