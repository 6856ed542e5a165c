//! Opening and snapshotting a store without naming its engine: what
//! backup, verify, restore and cleanup use, so that every engine plugs into
//! them the same way.
//!
//! # The snapshot format
//!
//! Every engine writes and reads one snapshot format: a single SQLite
//! database file holding the store's tables (`tm_meta`, `tm_sources`,
//! `tm_changes`, `tm_flags`, ... and one table per schema table) at one
//! consistent point. The SQLite engine copies its database with SQLite's
//! online backup API; another engine writes the same tables from one
//! consistent read (PostgreSQL: COPY out of one `REPEATABLE READ`
//! transaction) and reads them back in on restore. So a backup taken on one
//! engine restores into any other, and the backup format (`tidemark.db.zst`
//! in a backup directory) does not depend on the engine.
//!
//! Snapshots are produced through the trait ([`Store::snapshot_to`],
//! [`Store::snapshot`]), checked with [`inspect_snapshot`], and taken in as
//! a store with [`Engine::load_snapshot`].

use crate::store::{SnapshotInfo, Store};
use crate::{DataDirLock, SqliteStore, StoreError};
use std::path::Path;
use std::sync::Arc;

/// A storage engine. Backup, restore and cleanup hold one of these, never a
/// concrete store type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// The embedded engine: one SQLite database in the data directory.
    #[default]
    Sqlite,
    /// PostgreSQL: one schema of a database, named by URL, not by a data
    /// directory ([`crate::PgStore::connect`], [`crate::postgres::snapshot`]).
    Postgres,
}

impl Engine {
    /// Every engine this build has.
    pub const ALL: &'static [Engine] = &[Engine::Sqlite, Engine::Postgres];

    /// The name [`Store::engine`] reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// The engine of the store data directory `dir` holds, or `None` if it
    /// holds no store (missing, empty, or never used).
    pub fn of_data_dir(dir: &Path) -> Result<Option<Engine>, StoreError> {
        Ok(crate::layout::existing_db_dir(dir)?.map(|_| Engine::Sqlite))
    }

    /// Opens (creating if needed) the store of data directory `dir`, taking
    /// the data-directory lock for `role`.
    pub fn open(self, dir: &Path, role: &str) -> Result<Arc<dyn Store>, StoreError> {
        let lock = DataDirLock::acquire(dir, role)?;
        self.open_with_lock(dir, Some(lock))
    }

    /// Opens the store of `dir` under a lock the caller already holds, or
    /// with none for a private copy (a staged generation, a store the caller
    /// guards by other means). See [`crate::layout`] for what `dir` holds.
    pub fn open_with_lock(
        self,
        dir: &Path,
        lock: Option<DataDirLock>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Engine::Sqlite => Ok(Arc::new(SqliteStore::open_with_lock(dir, lock)?)),
            Engine::Postgres => Err(not_a_data_dir(dir)),
        }
    }

    /// Takes the snapshot file `snapshot` (checked with
    /// [`inspect_snapshot`]) in as the store of the private directory `dir`,
    /// and opens it without a lock. The file is consumed. Restore stages a
    /// new generation this way before it swaps it in.
    pub fn load_snapshot(self, snapshot: &Path, dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Engine::Sqlite => Ok(Arc::new(crate::sqlite::load_snapshot(snapshot, dir)?)),
            Engine::Postgres => Err(not_a_data_dir(dir)),
        }
    }
}

fn not_a_data_dir(dir: &Path) -> StoreError {
    StoreError::DataDir {
        path: dir.display().to_string(),
        detail: "the PostgreSQL engine lives in a database, not a data directory; give --store postgres --database-url URL".into(),
    }
}

/// Checks a snapshot file (a backup's data, decoded) without opening it as
/// a store: its structure, the store format, and what it holds. The same
/// for every engine, since they share the snapshot format.
pub fn inspect_snapshot(path: &Path) -> Result<SnapshotInfo, StoreError> {
    crate::sqlite::inspect_snapshot(path)
}

/// The deep check of a snapshot file: SQLite's integrity check of every
/// page and index (what `backup verify` adds to the checksums).
pub fn check_snapshot_integrity(path: &Path) -> Result<(), StoreError> {
    crate::sqlite::check_snapshot_integrity(path)
}
