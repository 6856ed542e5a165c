//! Streaming a snapshot straight from the database pages (B1), without a
//! scratch file: one read transaction on its own connection reads every
//! page through SQLite's `sqlite_dbpage` table, so the bytes are the
//! database as of that transaction (WAL frames included), and writers go
//! on meanwhile.
//!
//! The stream is a self-contained SQLite file in the snapshot format:
//! page 1's header is rewritten to rollback-journal mode with the page
//! count as its in-header size, as SQLite's own backup would leave it.
//!
//! Invariant: the snapshot's info (epoch, seq, high-water marks, process)
//! is read inside the same transaction as the pages, so it describes them.

use super::SqliteStore;
use crate::store::{Snapshot, SnapshotInfo};
use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::io::{self, Read};
use std::sync::mpsc;

/// Bytes handed over at a time; with [`CHUNKS_IN_FLIGHT`], what the
/// stream holds in memory.
const CHUNK: usize = 1 << 20;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Whether this build of SQLite has `sqlite_dbpage` (compiled in with
/// `SQLITE_ENABLE_DBPAGE_VTAB`, see `.cargo/config.toml`). Without it the
/// store falls back to a snapshot file.
pub(super) fn available(conn: &Connection) -> bool {
    conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = 1")
        .is_ok()
}

/// Starts the stream: returns once the read transaction holds its point
/// and the info is known; the pages follow as the reader pulls them.
/// `None` when this SQLite has no `sqlite_dbpage`.
pub(super) async fn open(s: &SqliteStore) -> Result<Option<Snapshot>, StoreError> {
    let path = s.inner.db_path.clone();
    let (info_tx, info_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    std::thread::Builder::new()
        .name("tidemark-snapshot".into())
        .spawn(move || {
            let conn = match begin(&path) {
                Ok(Some(conn)) => conn,
                Ok(None) => {
                    let _ = info_tx.send(Ok(None));
                    return;
                }
                Err(e) => {
                    let _ = info_tx.send(Err(e));
                    return;
                }
            };
            let info = match read_info(&conn) {
                Ok(info) => info,
                Err(e) => {
                    let _ = info_tx.send(Err(e));
                    return;
                }
            };
            let pages = info.bytes;
            if info_tx.send(Ok(Some(info))).is_err() {
                return;
            }
            if let Err(e) = send_pages(&conn, pages, &tx) {
                let _ = tx.send(Err(io::Error::other(e.to_string())));
            }
            // Dropping the connection ends the read transaction.
        })
        .map_err(|e| StoreError::Engine(format!("cannot start the snapshot thread: {e}")))?;
    let info = info_rx
        .await
        .map_err(|_| StoreError::Engine("the snapshot thread stopped; retry".into()))??;
    Ok(info.map(|info| Snapshot {
        reader: Box::new(PageReader {
            rx,
            chunk: Vec::new(),
            at: 0,
            left: info.bytes,
        }),
        info,
    }))
}

/// A read-only connection inside an open read transaction, or `None`
/// without `sqlite_dbpage`.
fn begin(path: &std::path::Path) -> Result<Option<Connection>, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // No mmap: a mapping of the whole file would count in the RSS of the
    // process, and reading the pages is not what limits a backup.
    conn.execute_batch("PRAGMA query_only = 1;")?;
    if !available(&conn) {
        return Ok(None);
    }
    // The first read fixes the transaction's point.
    conn.execute_batch("BEGIN")?;
    conn.query_row("SELECT count(*) FROM tm_meta", [], |r| r.get::<_, i64>(0))?;
    Ok(Some(conn))
}

/// What the transaction's pages hold; `bytes` is the stream's length.
fn read_info(conn: &Connection) -> Result<SnapshotInfo, StoreError> {
    let pragma = |p: &str| conn.query_row(p, [], |r| r.get::<_, i64>(0));
    let bytes = pragma("PRAGMA page_size")? as u64 * pragma("PRAGMA page_count")? as u64;
    super::admin::snapshot_info(conn, bytes, "the store")
}

/// Sends every page in order (`sqlite_dbpage` walks them by number; an
/// `ORDER BY` could make SQLite sort the whole file), in chunks; stops
/// quietly when the reader is gone.
fn send_pages(
    conn: &Connection,
    bytes: u64,
    tx: &mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage")?;
    let mut rows = stmt.query([])?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut sent = 0u64;
    let mut expect = 1i64;
    while let Some(row) = rows.next()? {
        let pgno: i64 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        if pgno != expect {
            return Err(StoreError::Engine(format!(
                "the snapshot read page {pgno} where page {expect} belonged; retry"
            )));
        }
        expect += 1;
        let start = chunk.len();
        chunk.extend_from_slice(data);
        if pgno == 1 {
            let pages = bytes / data.len().max(1) as u64;
            rewrite_header(&mut chunk[start..], pages as u32);
        }
        if chunk.len() + data.len() > CHUNK {
            sent += chunk.len() as u64;
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    sent += chunk.len() as u64;
    if sent != bytes {
        return Err(StoreError::Engine(format!(
            "the snapshot read {sent} bytes of {bytes}; retry"
        )));
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
    Ok(())
}

/// Page 1 as a self-contained file needs: rollback-journal mode (file
/// format bytes 18-19 = 1, no `-wal` beside it) and a valid in-header
/// size (bytes 28-31, valid when the change counter at 24 equals the
/// version-valid-for number at 92).
fn rewrite_header(page1: &mut [u8], pages: u32) {
    page1[18] = 1;
    page1[19] = 1;
    page1[28..32].copy_from_slice(&pages.to_be_bytes());
    let counter: [u8; 4] = page1[24..28].try_into().unwrap_or_default();
    page1[92..96].copy_from_slice(&counter);
}

/// The consumer's end: exactly `left` bytes, then end of stream; an early
/// end is an error, never a short snapshot.
struct PageReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    left: u64,
}

impl Read for PageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.left == 0 {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::other(
                        "the snapshot stream ended early; retry the backup",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}
