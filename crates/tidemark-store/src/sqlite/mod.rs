//! The embedded engine: one SQLite database in WAL mode.
//!
//! One writer connection applies batches in `BEGIN IMMEDIATE` transactions
//! with `synchronous=FULL`, so a batch is durable before it is acknowledged.
//! A small pool of reader connections serves point reads; in WAL mode they
//! never wait on the writer.

mod catalog;
mod lww;
mod values;

use crate::apply::validate_batch;
use crate::lock::DataDirLock;
use crate::store::{
    ApplyOutcome, Change, Flag, FlagEntry, FlagsAdded, Lookup, ProcessInfo, RecoveryMeta,
    SnapshotInfo, Store, StoreMeta,
};
use crate::StoreError;
use async_trait::async_trait;
use catalog::{Catalog, TableSql};
use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tidemark_api::{Fields, Op, Order, OrderResult, Record, RecoveryState, Schema, Version};

/// The database file inside a data directory.
pub const DB_FILE: &str = "tidemark.db";
/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const INTERNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS tm_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_tables (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_columns (tbl TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, ordinal INTEGER NOT NULL, PRIMARY KEY (tbl, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_changes (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL, fields TEXT, source TEXT NOT NULL, source_seq INTEGER NOT NULL, digest TEXT NOT NULL, cleared INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS tm_changes_by_source ON tm_changes (source, source_seq);
CREATE TABLE IF NOT EXISTS tm_sources (source TEXT PRIMARY KEY NOT NULL, high_water INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_tombstones (tbl TEXT NOT NULL, key TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_flags (tbl TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, through_seq INTEGER NOT NULL, PRIMARY KEY (tbl, key, source)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tm_recovery_sources (source TEXT PRIMARY KEY NOT NULL, final INTEGER NOT NULL, waived INTEGER NOT NULL) WITHOUT ROWID;
";

/// The SQLite engine. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// The running state of a group transaction, rolled back per batch.
struct GroupState {
    epoch: u64,
    seq: u64,
    check_flags: bool,
    strict: bool,
    flags_cleared: u64,
    /// Source to (high-water mark, changed in this group).
    high_water: HashMap<String, (u64, bool)>,
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

/// Page cache per connection, in KiB: the writer gets more, each reader
/// less. No mmap: every connection would map the file again, and the
/// process would look (and be accounted) many times its real size.
/// Copies the WAL back into the database file every 200 ms with passive
/// checkpoints from a connection of its own: readers and writers never wait
/// for it, and commits never pay for a checkpoint. Ends when the store is
/// closed or dropped.
fn spawn_checkpointer(inner: std::sync::Weak<Inner>, path: PathBuf) {
    let run = move || {
        let Ok(conn) = Connection::open(&path) else {
            return;
        };
        let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            match inner.upgrade() {
                Some(i) if !i.closed.load(Ordering::SeqCst) => {}
                _ => return,
            }
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                tracing::debug!(error = %e, "background checkpoint failed; will retry");
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

fn pragmas(conn: &Connection, cache_kib: u32) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -{cache_kib}; PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;"
    ))?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
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

/// Recovery sources matching a fixed condition, by name.
fn sources_where(conn: &Connection, condition: &'static str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT source FROM tm_recovery_sources WHERE {condition} ORDER BY source"
    ))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
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
            tx.commit()?;
        }
        let format = meta_u64(&writer, "format")?;
        if format != FORMAT_VERSION {
            return Err(StoreError::Format(format!(
                "{} has store format {format}, this build reads format {FORMAT_VERSION}; use a matching tidemark version",
                path.display()
            )));
        }
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
        writer.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
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
        spawn_checkpointer(Arc::downgrade(&store.inner), store.inner.db_path.clone());
        Ok(store)
    }

    /// The database file in use.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    fn snapshot_blocking(&self, dest: &Path) -> Result<SnapshotInfo, StoreError> {
        let fail = |detail: String| StoreError::DataDir {
            path: dest.display().to_string(),
            detail,
        };
        if dest.exists() {
            return Err(fail("the snapshot file already exists; remove it".into()));
        }
        let src = Connection::open_with_flags(
            &self.inner.db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        src.execute_batch("PRAGMA query_only = 1")?;
        let mut dst = Connection::open(dest)
            .map_err(|e| fail(format!("cannot create the snapshot file: {e}")))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // One step copies every page inside one read transaction: a
            // consistent point, and in WAL mode writers go on meanwhile.
            let mut tries = 0;
            loop {
                match backup.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    _ if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => {
                        return Err(StoreError::Engine(format!(
                            "the snapshot could not complete ({other:?}); retry"
                        )))
                    }
                }
            }
        }
        // A self-contained file: no -wal beside it.
        dst.execute_batch("PRAGMA journal_mode = DELETE;")?;
        drop(dst);
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(format!("cannot fsync the snapshot: {e}")))?;
        inspect_snapshot(dest)
    }

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

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Engine(format!("store task failed: {e}")))?
    }

    fn read_record(
        conn: &Connection,
        t: &TableSql,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        let mut stmt = conn.prepare_cached(&t.select)?;
        let mut rows = stmt.query(params![key])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let epoch: i64 = row.get(0)?;
        let seq: i64 = row.get(1)?;
        let mut fields = Fields::new();
        for (i, c) in t.columns.iter().enumerate() {
            let v = values::from_sql(c.ty, row.get_ref(i + 2)?).map_err(|e| {
                StoreError::Format(format!("column {} of key {key:?}: {e}", c.name))
            })?;
            fields.insert(c.name.clone(), v);
        }
        Ok(Some(Record {
            fields,
            version: Version::new(epoch as u64, seq as u64),
        }))
    }

    /// Applies several batches in one transaction (one durable commit, so
    /// concurrent requests share one fsync). Each batch runs under its own
    /// savepoint: a refused batch is rolled back alone and the others
    /// stand, so every batch stays all-or-nothing.
    fn apply_group_blocking(
        &self,
        batches: Vec<Vec<Order>>,
    ) -> Vec<Result<ApplyOutcome, StoreError>> {
        let catalog = self.catalog();
        let mut out: Vec<Option<Result<ApplyOutcome, StoreError>>> = batches
            .iter()
            .map(|b| validate_batch(&catalog.schema, b).err().map(Err))
            .collect();
        let mut conn = self.inner.writer.lock();
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                return out
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(StoreError::Engine(msg.clone()))))
                    .collect();
            }
        };
        let mut st = GroupState {
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            seq: self.inner.seq.load(Ordering::SeqCst),
            check_flags: self.inner.flag_rows.load(Ordering::SeqCst) > 0,
            strict: self.inner.recovering.load(Ordering::SeqCst),
            flags_cleared: 0,
            high_water: HashMap::new(),
        };
        // A savepoint makes SQLite journal every statement (a quarter of the
        // apply time in a profile), so it is used only when batches share
        // the transaction; a lone batch that fails rolls the whole of it back.
        let pending = out.iter().filter(|r| r.is_none()).count();
        if pending == 1 {
            let i = out.iter().position(|r| r.is_none()).unwrap_or(0);
            match Self::apply_in_tx(&catalog, &tx, &batches[i], &mut st) {
                Ok(outcome) => out[i] = Some(Ok(outcome)),
                Err(e) => {
                    drop(tx); // rolls back
                    out[i] = Some(Err(e));
                    return out
                        .into_iter()
                        .map(|r| {
                            r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into())))
                        })
                        .collect();
                }
            }
        }
        for (i, orders) in batches.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let saved = (st.seq, st.flags_cleared, st.high_water.clone());
            let result = tx
                .execute_batch("SAVEPOINT batch")
                .map_err(StoreError::from)
                .and_then(|_| Self::apply_in_tx(&catalog, &tx, orders, &mut st));
            let result = match result {
                Ok(outcome) => tx
                    .execute_batch("RELEASE batch")
                    .map(|_| outcome)
                    .map_err(StoreError::from),
                Err(e) => {
                    let _ = tx.execute_batch("ROLLBACK TO batch; RELEASE batch");
                    (st.seq, st.flags_cleared, st.high_water) = saved;
                    Err(e)
                }
            };
            out[i] = Some(result);
        }
        let finish = (|| {
            for (source, (hw, dirty)) in &st.high_water {
                if *dirty {
                    tx.prepare_cached(
                        "INSERT INTO tm_sources (source, high_water) VALUES (?1, ?2) ON CONFLICT(source) DO UPDATE SET high_water = excluded.high_water",
                    )?
                    .execute(params![source, *hw as i64])?;
                }
            }
            meta_set(&tx, "seq", &st.seq.to_string())?;
            tx.commit()?;
            Ok::<(), StoreError>(())
        })();
        if let Err(e) = finish {
            // Nothing of the group is durable: every batch failed.
            let msg = e.to_string();
            return out
                .into_iter()
                .map(|r| match r {
                    Some(Err(e)) => Err(e),
                    _ => Err(StoreError::Engine(format!("commit failed: {msg}"))),
                })
                .collect();
        }
        self.inner.seq.store(st.seq, Ordering::SeqCst);
        if st.flags_cleared > 0 {
            self.inner
                .flag_rows
                .fetch_sub(st.flags_cleared, Ordering::SeqCst);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into()))))
            .collect()
    }

    /// One batch inside the group transaction.
    fn apply_in_tx(
        catalog: &Catalog,
        tx: &Connection,
        orders: &[Order],
        st: &mut GroupState,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut results = Vec::with_capacity(orders.len());
        let mut changes = Vec::with_capacity(orders.len());
        for (index, order) in orders.iter().enumerate() {
            let hw = match st.high_water.get(&order.source) {
                Some((hw, _)) => *hw,
                None => {
                    let hw: Option<i64> = tx
                        .prepare_cached("SELECT high_water FROM tm_sources WHERE source = ?1")?
                        .query_row(params![order.source], |r| r.get(0))
                        .optional()?;
                    let hw = hw.unwrap_or(0) as u64;
                    st.high_water.insert(order.source.clone(), (hw, false));
                    hw
                }
            };
            let digest = order.digest();
            if order.seq <= hw {
                results.push(Self::duplicate(tx, index, order, &digest, hw)?);
                continue;
            }
            if st.strict && order.seq != hw + 1 {
                return Err(StoreError::Gap {
                    index,
                    source_name: order.source.clone(),
                    seq: order.seq,
                    expected: hw + 1,
                });
            }
            st.seq += 1;
            let seq = st.seq;
            let version = Version::new(st.epoch, seq);
            let t = &catalog.tables[&order.table];
            let fields = match order.op {
                // While recovering, replays and live orders interleave: the
                // last writer by logical version wins, field by field.
                _ if st.strict => lww::apply(tx, t, order, version)?,
                Op::Upsert => Some(Self::upsert(tx, t, order, version)?),
                Op::Delete => {
                    let removed = tx.prepare_cached(&t.delete)?.execute(params![order.key])?;
                    if removed > 0 {
                        tx.prepare_cached(
                            "INSERT INTO tm_tombstones (tbl, key, epoch, seq) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
                        )?
                        .execute(params![order.table, order.key, st.epoch as i64, seq as i64])?;
                    }
                    None
                }
            };
            let (cleared, flagged) = if st.check_flags {
                let n = tx
                    .prepare_cached("DELETE FROM tm_flags WHERE tbl = ?1 AND key = ?2 AND source = ?3 AND through_seq <= ?4")?
                    .execute(params![order.table, order.key, order.source, order.seq as i64])?;
                st.flags_cleared += n as u64;
                let left: i64 = tx
                    .prepare_cached("SELECT count(*) FROM tm_flags WHERE tbl = ?1 AND key = ?2")?
                    .query_row(params![order.table, order.key], |r| r.get(0))?;
                (n > 0 && left == 0, left > 0)
            } else {
                (false, false)
            };
            let fields_text = fields.as_ref().map(serde_json::to_string).transpose()?;
            tx.prepare_cached(
                "INSERT INTO tm_changes (seq, epoch, tbl, key, fields, source, source_seq, digest, cleared) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                seq as i64,
                st.epoch as i64,
                order.table,
                order.key,
                fields_text,
                order.source,
                order.seq as i64,
                digest,
                cleared
            ])?;
            st.high_water
                .insert(order.source.clone(), (order.seq, true));
            results.push(OrderResult {
                source: order.source.clone(),
                seq: order.seq,
                version: Some(version),
                duplicate: false,
            });
            changes.push(Change {
                table: order.table.clone(),
                key: order.key.clone(),
                fields,
                version,
                cleared_flag: cleared,
                flagged,
            });
        }
        Ok(ApplyOutcome { results, changes })
    }

    fn upsert(
        conn: &Connection,
        t: &TableSql,
        order: &Order,
        version: Version,
    ) -> Result<Fields, StoreError> {
        // Parameters in column order, matching the SQL for this column set.
        // Validation guarantees every field names a column.
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(order.fields.len() + 3);
        args.push(order.key.clone().into());
        args.push((version.epoch as i64).into());
        args.push((version.seq as i64).into());
        let mut mask = 0u128;
        let mut names = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            if let Some(v) = order.fields.get(&c.name) {
                if i < 128 {
                    mask |= 1u128 << i;
                }
                names.push(c.name.as_str());
                args.push(values::to_sql(c.ty, v));
            }
        }
        let sql: std::sync::Arc<str> = if t.columns.len() <= 128 {
            t.upsert_for(mask)
        } else {
            t.upsert(&names).into()
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let row = rows
            .next()?
            .ok_or_else(|| StoreError::Engine("upsert returned no row".into()))?;
        let mut fields = Fields::new();
        for (i, c) in t.columns.iter().enumerate() {
            let v = values::from_sql(c.ty, row.get_ref(i)?).map_err(StoreError::Format)?;
            fields.insert(c.name.clone(), v);
        }
        // A tombstone left behind is harmless: it is read only while the key
        // is missing, and the next delete overwrites it.
        Ok(fields)
    }

    /// An order at or below its source's high-water mark: acknowledge it if
    /// it is the same order, refuse it otherwise.
    fn duplicate(
        conn: &Connection,
        index: usize,
        order: &Order,
        digest: &str,
        hw: u64,
    ) -> Result<OrderResult, StoreError> {
        let seen: Option<(i64, i64, String)> = conn
            .prepare_cached(
                "SELECT seq, epoch, digest FROM tm_changes WHERE source = ?1 AND source_seq = ?2",
            )?
            .query_row(params![order.source, order.seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        match seen {
            Some((seq, epoch, d)) if d == digest => Ok(OrderResult {
                source: order.source.clone(),
                seq: order.seq,
                version: Some(Version::new(epoch as u64, seq as u64)),
                duplicate: true,
            }),
            Some(_) => Err(StoreError::Conflict {
                index,
                source_name: order.source.clone(),
                seq: order.seq,
                high_water: hw,
            }),
            None => {
                let oldest: Option<i64> = conn
                    .prepare_cached("SELECT min(source_seq) FROM tm_changes WHERE source = ?1")?
                    .query_row(params![order.source], |r| r.get(0))?;
                match oldest {
                    // Below what the log still holds: applied long ago, pruned since.
                    Some(o) if (order.seq as i64) < o => Ok(OrderResult {
                        source: order.source.clone(),
                        seq: order.seq,
                        version: None,
                        duplicate: true,
                    }),
                    None => Ok(OrderResult {
                        source: order.source.clone(),
                        seq: order.seq,
                        version: None,
                        duplicate: true,
                    }),
                    Some(_) => Err(StoreError::OutOfOrder {
                        index,
                        source_name: order.source.clone(),
                        seq: order.seq,
                        high_water: hw,
                    }),
                }
            }
        }
    }

    fn meta_blocking(&self) -> Result<StoreMeta, StoreError> {
        let seq = self.inner.seq.load(Ordering::SeqCst);
        let floor: Option<i64> = self.with_reader(|c| {
            Ok(c.query_row("SELECT min(seq) FROM tm_changes", [], |r| r.get(0))?)
        })?;
        Ok(StoreMeta {
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            seq,
            schema_version: self.catalog().schema.version,
            log_floor: floor.map(|f| f as u64).unwrap_or(seq + 1),
        })
    }
}

/// Checks a snapshot file (a backup's database, decoded) without opening it
/// as a store: SQLite's integrity check, the format, and what it holds.
pub fn inspect_snapshot(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let bad = |e: &dyn std::fmt::Display| {
        StoreError::Format(format!(
            "{} is not a readable Tidemark snapshot: {e}",
            path.display()
        ))
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| bad(&e))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| bad(&e))?;
    if check != "ok" {
        return Err(bad(&format!("integrity check failed: {check}")));
    }
    let has_meta: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('tm_meta', 'tm_sources')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| bad(&e))?;
    if has_meta != 2 {
        return Err(bad(&"it has no Tidemark tables"));
    }
    let store_format = meta_u64(&conn, "format")?;
    if store_format != FORMAT_VERSION {
        return Err(StoreError::Format(format!(
            "{} has store format {store_format}, this build reads format {FORMAT_VERSION}; use a matching tidemark version",
            path.display()
        )));
    }
    let mut stmt = conn.prepare("SELECT source, high_water FROM tm_sources")?;
    let high_water = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let process = match meta_get(&conn, "process")? {
        Some(text) => Some(serde_json::from_str(&text)?),
        None => None,
    };
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(SnapshotInfo {
        store_format,
        epoch: meta_u64(&conn, "epoch")?,
        seq: meta_u64(&conn, "seq")?,
        schema_version: meta_u64(&conn, "schema_version")?,
        high_water,
        process,
        bytes,
    })
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
        self.meta_blocking()
    }

    async fn get(&self, table: &str, key: &str) -> Result<Lookup, StoreError> {
        let catalog = self.catalog();
        catalog
            .schema
            .table(table)
            .map_err(|e| StoreError::Input(Box::new(e)))?;
        tidemark_api::schema::validate_key(key).map_err(|e| StoreError::Input(Box::new(e)))?;
        let t = &catalog.tables[table];
        // Point reads are a few microseconds; they run inline rather than
        // paying for a blocking-pool hop.
        self.with_reader(|c| {
            let record = Self::read_record(c, t, key)?;
            let tombstone = if record.is_none() {
                c.prepare_cached(
                    "SELECT epoch, seq FROM tm_tombstones WHERE tbl = ?1 AND key = ?2",
                )?
                .query_row(params![table, key], |r| {
                    Ok(Version::new(
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                    ))
                })
                .optional()?
            } else {
                None
            };
            let flagged = self.inner.flag_rows.load(Ordering::SeqCst) > 0
                && c.prepare_cached("SELECT 1 FROM tm_flags WHERE tbl = ?1 AND key = ?2 LIMIT 1")?
                    .query_row(params![table, key], |_| Ok(()))
                    .optional()?
                    .is_some();
            Ok(Lookup {
                record,
                tombstone,
                flagged,
            })
        })
    }

    async fn apply(&self, orders: Vec<Order>) -> Result<ApplyOutcome, StoreError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Engine(
                "the store is closed (server shutting down); retry on the restarted server".into(),
            ));
        }
        let mut out = self.apply_group(vec![orders]).await;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Engine("no result".into())))
    }

    async fn apply_group(&self, batches: Vec<Vec<Order>>) -> Vec<Result<ApplyOutcome, StoreError>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return batches
                .iter()
                .map(|_| {
                    Err(StoreError::Engine(
                        "the store is closed (server shutting down); retry on the restarted server"
                            .into(),
                    ))
                })
                .collect();
        }
        let n = batches.len();
        match self
            .blocking(move |s| Ok(s.apply_group_blocking(batches)))
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let msg = e.to_string();
                (0..n)
                    .map(|_| Err(StoreError::Engine(msg.clone())))
                    .collect()
            }
        }
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.blocking(move |s| {
            s.with_reader(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, epoch, tbl, key, fields, cleared FROM tm_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, bool>(5)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, epoch, table, key, fields, cleared) = row?;
                    let fields = match fields {
                        Some(text) => match serde_json::from_str(&text)? {
                            serde_json::Value::Object(m) => Some(m),
                            _ => return Err(StoreError::Format(format!("change {seq} holds non-object fields"))),
                        },
                        None => None,
                    };
                    out.push(Change { table, key, fields, version: Version::new(epoch as u64, seq as u64), cleared_flag: cleared, flagged: false });
                }
                Ok(out)
            })
        })
        .await
    }

    async fn high_water_marks(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT source, high_water FROM tm_sources")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
    }

    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
        self.blocking(move |s| {
            let conn = s.inner.writer.lock();
            let seq = s.inner.seq.load(Ordering::SeqCst);
            let n = conn.execute(
                "DELETE FROM tm_changes WHERE seq <= ?1",
                params![seq.saturating_sub(keep) as i64],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn mark_restored(&self, new_epoch: u64) -> Result<(), StoreError> {
        self.blocking(move |s| {
            let mut conn = s.inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            meta_set(&tx, "epoch", &new_epoch.to_string())?;
            meta_set(&tx, "recovery_state", "recovering")?;
            meta_set(&tx, "schedule_final", "0")?;
            meta_set(&tx, "recovery_started_at", &chrono::Utc::now().to_rfc3339())?;
            meta_set(&tx, "complete_requested", "0")?;
            lww::clear(&tx)?;
            // Every source with applied orders at the backup point must send
            // its final schedule chunk (or be waived) before the blanket lifts.
            tx.execute("DELETE FROM tm_recovery_sources", [])?;
            tx.execute(
                "INSERT INTO tm_recovery_sources (source, final, waived) SELECT source, 0, 0 FROM tm_sources WHERE high_water > 0",
                [],
            )?;
            // Flags the backup held stay: their orders are after its high-water mark.
            let rows: i64 = tx.query_row("SELECT count(*) FROM tm_flags", [], |r| r.get(0))?;
            meta_set(&tx, "recovery_flagged", &rows.to_string())?;
            tx.commit()?;
            s.inner.epoch.store(new_epoch, Ordering::SeqCst);
            s.inner.recovering.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
    }

    async fn recovery_meta(&self) -> Result<RecoveryMeta, StoreError> {
        self.with_reader(|c| {
            let state = match meta_get(c, "recovery_state")?.as_deref() {
                None | Some("normal") => RecoveryState::Normal,
                Some("recovering") => RecoveryState::Recovering,
                Some("recovered") => RecoveryState::Recovered,
                Some(other) => {
                    return Err(StoreError::Format(format!(
                        "unknown recovery state {other:?} in tm_meta"
                    )))
                }
            };
            Ok(RecoveryMeta {
                state,
                schedule_final: meta_u64(c, "schedule_final")? == 1,
                complete_requested: meta_u64(c, "complete_requested")? == 1,
                started_at: meta_get(c, "recovery_started_at")?,
                flagged_total: meta_u64(c, "recovery_flagged")?,
                remaining: self.inner.flag_rows.load(Ordering::SeqCst),
                waiting_for_sources: sources_where(c, "final = 0 AND waived = 0")?,
                waived_sources: sources_where(c, "waived = 1")?,
            })
        })
    }

    async fn add_flags(
        &self,
        source: &str,
        entries: Vec<FlagEntry>,
        final_chunk: bool,
        without: Vec<String>,
    ) -> Result<FlagsAdded, StoreError> {
        let catalog = self.catalog();
        if source.is_empty() || source.len() > 128 {
            return Err(StoreError::BadSchedule(format!(
                "source must be 1 to 128 bytes, got {}; name the OpS source whose orders the list covers",
                source.len()
            )));
        }
        for (i, e) in entries.iter().enumerate() {
            catalog
                .schema
                .table(&e.table)
                .map_err(|err| StoreError::Input(Box::new(err)))?;
            tidemark_api::schema::validate_key(&e.key)
                .map_err(|err| StoreError::Input(Box::new(err)))?;
            if e.through_seq == 0 {
                return Err(StoreError::BadSchedule(format!(
                    "entry {i}: through_seq must be 1 or more"
                )));
            }
        }
        let source = source.to_owned();
        self.blocking(move |s| {
            let mut conn = s.inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if meta_get(&tx, "recovery_state")?.as_deref() != Some("recovering") {
                return Err(StoreError::NotRecovering);
            }
            let hw: u64 = tx
                .query_row("SELECT high_water FROM tm_sources WHERE source = ?1", params![source], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64;
            let mut added = FlagsAdded::default();
            let mut dropped = 0u64;
            {
                let mut insert =
                    tx.prepare_cached("INSERT OR IGNORE INTO tm_flags (tbl, key, source, through_seq) VALUES (?1, ?2, ?3, ?4)")?;
                let mut raise = tx.prepare_cached(
                    "UPDATE tm_flags SET through_seq = ?4 WHERE tbl = ?1 AND key = ?2 AND source = ?3 AND through_seq < ?4",
                )?;
                for e in &entries {
                    if e.through_seq <= hw {
                        added.skipped += 1;
                        continue;
                    }
                    let args = params![e.table, e.key, source, e.through_seq as i64];
                    if insert.execute(args)? == 1 {
                        added.flagged += 1;
                    } else {
                        raise.execute(args)?;
                    }
                }
            }
            let total = meta_u64(&tx, "recovery_flagged")? + added.flagged;
            meta_set(&tx, "recovery_flagged", &total.to_string())?;
            if final_chunk {
                for w in &without {
                    let known = tx
                        .execute("UPDATE tm_recovery_sources SET waived = 1 WHERE source = ?1", params![w])?;
                    if known == 0 {
                        return Err(StoreError::BadSchedule(format!(
                            "source '{w}' had no applied orders in the restored data, so there is nothing to waive; remove it from without_sources"
                        )));
                    }
                    // No replay will come for a waived source: its flags could never clear.
                    dropped += tx.execute("DELETE FROM tm_flags WHERE source = ?1", params![w])? as u64;
                }
                tx.execute(
                    "INSERT INTO tm_recovery_sources (source, final, waived) VALUES (?1, 1, 0) ON CONFLICT(source) DO UPDATE SET final = 1",
                    params![source],
                )?;
                let waiting: i64 = tx.query_row(
                    "SELECT count(*) FROM tm_recovery_sources WHERE final = 0 AND waived = 0",
                    [],
                    |r| r.get(0),
                )?;
                if waiting == 0 {
                    meta_set(&tx, "schedule_final", "1")?;
                }
            }
            tx.commit()?;
            s.inner.flag_rows.fetch_add(added.flagged, Ordering::SeqCst);
            s.inner.flag_rows.fetch_sub(dropped, Ordering::SeqCst);
            Ok(added)
        })
        .await
    }

    async fn set_recovery_state(
        &self,
        state: RecoveryState,
        complete_requested: bool,
    ) -> Result<RecoveryMeta, StoreError> {
        self.blocking(move |s| {
            let mut conn = s.inner.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let name = match state {
                RecoveryState::Normal => "normal",
                RecoveryState::Recovering => "recovering",
                RecoveryState::Recovered => "recovered",
            };
            meta_set(&tx, "recovery_state", name)?;
            meta_set(
                &tx,
                "complete_requested",
                if complete_requested { "1" } else { "0" },
            )?;
            if state != RecoveryState::Recovering {
                lww::clear(&tx)?;
            }
            tx.commit()?;
            s.inner
                .recovering
                .store(state == RecoveryState::Recovering, Ordering::SeqCst);
            Ok(())
        })
        .await?;
        self.recovery_meta().await
    }

    async fn list_flags(&self, limit: usize) -> Result<Vec<Flag>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT f.tbl, f.key, f.source, f.through_seq, coalesce(s.high_water, 0) FROM tm_flags f LEFT JOIN tm_sources s ON s.source = f.source ORDER BY f.tbl, f.key, f.source LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(Flag {
                    table: r.get(0)?,
                    key: r.get(1)?,
                    source: r.get(2)?,
                    through_seq: r.get::<_, i64>(3)? as u64,
                    high_water: r.get::<_, i64>(4)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    async fn clear_flags(&self) -> Result<u64, StoreError> {
        self.blocking(|s| {
            let conn = s.inner.writer.lock();
            let n = conn.execute("DELETE FROM tm_flags", [])?;
            s.inner.flag_rows.store(0, Ordering::SeqCst);
            Ok(n as u64)
        })
        .await
    }

    async fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        let path = path.to_owned();
        self.blocking(move |s| s.snapshot_blocking(&path)).await
    }

    async fn record_process(&self, info: &ProcessInfo) -> Result<(), StoreError> {
        let text = serde_json::to_string(info)?;
        self.blocking(move |s| s.with_writer(|c| meta_set(c, "process", &text)))
            .await
    }

    async fn set_note(&self, name: &str, value: Option<String>) -> Result<(), StoreError> {
        let name = format!("note.{name}");
        self.blocking(move |s| {
            s.with_writer(|c| match &value {
                Some(v) => meta_set(c, &name, v),
                None => {
                    c.execute("DELETE FROM tm_meta WHERE name = ?1", params![name])?;
                    Ok(())
                }
            })
        })
        .await
    }

    async fn note(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with_reader(|c| meta_get(c, &format!("note.{name}")))
    }

    async fn needs_cleanup(&self) -> Result<bool, StoreError> {
        self.with_reader(|c| Ok(meta_get(c, "needs_cleanup")?.as_deref() == Some("1")))
    }

    async fn mark_needs_cleanup(&self) -> Result<(), StoreError> {
        self.blocking(|s| s.with_writer(|c| meta_set(c, "needs_cleanup", "1")))
            .await
    }

    async fn cleanup_process_info(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|s| {
            s.with_writer(|c| {
                let mut stmt = c.prepare(
                    "SELECT name FROM tm_meta WHERE name = 'process' OR name LIKE 'quiesce%' OR name LIKE 'note.quiesce%' ORDER BY name",
                )?;
                let names = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                c.execute(
                    "DELETE FROM tm_meta WHERE name = 'process' OR name LIKE 'quiesce%' OR name LIKE 'note.quiesce%'",
                    [],
                )?;
                meta_set(c, "needs_cleanup", "0")?;
                Ok(names)
            })
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.blocking(|s| {
            let conn = s.inner.writer.lock();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        crate::testsuite::run(&store).await;
    }

    #[tokio::test]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), "test").unwrap();
            crate::testsuite::load_some(&store).await;
            store.close().await.unwrap();
        }
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        crate::testsuite::check_some(&store).await;
    }

    #[test]
    fn a_locked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteStore::open(dir.path(), "server").unwrap();
        let err = SqliteStore::open(dir.path(), "server").unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_snapshot_holds_everything_and_cleanup_normalises_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("data"), "test").unwrap();
        crate::testsuite::load_some(&store).await;
        let info = ProcessInfo {
            pid: 7,
            boot: "b".into(),
            started_at: "now".into(),
            listen: "x".into(),
        };
        store.record_process(&info).await.unwrap();
        let snap = dir.path().join("snap.db");
        let got = store.snapshot_to(&snap).await.unwrap();
        let meta = store.meta().await.unwrap();
        assert_eq!(got.seq, meta.seq);
        assert_eq!(got.epoch, meta.epoch);
        assert_eq!(got.high_water, store.high_water_marks().await.unwrap());
        assert_eq!(got.process, Some(serde_json::to_value(&info).unwrap()));
        assert!(store.snapshot_to(&snap).await.is_err(), "never overwrites");

        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::copy(&snap, private.join(DB_FILE)).unwrap();
        let copy = SqliteStore::open_with_lock(&private, None).unwrap();
        crate::testsuite::check_some(&copy).await;
        copy.mark_needs_cleanup().await.unwrap();
        assert!(copy.needs_cleanup().await.unwrap());
        assert_eq!(copy.cleanup_process_info().await.unwrap(), vec!["process"]);
        assert!(!copy.needs_cleanup().await.unwrap());
        assert!(!private.join(crate::layout::CURRENT).exists());
    }

    /// Every row of every table, as text, for comparing two databases.
    fn dump(path: &Path) -> BTreeMap<String, Vec<String>> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.sort();
        let mut out = BTreeMap::new();
        for t in tables {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.sort();
            out.insert(t, rows);
        }
        out
    }

    #[tokio::test]
    async fn a_snapshot_equals_its_source_in_every_table_flags_included() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("data"), "test").unwrap();
        crate::testsuite::load_some(&store).await;
        {
            let w = store.inner.writer.lock();
            w.execute(
                "INSERT INTO tm_flags (tbl, key, source, through_seq) VALUES ('subscriber', 'k', 'ops-1', 9)",
                [],
            )
            .unwrap();
        }
        let snap = dir.path().join("snap.db");
        store.snapshot_to(&snap).await.unwrap();
        store.close().await.unwrap();
        let source = dump(store.db_path());
        assert!(source["tm_flags"].len() == 1 && !source["tm_changes"].is_empty());
        assert_eq!(dump(&snap), source);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DB_FILE),
            b"this is not a database, just text",
        )
        .unwrap();
        let err = SqliteStore::open(dir.path(), "server").unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Format(_) | StoreError::DataDir { .. } | StoreError::Engine(_)
            ),
            "{err}"
        );
    }
}
