//! `tidemark restore --store postgres` (B3, B4, P4, P5): the same steps as a
//! data-directory restore, on a PostgreSQL schema.
//!
//! 1. check the backup's manifest and checksums;
//! 2. lock the schema exclusively (refused while a DB server uses it);
//! 3. decode the snapshot into a temporary file;
//! 4. take a safety backup of the live store, if the schema holds one;
//! 5. load the snapshot into a staging schema; on it, raise the epoch and
//!    enter `recovering` (`mark_restored`), mark and run cleanup for online
//!    backups;
//! 6. swap the staging schema in (one transaction).
//!
//! Until step 6 the old store is in use; from it on, the new one. A crash
//! leaves a staging schema that the next restore replaces. The backup can
//! come from either engine: the snapshot format is shared.

use crate::error::BackupError;
use crate::manifest::Manifest;
use crate::Progress;
use std::path::PathBuf;
use tidemark_store::postgres::target::RestoreTarget;

/// What to restore into PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgRestoreOptions {
    pub from: PathBuf,
    pub database_url: String,
    pub schema: String,
    /// Where the safety backup goes; `None` skips it.
    pub safety_to: Option<PathBuf>,
    /// Run cleanup on an online backup (the default).
    pub cleanup: bool,
    /// Also run SQLite's integrity check of the decoded snapshot first.
    pub integrity_check: bool,
    /// The restored store's epoch is at least this (see
    /// [`crate::restore::new_epoch`]).
    pub min_epoch: u64,
    /// Where the backup's configuration files are copied, if anywhere.
    pub config_to: Option<PathBuf>,
    /// The server's configuration for the safety backup (B3); see
    /// [`crate::restore::RestoreOptions::live_config`].
    pub live_config: Option<serde_json::Value>,
}

/// What a PostgreSQL restore did.
#[derive(Debug)]
pub struct PgRestoreReport {
    pub manifest: Manifest,
    pub previous_epoch: Option<u64>,
    pub new_epoch: u64,
    pub safety: Option<PathBuf>,
    pub cleaned: Vec<String>,
    pub needs_cleanup: bool,
    pub target: String,
    pub config_dir: Option<PathBuf>,
    /// Schema versions carried onto the restored data (see [`crate::schema_forward`]).
    pub schema_carried: Vec<u64>,
    /// The live store's tokens, subscriber names and audit log replaced the
    /// backup's (false: there was no live store; the backup's stay).
    pub access_carried: bool,
}

/// Restores `opts.from` into the PostgreSQL schema `opts.schema`.
pub async fn run(
    opts: &PgRestoreOptions,
    progress: Progress<'_>,
) -> Result<PgRestoreReport, BackupError> {
    Manifest::load(&opts.from)?;
    let manifest = crate::verify::checksums(&opts.from, progress)?;
    let target = RestoreTarget::lock(&opts.database_url, &opts.schema)
        .await
        .map_err(|e| BackupError::from_lock("restore", e))?;
    target.refuse_foreign().await?;
    let scratch = tempfile::tempdir().map_err(BackupError::io(&std::env::temp_dir()))?;
    let snapshot = scratch.path().join("snapshot");
    crate::verify::decode_db(&opts.from, &manifest, &snapshot, progress)?;
    if opts.integrity_check {
        crate::verify::check_integrity(&opts.from, &snapshot)?;
    }

    let (previous_epoch, safety, live_schema, live_access) = match target.open_live().await {
        Ok(Some(live)) => {
            let epoch = live.meta().await.ok().map(|m| m.epoch);
            let schema = crate::schema_forward::live_versions(live.as_ref()).await;
            let access = crate::access_forward::read(live.as_ref()).await;
            let safety = match &opts.safety_to {
                Some(to) => {
                    let made = crate::create::from_store(
                        live.as_ref(),
                        None,
                        to,
                        target.source_name(),
                        opts.live_config.as_ref(),
                        progress,
                    )
                    .await;
                    if let Err(e) = made {
                        live.close().await?;
                        return Err(e);
                    }
                    Some(to.clone())
                }
                None => None,
            };
            live.close().await?;
            (epoch, safety, schema, access)
        }
        Ok(None) => Default::default(),
        Err(e) if opts.safety_to.is_some() => {
            return Err(BackupError::LiveUnreadable {
                path: PathBuf::from(target.describe()),
                detail: e.to_string(),
            })
        }
        Err(_) => Default::default(),
    };

    let new_epoch = crate::restore::new_epoch(previous_epoch, manifest.epoch, opts.min_epoch);
    let staged = target.stage(&snapshot).await?;
    let marked = async {
        let carried = crate::schema_forward::carry_forward(staged.as_ref(), &live_schema).await?;
        let access = crate::access_forward::carry(staged.as_ref(), &live_access).await?;
        staged.mark_restored(new_epoch).await?;
        let mut cleaned = Vec::new();
        if manifest.needs_cleanup {
            staged.mark_needs_cleanup().await?;
            if opts.cleanup {
                cleaned = staged.cleanup_process_info().await?;
            }
        }
        Ok::<_, BackupError>((cleaned, (carried, access)))
    }
    .await;
    staged.close().await?;
    let (cleaned, (schema_carried, access_carried)) = marked?;
    // The databases first, then the configuration files (B3).
    target.swap_in().await?;
    let config_dir = match &opts.config_to {
        Some(dir) => crate::restore::copy_config_into(&opts.from, &manifest, dir)?,
        None => None,
    };
    Ok(PgRestoreReport {
        previous_epoch,
        new_epoch,
        safety,
        cleaned,
        needs_cleanup: manifest.needs_cleanup && !opts.cleanup,
        target: target.describe(),
        config_dir,
        schema_carried,
        access_carried,
        manifest,
    })
}
