//! Creating and opening a database: the internal tables, the pragmas every
//! connection gets, and the background checkpointer.
//!
//! A new database gets the internal tables, format version, epoch 1 and the
//! default schema in one transaction, so a half-created store never exists.

use super::{
    catalog, lww, meta_get, meta_set, meta_u64, Inner, SqliteStore, DB_FILE, FORMAT_VERSION,
};
use crate::lock::DataDirLock;
use crate::StoreError;
use catalog::Catalog;
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::Schema;

pub(super) const INTERNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS tm_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_tables (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_columns (tbl TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, ordinal INTEGER NOT NULL, PRIMARY KEY (tbl, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_changes (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL, fields TEXT, source TEXT NOT NULL, source_seq INTEGER NOT NULL, digest TEXT NOT NULL, cleared INTEGER NOT NULL DEFAULT 0, flagged INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS tm_changes_by_source ON tm_changes (source, source_seq);
CREATE TABLE IF NOT EXISTS tm_sources (source TEXT PRIMARY KEY NOT NULL, high_water INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_tombstones (tbl TEXT NOT NULL, key TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_flags (tbl TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, through_seq INTEGER NOT NULL, PRIMARY KEY (tbl, key, source)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_recovery_sources (source TEXT PRIMARY KEY NOT NULL, final INTEGER NOT NULL, waived INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_schema_versions (version INTEGER PRIMARY KEY NOT NULL, schema TEXT NOT NULL, published_by TEXT NOT NULL, published_at TEXT, changes TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS tm_pruned (source TEXT PRIMARY KEY NOT NULL, through_seq INTEGER NOT NULL) WITHOUT ROWID;
";

/// Columns added to the internal tables since format 1, for stores made
/// before them: each with a default, so older and newer builds share a store.
fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    let has_flagged: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('tm_changes') WHERE name = 'flagged'",
        [],
        |r| r.get(0),
    )?;
    if has_flagged == 0 {
        conn.execute_batch("ALTER TABLE tm_changes ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// Process-wide SQLite settings, applied once before the first connection:
/// memory statistics off, because they take a global mutex on every
/// allocation.
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is called before any connection of this
        // process exists; if SQLite was already initialised it returns
        // SQLITE_MISUSE and changes nothing, which is harmless.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            );
        }
    });
}

/// How often the checkpointer looks at the WAL.
const CHECKPOINT_TICK: Duration = Duration::from_millis(200);
/// The longest a burst of commits goes without a checkpoint.
const CHECKPOINT_MAX_GAP: Duration = Duration::from_secs(1);

/// Copies the WAL back into the database file with passive checkpoints from
/// a connection of its own: readers and writers never wait for it, and
/// commits never pay for a checkpoint. Ends when the store is closed or
/// dropped.
///
/// It checkpoints once the WAL has been left unchanged for a tick (writes
/// paused), and during a burst at most every [`CHECKPOINT_MAX_GAP`]: a
/// checkpoint's writes and its fsync of the database file make the
/// commits' own WAL fsyncs wait (on ext4, 80–250 ms each), so a
/// checkpoint every tick halved the speed of a schedule list or a replay.
fn spawn_checkpointer(inner: std::sync::Weak<Inner>, path: PathBuf, wal_bound: u64) {
    let run = move || {
        let Ok(conn) = Connection::open(&path) else {
            return;
        };
        let _ = conn.busy_timeout(Duration::from_millis(100));
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let modified = || std::fs::metadata(&wal).and_then(|m| m.modified()).ok();
        let mut seen = modified();
        let mut checkpointed = Instant::now();
        let mut pending = true;
        loop {
            std::thread::sleep(CHECKPOINT_TICK);
            match inner.upgrade() {
                Some(i) if !i.closed.load(Ordering::SeqCst) => {}
                _ => return,
            }
            let now = modified();
            let writing = now != seen;
            seen = now;
            pending |= writing;
            if !checkpoint_due(pending, writing, checkpointed.elapsed()) {
                continue;
            }
            checkpointed = Instant::now();
            let mut done = passive_checkpoint(&conn);
            if done.is_ok() && file_len(&wal) > wal_bound {
                // The WAL starts over only at a write transaction that
                // begins with every frame copied. Under back-to-back
                // commits one is always open while the copy runs, so it
                // grew without end (500 MB over a replay of 1 M orders, and
                // appending to it cost the writer a tenth of its time in
                // the kernel, zeroing new blocks). So what came since is
                // copied between two transactions, with the writer held:
                // the next one starts the WAL over, and
                // `journal_size_limit` trims the file back to the bound.
                let Some(i) = inner.upgrade() else { return };
                let _writer = i.writer.lock();
                done = passive_checkpoint(&conn);
            }
            match done {
                Ok(all) => pending = !all,
                Err(e) => tracing::debug!(error = %e, "background checkpoint failed; will retry"),
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("tm-checkpoint".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "cannot start the checkpoint thread; the WAL grows until close");
    }
}

/// The WAL size past which a checkpoint that falls behind the commits
/// finishes with them held back (and the size it is trimmed to).
const WAL_BOUND: u64 = 64 << 20;

#[cfg(test)]
thread_local! {
    /// A smaller [`WAL_BOUND`] for stores opened on this thread (tests).
    pub(super) static TEST_WAL_BOUND: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
}

fn wal_bound() -> u64 {
    #[cfg(test)]
    if let Some(b) = TEST_WAL_BOUND.with(|c| c.get()) {
        return b;
    }
    WAL_BOUND
}

/// One passive checkpoint: whether it copied every frame (a reader's
/// snapshot can hold frames back, which the next tick copies). The pragma
/// answers (busy, frames in the WAL, frames copied).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(r.get::<_, i64>(1)? == r.get::<_, i64>(2)?)
    })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Whether to checkpoint now: something is left to copy, and the WAL was
/// left alone for a tick or the last checkpoint is [`CHECKPOINT_MAX_GAP`]
/// old.
fn checkpoint_due(pending: bool, writing: bool, since_last: Duration) -> bool {
    pending && (!writing || since_last >= CHECKPOINT_MAX_GAP)
}

/// Connection settings. `cache_kib` is the page cache per connection: the
/// writer gets more, each reader less. No mmap: every connection would map
/// the file again, and the process would look (and be accounted) many times
/// its real size.
fn pragmas(conn: &Connection, cache_kib: u32) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -{cache_kib}; PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;"
    ))?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, taking the data
    /// directory lock for `role`.
    pub fn open(dir: &Path, role: &str) -> Result<Self, StoreError> {
        let lock = DataDirLock::acquire(dir, role)?;
        Self::open_with_lock(dir, Some(lock))
    }

    /// Opens the store under a lock the caller already holds (or none, for
    /// a private copy such as a backup being verified).
    ///
    /// With a lock, `dir` is a data directory (see [`crate::layout`]): a
    /// fresh one gets its first generation. Without, the database lives
    /// directly in `dir`.
    pub fn open_with_lock(dir: &Path, lock: Option<DataDirLock>) -> Result<Self, StoreError> {
        configure_sqlite();
        let path = crate::layout::resolve_for_open(dir, lock.is_some())?.join(DB_FILE);
        let writer = Connection::open(&path).map_err(|e| StoreError::DataDir {
            path: dir.display().to_string(),
            detail: format!("cannot open {}: {e}", path.display()),
        })?;
        pragmas(&writer, 65_536)?;
        let is_new = !writer
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tm_meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| {
                StoreError::Format(format!("{} is not a Tidemark store: {e}", path.display()))
            })?;
        writer.execute_batch(INTERNAL_DDL)?;
        writer.execute_batch(lww::DDL)?;
        if is_new {
            let tx = writer.unchecked_transaction()?;
            meta_set(&tx, "format", &FORMAT_VERSION.to_string())?;
            meta_set(&tx, "epoch", "1")?;
            meta_set(&tx, "seq", "0")?;
            let schema = Schema::default_schema();
            meta_set(&tx, "schema_version", &schema.version.to_string())?;
            for (name, t) in &schema.tables {
                catalog::create_table(&tx, name, t)?;
            }
            super::schema_registry::record_initial(&tx, &schema)?;
            tx.commit()?;
        }
        let format = meta_u64(&writer, "format")?;
        if format != FORMAT_VERSION {
            return Err(StoreError::Format(format!(
                "{} has store format {format}, this build reads format {FORMAT_VERSION}; use a matching tidemark version",
                path.display()
            )));
        }
        // Only a store of this format is changed.
        add_missing_columns(&writer)?;
        writer.execute(crate::apply::PRUNED_BACKFILL, [])?;
        let schema = catalog::load(&writer, meta_u64(&writer, "schema_version")?)?;
        let epoch = meta_u64(&writer, "epoch")?;
        let seq = meta_u64(&writer, "seq")?;
        let flag_rows: i64 = writer.query_row("SELECT count(*) FROM tm_flags", [], |r| r.get(0))?;
        let recovering = meta_get(&writer, "recovery_state")?.as_deref() == Some("recovering");
        let readers = (0..8)
            .map(|_| {
                let c = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                pragmas(&c, 16_384)?;
                c.execute_batch("PRAGMA query_only = 1")?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Checkpoints run in the background (below), not inside commits.
        let wal_bound = wal_bound();
        writer.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {wal_bound}"
        ))?;
        let store = Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                db_path: path,
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                catalog: RwLock::new(Arc::new(Catalog::new(schema))),
                epoch: AtomicU64::new(epoch),
                seq: AtomicU64::new(seq),
                flag_rows: AtomicU64::new(flag_rows as u64),
                recovering: AtomicBool::new(recovering),
                closed: AtomicBool::new(false),
                _lock: lock,
            }),
        };
        spawn_checkpointer(
            Arc::downgrade(&store.inner),
            store.inner.db_path.clone(),
            wal_bound,
        );
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_waits_for_a_pause_or_the_longest_gap() {
        let tick = CHECKPOINT_TICK;
        // Nothing written since the last one: nothing to do.
        assert!(!checkpoint_due(false, false, CHECKPOINT_MAX_GAP * 2));
        // Writes paused: copy now.
        assert!(checkpoint_due(true, false, tick));
        // A burst goes on: not every tick, but at the latest after the gap.
        assert!(!checkpoint_due(true, true, tick));
        assert!(checkpoint_due(true, true, CHECKPOINT_MAX_GAP));
    }
}
