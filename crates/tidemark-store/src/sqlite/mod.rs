//! The embedded engine: one SQLite database in WAL mode.
//!
//! One writer connection applies batches in `BEGIN IMMEDIATE` transactions
//! with `synchronous=FULL`, so a batch is durable before it is acknowledged.
//! A small pool of reader connections serves point reads; in WAL mode they
//! never wait on the writer.
//!
//! This file holds the engine's state, the helpers every job shares, and
//! the [`Store`] impl, which only hands each method to the module whose job
//! it is:
//! - `open`: creating and opening a database, pragmas, the checkpointer;
//! - `write`: the write path (group commit, one batch, upsert, duplicates);
//! - `read`: point reads, the change log, meta and high-water marks;
//! - `recovery`: restore marking, recovery state and flags (P5-P10);
//! - `admin`: snapshots, process information, notes, cleanup, close;
//! - `catalog`: the stored schema and the SQL built from it;
//! - `schema_registry`: every published schema version, and the publish transaction;
//! - `values`: JSON values to SQLite values and back;
//! - `lww`: applying orders while recovering, last writer by logical version.

mod admin;
mod catalog;
mod flag_page;
mod lww;
mod open;
mod page_stream;
mod read;
mod recovery;
mod schema_registry;
#[cfg(test)]
mod tests;
mod values;
mod write;

pub(crate) use admin::{
    check_snapshot_integrity, create_snapshot_file, inspect_snapshot, load_snapshot,
    snapshot_schema,
};

use crate::lock::DataDirLock;
use crate::store::{
    ApplyOutcome, Change, Flag, FlagEntry, FlagsAdded, Lookup, ProcessInfo, RecoveryMeta, Snapshot,
    SnapshotInfo, Store, StoreMeta,
};
use crate::StoreError;
use async_trait::async_trait;
use catalog::Catalog;
use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tidemark_api::{Order, RecoveryState, Schema};

/// The database file inside a data directory.
pub const DB_FILE: &str = "tidemark.db";
/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// The SQLite engine. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The database file: in the current generation of `dir`, or in `dir`
    /// itself for a private copy.
    db_path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    catalog: RwLock<Arc<Catalog>>,
    /// Mirrors `tm_meta.epoch`; changed only by the writer.
    epoch: AtomicU64,
    /// Mirrors `tm_meta.seq`; advanced after each commit.
    seq: AtomicU64,
    /// Rows in `tm_flags`; reads skip the flag lookup while it is zero.
    flag_rows: AtomicU64,
    /// Mirrors `tm_meta.recovery_state == recovering`: orders of each source
    /// must then arrive without gaps.
    recovering: AtomicBool,
    closed: AtomicBool,
    _lock: Option<DataDirLock>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn meta_get(conn: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT value FROM tm_meta WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?)
}

fn meta_u64(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    match meta_get(conn, name)? {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| StoreError::Format(format!("tm_meta.{name} is not a number: {v:?}"))),
    }
}

fn meta_set(conn: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO tm_meta (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

impl SqliteStore {
    /// The database file in use.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.read().clone()
    }

    /// Runs `f` on a free reader connection (or waits for one).
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let n = self.inner.readers.len();
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Some(c) = self.inner.readers[(start + i) % n].try_lock() {
                return f(&c);
            }
        }
        let c = self.inner.readers[start % n].lock();
        f(&c)
    }

    /// Runs `f` on the blocking pool, off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Engine(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn schema(&self) -> Arc<Schema> {
        self.catalog().schema.clone()
    }

    async fn meta(&self) -> Result<StoreMeta, StoreError> {
        read::meta(self)
    }

    async fn get(&self, table: &str, key: &str) -> Result<Lookup, StoreError> {
        read::get(self, table, key)
    }

    async fn apply(&self, orders: Vec<Order>) -> Result<ApplyOutcome, StoreError> {
        write::apply(self, orders).await
    }

    async fn apply_group(&self, batches: Vec<Vec<Order>>) -> Vec<Result<ApplyOutcome, StoreError>> {
        write::apply_group(self, batches).await
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        read::changes_since(self, after, limit).await
    }

    async fn high_water_marks(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        read::high_water_marks(self)
    }

    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
        write::prune_changes(self, keep).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        admin::close(self).await
    }

    async fn mark_restored(&self, new_epoch: u64) -> Result<(), StoreError> {
        recovery::mark_restored(self, new_epoch).await
    }

    async fn recovery_meta(&self) -> Result<RecoveryMeta, StoreError> {
        recovery::recovery_meta(self)
    }

    async fn add_flags(
        &self,
        source: &str,
        entries: Vec<FlagEntry>,
        final_chunk: bool,
        without: Vec<String>,
    ) -> Result<FlagsAdded, StoreError> {
        recovery::add_flags(self, source, entries, final_chunk, without).await
    }

    async fn expect_sources(&self, sources: &[String]) -> Result<(), StoreError> {
        recovery::expect_sources(self, sources.to_vec()).await
    }

    async fn set_recovery_state(
        &self,
        state: RecoveryState,
        complete_requested: bool,
    ) -> Result<RecoveryMeta, StoreError> {
        recovery::set_recovery_state(self, state, complete_requested).await
    }

    async fn flag_page(&self, page: &crate::FlagPage) -> Result<Vec<Flag>, StoreError> {
        flag_page::flag_page(self, page)
    }

    async fn list_flags(&self, limit: usize) -> Result<Vec<Flag>, StoreError> {
        recovery::list_flags(self, limit)
    }

    async fn clear_flags(&self) -> Result<u64, StoreError> {
        recovery::clear_flags(self).await
    }

    async fn settle_flags(&self) -> Result<u64, StoreError> {
        recovery::settle_flags(self).await
    }

    async fn schema_versions(
        &self,
    ) -> Result<Vec<tidemark_api::schema_change::SchemaVersionInfo>, StoreError> {
        schema_registry::versions(self)
    }

    fn schema_ddl(&self, target: &Schema) -> Result<crate::SchemaDdl, StoreError> {
        Ok(crate::SchemaDdl {
            statements: schema_registry::ddl(self, target)?,
            before_transaction: 0,
        })
    }

    async fn publish_schema(&self, target: &Schema, by: &str) -> Result<bool, StoreError> {
        schema_registry::publish(self, target.clone(), by.to_owned()).await
    }

    async fn reload_schema(&self) -> Result<(), StoreError> {
        schema_registry::reload(self).await
    }

    async fn set_note(&self, name: &str, value: Option<String>) -> Result<(), StoreError> {
        admin::set_note(self, name, value).await
    }

    async fn note(&self, name: &str) -> Result<Option<String>, StoreError> {
        admin::note(self, name)
    }

    async fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        admin::snapshot_to(self, path).await
    }

    async fn snapshot(&self, scratch: &Path) -> Result<Snapshot, StoreError> {
        match page_stream::open(self).await? {
            Some(snapshot) => Ok(snapshot),
            None => crate::store::snapshot_via_file(self, scratch).await,
        }
    }

    async fn record_process(&self, info: &ProcessInfo) -> Result<(), StoreError> {
        admin::record_process(self, info).await
    }

    async fn needs_cleanup(&self) -> Result<bool, StoreError> {
        admin::needs_cleanup(self)
    }

    async fn mark_needs_cleanup(&self) -> Result<(), StoreError> {
        admin::mark_needs_cleanup(self).await
    }

    async fn cleanup_process_info(&self) -> Result<Vec<String>, StoreError> {
        admin::cleanup_process_info(self).await
    }
}
