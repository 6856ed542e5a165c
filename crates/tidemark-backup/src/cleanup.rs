//! `tidemark cleanup`: normalises process information restored from an
//! online backup, on a stopped server's data directory or PostgreSQL
//! schema (B6).

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

/// The same on a PostgreSQL schema; refused while a DB server uses it
/// (the restore's exclusive lock).
pub async fn run_pg(url: &str, schema: &str) -> Result<Vec<String>, BackupError> {
    let target = tidemark_store::postgres::target::RestoreTarget::lock(url, schema)
        .await
        .map_err(|e| BackupError::from_lock("cleanup", e))?;
    let Some(store) = target.open_live().await? else {
        return Err(BackupError::NoStore(std::path::PathBuf::from(
            target.describe(),
        )));
    };
    let removed = store.cleanup_process_info().await;
    store.close().await?;
    Ok(removed?)
}
