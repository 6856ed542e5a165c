//! `tidemark cleanup`: normalises process information restored from an
//! online backup, on a stopped server's data directory (B6).

use crate::error::BackupError;
use std::path::Path;
use tidemark_store::{DataDirLock, Engine};

/// Removes recorded process information and quiesce notices, and clears
/// the needs-cleanup mark. Refused while anything holds the lock.
pub async fn run(data_dir: &Path) -> Result<Vec<String>, BackupError> {
    let Some(engine) = Engine::of_data_dir(data_dir)? else {
        return Err(BackupError::NoStore(data_dir.to_owned()));
    };
    let lock = DataDirLock::acquire(data_dir, "cleanup")
        .map_err(|e| BackupError::from_lock("cleanup", e))?;
    let store = engine.open_with_lock(data_dir, Some(lock))?;
    let removed = store.cleanup_process_info().await;
    store.close().await?;
    Ok(removed?)
}
