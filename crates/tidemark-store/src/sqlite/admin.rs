//! Snapshots and administration: writing and inspecting snapshots, taking
//! a snapshot in as a private store, process information (B6), notes,
//! cleanup, and close.
//!
//! A snapshot is one self-contained SQLite file (no `-wal` beside it),
//! copied page by page inside one read transaction: a consistent point,
//! and writers go on meanwhile.

use super::{meta_get, meta_set, meta_u64, SqliteStore, DB_FILE, FORMAT_VERSION};
use crate::store::{ProcessInfo, SnapshotInfo};
use crate::StoreError;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

pub(super) async fn snapshot_to(s: &SqliteStore, path: &Path) -> Result<SnapshotInfo, StoreError> {
    let path = path.to_owned();
    s.blocking(move |s| snapshot_blocking(s, &path)).await
}

fn snapshot_blocking(s: &SqliteStore, dest: &Path) -> Result<SnapshotInfo, StoreError> {
    create_private(dest)?;
    // A failed snapshot leaves nothing behind: the file is its own.
    fill_snapshot(s, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(dest);
    })
}

/// Copies the store into `dest`, created empty by [`create_private`].
fn fill_snapshot(s: &SqliteStore, dest: &Path) -> Result<SnapshotInfo, StoreError> {
    let fail = |detail: String| StoreError::DataDir {
        path: dest.display().to_string(),
        detail,
    };
    let src = Connection::open_with_flags(
        &s.inner.db_path,
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

fn snapshot_error(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Format(format!(
        "{} is not a readable Tidemark snapshot: {e}",
        path.display()
    ))
}

fn open_snapshot(path: &Path) -> Result<Connection, StoreError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| snapshot_error(path, &e))
}

/// SQLite's full integrity check of a snapshot file: every page and index
/// (seconds per GB; `backup verify` runs it, restore trusts the BLAKE3 of
/// the bytes the backup wrote).
pub(crate) fn check_snapshot_integrity(path: &Path) -> Result<(), StoreError> {
    let conn = open_snapshot(path)?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| snapshot_error(path, &e))?;
    if check != "ok" {
        return Err(snapshot_error(
            path,
            &format!("integrity check failed: {check}"),
        ));
    }
    Ok(())
}

/// Checks a snapshot file (a backup's database, decoded) without opening it
/// as a store: its structure (a SQLite file exactly as long as its pages,
/// with Tidemark's tables), the format, and what it holds. Cheap: it reads
/// a few pages. [`check_snapshot_integrity`] reads them all.
pub(crate) fn inspect_snapshot(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let bad = |e: &dyn std::fmt::Display| snapshot_error(path, e);
    let conn = open_snapshot(path)?;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let pages = |pragma: &str| {
        conn.query_row(pragma, [], |r| r.get::<_, i64>(0))
            .map_err(|e| bad(&e))
    };
    let (page_size, page_count) = (pages("PRAGMA page_size")?, pages("PRAGMA page_count")?);
    if (page_size * page_count) as u64 != bytes {
        return Err(bad(&format!(
            "it is {bytes} bytes long, but its header says {page_count} pages of {page_size}"
        )));
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
    snapshot_info(&conn, bytes, &path.display().to_string())
}

/// What the database `conn` holds, as a snapshot of `bytes` bytes (read
/// from a snapshot file, or inside the transaction a stream reads):
/// refused unless it has this build's store format. `what` names it.
pub(super) fn snapshot_info(
    conn: &Connection,
    bytes: u64,
    what: &str,
) -> Result<SnapshotInfo, StoreError> {
    let store_format = meta_u64(conn, "format")?;
    if store_format != FORMAT_VERSION {
        return Err(StoreError::Format(format!(
            "{what} has store format {store_format}, this build reads format {FORMAT_VERSION}; use a matching tidemark version"
        )));
    }
    let mut stmt = conn.prepare("SELECT source, high_water FROM tm_sources")?;
    let high_water = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let process = match meta_get(conn, "process")? {
        Some(text) => Some(serde_json::from_str(&text)?),
        None => None,
    };
    Ok(SnapshotInfo {
        store_format,
        epoch: meta_u64(conn, "epoch")?,
        seq: meta_u64(conn, "seq")?,
        schema_version: meta_u64(conn, "schema_version")?,
        high_water,
        process,
        bytes,
        // The note is `ID MARK` (`tidemark-server/src/history.rs`).
        history: meta_get(conn, "note.history")?
            .and_then(|n| n.split_whitespace().next().map(str::to_owned)),
    })
}

/// Creates the empty snapshot file `path`, readable by its owner only
/// (0600; SQLite gives its journal the same mode): a snapshot holds every
/// record, and SQLite would create it 0644. Never over an existing file.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::DataDir {
            path: path.display().to_string(),
            detail: if e.kind() == std::io::ErrorKind::AlreadyExists {
                "the snapshot file already exists; remove it".into()
            } else {
                format!("cannot create the snapshot file: {e}")
            },
        })
}

/// Starts a snapshot file written by another engine: `path` gets the
/// internal tables and the tables of `schema` (recorded in its catalog),
/// all empty, for the caller to fill in one transaction. The file must not
/// exist.
pub(crate) fn create_snapshot_file(
    path: &Path,
    schema: &tidemark_api::Schema,
) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = Connection::open(path).map_err(|e| StoreError::DataDir {
        path: path.display().to_string(),
        detail: format!("cannot create the snapshot file: {e}"),
    })?;
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF;")?;
    conn.execute_batch(super::open::INTERNAL_DDL)?;
    conn.execute_batch(super::lww::DDL)?;
    for (name, t) in &schema.tables {
        super::catalog::create_table(&conn, name, t)?;
    }
    Ok(conn)
}

/// The schema a snapshot file holds.
pub(crate) fn snapshot_schema(conn: &Connection) -> Result<tidemark_api::Schema, StoreError> {
    super::catalog::load(conn, meta_u64(conn, "schema_version")?)
}

/// Takes the checked snapshot file `snapshot` in as the store of the
/// private directory `dir` (moving the file) and opens it, without a lock:
/// restore stages a generation this way.
pub(crate) fn load_snapshot(snapshot: &Path, dir: &Path) -> Result<SqliteStore, StoreError> {
    let db = dir.join(DB_FILE);
    if snapshot != db {
        std::fs::rename(snapshot, &db).map_err(|e| StoreError::DataDir {
            path: dir.display().to_string(),
            detail: format!("cannot move the snapshot {} in: {e}", snapshot.display()),
        })?;
    }
    SqliteStore::open_with_lock(dir, None)
}

pub(super) async fn record_process(s: &SqliteStore, info: &ProcessInfo) -> Result<(), StoreError> {
    let text = serde_json::to_string(info)?;
    s.blocking(move |s| s.with_writer(|c| meta_set(c, "process", &text)))
        .await
}

pub(super) async fn set_note(
    s: &SqliteStore,
    name: &str,
    value: Option<String>,
) -> Result<(), StoreError> {
    let name = format!("note.{name}");
    s.blocking(move |s| {
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

pub(super) fn note(s: &SqliteStore, name: &str) -> Result<Option<String>, StoreError> {
    s.with_reader(|c| meta_get(c, &format!("note.{name}")))
}

pub(super) fn needs_cleanup(s: &SqliteStore) -> Result<bool, StoreError> {
    s.with_reader(|c| Ok(meta_get(c, "needs_cleanup")?.as_deref() == Some("1")))
}

pub(super) async fn mark_needs_cleanup(s: &SqliteStore) -> Result<(), StoreError> {
    s.blocking(|s| s.with_writer(|c| meta_set(c, "needs_cleanup", "1")))
        .await
}

pub(super) async fn cleanup_process_info(s: &SqliteStore) -> Result<Vec<String>, StoreError> {
    s.blocking(|s| {
        s.with_writer(|c| {
            let mut stmt = c.prepare(
                "SELECT name FROM tm_meta WHERE name = 'process' OR name LIKE 'quiesce%' OR name LIKE 'note.quiesce%' OR name LIKE 'note.service_quiesce/%' ORDER BY name",
            )?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            c.execute(
                "DELETE FROM tm_meta WHERE name = 'process' OR name LIKE 'quiesce%' OR name LIKE 'note.quiesce%' OR name LIKE 'note.service_quiesce/%'",
                [],
            )?;
            meta_set(c, "needs_cleanup", "0")?;
            Ok(names)
        })
    })
    .await
}

pub(super) async fn close(s: &SqliteStore) -> Result<(), StoreError> {
    if s.inner.closed.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    s.blocking(|s| {
        let conn = s.inner.writer.lock();
        // A checkpoint that meets a reader (or the background checkpointer,
        // which stops within its 200 ms tick) answers `busy` in its row, not
        // as an error: try again, so a closed store never leaves its WAL
        // for the next start to copy back under load.
        for _ in 0..50 {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tracing::warn!("the WAL could not be checkpointed at close (readers kept it busy); the next start copies it back");
        Ok(())
    })
    .await
}
